"""admission.decide / observe: provider headers win over the configuration, every
block is bounded, and a wall-clock step never blocks longer than a horizon."""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_governor.config import RateLimitConfig
from llm_governor.governor import limits_of
from llm_governor.policies import adaptive, admission, budget, share
from llm_governor.policies.adaptive import PACE, ProviderLimits
from llm_governor.policies.admission import AdmitRequest, Limits, Observation, ServiceState

NOW = 1_800_000_000.0
LIM = limits_of(RateLimitConfig.model_validate({
    "max_tokens": 8, "burst_capacity": 0, "refill_rate": 8.0, "min_interval": 0.01,
    "max_interval": 5.0, "max_cost_per_minute": "100", "recovery_timeout": 30,
    "llm_tokens_per_minute": 60_000}), max_block=300.0)


def req(lim: Limits = LIM, tokens: float = 100.0, cost: str = "0.001") -> AdmitRequest:
    return AdmitRequest("svc", 0, tokens, Decimal(cost), lim, lim)


def admitted_in_a_burst(s: ServiceState, now: float, lim: Limits = LIM) -> int:
    n = 0
    while True:
        d, new = admission.decide(s, {}, {}, Decimal(0), 0, req(lim), now)
        if not d.admitted:
            return n
        s, n = new, n + 1


def test_the_provider_bucket_beats_a_larger_configured_one() -> None:
    """Configured 8 per burst, the provider reports 4 per 2 s with 2 left and one call of
    ours in flight: one more call now, and bursts of 4 at most afterwards."""
    p = ProviderLimits(limit_requests=4, remaining_requests=2, reset_requests=2.0)
    s = admission.observe(ServiceState(), LIM, Observation("success", p), NOW, in_flight=1)
    assert admitted_in_a_burst(s, NOW) == 1
    assert admitted_in_a_burst(s, NOW + 1800) == 4  # learned: capacity 4, not 8
    d, _ = admission.decide(s, {}, {}, Decimal(0), 0, req(), NOW)
    d, _ = admission.decide(_, {}, {}, Decimal(0), 0, req(), NOW)
    assert not d.admitted and d.bound == "requests" and d.retry_after <= 0.5 / PACE + 1e-6


def test_remaining_zero_waits_one_refill_interval_not_the_reset() -> None:
    p = ProviderLimits(limit_requests=100, remaining_requests=0, reset_requests=50.0)
    s = admission.observe(ServiceState(), LIM, Observation("success", p), NOW)
    d, _ = admission.decide(s, {}, {}, Decimal(0), 0, req(), NOW)
    assert not d.admitted and abs(d.retry_after - 0.5 / PACE) < 1e-6  # 100 per 50 s


def test_tokens_are_learned_when_none_are_configured() -> None:
    lim = replace(LIM, tokens_per_minute=0.0)
    p = ProviderLimits(limit_tokens=1000, remaining_tokens=150, reset_tokens=60.0)
    s = admission.observe(ServiceState(), lim, Observation("success", p), NOW)
    assert admission.decide(s, {}, {}, Decimal(0), 0, req(lim, tokens=100), NOW)[0].admitted
    d, _ = admission.decide(s, {}, {}, Decimal(0), 0, req(lim, tokens=200), NOW)
    assert not d.admitted and d.bound == "llm_tokens"


@settings(max_examples=300, deadline=None)
@given(retry_after=st.one_of(st.floats(0, 1e300), st.just(float("inf"))),
       reset=st.one_of(st.floats(0, 1e300), st.just(float("inf"))),
       limit=st.floats(0, 1e300), remaining=st.floats(0, 1e300))
def test_no_header_blocks_longer_than_max_block(retry_after: float, reset: float,
                                                limit: float, remaining: float) -> None:
    s = ServiceState()
    for obs in (Observation("throttled", ProviderLimits(retry_after=retry_after)),
                Observation("success", ProviderLimits(limit, remaining, reset, limit, remaining,
                                                      reset))):
        s = admission.observe(s, LIM, obs, NOW, in_flight=3)
    d, _ = admission.decide(s, {}, {}, Decimal(0), 0, req(), NOW)
    # a drained bucket at the slowest rate, or the longest block: nothing longer (but for
    # rounding: instants near NOW = 1.8e9 s are exact to 2.4e-7 s, one ulp)
    assert d.admitted or d.retry_after <= max(LIM.max_block, LIM.capacity / LIM.rate_floor) \
        + 1e-6


