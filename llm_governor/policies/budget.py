"""Hard budgets over calendar-aligned UTC windows, with reservations.

Before a call, its upper-bound cost is reserved; after, the real cost is
settled and the rest released. A reservation fits only if, in every window,
``spent + reserved + amount <= limit``, so settled plus reserved spend never
exceeds any budget, whatever the concurrency. Reservations are held as leases
by the backend (with an expiry, so a crashed process cannot pin budget
forever); this module sees only their total.

After the call, :func:`charge` is the one charging rule: real usage when it
is known; the reservation when the request may have reached the provider and
its usage is unknown; nothing only when the request provably never left the
process (or the provider answered with an error, which it does not bill).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

__all__ = [
    "BILLABLE",
    "WINDOWS",
    "WINDOW_SECONDS",
    "AttemptState",
    "WindowSpend",
    "charge",
    "check",
    "pacing_factor",
    "remaining",
    "report",
    "roll",
    "settle",
    "window_end",
    "window_start",
]

WINDOW_SECONDS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400, "month": 0}
"""Fixed window lengths; 0 marks the calendar month, whose length varies."""
WINDOWS = ("minute", "hour", "day", "month")
_ZERO = Decimal(0)

AttemptState = Literal["none", "unsent", "sending", "rejected", "received", "lost", "charged"]
"""Where a call's latest attempt got to, as far as the provider's bill is concerned.

``none``: no attempt started (refused, or cancelled before sending). ``unsent``:
it failed before a byte left (connection refused, DNS, connect timeout).
``sending``: it was sent and nothing came back yet (a hang, or a cancellation
mid-flight). ``rejected``: the provider answered with an error status, which
it does not bill. ``received``: the provider answered with success (usage may
follow, in the body or at the end of a stream). ``lost``: the connection failed
after sending (read timeout, reset, cut stream). ``charged``: a lost attempt
already charged at its reservation before a retry.
"""

BILLABLE: frozenset[str] = frozenset({"sending", "received", "lost"})
"""States in which the provider may have billed the attempt."""


def charge(state: AttemptState, usage_cost: Decimal | None, reserved: Decimal) -> Decimal:
    """What one attempt costs the budget: the charging rule, in one place.

    ``usage_cost`` is the price of the usage the provider reported (``None``
    when it reported none). Unknown usage of an attempt the provider may have
    billed is charged at its reservation, an upper bound of what it billed;
    an attempt that never left the process, or that the provider refused, is free.
    """
    if usage_cost is not None:
        return usage_cost
    return reserved if state in BILLABLE else _ZERO


def _civil_from_days(z: int) -> tuple[int, int]:
    """``(year, month)`` of the day ``z`` days after 1970-01-01 (H. Hinnant's algorithm,
    integer-only, so the Redis port computes the very same)."""
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month


def _days_from_civil(year: int, month: int) -> int:
    """Days from 1970-01-01 to the first day of ``month`` of ``year``."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def window_start(window: str, now: float) -> float:
    """Start of the UTC-aligned ``window`` containing ``now`` (epoch seconds)."""
    length = WINDOW_SECONDS[window]
    if length:
        return float(int(now // length) * length)
    year, month = _civil_from_days(int(now // 86400))
    return float(_days_from_civil(year, month) * 86400)


def window_end(window: str, start: float) -> float:
    """End of the ``window`` instance that starts at ``start``."""
    length = WINDOW_SECONDS[window]
    if length:
        return start + length
    year, month = _civil_from_days(int(start // 86400))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return float(_days_from_civil(year, month) * 86400)


@dataclass(frozen=True, slots=True)
class WindowSpend:
    """Settled spend in one window instance."""

    start: float = 0.0
    spent: Decimal = _ZERO


_NO_SPEND = WindowSpend()  # a window with no record yet (immutable, so shared)


def roll(spend: WindowSpend, window: str, now: float) -> WindowSpend:
    """The spend record for the window instance containing ``now``.

    A record of a later instance (the clock was stepped back) counts as this
    one: a budget never forgets spend because time ran backwards, nor blocks
    longer than one window for it.
    """
    start = window_start(window, now)
    if spend.start == start:
        return spend
    return WindowSpend(start, spend.spent if spend.start > start else _ZERO)


def spent_now(spends: Mapping[str, WindowSpend], now: float) -> dict[str, Decimal]:
    """What ``spends`` hold in their current windows, leaving out windows with none
    (what a budget reset reports it forgot)."""
    rolled = {w: roll(sp, w, now).spent for w, sp in spends.items()}
    return {w: amount for w, amount in rolled.items() if amount}


def remaining(
    spends: dict[str, WindowSpend], limits: dict[str, Decimal], reserved: Decimal, now: float
) -> tuple[Decimal | None, str | None]:
    """The tightest window's room left after reservations: ``(amount, window)``."""
    best: Decimal | None = None
    best_window: str | None = None
    for window, limit in limits.items():
        spend = roll(spends.get(window, WindowSpend()), window, now)
        left = limit - spend.spent - reserved
        if best is None or left < best:
            best, best_window = left, window
    return best, best_window


def check(
    spends: dict[str, WindowSpend],
    limits: dict[str, Decimal],
    reserved: Decimal,
    amount: Decimal,
    now: float,
) -> tuple[bool, Decimal | None, str | None, float]:
    """Can ``amount`` be reserved? ``(ok, remaining, refusing_window, seconds_to_reset)``."""
    best: Decimal | None = None  # the tightest room so far: what remaining() finds, in one pass
    for window, limit in limits.items():
        spend = roll(spends.get(window, _NO_SPEND), window, now)
        left = limit - spend.spent - reserved
        if amount > left:
            reset = window_end(window, window_start(window, now)) - now
            tightest, _ = remaining(spends, limits, reserved, now)
            return False, max(tightest if tightest is not None else left, _ZERO), window, reset
        if best is None or left < best:
            best = left
    return True, best, None, 0.0


def settle(
    spends: dict[str, WindowSpend], limits: dict[str, Decimal], amount: Decimal, now: float
) -> dict[str, WindowSpend]:
    """Spends after charging ``amount`` to every configured window at ``now``."""
    out = dict(spends)
    for window in limits:
        spend = roll(spends.get(window, WindowSpend()), window, now)
        out[window] = WindowSpend(spend.start, spend.spent + amount)
    return out


def report(spends: Mapping[str, WindowSpend], reserved: Decimal,
           limits: Mapping[str, Decimal], now: float) -> dict[str, dict[str, Decimal]]:
    """Per window of ``limits``: limit, spent (rolled to ``now``), reserved, remaining."""
    out = {}
    for window, limit in limits.items():
        spent = roll(spends.get(window, WindowSpend()), window, now).spent
        out[window] = {"limit": limit, "spent": spent, "reserved": reserved,
                       "remaining": limit - spent - reserved}
    return out


def pacing_factor(spends: dict[str, WindowSpend], limits: dict[str, Decimal], now: float) -> float:
    """How much to tighten the cost-rate limit as the day's budget drains.

    1.0 while at least half of the day budget is left, then falling linearly
    with what remains (a quarter left → 0.5), never below 0.05: the budget is
    stretched over the day instead of hitting a cliff at 100%.
    """
    limit = limits.get("day")
    if not limit:
        return 1.0
    spend = roll(spends.get("day", WindowSpend()), "day", now)
    fraction = float((limit - spend.spent) / limit)
    if fraction >= 0.5:
        return 1.0
    return max(0.05, fraction / 0.5)
