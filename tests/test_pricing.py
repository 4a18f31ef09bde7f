"""The providers' price rules in :class:`llm_governor.pricing.Pricer`, checked against
the figures of genai-prices' bundled data (USD per million tokens, written out here so
a change in either shows): Anthropic cache writes by TTL, cache reads, OpenAI service
tiers and the Batch API, Gemini cached content, reasoning tokens as output, the
estimate's upper bound for cache writes and tiers, ``[prices]`` overrides, and the one
warning for a model nothing prices.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from decimal import Decimal

import pytest

from llm_governor.config import PriceOverride, RateLimitConfig
from llm_governor.pricing import Pricer, Usage

M = 1_000_000
CFG = RateLimitConfig()
HAIKU = "claude-3-5-haiku-latest"  # $0.80 in, $4 out, $0.08 read, $1 5m write, $1.60 1h write
MINI = "gpt-5-mini"  # $0.25 in, $2 out; flex $0.125/$1, priority $0.45/$3.60, batch $0.125/$1
FLASH = "gemini-2.5-flash"  # $0.30 in, $2.50 out, $0.03 cache read


@pytest.fixture
def pricer() -> Pricer:
    return Pricer()


def test_anthropic_cache_writes_are_priced_by_ttl(pricer: Pricer) -> None:
    plain = pricer.cost("anthropic", HAIKU, Usage(M, 0), CFG)
    five = pricer.cost("anthropic", HAIKU, Usage(M, 0, cache_write_tokens=M), CFG)
    hour = pricer.cost("anthropic", HAIKU, Usage(M, 0, cache_write_tokens=M,
                                                 cache_write_1h_tokens=M), CFG)
    both = pricer.cost("anthropic", HAIKU, Usage(3 * M, 0, cache_write_tokens=2 * M,
                                                 cache_write_1h_tokens=M), CFG)
    assert (plain, five, hour) == (Decimal("0.80"), Decimal("1.00"), Decimal("1.60"))
    assert five == plain * Decimal("1.25") and hour == plain * 2
    assert both == Decimal("0.80") + Decimal("1.00") + Decimal("1.60")


def test_cache_reads_are_priced_at_the_cache_read_price(pricer: Pricer) -> None:
    assert pricer.cost("anthropic", HAIKU, Usage(M, 0, M), CFG) == Decimal("0.08")
    # Gemini cached content (cachedContentTokenCount): part of the prompt, read price
    assert pricer.cost("gemini", FLASH, Usage(2 * M, 0, M), CFG) == Decimal("0.33")


def test_openai_service_tiers_and_batch(pricer: Pricer) -> None:
    usage = Usage(M, M)
    assert pricer.cost("openai", MINI, usage, CFG) == Decimal("2.25")
    for tier in ("default", "auto", None):
        assert pricer.cost("openai", MINI, Usage(M, M, service_tier=tier), CFG) == \
            Decimal("2.25")
    assert pricer.cost("openai", MINI, Usage(M, M, service_tier="flex"), CFG) == \
        Decimal("1.125")
    assert pricer.cost("openai", MINI, Usage(M, M, service_tier="priority"), CFG) == \
        Decimal("4.05")
    batch = pricer.cost("openai", MINI, Usage(M, M, batch=True), CFG)
    assert batch == Decimal("1.125") == pricer.cost("openai", MINI, usage, CFG) / 2


def test_reasoning_tokens_are_output(pricer: Pricer) -> None:
    # reasoning is part of output_tokens: it costs what output costs, counted once
    with_reasoning = pricer.cost("openai", MINI, Usage(0, M, reasoning_tokens=M // 2), CFG)
    assert with_reasoning == pricer.cost("openai", MINI, Usage(0, M), CFG) == Decimal(2)


def test_estimates_bound_cache_writes_and_tiers(pricer: Pricer) -> None:
    plain, _ = pricer.estimate("anthropic", HAIKU, CFG, prompt_bytes=M, max_output_tokens=0)
    five, _ = pricer.estimate("anthropic", HAIKU, CFG, prompt_bytes=M, max_output_tokens=0,
                              cache_ttl="5m")
    hour, _ = pricer.estimate("anthropic", HAIKU, CFG, prompt_bytes=M, max_output_tokens=0,
                              cache_ttl="1h")
    assert (plain, five, hour) == (Decimal("0.80"), Decimal("1.00"), Decimal("1.60"))
    priority, _ = pricer.estimate("openai", MINI, CFG, prompt_bytes=M, max_output_tokens=M,
                                  service_tier="priority")
    assert priority == Decimal("4.05") >= pricer.cost(
        "openai", MINI, Usage(M, M, service_tier="priority"), CFG)


def test_overrides_price_caches_by_the_same_rules() -> None:
    pricer = Pricer({"my-claude": PriceOverride(input=Decimal(1), output=Decimal(5),
                                                cached_input=Decimal("0.1"))})
    usage = Usage(4 * M, 0, cache_read_tokens=M, cache_write_tokens=2 * M,
                  cache_write_1h_tokens=M)
    # 1M plain at $1, 1M read at $0.10, 1M 5-minute write at $1.25, 1M 1-hour write at $2
    assert pricer.cost("anthropic", "my-claude", usage, CFG) == Decimal("4.35")
    explicit = Pricer({"my-claude": PriceOverride(input=Decimal(1), cache_write=Decimal(3),
                                                  cache_write_1h=Decimal(4))})
    assert explicit.cost("anthropic", "my-claude", Usage(2 * M, 0, cache_write_tokens=2 * M,
                                                         cache_write_1h_tokens=M), CFG) == 7


def test_an_unpriced_model_warns_once_naming_it_and_the_key(
        pricer: Pricer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "llm_governor")
    for _ in range(3):
        assert pricer.cost("local_llm", "my-finetune-7b", Usage(10, 10), CFG) == \
            CFG.cost_per_request
        pricer.estimate("local_llm", "my-finetune-7b", CFG, prompt_bytes=10)
    (record,) = [r for r in caplog.records if "no price known" in r.getMessage()]
    text = record.getMessage()
    assert "'my-finetune-7b'" in text and "[prices]" in text
    assert "local_llm/my-finetune-7b" in text


def test_an_openai_compatible_host_is_priced_by_its_endpoint() -> None:
    pricer = Pricer(base_urls={"deepseek": "https://api.deepseek.com/v1"})
    price = pricer.price("deepseek", "deepseek-chat")
    assert price is not None and price.source == "genai-prices"


def test_instrument_loads_the_price_table_so_no_call_has_to() -> None:
    """Loading genai-prices' table takes 100-150 ms: at start-up, not as the first
    call's latency in every process (a fresh interpreter: the table loads once)."""
    code = (
        "import sys, llm_governor\n"
        "assert 'genai_prices.data' not in sys.modules\n"
        "llm_governor.instrument({'backend': 'memory'})\n"
        "print('genai_prices.data' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "True", out.stderr
