"""The built-in custom policies, on an exact clock, and the request digest."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from llm_governor import Priority
from llm_governor.policies.custom import (
    CallInfo,
    Refuse,
    Substitute,
    digest,
    downgrade_when_budget_low,
    loop_guard,
)
from tests.conftest import FakeClock


def info(model: str | None = "gpt-4o", fraction: float | None = 1.0, body: Any = "same",
         labels: dict[str, str] | None = None, reads: list[str] | None = None) -> CallInfo:
    reads = [] if reads is None else reads

    def budget() -> tuple[Decimal | None, float | None]:
        reads.append("budget")
        return (None, None) if fraction is None else (Decimal("1"), fraction)

    return CallInfo(service="openai", model=model, operation="chat", priority=Priority.NORMAL,
                    labels=labels or {}, estimated_cost=Decimal("0.01"), estimated_tokens=100,
                    budget=budget, fingerprint=lambda: digest("openai", model, body))


def test_downgrade_only_below_the_threshold_and_only_mapped_models() -> None:
    policy = downgrade_when_budget_low({"gpt-4o": "gpt-4o-mini"}, below=0.2)
    assert policy(info(fraction=0.5)) is None
    assert policy(info(fraction=0.2)) is None
    assert policy(info(fraction=0.19)) == Substitute("gpt-4o-mini")
    assert policy(info(fraction=None)) is None  # no budget: nothing is low
    assert policy(info(model="o3", fraction=0.0)) is None


def test_downgrade_reads_the_budget_only_for_models_it_maps() -> None:
    policy = downgrade_when_budget_low({"gpt-4o": "gpt-4o-mini"})
    reads: list[str] = []
    policy(info(model="o3", reads=reads))
    assert reads == []
    policy(info(model="gpt-4o", reads=reads))
    assert reads == ["budget"]


@pytest.mark.parametrize("bad", [{"gpt-4o": ""}, {"gpt-4o": "gpt-4o"}, {"gpt-4o": 3}])
def test_downgrade_rejects_a_mapping_that_is_not_one(bad: Any) -> None:
    with pytest.raises(ValueError, match="substitute must be another model"):
        downgrade_when_budget_low(bad)


@pytest.mark.parametrize("below", [0, -0.1, 1.5])
def test_downgrade_rejects_a_fraction_outside_0_1(below: float) -> None:
    with pytest.raises(ValueError, match=f"below={below!r}"):
        downgrade_when_budget_low({"a": "b"}, below=below)


def test_loop_guard_refuses_beyond_max_identical_within_the_window() -> None:
    clock = FakeClock(0.0)
    guard = loop_guard(max_identical=3, per_seconds=60, clock=clock)
    assert [guard(info()) for _ in range(3)] == [None, None, None]
    verdict = guard(info())
    assert isinstance(verdict, Refuse) and "4 identical requests within 60s" in verdict.reason
    assert guard(info(body="different")) is None
    assert guard(info(labels={"user": "other"})) is None  # per scope
    clock.advance(60.0)
    assert guard(info()) is None  # the window moved on


def test_loop_guard_stays_bounded() -> None:
    guard = loop_guard(max_identical=2, max_tracked=100, clock=FakeClock(0.0))
    for i in range(1000):
        guard(info(body=i))
    assert len(guard._seen) == 100


@pytest.mark.parametrize(("kw", "message"), [({"max_identical": 0}, "max_identical=0"),
                                              ({"per_seconds": 0}, "per_seconds=0")])
def test_loop_guard_rejects_bad_settings(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loop_guard(**kw)


def test_digest_is_stable_for_equal_requests_and_differs_otherwise() -> None:
    a = digest({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1})
    b = digest({"n": 1, "messages": [{"content": "hi", "role": "user"}], "model": "m"})
    c = digest({"model": "m", "messages": [{"role": "user", "content": "hi!"}], "n": 1})
    assert a == b != c
    assert digest(b"\x00audio") != digest(b"\x00audio2")
