"""instructor under llm-governor: structured outputs, governed and costed exactly.

instructor patches an ``openai.OpenAI`` client; its calls still go through
the SDK's choke point, so ``instrument()`` governs each of them, validation
retries included. instructor 1.17 pins a ``jiter`` that openai 3 excludes, so
its users run openai 2.x, which llm-governor governs from 2.31 on. A spent
budget stops the loop at once, and ``llm_governor.refusal(exc)`` finds the
governor's refusal behind the error instructor raises.

Offline: the SDK talks to the bundled fake provider on 127.0.0.1.
Needs instructor: pip install instructor (with openai 2.x).

Run: python examples/frameworks/instructor_app.py
"""

from __future__ import annotations

import time

import instructor
import openai
from pydantic import BaseModel

import llm_governor
from llm_governor.testing import FakeProvider


class City(BaseModel):
    name: str
    population: int


CONFIG = {"backend": "memory", "budget": {"per_day": "0.001"}}

with FakeProvider() as fake:
    gov = llm_governor.instrument(CONFIG)
    client = instructor.from_openai(
        openai.OpenAI(api_key="sk-example", base_url=fake.openai_base_url),
        mode=instructor.Mode.JSON_SCHEMA)
    start = time.monotonic()
    for n in range(1000):
        try:
            city = client.chat.completions.create(
                model="gpt-4o-mini", response_model=City, max_tokens=100,
                messages=[{"role": "user", "content": "The largest city of France?"}])
        except Exception as exc:
            refused = llm_governor.refusal(exc)
            if refused is None:
                raise
            print(f"budget stop after {n} structured calls in {time.monotonic() - start:.2f}s: "
                  f"{type(refused).__name__}")
            break
    print(f"last answer: {type(city).__name__}; openai {openai.__version__}")
    costs = gov.backend.counters().get("cost", {})
    print(f"charged ${sum(c for m in costs.values() for c in m.values())}, "
          f"billed ${fake.ledger.total_billed()}")
    llm_governor.uninstrument()
    gov.close()
