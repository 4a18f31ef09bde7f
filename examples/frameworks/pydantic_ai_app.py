"""pydantic-ai under llm-governor: refusals it classifies the way the provider's would.

pydantic-ai's OpenAI and Anthropic models call the official SDKs, so
``instrument()`` governs every request of an agent run, streamed or not. A
spent budget reaches pydantic-ai as the provider's own "out of credit"
(OpenAI ``insufficient_quota``, Anthropic ``billing_error``), which it raises
as ``ModelQuotaExceededError`` for both providers: an error its Temporal
integration does not retry by default. ``llm_governor.refusal(exc)`` finds
the governor's refusal behind it.

Offline: the SDKs talk to the bundled fake provider on 127.0.0.1.
Needs the ``frameworks`` extra: pip install 'llm-governor[frameworks]'.

Run: python examples/frameworks/pydantic_ai_app.py
"""

from __future__ import annotations

import asyncio

from anthropic import AsyncAnthropic
from openai import AsyncOpenAI
from pydantic_ai import Agent
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

import llm_governor
from llm_governor.testing import FakeProvider

CONFIG = {"backend": "memory", "reservation": "learned", "learned": {"warmup": 2},
          "scopes": {"tenant": {"per_day": "0.0005",
                                "overrides": {"small-anthropic": {"per_day": "0.002"}}}}}


async def main() -> None:
    with FakeProvider() as fake:
        gov = llm_governor.instrument(CONFIG)
        # clients of our own, closed before the event loop ends
        openai_client = AsyncOpenAI(base_url=fake.openai_base_url, api_key="sk-example")
        anthropic_client = AsyncAnthropic(base_url=fake.anthropic_base_url,
                                          api_key="sk-ant-example")
        models = {
            "openai": OpenAIChatModel("gpt-4o-mini",
                                      provider=OpenAIProvider(openai_client=openai_client)),
            "anthropic": AnthropicModel("claude-3-5-haiku-latest", provider=AnthropicProvider(
                anthropic_client=anthropic_client)),
        }
        for name, model in models.items():
            agent = Agent(model, instructions="Answer briefly.")
            result = await agent.run("Say hi")
            async with agent.run_stream("Tell me a story") as streamed:
                text = [t async for t in streamed.stream_text()]
            print(f"{name}: {result.output[:30]!r}, streamed {len(text)} updates")
        await asyncio.sleep(0.1)
        costs = gov.backend.counters().get("cost", {})
        charged = sum(c for m in costs.values() for c in m.values())
        print(f"charged ${charged}, billed ${fake.ledger.total_billed()}")

        for name, model in models.items():
            with llm_governor.scope(tenant=f"small-{name}"):
                for n in range(1000):
                    try:
                        # pydantic-ai caps Anthropic calls at the model's output limit
                        # ($0.03 for claude-3-5-haiku): cap them at what you need
                        await Agent(model).run("Another question",
                                               model_settings={"max_tokens": 100})
                    except Exception as exc:  # pydantic-ai's ModelQuotaExceededError
                        refused = llm_governor.refusal(exc)
                        if refused is None:
                            raise
                        print(f"{name}: stopped after {n} runs with {type(exc).__name__} "
                              f"(retry_after={getattr(exc, 'retry_after', None)}) from "
                              f"{type(refused).__name__}")
                        break
        await openai_client.close()
        await anthropic_client.close()
        llm_governor.uninstrument()
        gov.close()


asyncio.run(main())
