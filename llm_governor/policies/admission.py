"""One admission decision, composed from the policies, all or nothing.

``decide`` runs inside a backend's lock or transaction: breaker, budget,
concurrency and the three rate buckets (requests, LLM tokens, dollars) are
checked together, and state changes only when every one of them admits.
``observe`` folds one attempt's outcome (and the provider's rate-limit
headers) back into the service state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Literal

from . import adaptive, breaker, budget, rate
from .adaptive import AdaptiveState, ProviderLimits
from .breaker import BreakerState

__all__ = ["AdmitRequest", "Decision", "Limits", "Observation", "ServiceState", "decide",
           "observe", "snapshot"]

Outcome = Literal["admitted", "rate_limited", "budget_exceeded", "circuit_open", "emergency",
                  "queue_full"]
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Limits:
    """The numbers one decision needs, derived once per service/model from its config."""

    capacity: float
    refill_rate: float
    rate_floor: float
    rate_ceiling: float
    backoff_multiplier: float
    tokens_per_minute: float
    cost_per_minute: Decimal
    cost_per_minute_f: float  # the same as a float, for the bucket arithmetic
    max_concurrency: int
    failure_threshold: int
    success_threshold: int
    recovery_timeout: float


@dataclass(frozen=True, slots=True)
class ServiceState:
    """Everything stored per service: three bucket TATs, breaker, adaptive, recent outcomes."""

    req_tat: float = 0.0
    tok_tat: float = 0.0
    cost_tat: float = 0.0
    breaker: BreakerState = field(default_factory=BreakerState)
    adaptive: AdaptiveState = field(default_factory=AdaptiveState)
    minute: float = 0.0  # start of the current outcome-count minute
    ok: int = 0
    failed: int = 0
    prev_ok: int = 0
    prev_failed: int = 0


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    service: str
    priority: int
    llm_tokens: float
    cost: Decimal
    limits: Limits
    emergency_limits: Limits
    reserve: bool = True  # False for a retry attempt: buckets only, no budget, no slot
    refuse_in_emergency: bool = False
    cost_f: float = field(init=False)  # ``cost`` as a float, for the bucket arithmetic

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost_f", float(self.cost))


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    outcome: Outcome
    retry_after: float = 0.0
    remaining: Decimal | None = None
    window: str | None = None
    emergency: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    """One attempt's result, as the instrumentation classified it."""

    outcome: Literal["success", "failure", "throttled", "neutral"]
    provider: ProviderLimits | None = None


_ADMITTED = (Decision(True, "admitted"), Decision(True, "admitted", emergency=True))


def decide(
    s: ServiceState,
    spends: dict[str, budget.WindowSpend],
    budget_limits: dict[str, Decimal],
    reserved: Decimal,
    in_flight: int,
    req: AdmitRequest,
    now: float,
    emergency: bool = False,
) -> tuple[Decision, ServiceState]:
    """Admit or refuse ``req`` at ``now``; the new state is ``s`` itself unless admitted."""
    if emergency:
        if req.refuse_in_emergency:
            return Decision(False, "emergency", emergency=True), s
        lim = req.emergency_limits
    else:
        lim = req.limits
    new_breaker = s.breaker
    if new_breaker.state == breaker.OPEN:
        allowed, new_breaker, wait = breaker.allow(new_breaker, now, lim.recovery_timeout)
        if not allowed:
            return Decision(False, "circuit_open", wait, emergency=emergency), s
    if req.reserve and budget_limits:
        ok, left, window, reset = budget.check(spends, budget_limits, reserved, req.cost, now)
        if not ok:
            return Decision(False, "budget_exceeded", reset, left, window, emergency), s
    # The hot path below avoids allocations: the longest wait so far, -1 = none.
    longest = -1.0
    if req.reserve and lim.max_concurrency and in_flight >= lim.max_concurrency:
        longest = 0.05  # a slot frees on some settle; poll briefly
    a = s.adaptive
    if a.rate == 0.0 and a.cap_until <= now and a.blocked_until <= now:
        req_rate, tok_rate = lim.rate_ceiling, lim.tokens_per_minute / 60.0  # not adapted
    else:
        req_rate, tok_rate, blocked = adaptive.effective_rates(
            a, now, lim.rate_floor, lim.rate_ceiling, lim.tokens_per_minute / 60.0)
        if blocked > 0:
            longest = max(longest, blocked)
    share = rate.share(req.priority)
    cap = lim.capacity
    ok_r, req_tat, w = rate.gcra(s.req_tat, now, 1.0, req_rate, cap,
                                 rate.headroom(cap - 1.0, 0.0, share))
    if not ok_r:
        longest = max(longest, w)
    tok_tat = s.tok_tat
    if tok_rate > 0 and req.llm_tokens > 0:
        cap = lim.tokens_per_minute
        cost = min(req.llm_tokens, cap)
        ok_t, tok_tat, w = rate.gcra(s.tok_tat, now, cost, tok_rate, cap,
                                     rate.headroom(cap, cost, share))
        if not ok_t:
            longest = max(longest, w)
    cost_tat = s.cost_tat
    if req.cost_f > 0:
        pacing = budget.pacing_factor(spends, budget_limits, now) if budget_limits else 1.0
        cap = lim.cost_per_minute_f * pacing
        cost = min(req.cost_f, cap)
        ok_c, cost_tat, w = rate.gcra(s.cost_tat, now, cost, cap / 60.0, cap,
                                      rate.headroom(cap, cost, share))
        if not ok_c:
            longest = max(longest, w)
    if longest >= 0.0:
        return Decision(False, "rate_limited", longest, emergency=emergency), s
    # Direct construction: dataclasses.replace costs more than the whole decision.
    new = ServiceState(req_tat, tok_tat, cost_tat, new_breaker, a, s.minute, s.ok,
                       s.failed, s.prev_ok, s.prev_failed)
    return _ADMITTED[emergency], new


