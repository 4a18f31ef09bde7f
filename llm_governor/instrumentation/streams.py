"""Calls that end after the SDK returned: streams and unread response bodies.

A governed stream holds its reservation (and concurrency slot) until it ends.
:class:`Settlement` settles it exactly once, whichever comes first: the
iterator is exhausted or fails, the response is closed (by the user, a
``with`` block, an SDK helper or the SDK itself), or it is garbage-collected.

Usage is read from the events as they pass (:class:`UsageTracker`), either
from the SDK's parsed objects (the iterator watcher) or from the raw SSE bytes
(:class:`SSEScanner`, for ``with_raw_response`` / ``with_streaming_response``).
A stream that ends without its usage (cut, closed early, or a server that
sends none) is charged by the governor's charging rule: at its reserved upper
bound, since the provider may have billed every token it generated.

Settling takes the backend's lock, so it must never run inside a garbage
collection that may have interrupted this very thread while it held that lock:
settlements triggered by the collector go to a reaper thread instead. That
thread is per process: a forked child starts its own, and never settles a
stream its parent opened (the parent does). It is not a daemon, and it ends
once it has been idle for a moment: a process that exits (at the end of its
main thread, ``sys.exit``, a multiprocessing worker's return) waits for the
settlements it deferred instead of dropping them with their spend.
"""

from __future__ import annotations

import abc
import gc
import json
import logging
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..governor import Governor, Ticket
    from ..pricing import Usage

__all__ = ["SSEFilter", "SSEScanner", "Settlement", "UsageTracker", "chunk_arrived", "field",
           "watch_aiter", "watch_iter"]

logger = logging.getLogger("llm_governor")
T = TypeVar("T")


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for dicts (raw JSON), ``obj.name`` for SDK objects; ``None`` if absent."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def count(value: Any) -> int:
    """A token count from a usage field (absent, null or nonsense → 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class UsageTracker(abc.ABC):
    """Reads a call's usage from its response or stream events (one per call).

    Subclasses know one SDK's shapes; :meth:`see` returns False for an event
    the governor itself asked for, which the user must not see.
    """

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None  # set once the usage is complete

    @abc.abstractmethod
    def see(self, event: Any) -> bool:
        """Record what ``event`` says about usage; False hides it from the user."""

    @abc.abstractmethod
    def final(self, response: Any) -> Usage | None:
        """The usage of a complete (non-stream) response object or JSON body."""


# ----------------------------------------------------------- off-GC settling
_in_gc = False


def _gc_phase(phase: str, info: dict[str, int]) -> None:
    global _in_gc
    _in_gc = phase == "start"


gc.callbacks.append(_gc_phase)
_pending: queue.SimpleQueue[Settlement] = queue.SimpleQueue()  # put() is reentrant-safe
_reaper: threading.Thread | None = None
# Reentrant: a collection inside Thread.start() may defer again on the same thread.
_reaper_lock = threading.RLock()
_REAPER_IDLE = 0.2  # seconds without work after which the reaper ends (exit need not wait)


def _reap(pending: queue.SimpleQueue[Settlement]) -> None:
    """Settle deferred calls until idle; then end, unless more arrived meanwhile.

    Not a daemon: interpreter exit and multiprocessing workers join it, so the
    settlements deferred just before a process exits still reach the backend.
    """
    global _reaper
    while True:
        try:
            s = pending.get(timeout=_REAPER_IDLE)
        except queue.Empty:
            with _reaper_lock:  # _defer checks for a reaper under the same lock
                if pending.empty():
                    if _reaper is threading.current_thread():
                        _reaper = None
                    return
            continue
        s.settle()


def _after_fork_in_child() -> None:
    """The parent's reaper thread does not exist here; its queue and lock may be mid-use."""
    global _pending, _reaper, _reaper_lock, _in_gc
    _pending = queue.SimpleQueue()
    _reaper = None
    _reaper_lock = threading.RLock()
    _in_gc = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def _defer(s: Settlement) -> None:
    """Settle ``s`` on the reaper thread (safe from finalizers and the collector)."""
    global _reaper
    if s.pid != os.getpid():
        return  # a stream of the parent process: the parent settles it
    _pending.put(s)
    with _reaper_lock:
        if _reaper is None:
            reaper = threading.Thread(target=_reap, args=(_pending,),
                                      name="llm-governor-settle")
            try:
                reaper.start()
            except RuntimeError:  # interpreter shutdown: the lease expires by its TTL
                return
            _reaper = reaper


