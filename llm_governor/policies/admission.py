"""One admission decision, composed from the policies, all or nothing.

``decide`` runs inside a backend's lock or transaction: breaker, budget,
concurrency and the three rate buckets (requests, LLM tokens, dollars) are
checked together, and state changes only when every one of them admits.
``observe`` folds one attempt's outcome (and the provider's rate-limit
headers, which win over the configuration) back into the service state.

Following the provider's ``remaining`` (``observe``): the request bucket's
level is brought down to ``remaining + refill - uncounted``. ``remaining``
is what the provider counted when the attempt arrived, ``age`` seconds ago;
``uncounted`` are this scope's attempts admitted after it (every admission
counts one in ``ServiceState.sent``, and the attempt carries its count), which
the provider had not seen; calls in flight stand in when the count is unknown,
but they also hold calls sent before it, counted already (a whole cold burst),
and miss those sent since that came back already;
``refill`` is what the provider gave back meanwhile at its own drain rate,
``(limit - remaining) / reset`` (exact for a token bucket, the coming expiries
for a busy window, little for a window just filled from cold). Without that
credit the level lags the provider by the refill of one response time: against
a sliding window that left ``rate × latency`` of every window unused (8 % at
100 ms per 1.5 s window, measured: 92 % goodput). A 429's ``retry-after``
empties the bucket until it ends (one request's worth at its end), so a block
is not followed by a burst of everything the bucket refilled meanwhile: in
the same measurement that burst drew four more 429s.

Other clients on the same account (another app, a script with the same key)
are in the provider's count too, and take back the slots their calls free.
The scope tells its calls from theirs (:mod:`.share`): its own admissions over
the provider's window against the provider's count. When others take more
than noise, the provider's rate is cut to the part they leave
(:func:`.adaptive.on_provider_limits`), the credit is our own calls of a
window ago instead of the provider's whole drain, and when nothing is free for
us the scope waits until its next own call expires (a block, bounded by the
window), instead of racing the others for their slots.

A scope's first report starts it cold when at least half the provider's
limit is left (:func:`.adaptive.on_provider_limits`): what is left is spread
over the provider's reset, two calls at most at a time, instead of spent at
once. When the spread ends, the bucket holds what it held in the spread, not
the full capacity it has again (``_warmed``).

All of it is immune to wall-clock steps: a stored instant further in the future
than it could legitimately be (a clock stepped back, a VM restored) is read
as its horizon (a bucket's drain time, a block's ``max_block``), so no step
ever blocks longer than that; a step forward only refills buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from . import adaptive, breaker, budget, rate, share
from ._fast import maker
from .adaptive import AdaptiveState, ProviderLimits
from .breaker import BreakerState

if TYPE_CHECKING:
    from .scopes import ScopeRequest

__all__ = ["AdmitRequest", "Decision", "Limits", "Observation", "ServiceState", "decide",
           "observe", "snapshot"]

Outcome = Literal["admitted", "rate_limited", "budget_exceeded", "circuit_open", "emergency",
                  "queue_full"]
# What held a rate-limited call back (the longest wait).
Bound = Literal["concurrency", "provider", "requests", "llm_tokens", "cost", "scope"]
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
    max_block: float = 300.0  # the longest any provider-imposed wait may last


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
    sent: int = 0  # attempts admitted, ever: what a provider's count may not include yet
    sends: str = share.EMPTY  # ``sent``'s recent history, as stored text (see share)


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    """One admission: ``service`` labels the counters, ``key`` (default: the service)
    names the limit scope whose state, leases and breaker are used."""

    service: str
    priority: int
    llm_tokens: float
    cost: Decimal
    limits: Limits
    emergency_limits: Limits
    reserve: bool = True  # False for a retry attempt: buckets only, no budget, no slot
    refuse_in_emergency: bool = False
    key: str = ""
    scopes: tuple[ScopeRequest, ...] = ()  # the call's scope values with limits
    observe: bool = False  # observe mode: a refusal is counted as would_<outcome>
    cost_f: float = field(init=False)  # ``cost`` as a float, for the bucket arithmetic

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost_f", float(self.cost))
        if not self.key:
            object.__setattr__(self, "key", self.service)


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    outcome: Outcome
    retry_after: float = 0.0
    remaining: Decimal | None = None
    window: str | None = None
    emergency: bool = False
    bound: Bound | None = None  # rate_limited: which limit held the call back
    scope: str | None = None  # the scope (``kind=value``) whose limit refused, if one did
    observed: Outcome | None = None  # admitted, but an observed scope would have refused
    sent: int = 0  # admitted: the limit scope's ``ServiceState.sent`` with this attempt


@dataclass(frozen=True, slots=True)
class Observation:
    """One attempt's result, as the instrumentation classified it."""

    outcome: Literal["success", "failure", "throttled", "neutral"]
    provider: ProviderLimits | None = None
    age: float = 0.0  # seconds since the attempt was sent (0: unknown or just now)
    sent: int = 0  # the attempt's ``Decision.sent`` (0: unknown)


