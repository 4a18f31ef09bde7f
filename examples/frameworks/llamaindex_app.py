"""LlamaIndex (llama-index-llms-openai) under llm-governor.

``llama_index.llms.openai.OpenAI`` calls the openai SDK, so ``instrument()``
governs its ``complete``, ``chat`` and streaming calls, charged what the
provider bills. llama-index-llms-openai 0.8 requires openai < 3, which
llm-governor governs from 2.31 on. A spent budget stops the loop (LlamaIndex's
own retries off: they would retry it), and ``llm_governor.refusal(exc)``
finds the governor's refusal.

Offline: the SDK talks to the bundled fake provider on 127.0.0.1.
Needs llama-index-llms-openai: pip install llama-index-llms-openai (with openai 2.x).

Run: python examples/frameworks/llamaindex_app.py
"""

from __future__ import annotations

import time

import openai
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI

import llm_governor
from llm_governor.testing import FakeProvider

CONFIG = {"backend": "memory", "budget": {"per_day": "0.001"}}

with FakeProvider() as fake:
    gov = llm_governor.instrument(CONFIG)
    # LlamaIndex retries every openai.RateLimitError itself (4 s and more apart, max_retries
    # times), a spent budget too: max_retries=0 stops at once (the SDK's retries go with it)
    llm = OpenAI(model="gpt-4o-mini", api_key="sk-example", api_base=fake.openai_base_url,
                 max_tokens=100, max_retries=0)
    print("complete:", llm.complete("Say hi").text[:30])
    pieces = list(llm.stream_chat([ChatMessage(role="user", content="Tell me a story")]))
    time.sleep(0.1)
    costs = gov.backend.counters().get("cost", {})
    print(f"streamed {len(pieces)} pieces; charged "
          f"${sum(c for m in costs.values() for c in m.values())}, "
          f"billed ${fake.ledger.total_billed()}")
    start = time.monotonic()
    for n in range(1000):
        try:
            llm.complete("Another one")
        except Exception as exc:
            refused = llm_governor.refusal(exc)
            if refused is None:
                raise
            print(f"budget stop after {n} calls in {time.monotonic() - start:.2f}s: "
                  f"{type(refused).__name__}; openai {openai.__version__}")
            break
    llm_governor.uninstrument()
    gov.close()
