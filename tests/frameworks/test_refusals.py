"""Each framework's own retry logic declines to retry a spent budget, and retries (or
waits) a rate refusal; ``llm_governor.refusal(exc)`` finds the refusal it re-wrapped.

A spent budget (its day resets after ``retry.max_wait``) is "out of credit" in
the SDK's own terms: ``x-should-retry: false``, no ``retry-after``, OpenAI's
``insufficient_quota`` / Anthropic's ``billing_error``.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest

import llm_governor
from llm_governor import BudgetExceededError, RateLimitExceededError
from llm_governor.testing import FakeProvider
from tests.instrumentation.conftest import Governed, calls, eventually, spent

from .conftest import need

KEY, ANT_KEY = "sk-test-frameworks", "sk-ant-test-frameworks"
SPENT = {"budget": {"per_day": "0.01"}}  # a gpt-4o call reserves $0.16: refused at once
# one call per 2.5 s: the next is refused even when a loaded machine takes a second or
# more over the first call's answer (its first parse of the SDK's response types)
SLOW = {"services": {name: {"max_tokens": 1, "refill_rate": 0.4, "request_timeout": 0.05}
                     for name in ("openai", "anthropic")}}


# ---------------------------------------------------------------- LangChain
def chat_models(fake: FakeProvider) -> dict[str, Any]:
    need("langchain_openai", "langchain_anthropic")
    from langchain_anthropic import ChatAnthropic
    from langchain_openai import ChatOpenAI

    return {"openai": ChatOpenAI(model="gpt-4o", api_key=KEY, base_url=fake.openai_base_url,
                                 max_retries=2),
            "anthropic": ChatAnthropic(model="claude-3-5-haiku-latest", api_key=ANT_KEY,
                                       base_url=fake.anthropic_base_url, max_tokens=8192,
                                       max_retries=2)}


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_langchain_with_retry_does_not_retry_a_spent_budget(
        sdk: str, fake: FakeProvider, governed: Governed) -> None:
    gov = governed(SPENT)
    model = chat_models(fake)[sdk]
    attempts: list[BaseException] = []

    def retryable(exc: BaseException) -> bool:
        attempts.append(exc)
        return llm_governor.retryable(exc)

    start = time.monotonic()
    with pytest.raises(Exception) as caught:
        model.with_retry(retry_if_exception_type=retryable, stop_after_attempt=3).invoke("hi")
    assert time.monotonic() - start < 1.0 and len(attempts) == 1  # asked once, declined
    assert type(caught.value).__module__.startswith(f"langchain_{sdk}")  # re-wrapped
    refused = llm_governor.refusal(caught.value)
    assert isinstance(refused, BudgetExceededError)
    assert refused.reservation_bound == (sdk == "openai")  # ChatAnthropic caps at 8192
    assert not isinstance(caught.value, llm_governor.GovernorError)
    assert len(fake.ledger) == 0 and calls(gov) == 0


def test_langchain_with_retry_retries_a_rate_refusal(fake: FakeProvider,
                                                      governed: Governed) -> None:
    governed(SLOW)
    model = chat_models(fake)["openai"].bind(max_tokens=5)
    model.invoke("take the only token")
    attempts: list[bool] = []

    def retryable(exc: BaseException) -> bool:
        attempts.append(llm_governor.retryable(exc))
        return attempts[-1]

    chain = model.with_retry(retry_if_exception_type=retryable, stop_after_attempt=2,
                             exponential_jitter_params={"initial": 2.7, "max": 2.7,
                                                        "jitter": 0.0})
    assert chain.invoke("then wait for the next").content  # the second attempt went through
    assert attempts == [True]
    assert isinstance(llm_governor.refusal(RateLimitExceededError("x")), RateLimitExceededError)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_langchain_streams_cost_the_bill(sdk: str, fake: FakeProvider,
                                         governed: Governed) -> None:
    need("langchain_openai", "langchain_anthropic")
    from langchain_anthropic import ChatAnthropic
    from langchain_openai import ChatOpenAI

    gov = governed()
    model: Any = ChatOpenAI(model="gpt-4o", api_key=KEY, base_url=fake.openai_base_url,
                            include_response_headers=True) if sdk == "openai" else \
        ChatAnthropic(model="claude-3-5-haiku-latest", api_key=ANT_KEY,
                      base_url=fake.anthropic_base_url)
    chunks = list(model.stream("Tell me a story"))
    assert len(chunks) > 5
    assert asyncio.run(eventually(lambda: calls(gov) == 1))
    billed = fake.ledger.total_billed()
    assert spent(gov) == billed > 0  # not the $0.16 reservation of a gpt-4o call
    assert billed < Decimal("0.001")


# ---------------------------------------------------------------- Agents SDK
async def test_agents_sdk_run_ends_at_once_on_a_spent_budget(
        fake: FakeProvider, governed: Governed) -> None:
    need("agents")
    from agents import (
        Agent,
        ModelRetrySettings,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        retry_policies,
        set_tracing_disabled,
    )
    from agents.models._openai_retry import get_openai_retry_advice
    from agents.retry import ModelRetryAdviceRequest
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    governed(SPENT)
    policies = {
        "provider_suggested": retry_policies.provider_suggested(),
        "retry_after": retry_policies.retry_after(),
        "any(provider_suggested, retry_after, http_status([429]))": retry_policies.any(
            retry_policies.provider_suggested(), retry_policies.retry_after(),
            retry_policies.http_status([429])),
    }
    client = AsyncOpenAI(api_key=KEY, base_url=fake.openai_base_url)
    for name, policy in policies.items():
        agent = Agent(name="a", model=OpenAIChatCompletionsModel("gpt-4o", client),
                      model_settings=ModelSettings(
                          retry=ModelRetrySettings(max_retries=3, policy=policy)))
        start = time.monotonic()
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(Runner.run(agent, "hi"), timeout=30)
        assert time.monotonic() - start < 1.0, name  # it used to sleep until midnight
        assert isinstance(llm_governor.refusal(caught.value), BudgetExceededError), name
    advice = get_openai_retry_advice(ModelRetryAdviceRequest(error=caught.value, attempt=1,
                                                             stream=False))
    assert advice is not None and advice.suggested is False and advice.retry_after is None
    assert len(fake.ledger) == 0


# ---------------------------------------------------------------- pydantic-ai
def pydantic_models(fake: FakeProvider) -> dict[str, Any]:
    need("pydantic_ai")
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.anthropic import AnthropicProvider
    from pydantic_ai.providers.openai import OpenAIProvider

    return {"openai": OpenAIChatModel("gpt-4o", provider=OpenAIProvider(
                base_url=fake.openai_base_url, api_key=KEY)),
            "anthropic": AnthropicModel("claude-3-5-haiku-latest", provider=AnthropicProvider(
                base_url=fake.anthropic_base_url, api_key=ANT_KEY))}


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_pydantic_ai_sees_a_spent_budget_as_exhausted_quota(
        sdk: str, fake: FakeProvider, governed: Governed) -> None:
    """Both providers' refusals are ModelQuotaExceededError (not retried by pydantic-ai's
    Temporal integration by default), not ModelRateLimitError, and carry no retry_after."""
    from pydantic_ai import Agent
    from pydantic_ai.exceptions import ModelQuotaExceededError, ModelRateLimitError

    governed(SPENT)
    model = pydantic_models(fake)[sdk]
    with pytest.raises(ModelQuotaExceededError) as caught:
        await Agent(model).run("hi")
    assert not isinstance(caught.value, ModelRateLimitError)
    assert caught.value.retry_after is None
    assert isinstance(llm_governor.refusal(caught.value), BudgetExceededError)
    assert len(fake.ledger) == 0


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_pydantic_ai_sees_a_rate_refusal_as_a_rate_limit(
        sdk: str, fake: FakeProvider, governed: Governed) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.exceptions import ModelRateLimitError

    governed(SLOW)
    model = pydantic_models(fake)[sdk]
    await Agent(model).run("take the only token", model_settings={"max_tokens": 5})
    with pytest.raises(ModelRateLimitError) as caught:
        await Agent(model).run("too soon", model_settings={"max_tokens": 5})
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert isinstance(llm_governor.refusal(caught.value), RateLimitExceededError)