_decision = maker(Decision)
# ServiceState(...) with every field given, built without the frozen dataclass's per-field
# object.__setattr__ (see _fast): a decision and a settlement each build one.
_state = maker(ServiceState)


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
    """Admit or refuse ``req`` at ``now``.

    The new state is ``s`` itself unless the call is admitted, or a stored
    instant had to be brought back within its horizon (the backend stores it
    either way: a refusal never changes anything else).
    """
    if emergency:
        if req.refuse_in_emergency:
            return Decision(False, "emergency", emergency=True), s
        lim = req.emergency_limits
    else:
        lim = req.limits
    new_breaker = s.breaker
    if new_breaker.state != breaker.CLOSED:
        allowed, new_breaker, wait = breaker.allow(new_breaker, now, lim.recovery_timeout,
                                                   lim.success_threshold)
        if not allowed:
            return Decision(False, "circuit_open", wait, emergency=emergency), s
    if req.reserve and budget_limits:
        ok, left, window, reset = budget.check(spends, budget_limits, reserved, req.cost, now)
        if not ok:
            return Decision(False, "budget_exceeded", reset, left, window, emergency), s
    # The hot path below avoids allocations: the longest wait so far, -1 = none.
    longest = -1.0
    bound: Bound | None = None
    if req.reserve and lim.max_concurrency and in_flight >= lim.max_concurrency:
        longest, bound = 0.05, "concurrency"  # a slot frees on some settle; poll briefly
    a = s.adaptive
    cap, tok_cap = lim.capacity, lim.tokens_per_minute
    if a.rate == 0.0 and a.cap_until <= now and a.blocked_until <= now \
            and a.learned_until <= now:
        req_rate, tok_rate = lim.rate_ceiling, tok_cap / 60.0  # not adapted, nothing learned
    else:
        a = adaptive.sane(a, now, lim.max_block)
        req_rate, tok_rate, blocked = adaptive.effective_rates(
            a, now, lim.rate_floor, lim.rate_ceiling, tok_cap / 60.0)
        cap, tok_cap = adaptive.capacities(a, now, cap, tok_cap)
        if tok_rate > 0 and tok_cap > 0:  # a full bucket refills within max_block at worst
            tok_rate = max(tok_rate, tok_cap / lim.max_block)
        if blocked > 0 and blocked > longest:
            longest, bound = blocked, "provider"
    # A stored instant beyond its horizon (a clock stepped back) is brought back to it,
    # and that correction is kept even if the call is refused (else it never drains).
    req_tat, tok_tat, cost_tat = s.req_tat, s.tok_tat, s.cost_tat
    if a.cold_until and now >= a.cold_until:  # a cold start's spread just ended
        a, req_tat = replace(a, cold_until=0.0), _warmed(req_tat, now, cap, req_rate)
    # the furthest a tat can legitimately be: an empty bucket now, or one token at a block's end
    # max(now + cap / req_rate, a.blocked_until + max(0.0, cap - 1.0) / req_rate), spelt
    # out: what the builtins return, without their calls
    spare = cap - 1.0
    horizon = a.blocked_until + (spare if spare > 0.0 else 0.0) / req_rate
    empty = now + cap / req_rate
    if not horizon > empty:
        horizon = empty
    clamped = a is not s.adaptive
    if req_tat > horizon:
        req_tat, clamped = horizon, True
    if cost_tat > now + 60.0:
        cost_tat, clamped = now + 60.0, True
    share = rate.share(req.priority)
    ok_r, new_req, w = rate.gcra(req_tat, now, 1.0, req_rate, cap,
                                 rate.headroom(cap, 1.0, share))
    if not ok_r and w > longest:
        longest, bound = w, "requests"
    if a.others > 0.0:  # sharing the account: the scope's own part of the provider's window
        w = _own_window_wait(s, a, now, lim.max_block)
        if w > longest:
            longest, bound = w, "provider"
    new_tok = tok_tat
    if tok_rate > 0 and req.llm_tokens > 0 and tok_cap > 0:
        if tok_tat > now + tok_cap / tok_rate:
            tok_tat, clamped = now + tok_cap / tok_rate, True
        cost = tok_cap if tok_cap < req.llm_tokens else req.llm_tokens  # min(tokens, cap)
        ok_t, new_tok, w = rate.gcra(tok_tat, now, cost, tok_rate, tok_cap,
                                     rate.headroom(tok_cap, cost, share))
        if not ok_t and w > longest:
            longest, bound = w, "llm_tokens"
    new_cost = cost_tat
    if req.cost_f > 0:
        pacing = budget.pacing_factor(spends, budget_limits, now) if budget_limits else 1.0
        per_minute = lim.cost_per_minute_f * pacing
        cost = per_minute if per_minute < req.cost_f else req.cost_f  # min(cost, per_minute)
        ok_c, new_cost, w = rate.gcra(cost_tat, now, cost, per_minute / 60.0, per_minute,
                                      rate.headroom(per_minute, cost, share))
        if not ok_c and w > longest:
            longest, bound = w, "cost"
    if longest >= 0.0:
        refused = Decision(False, "rate_limited", longest, emergency=emergency, bound=bound)
        if not clamped:
            return refused, s
        return refused, _state(req_tat, tok_tat, cost_tat, s.breaker, a, s.minute, s.ok,
                               s.failed, s.prev_ok, s.prev_failed, s.sent, s.sends)
    # Direct construction: dataclasses.replace costs more than the whole decision.
    sent = s.sent + 1
    new = _state(new_req, new_tok, new_cost, new_breaker, a, s.minute, s.ok,
                 s.failed, s.prev_ok, s.prev_failed, sent, s.sends)
    return _decision(True, "admitted", 0.0, None, None, emergency, None, None, None, sent), new


