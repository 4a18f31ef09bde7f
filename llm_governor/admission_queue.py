"""Priority admission queue for threads and asyncio tasks alike.

Callers of one service wait here in ``(priority, arrival)`` order; only the
head asks the backend for admission, so a higher priority overtakes lower ones
and calls of one priority are served FIFO. When ``max_size`` callers wait,
a newcomer of higher priority sheds the newest of the lowest priority
(``QueueFullError`` for it), otherwise the newcomer is refused.

One structure serves both worlds: a thread waits on a ``threading.Event``, a
task on an ``asyncio.Event`` set through its loop's ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import threading

__all__ = ["STAGGER", "AdmissionQueue", "Waiter", "stagger"]

_seq = itertools.count()

# The longest a head that just arrived asks after its wait (see stagger), seconds.
STAGGER = 0.01


def stagger(waited: float, wait: float) -> float:
    """How much later than ``wait`` a queue's head asks again, having waited ``waited``.

    Only for a shared backend (``Backend.shared``): each process has its own
    queue, and the heads of all of them ask the shared backend when the same
    token is due: whichever lock comes first wins, and an
    unlucky head can lose round after round (three processes on one SQLite file:
    a p95 wait of 0.7-0.9 s where one process waits 0.45 s). A head that has
    waited less asks a little later, so the longest waiter is first to ask
    across processes too: about FIFO, for a few milliseconds. A bucket that
    holds more than one call keeps what accrues meanwhile, so none of its
    throughput is lost; at most ``STAGGER``, and never more than ``wait`` again.
    """
    return min(STAGGER, wait) / (1.0 + waited * 10.0)


class Waiter:
    """One caller waiting for admission."""

    __slots__ = ("_aevent", "_event", "_loop", "key", "priority", "shed")

    def __init__(self, priority: int, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.priority = priority
        self.key = (priority, next(_seq))
        self.shed = False
        self._loop = loop
        self._event: threading.Event | None = None if loop else threading.Event()
        self._aevent: asyncio.Event | None = asyncio.Event() if loop else None

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()
        elif self._loop is not None and self._aevent is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: the waiter went with it
                self._loop.call_soon_threadsafe(self._aevent.set)

    def wait(self, timeout: float) -> None:
        """Block the thread until woken or ``timeout`` seconds pass."""
        assert self._event is not None
        self._event.wait(timeout)
        self._event.clear()

    async def await_(self, timeout: float) -> None:
        """Suspend the task until woken or ``timeout`` seconds pass."""
        assert self._aevent is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._aevent.wait(), timeout)
        self._aevent.clear()


class AdmissionQueue:
    """Waiters of one service in priority order, bounded by ``max_size``."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._lock = threading.Lock()
        self._waiters: list[Waiter] = []  # sorted by key
        self._keys: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._waiters)

    def enter(self, w: Waiter) -> bool:
        """Queue ``w``. False when full and nothing of lower priority can be shed."""
        with self._lock:
            victim: Waiter | None = None
            if len(self._waiters) >= self.max_size:
                last = self._waiters[-1]  # lowest priority, newest
                if last.priority <= w.priority:
                    return False
                victim = self._waiters.pop()
                self._keys.pop()
                victim.shed = True
            i = bisect.bisect(self._keys, w.key)
            self._keys.insert(i, w.key)
            self._waiters.insert(i, w)
            head_changed = i == 0 and len(self._waiters) > 1
            old_head = self._waiters[1] if head_changed else None
        if victim is not None:
            victim.wake()
        if old_head is not None:
            old_head.wake()  # let it see it is no longer the head
        return True

    def is_head(self, w: Waiter) -> bool:
        waiters = self._waiters
        return bool(waiters) and waiters[0] is w

    def leave(self, w: Waiter) -> None:
        """Remove ``w`` (admitted, refused or shed) and wake the new head."""
        with self._lock:
            try:
                i = self._waiters.index(w)
            except ValueError:
                return
            del self._waiters[i]
            del self._keys[i]
            head = self._waiters[0] if (i == 0 and self._waiters) else None
        if head is not None:
            head.wake()

    def wake_head(self) -> None:
        """Something changed (a slot was freed): let the head try again now."""
        with self._lock:
            head = self._waiters[0] if self._waiters else None
        if head is not None:
            head.wake()

    def sizes_by_priority(self) -> dict[int, int]:
        with self._lock:
            out: dict[int, int] = {}
            for w in self._waiters:
                out[w.priority] = out.get(w.priority, 0) + 1
            return out
