"""GCRA buckets: exact admission times, headroom, and the capacity + rate·d property."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_governor.policies import rate


def test_full_bucket_admits_capacity_then_waits_exactly_one_interval() -> None:
    tat, now = 0.0, 100.0
    for _ in range(3):
        ok, tat, wait = rate.gcra(tat, now, 1.0, rate=2.0, capacity=3.0)
        assert ok and wait == 0.0
    ok, same, wait = rate.gcra(tat, now, 1.0, rate=2.0, capacity=3.0)
    assert not ok and same == tat
    assert abs(wait - 0.5) < 1e-9
    ok, tat, _ = rate.gcra(tat, now + 0.5, 1.0, rate=2.0, capacity=3.0)
    assert ok


def test_cost_above_capacity_is_clamped_so_it_can_ever_pass() -> None:
    ok, tat, _ = rate.gcra(0.0, 10.0, 500.0, rate=1.0, capacity=100.0)
    assert ok
    assert rate.available(tat, 10.0, 1.0, 100.0) == 0.0


def test_reserve_keeps_headroom_for_higher_priorities() -> None:
    cap, r = 10.0, 1.0
    tat = 0.0
    admitted_low = 0
    for _ in range(20):
        low = rate.headroom(cap, 1.0, rate.share(3))
        ok, tat, _ = rate.gcra(tat, 0.0, 1.0, r, cap, reserve=low)
        admitted_low += ok
    top = rate.headroom(cap, 1.0, rate.share(0))
    ok_critical, _, _ = rate.gcra(tat, 0.0, 1.0, r, cap, reserve=top)
    assert admitted_low < cap
    assert ok_critical


def test_headroom_is_a_few_calls_not_a_share_of_a_large_bucket() -> None:
    """Against a provider's window (a bucket synced to its remaining) every unit held back
    is a unit of its window lost: a priority holds back at most HEADROOM_CALLS × its share
    calls of its own size, however large the bucket, and the thresholds stay ordered."""
    for cap, cost in ((10_000.0, 1.0), (200_000.0, 1_500.0), (3.0, 1.0)):
        held = [rate.headroom(cap, cost, rate.share(p)) for p in range(4)]
        assert held == sorted(held) and held[0] == 0.0
        assert held[-1] <= rate.HEADROOM_CALLS * rate.share(3) * cost + 1e-9
        assert held[1] > 0.0


def test_headroom_never_blocks_a_full_bucket() -> None:
    for prio in range(4):
        assert rate.headroom(1.0, 1.0, rate.share(prio)) == 0.0
        ok, _, _ = rate.gcra(0.0, 5.0, 1.0, 0.25, 1.0, rate.headroom(0.0, 0.0, rate.share(prio)))
        assert ok


def test_available_refills_linearly() -> None:
    tat = 0.0
    for _ in range(4):
        _, tat, _ = rate.gcra(tat, 0.0, 1.0, 2.0, 4.0)
    assert rate.available(tat, 0.0, 2.0, 4.0) == 0.0
    assert abs(rate.available(tat, 1.0, 2.0, 4.0) - 2.0) < 1e-9
    assert rate.available(tat, 10.0, 2.0, 4.0) == 4.0


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 20),
    per_second=st.floats(0.1, 50.0),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
    priorities=st.lists(st.integers(0, 3), min_size=200, max_size=200),
)
def test_admitted_in_any_interval_never_exceed_capacity_plus_rate_times_length(
    capacity: int, per_second: float, gaps: list[float], priorities: list[int]
) -> None:
    tat, now = 0.0, 1000.0
    admitted: list[float] = []
    for i, gap in enumerate(gaps):
        now += gap
        reserve = rate.headroom(float(capacity), 1.0, rate.share(priorities[i]))
        ok, tat, _ = rate.gcra(tat, now, 1.0, per_second, float(capacity), reserve)
        if ok:
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            d = admitted[j] - start
            assert j - i + 1 <= capacity + per_second * d + 1e-6


def _headroom_as_first_written(capacity: float, cost: float, share: float) -> float:
    return max(0.0, min(share * min(capacity, rate.HEADROOM_CALLS * cost), capacity - cost)) \
        if share else 0.0


_any = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=500)
@given(capacity=st.one_of(_any, st.sampled_from([0.0, -0.0, 1.0, 2.0, 3.0])),
       cost=st.one_of(_any, st.sampled_from([0.0, -0.0, 1.0, 1.5])),
       share=st.one_of(_any, st.sampled_from(rate.PRIORITY_HEADROOM)))
def test_headroom_is_its_formula_bit_for_bit(capacity: float, cost: float, share: float) -> None:
    """headroom() spells out the builtins' comparisons: the same float, sign and NaN alike
    (the Redis port is held to the formula)."""
    got, want = rate.headroom(capacity, cost, share), _headroom_as_first_written(
        capacity, cost, share)
    assert (math.isnan(got) and math.isnan(want)) or (
        got == want and math.copysign(1.0, got) == math.copysign(1.0, want))
