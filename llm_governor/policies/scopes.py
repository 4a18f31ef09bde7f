"""Budgets and limits per scope value (a tenant, a user, a job), checked with the call's own.

A call labelled ``scope(tenant="acme", user="u42")`` carries one
:class:`ScopeRequest` per configured kind, each with the budgets and
per-minute limits of that value. The backend checks them in the same atomic
step as the service's limits and the global budget: budgets first (an
immediate refusal naming the scope), then, once the service admits, the
scope's request and LLM-token buckets (a wait). A scope in ``observe`` mode
is checked and its refusals recorded, never enforced.

A scope's state is its spend per window and two bucket instants; it expires
(:func:`expires_at`) once its longest window has ended, so idle values cost
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from . import budget, rate
from .admission import Decision

__all__ = ["IDLE", "ScopeRequest", "ScopeState", "check", "expires_at", "hold", "settle",
           "take"]

_ZERO = Decimal(0)
_NONE = budget.WindowSpend()
IDLE = 120.0  # seconds a scope with only per-minute limits is kept after its last use


@dataclass(frozen=True, slots=True)
class ScopeRequest:
    """One scope value's limits for one call: ``key`` is ``kind=value``."""

    key: str
    budgets: dict[str, Decimal] = field(default_factory=dict)  # window → limit
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    observe: bool = False

    @property
    def kind(self) -> str:
        return self.key.split("=", 1)[0]


@dataclass(frozen=True, slots=True)
class ScopeState:
    """What is stored per scope value."""

    spends: dict[str, budget.WindowSpend] = field(default_factory=dict)
    req_tat: float = 0.0
    tok_tat: float = 0.0
    expires: float = 0.0


def check(sr: ScopeRequest, s: ScopeState, reserved: Decimal, cost: Decimal,
          now: float) -> Decision | None:
    """The scope's budget refusal of ``cost`` (None: its budgets can cover it)."""
    for window, limit in sr.budgets.items():
        spent = budget.roll(s.spends.get(window, _NONE), window, now).spent
        if cost > limit - spent - reserved:  # refused: the details, as the global budget's
            _, left, refusing, reset = budget.check(s.spends, sr.budgets, reserved, cost, now)
            return Decision(False, "budget_exceeded", reset, left, refusing, scope=sr.key)
    return None


def take(sr: ScopeRequest, s: ScopeState, llm_tokens: float,
         now: float) -> tuple[float, ScopeState]:
    """Take one request (and its LLM tokens) from the scope's per-minute buckets.

    Returns ``(wait, new_state)``: ``wait`` -1 when admitted. Each bucket holds
    a minute's worth and refills over the minute, like the provider's own. A
    refusal changes nothing, except an instant beyond its horizon (a clock
    stepped back), which is brought back to it.
    """
    wait = -1.0
    horizon = now + 60.0
    req_tat, tok_tat = min(s.req_tat, horizon), min(s.tok_tat, horizon)
    clamped = req_tat != s.req_tat or tok_tat != s.tok_tat
    new_req, new_tok = req_tat, tok_tat
    if sr.requests_per_minute > 0:
        cap = sr.requests_per_minute
        ok, new_req, w = rate.gcra(req_tat, now, 1.0, cap / 60.0, cap)
        if not ok:
            wait = max(wait, w)
    if sr.tokens_per_minute > 0 and llm_tokens > 0:
        cap = sr.tokens_per_minute
        ok, new_tok, w = rate.gcra(tok_tat, now, min(llm_tokens, cap), cap / 60.0, cap)
        if not ok:
            wait = max(wait, w)
    if wait >= 0:
        return wait, ScopeState(s.spends, req_tat, tok_tat, s.expires) if clamped else s
    return wait, ScopeState(s.spends, new_req, new_tok, max(s.expires, now + IDLE))


def expires_at(s: ScopeState, budgets: dict[str, Decimal], now: float) -> float:
    """When the state may be dropped: the end of its longest window, or soon after use."""
    ends = [budget.window_end(w, budget.window_start(w, now)) for w in budgets]
    return max([now + IDLE, *ends, s.expires])


def hold(sr: ScopeRequest, s: ScopeState, now: float) -> ScopeState:
    """The state of an admitted call's scope: every budget window on record, kept long enough.

    A window is recorded at admission (not only at the first settle), so a
    lease that expires before its call settles is charged to it.
    """
    if not sr.budgets:
        return s
    missing = [w for w in sr.budgets if w not in s.spends]
    if not missing and s.expires >= now + 60.0:
        return s
    spends = dict(s.spends)
    for w in missing:
        spends[w] = budget.WindowSpend(budget.window_start(w, now))
    return ScopeState(spends, s.req_tat, s.tok_tat, expires_at(s, sr.budgets, now))


def settle(s: ScopeState, windows: tuple[str, ...], amount: Decimal, now: float) -> ScopeState:
    """The state after charging ``amount`` to ``windows`` (its budgets' windows)."""
    limits = dict.fromkeys(windows, _ZERO)
    spends = budget.settle(s.spends, limits, amount, now) if windows else s.spends
    return ScopeState(spends, s.req_tat, s.tok_tat, max(s.expires, expires_at(s, limits, now)))
