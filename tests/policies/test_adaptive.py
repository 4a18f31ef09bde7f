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


def test_provider_headers_clamp_until_reset() -> None:
    p = ProviderLimits(limit_requests=100, remaining_requests=50, reset_requests=100.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5)
    assert adaptive.effective_rates(s, 1.0, FLOOR, CEIL, 0.0)[0] == 0.5
    assert adaptive.effective_rates(s, 101.0, FLOOR, CEIL, 0.0)[0] == CEIL


def test_remaining_zero_blocks_until_reset() -> None:
    p = ProviderLimits(limit_requests=100, remaining_requests=0, reset_requests=4.0)
    s = adaptive.on_provider_limits(AdaptiveState(), p, 0.0, FLOOR, CEIL, 1.5)
    assert adaptive.effective_rates(s, 1.0, FLOOR, CEIL, 0.0)[2] == 3.0


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