ops = st.lists(st.tuples(
    st.sampled_from(["admit", "success", "failure", "throttled", "headers", "cold"]),
    st.floats(0, 5)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=ops, step=st.sampled_from([-86400.0 * 7, -86400.0, -3600.0, -60.0, 3600.0, 86400.0]))
def test_a_clock_step_never_blocks_past_a_horizon(ops: list[tuple[str, float]],
                                                  step: float) -> None:
    s, now = ServiceState(), NOW
    for op, gap in ops:
        now += gap
        if op == "admit":
            d, new = admission.decide(s, {}, {}, Decimal(0), 0, req(), now)
            s = new if d.admitted else s
        elif op == "headers":
            p = ProviderLimits(8, 3, 1.0, 60_000, 1_000, 60.0, 2.0)
            s = admission.observe(s, LIM, Observation("success", p), now, in_flight=2)
        elif op == "cold":  # most of the limit left: a first report starts a spread
            p = ProviderLimits(8, 8, 1.5)
            s = admission.observe(s, LIM, Observation("success", p, gap / 10, s.sent), now)
        else:
            s = admission.observe(s, LIM, Observation(op, None), now)  # type: ignore[arg-type]
    now += step
    d, _ = admission.decide(s, {}, {}, Decimal(0), 0, req(), now)
    horizon = max(LIM.max_block, LIM.recovery_timeout, LIM.capacity / LIM.rate_floor, 60.0)
    assert d.admitted or d.retry_after <= horizon + 1e-6, (d, step)


def test_a_budget_window_forgets_nothing_when_the_clock_steps_back() -> None:
    limits = {"day": Decimal("1.00")}
    spends = budget.settle({}, limits, Decimal("0.90"), NOW)
    ok, left, _, reset = budget.check(spends, limits, Decimal(0), Decimal("0.20"), NOW - 86400 * 3)
    assert not ok and left == Decimal("0.10") and reset <= 86400


def test_a_block_empties_the_bucket_until_it_ends() -> None:
    """A 429 asking for 1 s: nothing refills before then, and at its end one call passes,
    not the burst the bucket would otherwise have refilled during the block."""
    p = ProviderLimits(limit_requests=8, remaining_requests=0, reset_requests=1.0,
                       retry_after=1.0)
    s = admission.observe(ServiceState(), LIM, Observation("throttled", p, 0.01), NOW)
    d, _ = admission.decide(s, {}, {}, Decimal(0), 0, req(), NOW + 0.5)
    assert not d.admitted and abs(d.retry_after - 0.5) < 1e-6
    # (the provider's paced 7.92/s holds until its reset, the block's end: then 8/s)
    assert admitted_in_a_burst(s, NOW + 1.01) == 1
    assert admitted_in_a_burst(s, NOW + 1.25) <= 3  # then the provider's rate


def test_remaining_is_what_the_provider_had_when_the_attempt_arrived() -> None:
    """Remaining 2 of 8 counted 0.5 s ago, reset 1.5 s: the provider drains 4/s, so it
    gave back 2 since; with one call of ours in flight, 3 may go now (not 1)."""
    p = ProviderLimits(limit_requests=8, remaining_requests=2, reset_requests=1.5)
    fresh = admission.observe(ServiceState(), LIM, Observation("success", p), NOW, in_flight=1)
    aged = admission.observe(ServiceState(), LIM, Observation("success", p, 0.5), NOW,
                             in_flight=1)
    assert admitted_in_a_burst(fresh, NOW + 1e-6) == 1  # (instants near 1.8e9 s: 2.4e-7 s)
    assert admitted_in_a_burst(aged, NOW + 1e-6) == 3
    # the credit never lifts the level above the bucket's own state, whatever the age
    start = replace(ServiceState(), req_tat=NOW + 0.5)
    ancient = admission.observe(start, LIM, Observation("success", p, 1e9), NOW)
    unsynced = admission.observe(start, LIM, Observation(
        "success", replace(p, remaining_requests=None)), NOW)
    assert ancient.req_tat == unsynced.req_tat


# -- a cold start, and what the provider has not counted yet --------------------------

# configured 2x above a provider that allows 40 per 1 s window
ABOVE = limits_of(RateLimitConfig.model_validate({
    "max_tokens": 80, "burst_capacity": 0, "refill_rate": 80.0, "min_interval": 0.001}),
    max_block=300.0)
WINDOW = ProviderLimits(limit_requests=40, remaining_requests=39, reset_requests=1.0)


def cold_start() -> ServiceState:
    """16 calls sent at once before anything was known; the first answer, 0.1 s later,
    is of the first of them: 39 left when it arrived, 15 sent after it."""
    s = ServiceState()
    for _ in range(16):
        d, s = admission.decide(s, {}, {}, Decimal(0), 0, req(ABOVE), NOW - 0.1)
        assert d.admitted
    return admission.observe(s, ABOVE, Observation("success", WINDOW, 0.1, 1), NOW)


def admitted_between(s: ServiceState, start: float, end: float, step: float = 0.001,
                     lim: Limits = ABOVE) -> tuple[int, ServiceState]:
    """Calls admitted at every ``step`` from ``start`` to ``end`` (as many as pass)."""
    n, now = 0, start
    while now < end:
        while True:
            d, new = admission.decide(s, {}, {}, Decimal(0), 0, req(lim), now)
            if not d.admitted:
                break
            s, n = new, n + 1
        now += step
    return n, s


def test_a_cold_start_spreads_what_is_left_over_the_providers_reset() -> None:
    """Not 24 at once (a window provider would then free nothing for a second, and every
    caller would wait through that pause): 24 spread until the burst's reset, two at most
    at a time."""
    s = cold_start()
    cold = s.adaptive.cold_until
    assert cold == NOW - 0.1 + 1.0  # the reset runs from when the provider counted
    assert admitted_in_a_burst(s, NOW + 0.08, ABOVE) == 1  # within a spread's interval
    assert admitted_in_a_burst(s, NOW + 0.5, ABOVE) == 2  # however long nothing was sent
    n, s = admitted_between(s, NOW, cold)
    assert 22 <= n <= 24, n  # 24 left, the first interval lost to the burst's bucket
    # the spread over, the bucket holds what the spread allowed, not its capacity of 40
    assert admitted_in_a_burst(s, cold + 0.001, ABOVE) <= 2
    assert s.adaptive.cold_until == cold  # decide changed nothing it did not admit


def test_every_report_of_a_cold_start_respreads_what_is_left() -> None:
    s = cold_start()
    later = ProviderLimits(limit_requests=40, remaining_requests=10, reset_requests=1.0)
    s = admission.observe(replace(s, sent=s.sent + 2), ABOVE,
                          Observation("success", later, 0.1, s.sent), NOW + 0.5)
    # 10 left less the 2 sent since, over the 0.4 s to the reset
    assert abs(s.adaptive.request_cap - 8 / 0.4) < 1e-4  # instants near 1.8e9 s


def test_no_cold_start_when_half_the_limit_is_gone_or_the_limit_is_known() -> None:
    """A token bucket found half empty (other processes, a restart) keeps its own refill
    rate; a scope that learned the limit already never spreads again."""
    little = ProviderLimits(limit_requests=500, remaining_requests=10, reset_requests=58.8)
    s = admission.observe(ServiceState(), ABOVE, Observation("success", little, 0.1), NOW)
    assert s.adaptive.cold_until == 0.0 and s.adaptive.request_cap == 500 / 58.8 * PACE
    known = cold_start()
    again = admission.observe(known, ABOVE, Observation("success", WINDOW, 0.1), NOW + 5.0)
    assert again.adaptive.cold_until == 0.0 and again.adaptive.request_cap == 40.0 * PACE


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(2, 100_000), left=st.floats(0.5, 1.0), drain=st.floats(0.01, 1e4))
def test_a_token_buckets_cold_start_is_never_slower_than_its_refill(
        limit: int, left: float, drain: float) -> None:
    """A token bucket's reset is the time to refill what was used: with half or more left
    that is at most half its window, and the spread at least its own refill rate."""
    remaining = max(limit * left, limit / 2)
    reset = (limit - remaining) / drain
    if reset <= 0:
        return
    p = ProviderLimits(limit_requests=limit, remaining_requests=remaining, reset_requests=reset)
    s = admission.observe(ServiceState(), ABOVE, Observation("success", p), 1000.0)
    if s.adaptive.cold_until:
        assert s.adaptive.request_cap >= min(drain, limit / reset) * (1 - 1e-6)