def observe(s: ServiceState, lim: Limits, obs: Observation, now: float,
            in_flight: int = 0) -> ServiceState:
    """Fold one attempt's outcome into breaker, adaptive rate and recent counts.

    With provider headers, the request and token buckets' levels are brought
    down to what the provider says is left (requests: minus ``in_flight``,
    this service's other calls in flight, which the provider may not have
    counted yet).
    """
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
        s = _state(s.req_tat, s.tok_tat, s.cost_tat, b, s.adaptive, s.minute, s.ok + 1,
                   s.failed, s.prev_ok, s.prev_failed, s.sent, s.sends)
        if a.rate > 0 or a.successes:
            a = adaptive.on_success(a, lim.rate_floor, adaptive.ceiling_in_force(
                a, now, lim.rate_floor, lim.rate_ceiling))
    elif obs.outcome == "failure":
        s = replace(s, failed=s.failed + 1, breaker=breaker.record(
            s.breaker, False, now, lim.failure_threshold, lim.success_threshold))
    elif obs.outcome == "throttled":
        p = obs.provider
        a = adaptive.sane(a, now, lim.max_block)
        a = adaptive.on_throttled(
            a, now, lim.rate_floor, adaptive.ceiling_in_force(a, now, lim.rate_floor,
                                                              lim.rate_ceiling),
            lim.backoff_multiplier, p.retry_after if p else None, lim.max_block,
            now - _age(obs.age, lim.max_block), p.reset_requests if p else None)
    p = obs.provider
    if p is None:
        return s if a is s.adaptive else replace(s, adaptive=a)
    counted = 0 < obs.sent <= s.sent
    uncounted = s.sent - obs.sent if counted else in_flight
    age = _age(obs.age, lim.max_block)
    # ours against others' in the provider's count (see share): a window back from when
    # the provider counted this attempt, the scope's admissions then
    marks: share.Points = ()
    sends, others, window, at = s.sends, None, p.reset_requests, now - age
    if counted and window is not None and 0 < window <= lim.max_block:  # a sane window
        parsed = share.parse(s.sends)
        marks = share.mark(parsed, now, s.sent, at, window)
        if obs.outcome == "throttled":
            marks = share.refused(marks, obs.sent, at - window)
        elif adaptive.others_in_force(a, now) > 0:
            marks = share.stepped(marks, at, obs.sent)
        if marks is not parsed:
            sends = share.dump(marks)
        others = share.others(p.limit_requests, p.remaining_requests,
                              obs.sent - share.sent_at(marks, at - window, now, s.sent))
    a = adaptive.on_provider_limits(adaptive.sane(a, now, lim.max_block), p, now,
                                    lim.rate_floor, lim.rate_ceiling, lim.backoff_multiplier,
                                    lim.max_block, uncounted, age, others)
    req_rate, tok_rate, _ = adaptive.effective_rates(a, now, lim.rate_floor, lim.rate_ceiling,
                                                     lim.tokens_per_minute / 60.0)
    cap, tok_cap = adaptive.capacities(a, now, lim.capacity, lim.tokens_per_minute)
    if tok_rate > 0 and tok_cap > 0:
        tok_rate = max(tok_rate, tok_cap / lim.max_block)
    req_tat = s.req_tat
    if a.cold_until and now >= a.cold_until:
        a, req_tat = replace(a, cold_until=0.0), _warmed(req_tat, now, cap, req_rate)
    # what the provider freed meanwhile: nothing of a window filled from cold before it
    # turns; of a window others share, our own calls of a window ago (they take theirs)
    credit, credit_own = 0.0, others is not None and adaptive.others_in_force(a, now) > 0
    if age > 0 and now >= a.cold_until:
        if credit_own:
            assert window is not None
            credit = share.sent_at(marks, now - window, now, s.sent) \
                - share.sent_at(marks, at - window, now, s.sent)
        else:
            credit = _refilled(p.limit_requests, p.remaining_requests, p.reset_requests, age)
    req_tat = _level(req_tat, now, cap, req_rate, p.remaining_requests, uncounted, credit)
    remaining = p.remaining_requests
    if credit_own and remaining is not None and 0 <= remaining <= adaptive.MAX_LIMIT:
        assert window is not None
        free = remaining + credit - uncounted  # the provider's, for us
        if free < 1.0:  # nothing frees for us before our next call expires: wait for it
            due = share.reached(marks, share.sent_at(marks, now - window, now, s.sent)
                                + 1.0 - max(free, 0.0), now, s.sent) + window
            if a.blocked_until < due < math.inf:
                a = replace(a, blocked_until=due)
    if a.blocked_until > now:  # a block empties the bucket: nothing refills before its end
        req_tat = max(req_tat, a.blocked_until + max(0.0, cap - 1.0) / req_rate)
    tok_tat = _level(s.tok_tat, now, tok_cap, tok_rate, p.remaining_tokens, 0) \
        if tok_rate > 0 and tok_cap > 0 else s.tok_tat
    return replace(s, adaptive=a, req_tat=req_tat, tok_tat=tok_tat, sends=sends)


