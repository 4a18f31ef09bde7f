"""Adaptive request rate: AIMD plus the provider's own rate-limit headers.

Multiplicative decrease by ``backoff_multiplier`` on a 429 or when the
provider says little is left; additive increase after a run of successes;
bounded by ``[1/max_interval, min(refill_rate, 1/min_interval)]``. Provider
headers additionally clamp the rate to "what is left ÷ time to reset" until
that reset, and ``remaining == 0`` blocks until it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["AdaptiveState", "ProviderLimits", "bounds", "effective_rates", "on_provider_limits",
           "on_success", "on_throttled"]

SUCCESS_RUN = 10  # successes between additive increases
LOW_REMAINING = 0.1  # provider fraction left that counts as a throttle signal


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """What a response's headers said (any field may be missing)."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class AdaptiveState:
    rate: float = 0.0  # 0 = not adapted yet: the configured rate
    successes: int = 0
    request_cap: float = 0.0  # provider-derived requests/s ceiling, 0 = none
    token_cap: float = 0.0  # provider-derived LLM tokens/s ceiling, 0 = none
    cap_until: float = 0.0
    blocked_until: float = 0.0


def bounds(refill_rate: float, min_interval: float, max_interval: float) -> tuple[float, float]:
    """``(floor, ceiling)`` of the adaptive request rate, per second."""
    ceiling = min(refill_rate, 1.0 / min_interval)
    floor = min(1.0 / max_interval, ceiling)
    return floor, ceiling


def effective_rates(
    s: AdaptiveState, now: float, floor: float, ceiling: float, token_rate: float
) -> tuple[float, float, float]:
    """``(request_rate, token_rate, blocked_for)`` in force at ``now``."""
    rate = s.rate if s.rate > 0 else ceiling
    tokens = token_rate
    if now < s.cap_until:
        if s.request_cap > 0:
            rate = min(rate, max(s.request_cap, floor))
        if s.token_cap > 0 and tokens > 0:
            tokens = min(tokens, s.token_cap)
    blocked = s.blocked_until - now if s.blocked_until > now else 0.0
    return max(min(rate, ceiling), floor), tokens, blocked


def on_throttled(
    s: AdaptiveState, now: float, floor: float, ceiling: float, multiplier: float,
    retry_after: float | None = None,
) -> AdaptiveState:
    """A 429 from the provider: slow down, and wait out its ``retry_after``."""
    current = s.rate if s.rate > 0 else ceiling
    blocked = max(s.blocked_until, now + retry_after) if retry_after else s.blocked_until
    return replace(s, rate=max(floor, current / multiplier), successes=0, blocked_until=blocked)


def on_success(s: AdaptiveState, floor: float, ceiling: float) -> AdaptiveState:
    """A success: after ``SUCCESS_RUN`` of them, add a tenth of the ceiling back."""
    if s.rate <= 0 or s.rate >= ceiling:
        return s if s.successes == 0 and s.rate <= 0 else replace(s, successes=0)
    if s.successes + 1 < SUCCESS_RUN:
        return replace(s, successes=s.successes + 1)
    return replace(s, rate=min(ceiling, s.rate + ceiling / 10), successes=0)


def _positive(x: float | None) -> bool:
    return x is not None and x == x and x >= 0  # NaN-safe


def on_provider_limits(
    s: AdaptiveState, p: ProviderLimits, now: float, floor: float, ceiling: float,
    multiplier: float,
) -> AdaptiveState:
    """Clamp to what the provider says is left before its reset; ignore nonsense values."""
    new = s
    if _positive(p.remaining_requests) and p.reset_requests and p.reset_requests > 0:
        assert p.remaining_requests is not None
        if p.remaining_requests < 1:
            new = replace(new, blocked_until=max(new.blocked_until, now + p.reset_requests))
        else:
            new = replace(new, request_cap=p.remaining_requests / p.reset_requests,
                          cap_until=max(new.cap_until, now + p.reset_requests))
        if (_positive(p.limit_requests) and p.limit_requests
                and p.remaining_requests / p.limit_requests < LOW_REMAINING):
            current = new.rate if new.rate > 0 else ceiling
            new = replace(new, rate=max(floor, current / multiplier), successes=0)
    if _positive(p.remaining_tokens) and p.reset_tokens and p.reset_tokens > 0:
        assert p.remaining_tokens is not None
        new = replace(new, token_cap=max(p.remaining_tokens, 1.0) / p.reset_tokens,
                      cap_until=max(new.cap_until, now + p.reset_tokens))
    return new