def test_admissions_are_counted_and_the_count_says_what_the_provider_missed() -> None:
    """Uncounted = attempts admitted after this one, not calls in flight (which hold calls
    counted already, and miss those that came back)."""
    s = ServiceState()
    for n in range(1, 4):
        d, s = admission.decide(s, {}, {}, Decimal(0), 0, req(LIM), NOW)
        assert d.admitted and d.sent == n == s.sent
    full = replace(s, req_tat=NOW + 10.0)  # an empty bucket: a refusal counts nothing
    refused, same = admission.decide(full, {}, {}, Decimal(0), 0, req(LIM), NOW)
    assert not refused.admitted and refused.sent == 0 and same.sent == 3
    p = ProviderLimits(limit_requests=8, remaining_requests=4, reset_requests=1.0)
    s = replace(s, sent=10)
    by_count = admission.observe(s, LIM, Observation("success", p, 0.0, 7), NOW, in_flight=9)
    by_flight = admission.observe(s, LIM, Observation("success", p, 0.0, 0), NOW, in_flight=3)
    assert by_count.req_tat == by_flight.req_tat  # 4 left less 3 sent since, either way
    assert admitted_in_a_burst(by_count, NOW) == 1


# -- another client on the same account -------------------------------------------------

# configured at the provider's limit, a burst of 2, as the goodput scenario (d)
EXACT = limits_of(RateLimitConfig.model_validate({
    "max_tokens": 2, "burst_capacity": 0, "refill_rate": 38.0, "min_interval": 0.001}),
    max_block=300.0)


