"""Adaptive request rate: AIMD plus the provider's own rate-limit headers.

Multiplicative decrease by ``backoff_multiplier`` on a 429; additive increase
after a run of successes; bounded by ``[1/max_interval, min(refill_rate,
1/min_interval)]``.

Provider headers say ``limit``, ``remaining`` and the time until the limit is
fully replenished (OpenAI ``x-ratelimit-reset-*``, Anthropic
``anthropic-ratelimit-*-reset``). ``limit / reset`` bounds the provider's
refill rate from above whether it refills continuously (a drained bucket
reports ``reset = limit / rate``) or by window (``reset`` is the window): the
local rate is clamped to it until that reset, and ``remaining == 0`` blocks
for one refill interval, ``reset / limit``. Two tighter-looking rules fail in
practice: ``remaining / reset`` halves throughput under steady load, where
``remaining`` hovers near zero while capacity keeps flowing back, and
``(limit - remaining) / reset`` measures our own recent rate against a window
provider, so the clamp feeds on itself and only ever falls. Without a
``limit`` header the conservative ``remaining / reset`` is used. 429s still
drive the multiplicative decrease.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["AdaptiveState", "ProviderLimits", "bounds", "effective_rates", "on_provider_limits",
           "on_success", "on_throttled", "provider_rate"]

SUCCESS_RUN = 10  # successes between additive increases


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


def provider_rate(limit: float | None, remaining: float | None,
                  reset: float | None) -> float | None:
    """The provider's refill rate per second from one set of headers (None: no signal)."""
    if not _positive(remaining) or reset is None or not reset > 0:
        return None
    assert remaining is not None
    if _positive(limit) and limit:
        assert limit is not None
        return limit / reset
    return max(remaining, 1.0) / reset


def on_provider_limits(
    s: AdaptiveState, p: ProviderLimits, now: float, floor: float, ceiling: float,
    multiplier: float,
) -> AdaptiveState:
    """Clamp to the provider's refill rate until its reset; ignore nonsense values."""
    new = s
    req_rate = provider_rate(p.limit_requests, p.remaining_requests, p.reset_requests)
    if req_rate is not None and p.reset_requests is not None:
        assert p.remaining_requests is not None
        new = replace(new, request_cap=req_rate,
                      cap_until=max(new.cap_until, now + p.reset_requests))
        if p.remaining_requests < 1:
            new = replace(new, blocked_until=max(new.blocked_until, now + 1.0 / req_rate))
    tok_rate = provider_rate(p.limit_tokens, p.remaining_tokens, p.reset_tokens)
    if tok_rate is not None and p.reset_tokens is not None:
        new = replace(new, token_cap=tok_rate, cap_until=max(new.cap_until, now + p.reset_tokens))
    return new
