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
burst resolved to a step.
"""

from __future__ import annotations

import math

from .adaptive import MAX_LIMIT

__all__ = ["EMPTY", "STEPS", "Points", "dump", "mark", "others", "parse", "reached", "sent_at"]

STEPS = 16  # snapshots per provider window
KEEP = 2 * STEPS + 2  # at most this many kept (a window's worth and a margin)
EMPTY = "none"  # no snapshot yet (the record's text form needs a word)
Points = tuple[tuple[float, int], ...]  # (instant, the counter then), oldest first


def parse(text: str) -> Points:
    """Snapshots from their stored text (none from anything malformed)."""
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
