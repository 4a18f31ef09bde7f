"""Scope values' budgets and per-minute limits, on an exact clock."""

from __future__ import annotations

import calendar
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from llm_governor.policies import budget, scopes
from llm_governor.policies.scopes import ScopeRequest, ScopeState

D = Decimal
DAY0 = 1_800_000_000.0 - (1_800_000_000.0 % 86400)


def test_a_scope_budget_refuses_naming_the_scope_window_and_what_is_left() -> None:
    sr = ScopeRequest("tenant=acme", {"day": D("1.00"), "hour": D("0.50")})
    s = scopes.settle(ScopeState(), ("day", "hour"), D("0.40"), DAY0 + 10)
    assert scopes.check(sr, s, D("0.05"), D("0.05"), DAY0 + 20) is None
    refusal = scopes.check(sr, s, D("0.05"), D("0.06"), DAY0 + 20)
    assert refusal is not None
    assert (refusal.outcome, refusal.scope, refusal.window) == ("budget_exceeded", "tenant=acme",
                                                                "hour")
    assert refusal.remaining == D("0.05") and refusal.retry_after == 3600 - 20


def test_a_scope_without_budgets_never_refuses_for_money() -> None:
    sr = ScopeRequest("user=u1", requests_per_minute=5)
    assert scopes.check(sr, ScopeState(), D("1000"), D("1000"), DAY0) is None


def test_per_minute_requests_refill_over_the_minute() -> None:
    sr = ScopeRequest("user=u1", requests_per_minute=3)
    s, now = ScopeState(), DAY0
    for _ in range(3):
        wait, s = scopes.take(sr, s, 0, now)
        assert wait == -1
    wait, after = scopes.take(sr, s, 0, now)
    assert wait == 20.0 and after is s  # a refusal changes nothing
    wait, _ = scopes.take(sr, s, 0, now + 20.0)
    assert wait == -1


def test_llm_tokens_per_minute_bound_a_big_call_to_a_full_bucket() -> None:
    sr = ScopeRequest("tenant=a", tokens_per_minute=1000)
    wait, s = scopes.take(sr, ScopeState(), 5000, DAY0)  # more than a minute's worth: waits
    assert wait == -1  # for a full bucket, then passes (never waits forever)
    wait, _ = scopes.take(sr, s, 500, DAY0 + 1)
    assert 0 < wait <= 30.0


def test_a_clock_stepped_back_is_clamped_and_kept_even_on_refusal() -> None:
    sr = ScopeRequest("user=u1", requests_per_minute=1)
    s = ScopeState(req_tat=DAY0 + 10_000)  # written by a clock far ahead
    wait, after = scopes.take(sr, s, 0, DAY0)
    assert wait == 60.0 and after.req_tat == DAY0 + 60.0  # at most one window away


def test_hold_records_every_budget_window_and_keeps_the_state_to_its_end() -> None:
    sr = ScopeRequest("tenant=a", {"hour": D("1"), "month": D("10")})
    now = calendar.timegm((2027, 6, 15, 12, 30, 0))
    s = scopes.hold(sr, ScopeState(), now)
    assert set(s.spends) == {"hour", "month"}
    assert s.spends["hour"].start == budget.window_start("hour", now)
    assert s.expires == calendar.timegm((2027, 7, 1, 0, 0, 0))
    assert scopes.hold(sr, s, now + 60) is s  # nothing to change: no write


def test_a_scope_used_only_for_rates_expires_soon_after_its_last_call() -> None:
    sr = ScopeRequest("user=u1", requests_per_minute=10)
    _, s = scopes.take(sr, ScopeState(), 0, DAY0)
    assert s.expires == DAY0 + scopes.IDLE
    assert scopes.hold(sr, s, DAY0) is s


def test_settle_charges_the_windows_named_and_rolls_old_ones() -> None:
    s = scopes.settle(ScopeState(), ("day",), D("0.30"), DAY0 + 5)
    s = scopes.settle(s, ("day",), D("0.20"), DAY0 + 86400 + 5)  # the next day
    assert s.spends["day"] == budget.WindowSpend(DAY0 + 86400, D("0.20"))
    assert s.expires == DAY0 + 2 * 86400


@given(st.lists(st.tuples(st.sampled_from(["take", "settle", "advance"]),
                          st.integers(0, 10_000_000).map(lambda n: D(n).scaleb(-8)),
                          st.floats(0, 4000)), max_size=60))
def test_admitted_plus_held_never_exceeds_a_scope_budget(
        ops: list[tuple[str, D, float]]) -> None:
    limits = {"minute": D("0.05"), "hour": D("0.08")}
    sr = ScopeRequest("tenant=t", limits)
    s, now, held = ScopeState(), DAY0, D(0)
    pending: list[D] = []
    for op, amount, dt in ops:
        if op == "take" and scopes.check(sr, s, held, amount, now) is None:
            s = scopes.hold(sr, s, now)
            pending.append(amount)
            held += amount
        elif op == "settle" and pending:
            amount = pending.pop()
            held -= amount
            s = scopes.settle(s, tuple(limits), amount, now)
        else:
            now += dt
        for window, limit in limits.items():
            spent = budget.roll(s.spends.get(window, budget.WindowSpend()), window, now).spent
            assert spent + held <= limit
