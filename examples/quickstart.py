"""The one-line setup: existing openai/anthropic code, governed by ``llm_governor.instrument()``.

Offline: the SDKs talk to the bundled fake provider on 127.0.0.1, which
enforces its own limit (10 requests per 2 s) and bills every call.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import anthropic
import openai

import llm_governor
from llm_governor.testing import FakeProvider

with FakeProvider(rpm=10, window=2.0) as fake:
    # The one line (here with an in-memory backend, a budget and the fake's limit).
    gov = llm_governor.instrument({
        "backend": "memory",  # the default is a SQLite file shared by every process on the host
        "budget": {"per_day": "0.05"},
        "services": {"openai": {"refill_rate": 4.5, "max_tokens": 1, "burst_capacity": 0}},
    })

    # Application code, unchanged: no wrappers, no extra arguments.
    client = openai.OpenAI(api_key="sk-example", base_url=fake.openai_base_url)
    claude = anthropic.Anthropic(api_key="sk-ant-example", base_url=fake.anthropic_base_url)
    for i in range(12):  # more than the provider allows per window: the governor paces them
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Hello #{i}"}],
            max_tokens=16)
    print("openai:", reply.choices[0].message.content)

    with claude.messages.stream(model="claude-3-5-haiku-latest", max_tokens=16,
                                messages=[{"role": "user", "content": "Hello"}]) as stream:
        print("anthropic:", "".join(stream.text_stream))

    try:  # a call the budget cannot cover is refused before it is sent...
        client.chat.completions.create(model="gpt-4o", max_tokens=20_000,
                                       messages=[{"role": "user", "content": "An epic."}])
    except openai.RateLimitError as exc:  # ...as the SDK's own error, so old handlers work
        print("refused:", exc)

    statuses, billed = fake.ledger.count_by_status(), fake.ledger.total_billed()
    day = gov.budget_report()["day"]
    print(f"provider saw {len(fake.ledger)} requests {statuses}, billed ${billed}")
    print(f"governor recorded ${day['spent']} spent, ${day['remaining']} of the budget left")
    llm_governor.uninstrument()
