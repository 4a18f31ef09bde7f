"""Scopes, observe mode and custom policies through the unmodified SDKs, on the wire.

* a tenant's budget refuses as the SDK's own ``RateLimitError`` that is also a
  :class:`BudgetExceededError` naming the tenant, before anything is sent;
* observe mode: the same requests reach the provider as bare, with no wait
  and no refusal, while the governor counts what it would have done;
* ``Substitute``: the provider sees the substituted model, for every SDK, and
  the governor's books (priced at the new model) equal the provider's bill;
* ``loop_guard``: identical requests beyond the limit never leave the process.
"""

from __future__ import annotations

import contextlib
import time
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

import llm_governor
from llm_governor import (
    BudgetExceededError,
    CallInfo,
    PolicyRefusedError,
    Substitute,
    downgrade_when_budget_low,
    loop_guard,
    scope,
)
from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed, spent
from .test_deepgram import Deepgram
from .test_gemini import Gemini

MESSAGES: Any = [{"role": "user", "content": "Tell me about tenants"}]
GPT, MINI = "gpt-4o", "gpt-4o-mini"


async def chat(d: Driver, model: str = GPT, **kw: Any) -> Any:
    kw.setdefault("messages", MESSAGES)
    return await d.call(d.openai.chat.completions.create, model=model, max_tokens=50, **kw)


def models(fake: FakeProvider) -> list[str]:
    return [e.model for e in fake.ledger.entries]