def _own_window_wait(s: ServiceState, a: AdaptiveState, now: float, max_block: float
                     ) -> float:
    """How long until the scope may send again when its part of the provider's window
    (:func:`~.adaptive.own_part`) is taken by its own calls there: until the oldest of
    them expires (-1: a slot is free, or no others are counted).

    The pace only approximates this, and the provider's reports say it only as they
    arrive; between them this is what keeps a scope sharing the account to its part."""
    part = adaptive.own_part(a, now)
    if part <= 0:
        return -1.0
    points = share.parse(s.sends)
    window = min(a.window, max_block)
    if not points or s.sent - share.sent_at(points, now - window, now, s.sent) < part:
        return -1.0
    due = share.reached(points, s.sent + 1 - part, now, s.sent) + window
    return due - now if now < due < math.inf else -1.0


def _warmed(tat: float, now: float, capacity: float, rate_: float) -> float:
    """The request bucket's ``tat`` once a cold start's spread ends: the level it had in
    the spread (``COLD_BURST`` calls at most), not the full bucket its capacity now holds."""
    spread = adaptive.COLD_BURST
    return (tat if tat > now else now) + (capacity - spread if capacity > spread else 0.0) / rate_


def _age(age: float, max_block: float) -> float:
    """An observation's age, sane: 0 unless positive and finite, at most ``max_block``."""
    return min(age, max_block) if 0 < age < math.inf else 0.0