def test_others_calls_in_the_providers_count_take_their_part_of_the_rate() -> None:
    """Each answer: 19 left of 40 after our one call, so 20 are another client's. One
    report alone is a quarter of that (smoothed from nothing); reports in a row agree."""
    d, s = admission.decide(ServiceState(), {}, {}, Decimal(0), 0, req(EXACT), NOW - 0.1)
    assert d.admitted and d.sent == 1
    p = ProviderLimits(limit_requests=40, remaining_requests=19, reset_requests=1.0)
    s = admission.observe(s, EXACT, Observation("success", p, 0.1, 1), NOW)
    assert s.adaptive.others == 20.0 * adaptive.OTHERS_GAIN
    for _ in range(30):
        s = admission.observe(s, EXACT, Observation("success", p, 0.1, 1), NOW)
    assert adaptive.others_in_force(s.adaptive, NOW) == pytest.approx(20.0, abs=0.01)
    # the pace smooths, above the part: the scope's own window holds it to 20 (decide)
    assert s.adaptive.request_cap == pytest.approx(40.0 * 0.5 * adaptive.OTHERS_PACE, rel=1e-3)
    assert s.adaptive.window == 1.0 and adaptive.own_part(s.adaptive, NOW) == 20
    # alone on the account, the same answer with nobody else counted leaves the rate whole
    alone = ProviderLimits(limit_requests=40, remaining_requests=39, reset_requests=1.0)
    s = admission.observe(replace(s, adaptive=adaptive.AdaptiveState()), EXACT,
                          Observation("success", alone, 0.1, 1), NOW)
    assert s.adaptive.others == 0.0 and adaptive.others_in_force(s.adaptive, NOW) == 0.0


def test_a_429_does_not_divide_a_rate_that_already_leaves_others_their_part() -> None:
    s = adaptive.AdaptiveState(request_cap=19.8, cap_until=NOW + 1.0, request_limit=40.0,
                               learned_until=NOW + 60.0, others=20.0, throttled_at=NOW - 0.2)
    again = adaptive.on_throttled(s, NOW, 0.2, 19.8, 2.0, 0.05, 300.0, NOW - 0.01, 1.0)
    assert again.rate == 0.0 and again.blocked_until == NOW + 0.05
    noise = replace(s, others=1.0)  # 1 of 40: noise, so a repeated 429 divides as before
    assert adaptive.on_throttled(noise, NOW, 0.2, 19.8, 2.0, 0.05, 300.0, NOW - 0.01,
                                 1.0).rate == 19.8 / 2.0


def test_calls_in_flight_come_off_what_the_provider_has_left_not_off_a_small_bucket() -> None:
    """Burst 2: the provider had 2 left, has freed 3.8 since (its drain, 38 in the last
    second, over the answer's 0.1 s) and one call of ours is on its way: the bucket may
    be full. (Taking the call off the bucket's 2 instead left room for one.)"""
    p = ProviderLimits(limit_requests=40, remaining_requests=2, reset_requests=1.0)
    s = admission.observe(ServiceState(req_tat=NOW - 1.0), EXACT,
                          Observation("success", p, 0.1), NOW, in_flight=1)
    assert admitted_in_a_burst(s, NOW, EXACT) == 2


class SlidingWindow:
    """A provider counting ``limit`` calls per sliding ``window`` (as the fake provider
    does), in virtual time: what an answer's headers say."""

    def __init__(self, limit: int = 40, window: float = 1.0) -> None:
        self.limit, self.window, self.times = limit, window, deque[float]()

    def call(self, now: float) -> tuple[bool, ProviderLimits]:
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()
        if len(self.times) >= self.limit:
            wait = self.times[len(self.times) - self.limit] + self.window - now
            return False, ProviderLimits(self.limit, 0, self.times[-1] + self.window - now,
                                         retry_after=wait)
        self.times.append(now)
        return True, ProviderLimits(self.limit, self.limit - len(self.times), self.window)


