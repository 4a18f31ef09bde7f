"""Observers: the governor's events, told as frozen records, through the unmodified SDKs.

One body per case for the sync and the async openai client against the
loopback fake provider. An application's observer sees each call's events in
order; a failing observer never fails a call; telemetry keeps its per-call
state itself, and none of it outlives the call.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

import llm_governor
from llm_governor import BudgetExceededError, events
from llm_governor.governor import Ticket
from llm_governor.testing import FakeProvider

from .conftest import Driver

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "hi"}]


class Recorder(events.Observer):
    """Every event, in order, as ``(method, record)``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda event: object.__getattribute__(self, "seen").append((name, event))
        return object.__getattribute__(self, name)

    def of_calls(self) -> list[str]:
        """The call's events, without provider limits and without the waits that began
        (``queued``: whether a re-admission waits depends on timing)."""
        return [name for name, event in self.seen if name != "on_provider_limits"
                and getattr(event, "outcome", "") != "queued"]


class Broken(events.Observer):
    def on_admit(self, event: events.Decided) -> None:
        raise RuntimeError("observer bug")

    def on_settle(self, event: events.Settled) -> None:
        raise RuntimeError("observer bug")


async def create(driver: Driver) -> Any:
    return await driver.call(driver.openai.chat.completions.create, model=MODEL,
                             messages=MESSAGES, max_tokens=20)


async def test_a_call_is_told_in_order_as_frozen_records(
        governed: Any, fake: FakeProvider, driver: Driver) -> None:
    gov = governed()
    seen = Recorder()
    gov.add_observer(seen)
    fake.fail_next(1, kind="rate_limit", retry_after=0.01, provider="openai")
    await create(driver)

    assert seen.of_calls() == ["on_start", "on_admit", "on_send", "on_retry", "on_admit",
                               "on_settle"]
    records = [event for _, event in seen.seen]
    call = records[0].call
    assert all(getattr(e, "call", call) is call for e in records)  # one record per call
    assert (call.service, call.model, call.priority) == ("openai", MODEL, "normal")
    admitted = [e for e in records if isinstance(e, events.Decided) and e.outcome != "queued"]
    assert [e.outcome for e in admitted] == ["admitted", "admitted"]
    retried = next(e for e in records if isinstance(e, events.Retried))
    assert (retried.attempt, retried.reason) == (1, "rate_limit")
    settled = records[-1]
    assert isinstance(settled, events.Settled)
    assert settled.ran and settled.error is None and settled.attempts == 2
    assert settled.usage is not None and settled.cost > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.service = "x"
    with pytest.raises(AttributeError):
        settled.cost = Decimal(0)  # type: ignore[misc]


async def test_a_refused_call_ends_with_a_settlement_that_did_not_run(
        governed: Any, fake: FakeProvider, driver: Driver) -> None:
    gov = governed({"budget": {"per_day": "0.000001"}})
    seen = Recorder()
    gov.add_observer(seen)
    with pytest.raises(BudgetExceededError):
        await create(driver)
    assert seen.of_calls() == ["on_start", "on_admit", "on_settle"]
    decided, settled = seen.seen[1][1], seen.seen[2][1]
    assert decided.outcome == "budget_exceeded"
    assert not settled.ran and isinstance(settled.error, BudgetExceededError)
    assert settled.cost == 0 and settled.attempts == 0
    assert fake.ledger.entries == []


async def test_a_failing_observer_never_fails_a_call(
        governed: Any, fake: FakeProvider, driver: Driver) -> None:
    gov = governed()
    gov.add_observer(Broken())
    seen = Recorder()
    gov.add_observer(seen)
    reply = await create(driver)
    assert reply.choices[0].message.content
    assert gov.telemetry_errors == 2  # on_admit and on_settle, each logged once at most
    assert seen.of_calls()[-1] == "on_settle"  # observers after the broken one still hear
    gov.remove_observer(seen)
    await create(driver)
    assert seen.of_calls().count("on_settle") == 1


async def test_provider_limits_are_told_per_limit_scope(
        governed: Any, fake: FakeProvider, driver: Driver) -> None:
    gov = governed()
    fake.set_limits(rpm=50, window=60.0)
    seen = Recorder()
    gov.add_observer(seen)
    await create(driver)
    told = [e for name, e in seen.seen if name == "on_provider_limits"]
    assert len(told) == 1
    assert told[0].service == "openai" and told[0].key.startswith("openai/")
    assert told[0].limits.limit_requests == 50 and told[0].limits.remaining_requests == 49


async def test_telemetry_keeps_its_call_state_itself_and_drops_it_at_settlement(
        governed: Any, fake: FakeProvider, driver: Driver) -> None:
    """The ticket carries no span; telemetry's per-call state is gone once calls end,
    refused ones included."""
    assert not {"span", "client_span", "genai_metrics"} & set(Ticket.__slots__)
    gov = governed({"budget": {"per_day": "0.0005"}})
    kept = Recorder()  # keeps every Call record alive: only settlement may drop the state
    gov.add_observer(kept)
    for _ in range(3):
        await create(driver)
    with pytest.raises(BudgetExceededError):
        for _ in range(100):
            await create(driver)
    assert len(gov.telemetry._calls) == 0
    assert kept.of_calls().count("on_settle") == kept.of_calls().count("on_start") > 3


def test_no_record_is_built_while_no_observer_listens(
        governed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Telemetry without a recording provider does not listen; an observer that does
    not either makes the governor skip every event, and hears them once it listens."""
    gov = governed()
    assert not gov.telemetry.listening  # the suite sets no global OTel providers
    seen = Recorder()
    seen.listening = False
    gov.add_observer(seen)
    built: list[object] = []
    real = events.Started.__new__

    def counting(cls: Any, *args: Any) -> Any:
        built.append(args)
        return real(cls, *args)

    monkeypatch.setattr(events.Started, "__new__", counting)

    @llm_governor.rate_limited("openai", cost=Decimal("0.001"))
    def ok() -> int:
        return 1

    assert ok() == 1
    assert built == [] and seen.seen == []
    seen.listening = True
    assert ok() == 1
    assert len(built) == 1
    assert seen.of_calls() == ["on_start", "on_admit", "on_send", "on_settle"]
