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
    assert adaptive.effective_rates(s, 1.0, FLOOR, CEIL, 0.0)[0] == 1.0
    assert adaptive.effective_rates(s, 61.0, FLOOR, CEIL, 0.0)[0] == CEIL


def test_light_use_of_a_window_provider_does_not_feed_back() -> None:
    # one request used of 60 per 2 s window: the cap stays at the provider's 30/s
    p = ProviderLimits(limit_requests=60, remaining_requests=59, reset_requests=2.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, 100.0, 1.5)
    assert s.request_cap == 30.0


def test_without_a_limit_header_remaining_over_reset_is_used() -> None:
    p = ProviderLimits(remaining_requests=30, reset_requests=60.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5)
    assert s.request_cap == 0.5


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
    assert adaptive.capacities(s, 1.0, 8.0, 0.0) == (4.0, 10_000.0)  # tokens: none configured
    assert adaptive.capacities(s, 1.0, 2.0, 50_000.0) == (2.0, 10_000.0)  # the lower wins
    assert adaptive.capacities(s, adaptive.LEARNED_TTL, 8.0, 0.0) == (8.0, 0.0)  # stale
    assert adaptive.effective_rates(s, 1.0, FLOOR, 100.0, 0.0)[1] == 10_000 / 60.0


def test_a_vanishing_limit_is_nonsense() -> None:
    p = ProviderLimits(limit_requests=1e-308, remaining_requests=0, reset_requests=1.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5)
    assert s.request_limit == 0.0  # not learned
    assert s.request_cap == 1.0  # max(remaining, 1) / reset: never a rate of 1e-308


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