class Settlement:
    """Settles one governed call exactly once, from whichever end comes first."""

    __slots__ = ("__weakref__", "_done", "_finalizer", "_lock", "error", "failure", "gov",
                 "iterating", "pid", "ticket", "tracker")

    def __init__(self, gov: Governor, ticket: Ticket, tracker: UsageTracker) -> None:
        self.gov = gov
        self.ticket = ticket
        self.tracker = tracker
        self.error: BaseException | None = None
        self.failure = False  # the error counts for the breaker
        self.iterating = False  # inside the watched iterator's next(): it will settle
        self.pid = ticket.pid
        self._done = False
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def watch(self, owner: object) -> None:
        """Settle when ``owner`` (the object the user holds) is garbage-collected."""
        self._finalizer = weakref.finalize(owner, _defer, self)

    def _claim(self) -> bool:
        if self.pid != os.getpid():
            return False
        with self._lock:
            if self._done:
                return False
            self._done = True
        if self._finalizer is not None:
            self._finalizer.detach()
        return True

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"usage": self.tracker.usage}
        if self.error is not None:
            kw["error"] = self.error
            kw["outcome"] = "failure" if self.failure else "neutral"
        return kw

    def finish(self) -> None:
        """Settle now (or on the reaper thread when called from the garbage collector)."""
        if _in_gc:
            if not self._done:
                _defer(self)
            return
        self.settle()

    def settle(self) -> None:
        """Settle now, in this thread."""
        if self._claim():
            try:
                self.gov.settle(self.ticket, **self._kwargs())
            except Exception:  # a settlement must never break the user's iteration
                logger.exception("RATE_LIMIT settling a %s stream failed", self.ticket.service)

    async def afinish(self) -> None:
        """:meth:`finish` without blocking the event loop on a blocking backend."""
        if self._claim():
            try:
                await self.gov.asettle(self.ticket, **self._kwargs())
            except Exception:
                logger.exception("RATE_LIMIT settling a %s stream failed", self.ticket.service)

    def close_hook(self) -> None:
        """The response was closed: settle, unless the watched iterator is mid-step."""
        if not self.iterating:
            self.finish()

    async def aclose_hook(self) -> None:
        """:meth:`close_hook` for async responses."""
        if not self.iterating:
            await self.afinish()


def chunk_arrived(t: Ticket) -> None:
    """Time a stream's chunk: the first one's arrival, then the gap since the previous."""
    now = time.monotonic()
    if t.last_chunk:
        t.chunk_gaps.append(now - t.last_chunk)
    else:
        t.first_chunk = now
    t.last_chunk = now


def watch_iter(source: Iterator[T], s: Settlement,
               failed: Callable[[BaseException], bool]) -> Iterator[T]:
    """Yield ``source``'s items the tracker lets through; settle when it ends."""
    try:
        while True:
            s.iterating = True
            try:
                item = next(source)
            except StopIteration:
                break
            finally:
                s.iterating = False
            chunk_arrived(s.ticket)
            if s.tracker.see(item):
                yield item
    except GeneratorExit:  # closed unfinished; finish() below knows if the collector did it
        raise
    except BaseException as exc:
        s.error, s.failure = exc, failed(exc)
        raise
    finally:
        s.finish()


async def watch_aiter(source: AsyncIterator[T], s: Settlement,
                      failed: Callable[[BaseException], bool]) -> AsyncIterator[T]:
    """:func:`watch_iter` for async iterators."""
    try:
        while True:
            s.iterating = True
            try:
                item = await source.__anext__()
            except StopAsyncIteration:
                break
            finally:
                s.iterating = False
            chunk_arrived(s.ticket)
            if s.tracker.see(item):
                yield item
    except GeneratorExit:  # finalized unfinished: never await here
        _defer(s)
        raise
    except BaseException as exc:
        s.error, s.failure = exc, failed(exc)
        await s.afinish()
        raise
    else:
        await s.afinish()


class SSEScanner:
    """Feeds the usage-bearing events of raw SSE bytes to a tracker (bytes pass unchanged)."""

    __slots__ = ("_buffer", "_tracker")

    def __init__(self, tracker: UsageTracker) -> None:
        self._tracker = tracker
        self._buffer = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                self._tracker.see(event)


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


class SSEFilter:
    """Raw SSE bytes with the events the governor asked for taken out.

    For a stream the governor asked for its usage (``include_usage``) that the
    user reads raw (``with_raw_response`` / ``with_streaming_response``: bytes,
    lines, or ``.parse()`` into the SDK's stream): every event is read for
    usage, the usage event the tracker hides is dropped whole, and the
    ``"usage": null`` the request added to the other events is removed, so the
    bytes read are those a bare call would have read. Events pass once complete
    (a partial event waits for its end).
    """

    __slots__ = ("_buffer", "_tracker")

    def __init__(self, tracker: UsageTracker) -> None:
        self._tracker = tracker
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._buffer + chunk
        out: list[bytes] = []
        start = 0
        for end in _EVENT_END.finditer(data):
            out.append(self._event(data[start:end.end()]))
            start = end.end()
        self._buffer = data[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left when the body ends (an unterminated last event), as is."""
        rest, self._buffer = self._buffer, b""
        return self._event(rest) if rest.strip() else rest

    def _event(self, raw: bytes) -> bytes:
        if b'"usage"' not in raw:
            return raw
        lines = raw.splitlines()
        payload = b"\n".join(line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:"))
        try:
            event = json.loads(payload)
        except ValueError:
            return raw
        if not self._tracker.see(event):
            return b""
        if isinstance(event, dict) and event.get("usage", 0) is None and \
                getattr(self._tracker, "honoured", False):
            return _NULL_USAGE.sub(b"", raw, count=1)
        return raw
