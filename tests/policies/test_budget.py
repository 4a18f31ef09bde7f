"""Budgets: calendar windows, reservations, and the never-overspend property."""

from __future__ import annotations

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
