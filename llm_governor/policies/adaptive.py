"""Adaptive limits: AIMD plus the provider's own rate-limit headers, which win.

Multiplicative decrease by ``backoff_multiplier`` on a 429; additive increase
after a run of successes; bounded by ``[1/max_interval, min(refill_rate,
1/min_interval)]``.

Provider headers say ``limit``, ``remaining`` and the time until the limit is
fully replenished (OpenAI ``x-ratelimit-*``, Anthropic
``anthropic-ratelimit-*``). They are the truth, whatever the configuration
guessed:

* the rate is clamped to ``limit / reset`` (times :data:`PACE`), an upper bound
  of the provider's refill rate whether it refills continuously or by window,
  until that reset
  (``remaining / reset`` would halve throughput under steady load, and
  ``(limit - remaining) / reset`` feeds on itself against a window provider);
* the bucket's capacity is clamped to the provider's ``limit`` (learned, kept
  for :data:`LEARNED_TTL` seconds after the last response that said it, and
  used for tokens too when the configuration sets no token limit);
* the bucket's level is clamped to the provider's ``remaining`` minus the
  calls it has not counted yet (see :func:`llm_governor.policies.admission.observe`);
* a scope's first report, with at least half the limit left, starts a cold
  spread (:func:`on_provider_limits`);
* other clients' calls in the provider's count (:mod:`.share`, smoothed over
  reports; below :data:`OTHERS_FLOOR` of the limit or :data:`OTHERS_NOISE` calls
  they are noise) take their part of the provider's window: the scope keeps its
  own calls in a window to the rest (:func:`own_part`, held by
  ``admission.decide``), and its pace, ``limit / reset × (1 - others / limit)``
  times :data:`OTHERS_PACE`, only smooths.

What a 429 means once the headers set the rate (measured against the fake
provider's sliding window, ``benchmarks/bench_goodput.py``): the rate already
is the provider's, so a single 429 says the *level* was early (a cold start's
burst, a window turning over), which the block and the emptied bucket answer
exactly; dividing the rate for it cost 15 % of goodput for the next seconds
with nothing to gain. Only a second 429 within the provider's window, for an
attempt sent after the first one's block ended, says the *rate* is too high
(another client uses the account), and then the rate is divided once per
window: the provider's counts need a window to show a new rate, so the 429s
in between belong to the same congestion (TCP halves once per round trip,
not once per lost packet). Dividing for each of them took the rate from 40/s
to 5/s in half a second in that measurement. When the scope counts the others'
calls (:func:`others_in_force`), the rate already leaves them their part and no
429 divides it: halving it then cost a window or more of goodput at every
stray 429. The decrease starts from the
rate in force (:func:`ceiling_in_force`), not from a configured ceiling the
provider's rate already undercuts, and the additive increase adds a tenth of
that rate. A provider that reports no window gets the classic AIMD: every
429 divides, except those of attempts sent before the last decrease.

Every wait the provider can impose is bounded by ``max_block``: a
``retry-after`` or a reset of hours, years or infinity blocks for at most
that long. Absent, malformed, negative or non-finite values are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["COLD_BURST", "LEARNED_TTL", "MAX_LIMIT", "OTHERS_FLOOR", "OTHERS_GAIN",
           "OTHERS_NOISE", "OTHERS_PACE", "PACE",
           "AdaptiveState", "ProviderLimits", "bounds", "capacities", "ceiling_in_force",
           "effective_rates", "on_provider_limits", "on_success", "on_throttled",
           "others_in_force", "own_part", "provider_rate", "sane"]

SUCCESS_RUN = 10  # successes between additive increases
COLD_BURST = 2.0  # calls a cold start lets go at once: two, so a late wake-up loses none
# Paced at exactly a window provider's rate, a call reaches it just as the slot it replaces
# frees, and the slightest delay upstream makes that a 429, once a window, every window
# (measured: 1-3 per 160 calls). 1 % slower keeps a margin, for at most 1 % of throughput
# (within the goodput runs' noise, measured).
PACE = 0.99
LEARNED_TTL = 3600.0  # seconds a provider-reported limit is trusted after the last report
MAX_LIMIT = 1e12  # a "limit" above this is nonsense
OTHERS_GAIN = 0.25  # weight of one report in the smoothed count of others' calls
OTHERS_FLOOR = 0.05  # of the limit: others' count below it is noise, not a client
# ... and below this many calls, whatever the limit: alone on the account, reports read
# across snapshots put up to 1.7 of the scope's own calls there (smoothed, measured in
# scenarios b and c), and a scope that counts others holds itself to the rest
OTHERS_NOISE = 3.0
# Sharing the account, the pace only smooths: the scope's own window (admission.decide)
# keeps its calls to its part, so a pace above that part makes up for a slot lost to a
# late answer, where 0.99 of it never did (measured: 18-19 of 20 a window, against 20).
OTHERS_PACE = 1.2


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
    slowed_at: float = 0.0  # the last multiplicative decrease, 0 = none
    throttled_at: float = 0.0  # the last 429, 0 = none
    cold_until: float = 0.0  # a cold start's spread ends then, 0 = none (see on_provider_limits)
    others: float = 0.0  # other clients' calls in the provider's count, smoothed (see share)
    window: float = 0.0  # seconds: the provider's request window when others were last told


def bounds(refill_rate: float, min_interval: float, max_interval: float) -> tuple[float, float]:
    """``(floor, ceiling)`` of the adaptive request rate, per second."""
    ceiling = min(refill_rate, 1.0 / min_interval)
    floor = min(1.0 / max_interval, ceiling)
    return floor, ceiling


def sane(s: AdaptiveState, now: float, max_block: float) -> AdaptiveState:
    """``s`` with every stored instant within its horizon of ``now`` (clock steps)."""
    if s.blocked_until <= now + max_block and s.cap_until <= now + max_block \
            and s.learned_until <= now + LEARNED_TTL and s.slowed_at <= now \
            and s.throttled_at <= now and s.cold_until <= now + max_block:
        return s
    return replace(s, blocked_until=min(s.blocked_until, now + max_block),
                   cap_until=min(s.cap_until, now + max_block),
                   learned_until=min(s.learned_until, now + LEARNED_TTL),
                   slowed_at=min(s.slowed_at, now), throttled_at=min(s.throttled_at, now),
                   cold_until=min(s.cold_until, now + max_block))


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
    if now < s.cold_until:  # a cold start's spread: a call or two at a time
        capacity = min(capacity, COLD_BURST)
    return capacity, token_capacity


def ceiling_in_force(s: AdaptiveState, now: float, floor: float, ceiling: float) -> float:
    """The highest request rate in force at ``now``: the configured ``ceiling``, or the
    provider's refill rate while its headers say so (never below ``floor``)."""
    if now < s.cap_until and s.request_cap > 0:
        return min(ceiling, max(s.request_cap, floor))
    return ceiling