def _refilled(limit: float | None, remaining: float | None, reset: float | None,
              age: float) -> float:
    """What the provider refilled in the ``age`` seconds since it counted the attempt:
    its own drain rate, ``(limit - remaining) / reset`` (0 without sane headers)."""
    if limit is None or remaining is None or reset is None \
            or not 0 <= remaining <= limit <= adaptive.MAX_LIMIT or not 0 < reset < math.inf:
        return 0.0
    return age * (limit - remaining) / reset


def _level(tat: float, now: float, capacity: float, rate_: float, remaining: float | None,
           in_flight: int, credit: float = 0.0) -> float:
    """A GCRA ``tat`` holding at most ``remaining + credit - in_flight``, and at most
    ``capacity``: calls in flight come off what the provider has left, not off a bucket
    smaller than that (with a burst of 2, two calls in flight emptied it at every answer
    while the provider still had slots to spare)."""
    if remaining is None or not 0 <= remaining <= capacity:  # NaN fails too
        return tat
    available = min(capacity, max(0.0, remaining + credit - in_flight))
    return max(tat, now + (capacity - available) / rate_)


def snapshot(s: ServiceState, lim: Limits, now: float) -> dict[str, float | int | str]:
    """Plain numbers for status, health and metrics."""
    a = adaptive.sane(s.adaptive, now, lim.max_block)
    req_rate, tok_rate, blocked = adaptive.effective_rates(
        a, now, lim.rate_floor, lim.rate_ceiling, lim.tokens_per_minute / 60.0
    )
    capacity, tok_capacity = adaptive.capacities(a, now, lim.capacity, lim.tokens_per_minute)
    if tok_rate > 0 and tok_capacity > 0:
        tok_rate = max(tok_rate, tok_capacity / lim.max_block)
    state = s.breaker.state
    if state == breaker.OPEN and now >= min(s.breaker.opened_at, now) + lim.recovery_timeout:
        state = breaker.HALF_OPEN
    recent_ok = s.ok + s.prev_ok if budget.window_start("minute", now) == s.minute else 0
    recent_failed = s.failed + s.prev_failed if budget.window_start("minute", now) == s.minute \
        else 0
    learned = now < a.learned_until
    return {
        "tokens_available": rate.available(s.req_tat, now, req_rate, capacity),
        "tokens_capacity": capacity,
        "rate": req_rate,
        "llm_tokens_available": rate.available(s.tok_tat, now, tok_rate, tok_capacity)
        if tok_rate > 0 and tok_capacity > 0 else 0.0,
        "llm_tokens_capacity": tok_capacity,
        "circuit_state": state,
        "consecutive_failures": s.breaker.failures,
        "recent_ok": recent_ok,
        "recent_failed": recent_failed,
        "blocked_for": blocked,
        "provider_request_limit": a.request_limit if learned else 0.0,
        "provider_token_limit": a.token_limit if learned else 0.0,
        "provider_rate_cap": a.request_cap if now < a.cap_until else 0.0,
    }
