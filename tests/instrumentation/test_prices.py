"""Spend matches the invoice, rule by rule: the governor's charge equals the fake
provider's ledger (which bills by the providers' price rules from genai-prices' data),
Decimal for Decimal, through the unmodified SDKs, sync and async: Anthropic prompt-cache
writes (5-minute and 1-hour) and reads, OpenAI service tiers (flex, priority), Gemini
cached content, and reasoning tokens billed as output. Each call's reservation covers
its charge (no overrun).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from google import genai
from google.genai import types

from llm_governor.testing import FakeProvider

from .conftest import FAST, Driver, Governed, spent

HAIKU = "claude-3-5-haiku-latest"
MINI = "gpt-5-mini"
LONG = "You are a careful assistant. " * 40


def _cached_system(ttl: str | None) -> list[dict[str, Any]]:
    control: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        control["ttl"] = ttl
    return [{"type": "text", "text": LONG, "cache_control": control}]


@pytest.mark.parametrize("ttl", [None, "1h"], ids=["5m", "1h"])
async def test_anthropic_cache_writes_and_reads_cost_what_the_ledger_bills(
        governed: Governed, fake: FakeProvider, driver: Driver, ttl: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    gov = governed()
    usages = []
    for _ in range(3):  # a write, then two reads of the same prefix
        reply = await driver.call(driver.anthropic.messages.create, model=HAIKU, max_tokens=16,
                                  system=_cached_system(ttl),
                                  messages=[{"role": "user", "content": "Hi"}])
        usages.append(reply.usage)
    written, read = usages[0], usages[1]
    assert written.cache_creation_input_tokens > 0 and written.cache_read_input_tokens == 0
    one_hour = written.cache_creation.ephemeral_1h_input_tokens
    assert one_hour == (written.cache_creation_input_tokens if ttl else 0)
    assert read.cache_read_input_tokens == written.cache_creation_input_tokens
    entries = fake.ledger.entries
    assert entries[0].cost > entries[1].cost  # a write costs more than the read after it
    assert spent(gov) == fake.ledger.total_billed()
    assert "above its reservation" not in caplog.text


@pytest.mark.parametrize("tier", ["flex", "priority", "default"])
async def test_openai_service_tiers_cost_what_the_ledger_bills(
        governed: Governed, fake: FakeProvider, driver: Driver, tier: str,
        caplog: pytest.LogCaptureFixture) -> None:
    gov = governed()
    reply = await driver.call(driver.openai.chat.completions.create, model=MINI,
                              max_completion_tokens=32, service_tier=tier,
                              messages=[{"role": "user", "content": "Hi"}])
    assert reply.service_tier == tier
    assert spent(gov) == fake.ledger.total_billed() > 0
    assert "above its reservation" not in caplog.text
    tokens = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    default = Decimal("0.25") * tokens[0] / 10**6 + Decimal(2) * tokens[1] / 10**6
    factor = {"flex": Decimal("0.5"), "priority": Decimal("1.8"), "default": Decimal(1)}[tier]
    assert spent(gov) == default * factor


async def test_gemini_cached_content_costs_what_the_ledger_bills(
        governed: Governed, fake: FakeProvider, is_async: bool) -> None:
    gov = governed({"services": {"gemini": FAST}})
    client = genai.Client(api_key="gemini-test-SECRET",
                          http_options=types.HttpOptions(base_url=fake.gemini_base_url))
    models: Any = client.aio.models if is_async else client.models
    reply = await Driver.call(models.generate_content, model="gemini-2.5-flash",
                              contents="Summarise the cached document",
                              config=types.GenerateContentConfig(
                                  cached_content="cachedContents/doc-1"))
    assert reply.usage_metadata.cached_content_token_count == 1024
    assert spent(gov) == fake.ledger.total_billed()
    uncached = Decimal("0.30") * reply.usage_metadata.prompt_token_count / 10**6
    assert spent(gov) < uncached  # the cached part at the cache-read price


async def test_reasoning_tokens_are_billed_as_output(governed: Governed,
                                                     is_async: bool) -> None:
    with FakeProvider(reasoning_tokens=12) as fake:
        driver = Driver(fake, is_async)
        gov = governed()
        reply = await driver.call(driver.openai.chat.completions.create, model=MINI,
                                  max_completion_tokens=40,
                                  messages=[{"role": "user", "content": "Think"}])
        assert reply.usage.completion_tokens_details.reasoning_tokens == 12
        assert spent(gov) == fake.ledger.total_billed()
        output = Decimal(2) * reply.usage.completion_tokens / 10**6
        assert spent(gov) == Decimal("0.25") * reply.usage.prompt_tokens / 10**6 + output