async def test_a_tenant_budget_refuses_as_the_sdk_error_naming_the_tenant(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    gov = governed({"scopes": {"tenant": {"per_day": "0.002"}}})
    with scope(tenant="acme"):
        await chat(driver)
        with pytest.raises(openai.RateLimitError) as info:
            for _ in range(20):
                await chat(driver)
    err = info.value
    assert isinstance(err, BudgetExceededError) and err.scope == ("tenant", "acme")
    assert err.window == "day"
    sent = len(fake.ledger)
    with scope(tenant="beta"):
        await chat(driver)  # another tenant's calls go on
    assert len(fake.ledger) == sent + 1
    acme = gov.scope_report("tenant", "acme")["tenant=acme"]["windows"]["day"]
    assert acme["spent"] <= Decimal("0.002") and acme["reserved"] == 0
    assert spent(gov) == fake.ledger.total_billed()


async def test_observe_mode_sends_exactly_what_bare_sends_without_waiting(
        is_async: bool, fake: FakeProvider, governed: Governed) -> None:
    async def run(d: Driver) -> list[tuple[int, str]]:
        fake.reset()
        for i in range(12):
            with scope(tenant="acme"), contextlib.suppress(openai.RateLimitError):
                # the provider's own 429s, in both runs
                await chat(d, messages=[{"role": "user", "content": f"q{i}"}])
        return [(e.status, e.body_sha256) for e in fake.ledger.entries]

    fake.fail_next(1, 429, retry_after=0.0, provider="openai")
    bare = await run(Driver(fake, is_async, max_retries=0))
    gov = governed({"mode": "observe", "budget": {"per_day": "0.001"},
                    "scopes": {"tenant": {"requests_per_minute": 2}},
                    "services": {"openai": {"max_tokens": 1, "refill_rate": 0.05,
                                            "max_interval": 30.0}}})
    fake.fail_next(1, 429, retry_after=0.0, provider="openai")
    started = time.monotonic()
    observed = await run(Driver(fake, is_async, max_retries=0))
    assert time.monotonic() - started < 5.0  # enforced, the limits would take minutes
    assert observed == bare  # same requests, same bodies, same order, same replies
    counted = gov.backend.counters()["requests"]["openai"]
    assert counted["would_budget_exceeded"] >= 10 and "budget_exceeded" not in counted
    assert spent(gov) == fake.ledger.total_billed()


async def test_substitute_reaches_the_provider_for_openai_and_anthropic(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    def cheaper(info: CallInfo) -> Substitute | None:
        swaps = {GPT: MINI, "claude-sonnet-4-0": "claude-3-5-haiku-latest"}
        return Substitute(swaps[info.model]) if info.model in swaps else None

    gov = governed(policies=[cheaper])
    await chat(driver)
    stream = await chat(driver, stream=True)
    await driver.collect(stream)
    await driver.call(driver.anthropic.messages.create, model="claude-sonnet-4-0",
                      max_tokens=50, messages=MESSAGES)
    assert models(fake) == [MINI, MINI, "claude-3-5-haiku-latest"]
    assert spent(gov) == fake.ledger.total_billed()
    costs = gov.backend.counters()["cost"]
    assert set(costs["openai"]) == {MINI} and set(costs["anthropic"]) == {
        "claude-3-5-haiku-latest"}


async def test_substitute_reaches_gemini_and_deepgram(is_async: bool, fake: FakeProvider,
                                                      governed: Governed) -> None:
    swaps = {"gemini-2.0-flash": "gemini-2.0-flash-lite", "nova-2": "nova-3"}
    gov = governed({"services": {"gemini": {"max_tokens": 100, "refill_rate": 100.0},
                                 "deepgram": {"max_tokens": 100, "refill_rate": 100.0}}},
                   policies=[lambda info: Substitute(swaps[info.model])
                             if info.model in swaps else None])
    gemini, deepgram = Gemini(fake, is_async), Deepgram(fake, is_async)
    await gemini.generate()
    await deepgram.file(model="nova-2")
    assert models(fake) == ["gemini-2.0-flash-lite", "nova-3"]
    assert spent(gov) == fake.ledger.total_billed()


async def test_downgrade_when_a_tenant_budget_runs_low(driver: Driver, fake: FakeProvider,
                                                      governed: Governed) -> None:
    governed({"scopes": {"tenant": {"per_day": "0.002"}}},
             policies=[downgrade_when_budget_low({GPT: MINI}, below=0.5)])
    with scope(tenant="acme"):
        for _ in range(8):
            try:
                await chat(driver)
            except openai.RateLimitError:
                break
    used = models(fake)
    assert used[0] == GPT and MINI in used
    first_mini = used.index(MINI)
    assert set(used[:first_mini]) == {GPT} and set(used[first_mini:]) == {MINI}


async def test_loop_guard_stops_identical_requests_before_the_provider(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    governed(policies=[loop_guard(max_identical=3, per_seconds=60)])
    for _ in range(3):
        await chat(driver)
    with pytest.raises(openai.RateLimitError) as info:
        await chat(driver)
    assert isinstance(info.value, PolicyRefusedError) and info.value.policy == "loop_guard"
    assert len(fake.ledger) == 3
    await chat(driver, model=MINI)  # a different request goes through
    with scope(user="someone-else"):
        await chat(driver)  # so does the same request in another scope
    assert len(fake.ledger) == 5


async def test_a_policy_that_raises_never_breaks_an_sdk_call(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    def broken(info: CallInfo) -> None:
        raise RuntimeError("policy bug")

    governed(policies=[broken])
    reply = await driver.call(driver.anthropic.messages.create, model="claude-3-5-haiku-latest",
                              max_tokens=20, messages=MESSAGES)
    assert isinstance(reply, anthropic.types.Message)
    assert len(fake.ledger) == 1


def test_policies_never_read_the_budget_unless_asked(fake: FakeProvider,
                                                     governed: Governed) -> None:
    reads: list[str] = []
    gov = governed({"budget": {"per_day": "5"}}, policies=[lambda info: None])
    original = gov.budget_report

    def spy() -> Any:
        reads.append("read")
        return original()

    gov.budget_report = spy  # type: ignore[method-assign]
    client = openai.OpenAI(api_key="sk-test", base_url=fake.openai_base_url)
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=5)
    assert reads == []
    llm_governor.uninstrument()
