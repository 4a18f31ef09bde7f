"""AIMD and provider-header clamping."""

from __future__ import annotations

from llm_governor.policies import adaptive
from llm_governor.policies.adaptive import AdaptiveState, ProviderLimits

FLOOR, CEIL = 0.2, 2.0


def test_throttle_divides_by_multiplier_down_to_the_floor() -> None:
    s = AdaptiveState()
    s = adaptive.on_throttled(s, 0.0, FLOOR, CEIL, 2.0)
    assert s.rate == 1.0
    for _ in range(10):
        s = adaptive.on_throttled(s, 0.0, FLOOR, CEIL, 2.0)
    assert s.rate == FLOOR


def test_successes_add_back_a_tenth_of_the_ceiling_per_run() -> None:
    s = AdaptiveState(rate=1.0)
    for _ in range(adaptive.SUCCESS_RUN):
        s = adaptive.on_success(s, FLOOR, CEIL)
    assert abs(s.rate - 1.2) < 1e-9


def test_retry_after_blocks() -> None:
    s = adaptive.on_throttled(AdaptiveState(), 10.0, FLOOR, CEIL, 1.5, retry_after=3.0)
    assert adaptive.effective_rates(s, 11.0, FLOOR, CEIL, 0.0)[2] == 2.0


def test_provider_headers_clamp_to_limit_over_reset_until_reset() -> None:
    # 60 requests per 60 s: at most 1 request/s however many are left
    p = ProviderLimits(limit_requests=60, remaining_requests=5, reset_requests=60.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5)
    assert adaptive.effective_rates(s, 1.0, FLOOR, CEIL, 0.0)[0] == adaptive.PACE
    assert adaptive.effective_rates(s, 61.0, FLOOR, CEIL, 0.0)[0] == CEIL


def test_light_use_of_a_window_provider_does_not_feed_back() -> None:
    # one request used of 60 per 2 s window: the cap stays at the provider's 30/s
    p = ProviderLimits(limit_requests=60, remaining_requests=59, reset_requests=2.0)
    learned = AdaptiveState(request_limit=60, learned_until=3600.0)
    s = adaptive.on_provider_limits(learned, p, 0.0, FLOOR, 100.0, 1.5)
    assert s.request_cap == 30.0 * adaptive.PACE and s.cold_until == 0.0


def test_without_a_limit_header_remaining_over_reset_is_used() -> None:
    p = ProviderLimits(remaining_requests=30, reset_requests=60.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5)
    assert s.request_cap == 0.5 * adaptive.PACE


def test_retry_after_and_resets_are_bounded_by_max_block() -> None:
    s = adaptive.on_throttled(AdaptiveState(), 0.0, FLOOR, CEIL, 1.5, retry_after=1e9,
                              max_block=300.0)
    assert adaptive.effective_rates(s, 0.0, FLOOR, CEIL, 0.0)[2] == 300.0
    p = ProviderLimits(limit_requests=100, remaining_requests=0, reset_requests=999999999.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5, max_block=300.0)
    assert s.cap_until == 300.0
    for infinite in (float("inf"), float("nan")):
        s = adaptive.on_throttled(AdaptiveState(), 0.0, FLOOR, CEIL, 1.5, retry_after=infinite)
        assert s.blocked_until == 0.0


def test_provider_limits_are_learned_and_expire() -> None:
    p = ProviderLimits(limit_requests=4, remaining_requests=3, reset_requests=2.0,
                       limit_tokens=10_000, remaining_tokens=9_000, reset_tokens=60.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5)
    # a cold start (3 of 4 left) spreads them until the reset, two calls at a time
    assert s.cold_until == 2.0 and adaptive.capacities(s, 1.0, 8.0, 0.0)[0] == 2.0
    assert adaptive.capacities(s, 2.0, 8.0, 0.0) == (4.0, 10_000.0)  # tokens: none configured
    assert adaptive.capacities(s, 2.0, 2.0, 50_000.0) == (2.0, 10_000.0)  # the lower wins
    assert adaptive.capacities(s, adaptive.LEARNED_TTL, 8.0, 0.0) == (8.0, 0.0)  # stale
    assert adaptive.effective_rates(s, 1.0, FLOOR, 100.0, 0.0)[1] == 10_000 / 60.0


def test_a_vanishing_limit_is_nonsense() -> None:
    p = ProviderLimits(limit_requests=1e-308, remaining_requests=0, reset_requests=1.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5)
    assert s.request_limit == 0.0  # not learned
    assert s.request_cap == adaptive.PACE  # max(remaining, 1) / reset: never 1e-308 a second


