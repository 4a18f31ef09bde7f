"""Adaptive limits: AIMD plus the provider's own rate-limit headers, which win.

Multiplicative decrease by ``backoff_multiplier`` on a 429; additive increase
after a run of successes; bounded by ``[1/max_interval, min(refill_rate,
1/min_interval)]``.

Provider headers say ``limit``, ``remaining`` and the time until the limit is
fully replenished (OpenAI ``x-ratelimit-*``, Anthropic
``anthropic-ratelimit-*``). They are the truth, whatever the configuration
guessed:

* the rate is clamped to ``limit / reset``, an upper bound of the provider's
  refill rate whether it refills continuously or by window, until that reset
  (``remaining / reset`` would halve throughput under steady load, and
  ``(limit - remaining) / reset`` feeds on itself against a window provider);
* the bucket's capacity is clamped to the provider's ``limit`` (learned, kept
  for :data:`LEARNED_TTL` seconds after the last response that said it, and
  used for tokens too when the configuration sets no token limit);
* the bucket's level is clamped to the provider's ``remaining`` minus the
  calls in flight (see :func:`llm_governor.policies.admission.observe`).

Every wait the provider can impose is bounded by ``max_block``: a
``retry-after`` or a reset of hours, years or infinity blocks for at most
that long. Absent, malformed, negative or non-finite values are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["LEARNED_TTL", "AdaptiveState", "ProviderLimits", "bounds", "capacities",
           "effective_rates", "on_provider_limits", "on_success", "on_throttled", "provider_rate",
           "sane"]

SUCCESS_RUN = 10  # successes between additive increases
LEARNED_TTL = 3600.0  # seconds a provider-reported limit is trusted after the last report
_MAX_LIMIT = 1e12  # a "limit" above this is nonsense


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
    request_limit: float = 0.0  # provider-reported request limit (bucket capacity), 0 = none
    token_limit: float = 0.0  # provider-reported token limit, 0 = none
    learned_until: float = 0.0  # the two limits above are trusted until then


def bounds(refill_rate: float, min_interval: float, max_interval: float) -> tuple[float, float]:
    """``(floor, ceiling)`` of the adaptive request rate, per second."""
    ceiling = min(refill_rate, 1.0 / min_interval)
    floor = min(1.0 / max_interval, ceiling)
    return floor, ceiling


def sane(s: AdaptiveState, now: float, max_block: float) -> AdaptiveState:
    """``s`` with every stored instant within its horizon of ``now`` (clock steps)."""
    if s.blocked_until <= now + max_block and s.cap_until <= now + max_block \
            and s.learned_until <= now + LEARNED_TTL:
        return s
    return replace(s, blocked_until=min(s.blocked_until, now + max_block),
                   cap_until=min(s.cap_until, now + max_block),
                   learned_until=min(s.learned_until, now + LEARNED_TTL))


def effective_rates(
    s: AdaptiveState, now: float, floor: float, ceiling: float, token_rate: float
) -> tuple[float, float, float]:
    """``(request_rate, token_rate, blocked_for)`` in force at ``now``.

    ``token_rate`` is the configured one (0: none); a provider-derived token
    rate applies when it is lower, or when none is configured.
    """
    rate = s.rate if s.rate > 0 else ceiling
    tokens = token_rate
    if now < s.cap_until:
        if s.request_cap > 0:
            rate = min(rate, max(s.request_cap, floor))
        if s.token_cap > 0:
            tokens = min(tokens, s.token_cap) if tokens > 0 else s.token_cap
    blocked = s.blocked_until - now if s.blocked_until > now else 0.0
    return max(min(rate, ceiling), floor), tokens, blocked


def capacities(s: AdaptiveState, now: float, capacity: float,
               token_capacity: float) -> tuple[float, float]:
    """``(request capacity, token capacity)`` in force: the provider's limits when lower."""
    if now >= s.learned_until:
        return capacity, token_capacity
    if s.request_limit > 0:
        capacity = min(capacity, s.request_limit)
    if s.token_limit > 0:
        token_capacity = min(token_capacity, s.token_limit) if token_capacity > 0 \
            else s.token_limit
    return capacity, token_capacity


def on_throttled(
    s: AdaptiveState, now: float, floor: float, ceiling: float, multiplier: float,
    retry_after: float | None = None, max_block: float = math.inf,
) -> AdaptiveState:
    """A 429 from the provider: slow down, and wait out its ``retry_after`` (bounded)."""
    current = s.rate if s.rate > 0 else ceiling
    blocked = s.blocked_until
    if _finite_positive(retry_after):
        assert retry_after is not None
        blocked = max(blocked, now + min(retry_after, max_block))
    return replace(s, rate=max(floor, current / multiplier), successes=0, blocked_until=blocked)


def on_success(s: AdaptiveState, floor: float, ceiling: float) -> AdaptiveState:
    """A success: after ``SUCCESS_RUN`` of them, add a tenth of the ceiling back."""
    if s.rate <= 0 or s.rate >= ceiling:
        return s if s.successes == 0 and s.rate <= 0 else replace(s, successes=0)
    if s.successes + 1 < SUCCESS_RUN:
        return replace(s, successes=s.successes + 1)
    return replace(s, rate=min(ceiling, s.rate + ceiling / 10), successes=0)


def _finite_positive(x: float | None) -> bool:
    return x is not None and 0 < x < math.inf  # NaN fails both comparisons


def _count(x: float | None) -> bool:
    return x is not None and 0 <= x <= _MAX_LIMIT  # NaN-safe


def provider_rate(limit: float | None, remaining: float | None,
                  reset: float | None) -> float | None:
    """The provider's refill rate per second from one set of headers (None: no signal)."""
    if not _count(remaining) or not _finite_positive(reset):
        return None
    assert remaining is not None and reset is not None
    if _count(limit) and limit is not None and limit >= 1:
        return limit / reset
    return max(remaining, 1.0) / reset


def on_provider_limits(
    s: AdaptiveState, p: ProviderLimits, now: float, floor: float, ceiling: float,
    multiplier: float, max_block: float = math.inf,
) -> AdaptiveState:
    """Clamp rates to the provider's refill rates until its resets (bounded by
    ``max_block``) and learn its limits; ignore nonsense values."""
    new = s
    req_rate = provider_rate(p.limit_requests, p.remaining_requests, p.reset_requests)
    if req_rate is not None and p.reset_requests is not None:
        new = replace(new, request_cap=req_rate,
                      cap_until=max(new.cap_until, now + min(p.reset_requests, max_block)))
    tok_rate = provider_rate(p.limit_tokens, p.remaining_tokens, p.reset_tokens)
    if tok_rate is not None and p.reset_tokens is not None:
        new = replace(new, token_cap=tok_rate,
                      cap_until=max(new.cap_until, now + min(p.reset_tokens, max_block)))
    learned_req = p.limit_requests if _count(p.limit_requests) and \
        p.limit_requests is not None and p.limit_requests >= 1 else None
    learned_tok = p.limit_tokens if _count(p.limit_tokens) and \
        p.limit_tokens is not None and p.limit_tokens >= 1 else None
    if learned_req is not None or learned_tok is not None:
        new = replace(new, request_limit=learned_req or new.request_limit,
                      token_limit=learned_tok or new.token_limit,
                      learned_until=now + LEARNED_TTL)
    return new
