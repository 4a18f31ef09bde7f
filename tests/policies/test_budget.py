"""Budgets: calendar windows, reservations, and the never-overspend property."""

from __future__ import annotations

import calendar
import datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_governor.policies import budget

D = Decimal
DAY0 = 1_800_000_000.0 - (1_800_000_000.0 % 86400)  # a UTC midnight


def test_windows_are_utc_calendar_aligned() -> None:
    now = DAY0 + 3 * 3600 + 25 * 60 + 7.5
    assert budget.window_start("minute", now) == DAY0 + 3 * 3600 + 25 * 60
    assert budget.window_start("hour", now) == DAY0 + 3 * 3600
    assert budget.window_start("day", now) == DAY0


@given(st.integers(0, 8_000_000_000), st.sampled_from([0.0, 0.25, 0.5, 0.999]))
def test_month_windows_are_utc_calendar_months(seconds: int, fraction: float) -> None:
    now = seconds + fraction
    when = datetime.datetime.fromtimestamp(now, datetime.UTC)
    first = datetime.datetime(when.year, when.month, 1, tzinfo=datetime.UTC)
    year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
    following = datetime.datetime(year, month, 1, tzinfo=datetime.UTC)
    start = budget.window_start("month", now)
    assert start == calendar.timegm(first.timetuple())
    assert budget.window_end("month", start) == calendar.timegm(following.timetuple())


def test_a_month_budget_resets_on_the_first_and_says_when() -> None:
    feb_end = calendar.timegm((2028, 3, 1, 0, 0, 0))  # 2028 is a leap year: Feb has 29 days
    limits = {"month": D("10.00")}
    spends = budget.settle({}, limits, D("10.00"), feb_end - 3600)
    ok, left, window, reset = budget.check(spends, limits, D(0), D("0.01"), feb_end - 3600)
    assert not ok and window == "month" and left == 0 and reset == 3600.0
    assert budget.check(spends, limits, D(0), D("10.00"), feb_end)[0]
    assert budget.window_start("month", feb_end - 1) == calendar.timegm((2028, 2, 1, 0, 0, 0))


def test_check_counts_reservations_and_names_the_refusing_window() -> None:
    limits = {"minute": D("1.00"), "day": D("5.00")}
    spends = budget.settle({}, limits, D("0.70"), DAY0 + 10)
    ok, left, window, reset = budget.check(spends, limits, D("0.20"), D("0.20"), DAY0 + 20)
    assert not ok and window == "minute" and left == D("0.10")
    assert reset == 40.0
    ok, left, _, _ = budget.check(spends, limits, D("0.20"), D("0.10"), DAY0 + 20)
    assert ok and left == D("0.10")


def test_a_new_window_starts_empty() -> None:
    limits = {"minute": D("1.00")}
    spends = budget.settle({}, limits, D("1.00"), DAY0 + 10)
    assert not budget.check(spends, limits, D(0), D("0.01"), DAY0 + 59)[0]
    assert budget.check(spends, limits, D(0), D("0.01"), DAY0 + 60)[0]


def test_pacing_tightens_only_after_half_the_day_is_spent() -> None:
    limits = {"day": D("10")}
    assert budget.pacing_factor(budget.settle({}, limits, D("4"), DAY0), limits, DAY0) == 1.0
    assert budget.pacing_factor(budget.settle({}, limits, D("7.5"), DAY0), limits, DAY0) == 0.5
    assert budget.pacing_factor(budget.settle({}, limits, D("10"), DAY0), limits, DAY0) == 0.05


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["reserve", "settle", "tick"]),
                          st.decimals(D("0"), D("0.5"), places=4),
                          st.decimals(D("0"), D("1"), places=4)), max_size=80))
def test_settled_plus_reserved_never_exceeds_any_budget(ops: list[tuple[str, D, D]]) -> None:
    limits = {"minute": D("1.00"), "hour": D("3.00"), "day": D("5.00")}
    spends: dict[str, budget.WindowSpend] = {}
    held: list[Decimal] = []
    now = DAY0 + 5
    for kind, amount, fraction in ops:
        if kind == "reserve":
            ok, _, _, _ = budget.check(spends, limits, sum(held, D(0)), amount, now)
            if ok:
                held.append(amount)
        elif kind == "settle" and held:
            reserved = held.pop(0)
            spends = budget.settle(spends, limits, (reserved * fraction).quantize(D("0.0001")),
                                   now)
        else:
            now += 13.0
        for window, limit in limits.items():
            spent = budget.roll(spends.get(window, budget.WindowSpend()), window, now).spent
            assert spent + sum(held, D(0)) <= limit


def _check_as_first_written(
    spends: dict[str, budget.WindowSpend], limits: dict[str, Decimal], reserved: Decimal,
    amount: Decimal, now: float,
) -> tuple[bool, Decimal | None, str | None, float]:
    for window, limit in limits.items():
        spend = budget.roll(spends.get(window, budget.WindowSpend()), window, now)
        left = limit - spend.spent - reserved
        if amount > left:
            reset = budget.window_end(window, budget.window_start(window, now)) - now
            tightest, _ = budget.remaining(spends, limits, reserved, now)
            return False, max(tightest if tightest is not None else left, D(0)), window, reset
    left_now, _ = budget.remaining(spends, limits, reserved, now)
    return True, left_now, None, 0.0


@settings(max_examples=300, deadline=None)
@given(windows=st.lists(st.sampled_from(budget.WINDOWS), unique=True, max_size=4),
       limits=st.lists(st.decimals(D("0"), D("2"), places=3), min_size=4, max_size=4),
       charges=st.lists(st.tuples(st.decimals(D("0"), D("1"), places=3),
                                  st.sampled_from([0.0, 7.0, 59.0, 3600.0, 86400.0])),
                        max_size=6),
       reserved=st.decimals(D("0"), D("1"), places=3),
       amount=st.decimals(D("0"), D("1"), places=4))
def test_check_answers_as_its_two_pass_form_did(
        windows: list[str], limits: list[Decimal], charges: list[tuple[Decimal, float]],
        reserved: Decimal, amount: Decimal) -> None:
    """check() finds the tightest room while it checks (one pass): the same answer, to the
    Decimal's exponent, as checking first and calling remaining() after."""
    budgets = dict(zip(windows, limits, strict=False))
    spends: dict[str, budget.WindowSpend] = {}
    now = DAY0 + 5
    for cost, later in charges:
        spends = budget.settle(spends, budgets, cost, now)
        now += later
    got = budget.check(spends, budgets, reserved, amount, now)
    want = _check_as_first_written(spends, budgets, reserved, amount, now)
    assert got == want
    assert str(got[1]) == str(want[1])
