"""The OpenAI Agents SDK under llm-governor: a budget stop ends the run at once.

The Agents SDK calls the openai SDK, so ``instrument()`` governs every model
call of a run, streamed or not, charged exactly what the provider bills. A
spent budget is refused as OpenAI's own "out of credit" (``insufficient_quota``,
``x-should-retry: false``, no ``retry-after``), so the runner's retry policies
(``provider_suggested()``, ``retry_after()``, ``http_status([429])``) decline
to retry it and the run ends in milliseconds instead of sleeping until the
budget's day resets. ``llm_governor.refusal(exc)`` finds the refusal.

Offline: the SDK talks to the bundled fake provider on 127.0.0.1.
Needs the ``frameworks`` extra: pip install 'llm-governor[frameworks]'.

Run: python examples/frameworks/openai_agents_app.py
"""

from __future__ import annotations

import asyncio
import time

from agents import (
    Agent,
    ModelRetrySettings,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    retry_policies,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

import llm_governor
from llm_governor.testing import FakeProvider

set_tracing_disabled(True)  # offline: no trace export
CONFIG = {"backend": "memory", "reservation": "learned", "learned": {"warmup": 2},
          "scopes": {"job": {"per_day": "0.0004"}}}
RETRY = ModelRetrySettings(max_retries=3, policy=retry_policies.any(
    retry_policies.provider_suggested(), retry_policies.retry_after(),
    retry_policies.http_status([429])))


async def main() -> None:
    with FakeProvider() as fake:
        gov = llm_governor.instrument(CONFIG)
        async with AsyncOpenAI(api_key="sk-example", base_url=fake.openai_base_url) as client:
            agent = Agent(name="assistant", instructions="Answer briefly.",
                          model=OpenAIChatCompletionsModel("gpt-4o-mini", client),
                          model_settings=ModelSettings(retry=RETRY))

            def charged() -> str:
                costs = gov.backend.counters().get("cost", {})
                return str(sum(c for models in costs.values() for c in models.values()))

            result = await Runner.run(agent, "Say hi")
            print("run:", str(result.final_output)[:30])
            streamed = Runner.run_streamed(agent, "Tell me a story")
            events = [event async for event in streamed.stream_events()]
            await asyncio.sleep(0.1)
            print(f"streamed run: {len(events)} events; charged ${charged()}, "
                  f"billed ${fake.ledger.total_billed()}")

            start = time.monotonic()
            with llm_governor.job("nightly-batch"):
                for n in range(1000):
                    run_start = time.monotonic()
                    try:
                        await Runner.run(agent, "Summarise the next document")
                    except Exception as exc:
                        refused = llm_governor.refusal(exc)
                        if refused is None:
                            raise
                        print(f"budget stop after {n} runs; the refused run ended in "
                              f"{time.monotonic() - run_start:.3f}s: {type(refused).__name__}, "
                              f"retry worth it: {refused.should_retry}")
                        break
            print(f"batch took {time.monotonic() - start:.2f}s; charged ${charged()}, "
                  f"billed ${fake.ledger.total_billed()}")
        llm_governor.uninstrument()
        gov.close()


asyncio.run(main())
