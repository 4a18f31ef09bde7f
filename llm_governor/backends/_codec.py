"""Flat encodings of the policy records, for backends that store text."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

from ..policies import budget
from ..policies.admission import ServiceState
from ..policies.scopes import ScopeState
from . import records

__all__ = ["dump_scope", "dump_service", "dump_spends", "load_scope", "load_service",
           "load_spends"]


# The service state as a JSON array, generated from its one layout (records.py); files
# written before fields were appended (18 of today's 25) read those as their defaults.
dump_service: Callable[[ServiceState], str] = records.dump_json
load_service: Callable[[str | None], ServiceState] = records.load_json


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
