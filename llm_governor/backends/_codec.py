"""Flat encodings of the policy records, for backends that store text."""

from __future__ import annotations

import json
from decimal import Decimal

from ..policies import budget
from ..policies.adaptive import AdaptiveState
from ..policies.admission import ServiceState
from ..policies.breaker import BreakerState
from ..policies.scopes import ScopeState

__all__ = ["dump_scope", "dump_service", "dump_spends", "load_scope", "load_service",
           "load_spends"]


# Fields appended since the first release default when an older file lacks them.
_DEFAULTS_18_ON = [0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def dump_service(s: ServiceState) -> str:
    b, a = s.breaker, s.adaptive
    return json.dumps([
        s.req_tat, s.tok_tat, s.cost_tat, b.state, b.failures, b.successes, b.opened_at,
        a.rate, a.successes, a.request_cap, a.token_cap, a.cap_until, a.blocked_until,
        s.minute, s.ok, s.failed, s.prev_ok, s.prev_failed,
        b.probes, b.probe_at, a.request_limit, a.token_limit, a.learned_until, a.slowed_at,
        a.throttled_at,
    ])


def load_service(text: str | None) -> ServiceState:
    if not text:
        return ServiceState()
    v = json.loads(text)
    v += _DEFAULTS_18_ON[len(v) - 18:] if len(v) < 25 else []
    return ServiceState(
        v[0], v[1], v[2], BreakerState(v[3], v[4], v[5], v[6], v[18], v[19]),
        AdaptiveState(v[7], v[8], v[9], v[10], v[11], v[12], v[20], v[21], v[22], v[23],
                      v[24]),
        v[13], v[14], v[15], v[16], v[17],
    )


def dump_spends(spends: dict[str, budget.WindowSpend]) -> str:
    return json.dumps({w: [s.start, str(s.spent)] for w, s in spends.items()})


def load_spends(text: str | None) -> dict[str, budget.WindowSpend]:
    if not text:
        return {}
    return {w: budget.WindowSpend(float(v[0]), Decimal(v[1])) for w, v in json.loads(text).items()}


def dump_scope(s: ScopeState) -> str:
    return json.dumps([s.req_tat, s.tok_tat, s.expires,
                       {w: [sp.start, str(sp.spent)] for w, sp in s.spends.items()}])


def load_scope(text: str | None) -> ScopeState:
    if not text:
        return ScopeState()
    v = json.loads(text)
    spends = {w: budget.WindowSpend(float(x[0]), Decimal(x[1])) for w, x in v[3].items()}
    return ScopeState(spends, v[0], v[1], v[2])
