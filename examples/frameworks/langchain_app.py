"""LangChain (langchain-openai, langchain-anthropic) under llm-governor.

ChatOpenAI and ChatAnthropic call the official SDKs, so ``instrument()``
governs every call they make: invoke, stream, and the raw-response stream
``include_response_headers=True`` makes, charged exactly what the provider
bills. LangChain leaves ``max_tokens`` unset, so ``reservation = "learned"``
reserves what gpt-4o-mini recently output instead of its 16,384-token cap.
A trial tenant's budget stops its calls at once: ``.with_retry()`` given
``llm_governor.retryable`` does not retry a spent budget, and
``llm_governor.refusal(exc)`` finds the governor's refusal inside the error
LangChain re-wraps.

Offline: the SDKs talk to the bundled fake provider on 127.0.0.1.
Needs the ``frameworks`` extra: pip install 'llm-governor[frameworks]'.

Run: python examples/frameworks/langchain_app.py
"""

from __future__ import annotations

import time

from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

import llm_governor
from llm_governor.testing import FakeProvider

CONFIG = {
    "backend": "memory",
    "budget": {"per_day": "1.00"},
    "reservation": "learned",  # LangChain sets no max_tokens
    "learned": {"warmup": 3},  # the worst case until 3 calls of a model have settled
    "scopes": {"tenant": {"per_day": "0.05", "overrides": {"trial": {"per_day": "0.0005"}}}},
}

with FakeProvider() as fake:
    gov = llm_governor.instrument(CONFIG)
    gpt = ChatOpenAI(model="gpt-4o-mini", api_key="sk-example", base_url=fake.openai_base_url,
                     include_response_headers=True)
    claude = ChatAnthropic(model="claude-3-5-haiku-latest", api_key="sk-ant-example",
                           base_url=fake.anthropic_base_url, max_tokens=256)

    def charged() -> str:
        costs = gov.backend.counters().get("cost", {})
        return str(sum(c for models in costs.values() for c in models.values()))

    for _ in range(3):
        answer = gpt.invoke("Say hi").content
    print("gpt-4o-mini:", answer[:30])
    print("claude:", claude.invoke("Say hi").content[:30])
    chunks = list(gpt.stream("Tell me a story"))  # a raw-response stream underneath
    time.sleep(0.1)
    print(f"streamed {len(chunks)} chunks; charged ${charged()}, "
          f"billed ${fake.ledger.total_billed()}")

    chain = gpt.with_retry(retry_if_exception_type=llm_governor.retryable)
    start = time.monotonic()
    with llm_governor.scope(tenant="trial"):
        for n in range(1000):
            try:
                chain.invoke("Another one")
            except Exception as exc:  # LangChain's OpenAIRateLimitError, re-wrapped
                refused = llm_governor.refusal(exc)
                if refused is None:
                    raise
                print(f"trial stopped after {n} calls in {time.monotonic() - start:.2f}s: "
                      f"{type(refused).__name__}, scope {refused.scope}, "
                      f"retry worth it: {refused.should_retry}")
                break
    print(f"total: charged ${charged()}, billed ${fake.ledger.total_billed()}")
    llm_governor.uninstrument()
    gov.close()