def on_throttled(
    s: AdaptiveState, now: float, floor: float, ceiling: float, multiplier: float,
    retry_after: float | None = None, max_block: float = math.inf, sent_at: float | None = None,
    window: float | None = None,
) -> AdaptiveState:
    """A 429 from the provider: wait out its ``retry_after`` (bounded), and slow down
    when the rate, not the timing, is wrong.

    ``ceiling`` is the rate in force (:func:`ceiling_in_force`): a decrease
    starts from what was actually allowed. ``window`` is the provider's reset
    from the 429's headers (bounded by ``max_block``): the time its counts take
    to show a change of rate, its round trip. With it:

    * the first 429 in a window does not slow down: the rate already is the
      provider's, the level was early (a burst, a window turning over), and
      the block and the emptied bucket answer that exactly;
    * a second one within a window says the rate is too high (someone else
      uses the account): divide it by ``multiplier``, once per window; a 429
      of an attempt sent before the last decrease was sent at the rate that
      decrease answered, whenever it arrives (TCP halves once per round trip,
      not once per lost packet).

    Without a window (a provider that reports none) every 429 but those of
    attempts sent before the last decrease divides the rate.
    """
    blocked = s.blocked_until
    if _finite_positive(retry_after):
        assert retry_after is not None
        blocked = max(blocked, now + min(retry_after, max_block))
    span = min(window, max_block) if _finite_positive(window) and window is not None else 0.0
    sent = now if sent_at is None else sent_at
    answered = s.slowed_at > 0 and (sent < s.slowed_at or now < s.slowed_at + span)
    # with a window: refused again within it, although sent after the last block ended
    repeated = span == 0 or (s.throttled_at > 0 and now < s.throttled_at + span
                             and sent >= s.blocked_until)
    # others' calls in the provider's count already set the rate: this 429 was timing
    if answered or not repeated or others_in_force(s, now) > 0:
        return replace(s, successes=0, blocked_until=blocked, throttled_at=now)
    current = min(s.rate, ceiling) if s.rate > 0 else ceiling
    return replace(s, rate=max(floor, current / multiplier), successes=0, blocked_until=blocked,
                   slowed_at=now, throttled_at=now)


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
    return x is not None and 0 <= x <= MAX_LIMIT  # NaN-safe


def provider_rate(limit: float | None, remaining: float | None,
                  reset: float | None) -> float | None:
    """The provider's refill rate per second from one set of headers (None: no signal)."""
    if not _count(remaining) or not _finite_positive(reset):
        return None
    assert remaining is not None and reset is not None
    if _count(limit) and limit is not None and limit >= 1:
        return limit / reset
    return max(remaining, 1.0) / reset