def observe(s: ServiceState, lim: Limits, obs: Observation, now: float) -> ServiceState:
    """Fold one attempt's outcome into breaker, adaptive rate and recent counts."""
    minute = budget.window_start("minute", now)
    if minute != s.minute:
        carry = minute - s.minute == 60.0
        s = replace(s, minute=minute, ok=0, failed=0,
                    prev_ok=s.ok if carry else 0, prev_failed=s.failed if carry else 0)
    a = s.adaptive
    if obs.outcome == "success":
        b = s.breaker
        if b.state != breaker.CLOSED or b.failures:
            b = breaker.record(b, True, now, lim.failure_threshold, lim.success_threshold)
        s = ServiceState(s.req_tat, s.tok_tat, s.cost_tat, b, s.adaptive, s.minute, s.ok + 1,
                         s.failed, s.prev_ok, s.prev_failed)
        if a.rate > 0 or a.successes:
            a = adaptive.on_success(a, lim.rate_floor, lim.rate_ceiling)
    elif obs.outcome == "failure":
        s = replace(s, failed=s.failed + 1, breaker=breaker.record(
            s.breaker, False, now, lim.failure_threshold, lim.success_threshold))
    elif obs.outcome == "throttled":
        retry_after = obs.provider.retry_after if obs.provider else None
        a = adaptive.on_throttled(a, now, lim.rate_floor, lim.rate_ceiling,
                                  lim.backoff_multiplier, retry_after)
    if obs.provider is not None:
        a = adaptive.on_provider_limits(a, obs.provider, now, lim.rate_floor, lim.rate_ceiling,
                                        lim.backoff_multiplier)
    return s if a is s.adaptive else replace(s, adaptive=a)


def snapshot(s: ServiceState, lim: Limits, now: float) -> dict[str, float | int | str]:
    """Plain numbers for status, health and metrics."""
    req_rate, tok_rate, blocked = adaptive.effective_rates(
        s.adaptive, now, lim.rate_floor, lim.rate_ceiling, lim.tokens_per_minute / 60.0
    )
    state = s.breaker.state
    if state == breaker.OPEN and now >= s.breaker.opened_at + lim.recovery_timeout:
        state = breaker.HALF_OPEN
    recent_ok = s.ok + s.prev_ok if budget.window_start("minute", now) == s.minute else 0
    recent_failed = s.failed + s.prev_failed if budget.window_start("minute", now) == s.minute \
        else 0
    return {
        "tokens_available": rate.available(s.req_tat, now, req_rate, lim.capacity),
        "tokens_capacity": lim.capacity,
        "rate": req_rate,
        "llm_tokens_available": rate.available(s.tok_tat, now, tok_rate, lim.tokens_per_minute)
        if tok_rate > 0 else 0.0,
        "circuit_state": state,
        "consecutive_failures": s.breaker.failures,
        "recent_ok": recent_ok,
        "recent_failed": recent_failed,
        "blocked_for": blocked,
    }
