"""GCRA (generic cell rate algorithm): a token bucket stored as one number.

The state is the theoretical arrival time ``tat``: when the bucket would be
full again. No background refill, no timers, and an exact ``retry_after``.
Used for requests/s, LLM tokens/min and dollars/min alike.

Guarantee: in any interval of length ``d`` the admitted cost never exceeds
``capacity + rate * d``.
"""

from __future__ import annotations

__all__ = ["HEADROOM_CALLS", "PRIORITY_HEADROOM", "available", "gcra", "headroom", "share"]

_EPS = 1e-9

# Share of a bucket each priority must leave untouched, so lower priorities
# cannot take the last slice that a higher one may need. Indexed by Priority.
PRIORITY_HEADROOM: tuple[float, ...] = (0.0, 0.1, 0.2, 0.35)
# ... but never more than that share of HEADROOM_CALLS calls of the caller's own size.
# Distinct thresholds are what order priorities across processes (each admits only
# above its own), and against a provider that counts by window, whose remaining the
# request bucket mirrors, every unit held back is a unit of its window lost: 20 % of
# the capacity cost NORMAL calls 15 % of a sliding-window provider's throughput.
HEADROOM_CALLS = 2.0


def share(priority: int) -> float:
    """The share of every bucket ``priority`` must leave for higher priorities."""
    return PRIORITY_HEADROOM[priority] if 0 <= priority < len(PRIORITY_HEADROOM) else 0.5


def headroom(capacity: float, cost: float, share: float) -> float:
    """Units to leave in a bucket of ``capacity`` when taking ``cost`` at this ``share``:
    ``share`` of the capacity, at most ``share × HEADROOM_CALLS`` calls of ``cost``.

    Never so much that the call could not be admitted into a full bucket.
    """
    # max(0.0, min(share * min(capacity, HEADROOM_CALLS * cost), capacity - cost)), spelt out:
    # the same comparisons the builtins make, without their calls (this runs per bucket)
    if not share:
        return 0.0
    calls = HEADROOM_CALLS * cost
    room = share * (calls if calls < capacity else capacity)
    rest = capacity - cost
    if rest < room:
        room = rest
    return room if room > 0.0 else 0.0


def gcra(
    tat: float, now: float, cost: float, rate: float, capacity: float, reserve: float = 0.0
) -> tuple[bool, float, float]:
    """Try to take ``cost`` units at ``now``.

    Returns ``(admitted, new_tat, retry_after)``. ``reserve`` units must stay
    in the bucket after taking ``cost`` (priority headroom). A cost above the
    capacity is clamped to it, so an oversized call waits for a full bucket
    instead of waiting forever.
    """
    if cost > capacity:
        cost = capacity
    base = tat if tat > now else now
    new_tat = base + cost / rate
    allow_at = new_tat - (capacity - reserve) / rate
    if allow_at <= now + _EPS:
        return True, new_tat, 0.0
    return False, tat, allow_at - now


def available(tat: float, now: float, rate: float, capacity: float) -> float:
    """Units that could be taken at ``now`` (the bucket's fill)."""
    used = (tat - now) * rate if tat > now else 0.0
    return max(0.0, capacity - used)