def _theirs(others: float, limit: float) -> float:
    """``others`` (calls of other clients in a provider's count), 0 if within the noise
    of its ``limit`` (:data:`OTHERS_FLOOR` of it, :data:`OTHERS_NOISE` calls at least)."""
    return others if others > max(OTHERS_FLOOR * limit, OTHERS_NOISE) else 0.0


def others_in_force(s: AdaptiveState, now: float) -> float:
    """Other clients' calls in the provider's count while its headers are in force
    (0: none, or no more than noise)."""
    return _theirs(s.others, s.request_limit) if now < s.cap_until else 0.0


def own_part(s: AdaptiveState, now: float) -> int:
    """The calls of each provider window left to this scope while others' are counted
    (0: none counted, or no window known): the limit less theirs, to the nearest call."""
    theirs = others_in_force(s, now)
    if theirs <= 0 or s.window <= 0 or s.request_limit < 1:
        return 0
    return max(1, math.floor(s.request_limit - theirs + 0.5))


def _cold(s: AdaptiveState, p: ProviderLimits, now: float, left: float,
          cold_until: float) -> bool:
    """Is this the first report of a limit scope nothing was learned of, with at least half
    of the provider's limit left and its reset still ahead? (Then its calls are spread:
    see on_provider_limits.)"""
    return (s.request_limit <= 0 or now >= s.learned_until) and _count(p.limit_requests) \
        and p.limit_requests is not None and p.limit_requests >= 1 \
        and 2 * left >= p.limit_requests and cold_until > now


def on_provider_limits(
    s: AdaptiveState, p: ProviderLimits, now: float, floor: float, ceiling: float,
    multiplier: float, max_block: float = math.inf, uncounted: int = 0, age: float = 0.0,
    others: float | None = None,
) -> AdaptiveState:
    """Clamp rates to the provider's refill rates until its resets (bounded by
    ``max_block``) and learn its limits; ignore nonsense values.

    ``uncounted``: calls sent since the provider counted this one (not in its
    ``remaining``); ``age``: seconds since this call was sent; ``others``: other
    clients' calls in the provider's count by this report (None: unknown), kept
    smoothed (:data:`OTHERS_GAIN`, from nothing: one report alone is not a client)
    and ignored during a cold start's spread, whose burst reaches the provider out of
    the order it was admitted in (three processes read 2-7 calls of their own as
    others' there, measured).

    A cold start (the first report of a scope, at least half the limit left)
    spreads what is left over the provider's reset instead of spending it at
    once: until then the request bucket holds :data:`COLD_BURST` calls
    (:func:`capacities`) and refills at ``left / (time to the reset)``,
    recomputed from every report.
    Against a window provider a burst fills the window at once and frees
    nothing until it expires, so every caller waits through that pause; spread,
    the window fills evenly and frees evenly. Against a token bucket the reset
    is the time to refill what was used, at most half the window when half is
    left, so the spread is never slower than the provider's own refill rate.
    """
    new = s
    req_rate = provider_rate(p.limit_requests, p.remaining_requests, p.reset_requests)
    if req_rate is not None and p.reset_requests is not None:
        reset = min(p.reset_requests, max_block)
        # what the provider has left for the calls it has not counted yet
        left = p.remaining_requests - uncounted if p.remaining_requests is not None else 0.0
        cold_until = now - age + reset  # a first report's reset runs from when it counted
        if now < s.cold_until:  # what is left, spread over the rest of the cold window
            cap = min(req_rate, max(left, 1.0) / (s.cold_until - now))
            new = replace(new, request_cap=cap, cap_until=max(new.cap_until, now + reset))
        elif _cold(s, p, now, left, cold_until):
            new = replace(new, request_cap=min(req_rate, left / (cold_until - now)),
                          cap_until=max(new.cap_until, now + reset), cold_until=cold_until)
        else:
            if others is not None and math.isfinite(others):
                kept = s.others if now < s.cap_until else 0.0
                new = replace(new, others=kept + (others - kept) * OTHERS_GAIN, window=reset)
            share = 1.0  # of the provider's rate: what others' calls leave us
            if _count(p.limit_requests) and p.limit_requests is not None \
                    and p.limit_requests >= 1:
                share -= min(1.0 - OTHERS_FLOOR,
                             _theirs(new.others, p.limit_requests) / p.limit_requests)
            new = replace(new, request_cap=req_rate * share * (PACE if share >= 1.0
                                                               else OTHERS_PACE),
                          cap_until=max(new.cap_until, now + reset))
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