def governed_against(foreign_rate: float, lim: Limits, seconds: float = 6.0,
                     latency: float = 0.1) -> tuple[list[float], int, int]:
    """A scope with callers always waiting, sharing a :class:`SlidingWindow` provider with
    a foreign client on a fixed grid from a window before (a 429 of its retried when the
    provider says), stepped every millisecond: (our calls served, ours refused, the
    foreign client's refused)."""
    provider, s = SlidingWindow(), ServiceState()
    answers: list[tuple[float, int, Observation]] = []  # (due, order, observation)
    foreign = [NOW - 1.0 + k / foreign_rate for k in range(int((seconds + 1) * foreign_rate))]
    served, refused, theirs_refused, order, tick = [], 0, 0, 0, 0
    while tick * 0.001 < seconds:
        now = NOW + tick * 0.001
        tick += 1
        answers.sort()
        while answers and answers[0][0] <= now:
            s = admission.observe(s, lim, answers.pop(0)[2], now)
        while foreign and foreign[0] <= now:
            ok, p = provider.call(foreign.pop(0))
            if not ok:
                theirs_refused += 1
                foreign.insert(0, now + (p.retry_after or 0.0))
        while True:
            d, new = admission.decide(s, {}, {}, Decimal(0), 0, req(lim), now)
            if not d.admitted:
                break
            s = new
            ok, p = provider.call(now)
            if ok:
                served.append(now)
            else:
                refused += 1
            order += 1
            age = latency if ok else 0.002
            answers.append((now + age, order, Observation(
                "success" if ok else "throttled", p, age, d.sent)))
    return served, refused, theirs_refused


@pytest.mark.parametrize("theirs", [10, 20, 30])
def test_sharing_the_account_the_scope_takes_what_others_leave_without_429s(
        theirs: int) -> None:
    """A foreign client takes 10, 20 or 30 of 40 per window: none of its calls refused,
    at most 2 of ours per 100, and our part served whole, or within one call a window (the first
    window's burst before the first answer aside). Paced at 0.99 of its part, a scope
    served 18-19 of 20 a window: a slot lost to a late answer was never made up."""
    served, refused, theirs_refused = governed_against(float(theirs), EXACT)
    # our rare 429s: a window read between snapshots, before its calls were placed
    assert refused <= 0.02 * len(served) and theirs_refused == 0
    part = 40 - theirs
    per_window = [sum(1 for t in served if k <= t - NOW < k + 1) for k in range(1, 6)]
    assert all(part - 1 <= n <= part for n in per_window), per_window
    assert sum(per_window) >= 0.98 * 5 * part, per_window


def test_a_scope_sharing_the_account_waits_for_its_own_oldest_call_in_the_window() -> None:
    """Its part (20 of 40) taken by its own calls of the last second: the next waits,
    bound by the provider, until the oldest of them leaves the window; a scope that
    counts no others is not held to a part."""
    a = adaptive.AdaptiveState(request_cap=24.0, cap_until=NOW + 1.0, request_limit=40.0,
                               learned_until=NOW + 60.0, others=20.0, window=1.0)
    # 20 calls, one every 40 ms from NOW - 0.8, placed exactly by their reports
    points: share.Points = ((NOW - 0.9, 0), (NOW, 20))
    for n in range(1, 21):
        points = share.stepped(points, NOW - 0.8 + 0.04 * (n - 1), n)
    assert len(points) == 42
    s = ServiceState(adaptive=a, sent=20, sends=share.dump(points))
    d, _ = admission.decide(s, {}, {}, Decimal(0), 0, req(EXACT), NOW)
    assert not d.admitted and d.bound == "provider"
    assert d.retry_after == pytest.approx(0.2, abs=1e-3)  # the first, sent at NOW - 0.8
    d, _ = admission.decide(s, {}, {}, Decimal(0), 0, req(EXACT), NOW + 0.2 + 1e-3)
    assert d.admitted
    alone = replace(s, adaptive=replace(a, others=1.0))  # noise: not a client
    assert admission.decide(alone, {}, {}, Decimal(0), 0, req(EXACT), NOW)[0].admitted


def test_alone_on_the_account_nothing_is_taken_for_others() -> None:
    served, refused, _ = governed_against(1e-9, EXACT)
    assert refused <= 1
    per_window = [sum(1 for t in served if k <= t - NOW < k + 1) for k in range(1, 6)]
    assert all(n >= 37 for n in per_window), per_window
