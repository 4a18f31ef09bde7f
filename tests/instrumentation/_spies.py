"""Test helpers shared by the adapter tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from llm_governor.governor import Governor


class SettlementSpy:
    """Spies on the backend: the reservation admitted and every settlement made."""

    def __init__(self, gov: Governor) -> None:
        self.reserved: list[Decimal] = []
        self.settled: list[Decimal] = []
        backend = gov.backend
        admit, settle = backend.admit, backend.settle

        def spy_admit(req: Any, lease_id: Any, ttl: float) -> Any:
            decision = admit(req, lease_id, ttl)
            if decision.admitted and lease_id is not None:
                self.reserved.append(req.cost)
            return decision

        def spy_settle(lease_id: Any, limits: Any, obs: Any, record: Any) -> None:
            self.settled.append(record.cost)
            settle(lease_id, limits, obs, record)

        backend.admit = spy_admit  # type: ignore[method-assign]
        backend.settle = spy_settle  # type: ignore[method-assign]
