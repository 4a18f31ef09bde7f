"""This limit scope's own calls in the provider's count, told apart from others'.

A provider's ``remaining`` counts every call made with the account: ours and
those of clients the governor does not see (another app, a colleague's
script). Its refill, likewise, frees their slots as well as ours, and they
take their own freed slots back as they free. A governor that reads every
freed slot as its own runs at the whole account's rate and meets 429s at
every turn of the window (12.0-14.3 provider 429s per 100 calls with a foreign
client taking half the quota, ``benchmarks/bench_goodput.py`` scenario d, before
this module).

What tells them apart is the scope's own admissions (``ServiceState.sent``)
over the provider's window: how many of the calls it counted are ours, and
which of ours free a slot next. The scope keeps its counter's recent history
as a few snapshots (:data:`STEPS` per window, taken as reports arrive, stored
as text so every backend keeps it alike: ``ServiceState.sends``) and reads it
between them by linear interpolation, exact at a steady pace and a gap or
burst resolved to a step. Once others are counted, each report also places its
own attempt exactly (:func:`stepped`): at 20 calls a window, snapshots a
sixteenth of it apart misplace an expiry by tens of milliseconds, enough to
send a call into a slot still taken. An attempt the provider refused is taken
back out of the history (:func:`refused`).
"""

from __future__ import annotations

import functools
import math

from .adaptive import MAX_LIMIT

__all__ = ["EMPTY", "STEPS", "Points", "dump", "mark", "others", "parse", "reached", "refused",
           "sent_at", "stepped"]

STEPS = 16  # snapshots per provider window
EXACT = 32  # attempts a window placed exactly (two points each; beyond, read between snapshots)
KEEP = 2 * STEPS + 2 + 2 * EXACT  # at most this many points kept (text of 2.4 kB at most)
TICK = 1e-5  # seconds: an exact step's counter is n - 1 until this long before its instant
EMPTY = "none"  # no snapshot yet (the record's text form needs a word)
Points = tuple[tuple[float, int], ...]  # (instant, the counter then), oldest first


@functools.lru_cache(maxsize=32)
def parse(text: str) -> Points:
    """Snapshots from their stored text (none from anything malformed). Cached: a scope
    sharing the account reads its history at every admission, and a queue asks again
    and again while the text is unchanged (31 µs a decision uncached with 42 points,
    4.4 µs cached: timed once with ``timeit``, not a benchmark)."""
    if not text or text == EMPTY:
        return ()
    try:
        points = tuple((float(t), int(n)) for t, n in
                       (pair.split(":") for pair in text.split(";")))
    except ValueError:
        return ()
    return points if all(math.isfinite(t) for t, _ in points) else ()


def dump(points: Points) -> str:
    """The stored text of ``points`` (``'%.17g'``, as the Redis scripts write it)."""
    return ";".join(f"{t:.17g}:{n}" for t, n in points) if points else EMPTY


def mark(points: Points, now: float, sent: int, counted_at: float, window: float) -> Points:
    """``points`` after a report at ``now`` (the counter at ``sent``) of a call the
    provider counted at ``counted_at``, whose window lasts ``window`` seconds.

    A snapshot is added once the last is ``window / STEPS`` old, and those no
    query needs any more are dropped. Without one of the last two windows (a
    new scope, or one idle since), the counter's past is unknown: it reads as
    its last known value until ``counted_at``, as if the calls since were all
    sent after that (ours counted high, and none of them freed yet)."""
    if not (0 < window < math.inf):
        return points
    if not points or points[-1][0] > now or counted_at - points[-1][0] > 2 * window:
        old = min(points[-1][1], sent) if points else 0
        return (counted_at, old), (now, sent)
    if now - points[-1][0] < window / STEPS:
        return points
    kept = (*points, (now, sent))
    start = 0
    while start + 1 < len(kept) - 1 and kept[start + 1][0] <= counted_at - window:
        start += 1
    return kept[max(start, len(kept) - KEEP):]


def stepped(points: Points, at: float, attempt: int) -> Points:
    """``points`` with the scope's ``attempt``-th admission placed at ``at``, when the
    provider counted it: the counter at ``attempt - 1`` until just before, ``attempt``
    from then (two calls at one instant make one step of two).

    Unchanged where that would contradict the snapshots (the counter never goes
    down), before the oldest of them, or once the history holds :data:`KEEP`
    less a window's snapshots (:data:`STEPS`) and a margin: beyond
    :data:`EXACT` attempts a window, the snapshots alone tell."""
    if not points or len(points) > KEEP - STEPS - 4:
        return points
    i = len(points)
    while i and points[i - 1][0] > at:
        i -= 1
    if i == 0 or (i < len(points) and points[i][1] < attempt):
        return points
    t0, n0 = points[i - 1]
    if t0 >= at - TICK:  # a step at this instant already: one more call in it
        if n0 == attempt - 1 and i > 1:
            return (*points[:i - 1], (t0, attempt), *points[i:])
        return points
    if n0 > attempt - 1:
        return points
    return (*points[:i], (at - TICK, attempt - 1), (at, attempt), *points[i:])


def refused(points: Points, attempt: int, since: float) -> Points:
    """``points`` once the scope's ``attempt``-th admission, sent a window after
    ``since``, was refused (a 429): the provider never counted it, so it is neither one
    of ours in its count nor one to free a slot. The snapshots of that window from
    before it count it as sent already, which takes it out of every window that held
    it, and leaves the windows before it as they were (the answers of calls sent before
    it often come after its 429). Left in, it read as one of ours for a window: the
    others' count one low, the pace one high, the next 429 sooner (5 refusals in 150
    calls in the simulation of scenario d with 10 foreign calls a window, against 2)."""
    return tuple((t, n + 1 if n < attempt and t >= since else n) for t, n in points)


def sent_at(points: Points, when: float, now: float, sent: int) -> float:
    """The scope's admission counter at ``when``: linear between snapshots and
    ``(now, sent)``, and the oldest snapshot's value before it."""
    if when >= now:
        return float(sent)
    t0, n0 = points[0] if points else (now, sent)
    if when <= t0:
        return float(n0)
    for t1, n1 in (*points[1:], (now, sent)):
        if when <= t1:
            return n0 + (n1 - n0) * (when - t0) / (t1 - t0) if t1 > t0 else float(n1)
        t0, n0 = t1, n1
    return float(sent)


def reached(points: Points, count: float, now: float, sent: int) -> float:
    """When the scope's admission counter reached ``count`` (:func:`sent_at`'s inverse):
    ``-inf`` if it had by the oldest snapshot, ``inf`` if it has not yet."""
    t0, n0 = points[0] if points else (now, sent)
    if count <= n0:
        return -math.inf
    if count > sent:
        return math.inf
    for t1, n1 in (*points[1:], (now, sent)):
        if count <= n1:
            return t0 + (t1 - t0) * (count - n0) / (n1 - n0)
        t0, n0 = t1, n1
    return now


def others(limit: float | None, remaining: float | None, ours: float) -> float:
    """Calls of other clients in the provider's count: its count (``limit - remaining``)
    less ours (0 without sane headers)."""
    if limit is None or remaining is None or not 0 <= remaining <= limit <= MAX_LIMIT:
        return 0.0
    return max(0.0, limit - remaining - ours)
