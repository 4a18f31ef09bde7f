"""api.rate_limited: what each decorated call tells the governor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import llm_governor
from llm_governor.context import cost_estimate
from llm_governor.governor import CallSpec, Governor


def _recording(gov: Governor, monkeypatch: pytest.MonkeyPatch) -> list[CallSpec]:
    seen: list[CallSpec] = []
    call, acall = gov.call, gov.acall

    def record(spec: CallSpec, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        seen.append(spec)
        return call(spec, fn, *args, **kwargs)

    async def arecord(spec: CallSpec, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        seen.append(spec)
        return await acall(spec, fn, *args, **kwargs)

    monkeypatch.setattr(gov, "call", record)
    monkeypatch.setattr(gov, "acall", arecord)
    return seen


def test_each_call_states_service_operation_priority_and_cost(
        governor_factory: Callable[..., Governor], monkeypatch: pytest.MonkeyPatch) -> None:
    gov = governor_factory({"services": {"svc": {"cost_per_request": "0.002"}}})
    seen = _recording(gov, monkeypatch)

    @llm_governor.rate_limited("svc")
    def plain() -> int:
        return 1

    @llm_governor.rate_limited("svc", llm_governor.Priority.HIGH, "0.01", model="m1")
    def stated() -> int:
        return 2

    assert plain() == 1 and stated() == 2 and plain() == 1
    with cost_estimate("0.5"):
        plain()
        plain()
    plain()
    assert seen[0] == CallSpec("svc", operation="plain", cost=Decimal("0.002"))
    assert seen[0].priority is None  # NORMAL: the context's priority applies
    assert seen[1] == CallSpec("svc", operation="stated", model="m1",
                               priority=llm_governor.Priority.HIGH, cost=Decimal("0.01"))
    # a spec is immutable: calls with the very same cost share one, another cost gets its own
    assert seen[2] is seen[0]
    assert seen[3].cost == Decimal("0.5") and seen[4] is seen[3]
    assert seen[5] == seen[0] and seen[5].cost == Decimal("0.002")
    assert [s.cost for s in seen] == [Decimal(x) for x in
                                      ("0.002", "0.01", "0.002", "0.5", "0.5", "0.002")]


def test_an_async_function_states_the_same(
        governor_factory: Callable[..., Governor], monkeypatch: pytest.MonkeyPatch) -> None:
    gov = governor_factory({"services": {"svc": {"cost_per_request": "0.003"}}})
    seen = _recording(gov, monkeypatch)

    @llm_governor.rate_limited("svc", llm_governor.Priority.LOW)
    async def work() -> int:
        return 3

    assert asyncio.run(work()) == 3
    assert seen == [CallSpec("svc", operation="work", priority=llm_governor.Priority.LOW,
                             cost=Decimal("0.003"))]