def test_nonsense_header_values_are_ignored() -> None:
    for p in (ProviderLimits(remaining_requests=-5, reset_requests=1.0),
              ProviderLimits(remaining_requests=float("nan"), reset_requests=1.0),
              ProviderLimits(remaining_requests=5, reset_requests=-1.0),
              ProviderLimits(remaining_tokens=100, reset_tokens=0.0)):
        assert adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5) == \
            AdaptiveState()


def test_bounds_respect_configured_rate() -> None:
    assert adaptive.bounds(0.33, 0.1, 5.0) == (0.2, 0.33)
    assert adaptive.bounds(0.1, 0.1, 5.0) == (0.1, 0.1)


T0 = 1_800_000_000.0


def test_one_429_within_a_window_is_timing_two_are_the_rate() -> None:
    """With the provider's window (its reset) known, a lone 429 blocks but keeps the rate;
    a second one in the window, for an attempt sent after the first block ended, divides
    the rate, once per window however many follow."""
    s = adaptive.on_throttled(AdaptiveState(), T0, FLOOR, CEIL, 2.0, retry_after=0.1,
                              sent_at=T0 - 0.01, window=1.5)
    assert s.rate == 0.0 and s.blocked_until == T0 + 0.1 and s.throttled_at == T0
    # sent before that block ended: the same burst
    s = adaptive.on_throttled(s, T0 + 0.05, FLOOR, CEIL, 2.0, retry_after=0.05,
                              sent_at=T0 + 0.04, window=1.5)
    assert s.rate == 0.0
    s = adaptive.on_throttled(s, T0 + 0.3, FLOOR, CEIL, 2.0, retry_after=0.05,
                              sent_at=T0 + 0.29, window=1.5)
    assert s.rate == 1.0 and s.slowed_at == T0 + 0.3
    for k in range(1, 6):  # the rest of that window: the same congestion
        s = adaptive.on_throttled(s, T0 + 0.3 + 0.2 * k, FLOOR, CEIL, 2.0, retry_after=0.01,
                                  sent_at=T0 + 0.29 + 0.2 * k, window=1.5)
    assert s.rate == 1.0
    s = adaptive.on_throttled(s, T0 + 2.0, FLOOR, CEIL, 2.0, retry_after=0.01,
                              sent_at=T0 + 1.99, window=1.5)
    assert s.rate == 0.5  # still refused a window later: divide again
    # a 429 of an attempt sent before the last decrease, however late it arrives
    late = adaptive.on_throttled(s, T0 + 9.0, FLOOR, CEIL, 2.0, sent_at=T0 + 1.9, window=0.5)
    assert late.rate == 0.5


def test_without_a_window_every_429_divides_but_those_sent_before() -> None:
    s = adaptive.on_throttled(AdaptiveState(), T0, FLOOR, CEIL, 2.0, sent_at=T0 - 0.1)
    assert s.rate == 1.0
    s = adaptive.on_throttled(s, T0 + 0.1, FLOOR, CEIL, 2.0, sent_at=T0 - 0.05)
    assert s.rate == 1.0  # sent before the decrease: already answered
    s = adaptive.on_throttled(s, T0 + 0.2, FLOOR, CEIL, 2.0, sent_at=T0 + 0.15)
    assert s.rate == 0.5


def test_a_decrease_starts_from_the_rate_in_force() -> None:
    """Configured 1000/s, the provider says 40/s: a decrease goes to 40/1.5, not 1000/1.5
    (which would change nothing), and the additive increase adds a tenth of 40."""
    p = ProviderLimits(limit_requests=60, remaining_requests=10, reset_requests=1.5)
    s = adaptive.on_provider_limits(AdaptiveState(), p, T0, FLOOR, 1000.0, 1.5)
    ceiling = adaptive.ceiling_in_force(s, T0, FLOOR, 1000.0)
    assert ceiling == 40.0 * adaptive.PACE
    s = adaptive.on_throttled(s, T0, FLOOR, ceiling, 1.5)
    assert abs(s.rate - ceiling / 1.5) < 1e-9
    for _ in range(adaptive.SUCCESS_RUN):
        s = adaptive.on_success(s, FLOOR, ceiling)
    assert abs(s.rate - (ceiling / 1.5 + ceiling / 10)) < 1e-9
    assert adaptive.ceiling_in_force(s, T0 + 2.0, FLOOR, 1000.0) == 1000.0  # past the reset


def test_a_clock_stepped_back_does_not_freeze_the_decrease() -> None:
    s = AdaptiveState(slowed_at=T0 + 86400, throttled_at=T0 + 86400)
    s = adaptive.sane(s, T0, 300.0)
    assert s.slowed_at == T0 and s.throttled_at == T0
    s = adaptive.on_throttled(s, T0 + 10.0, FLOOR, CEIL, 2.0, sent_at=T0 + 9.0, window=1.0)
    assert s.rate == 0.0  # a lone 429 in its window
