"""Gemini through google-genai, governed by ``llm_governor.instrument()``: no code changes.

Offline: the client talks to the bundled fake provider on 127.0.0.1, which
allows 8 requests per 2 s and answers the ninth with a 429 carrying
``RetryInfo.retryDelay``. The governor paces the loop below that limit,
re-sends a 429 after waiting what Google asked (the client configures the
SDK's own ``HttpRetryOptions``, as without the governor: no retries, no
re-sending), settles a stream from its last chunk's usage, and refuses what
the budget cannot cover with Google's own ``ClientError`` (429), so existing
handlers keep working.

Run: python examples/gemini.py
"""

from __future__ import annotations

import time

from google import genai
from google.genai import errors, types

import llm_governor
from llm_governor.testing import FakeProvider

MODEL = "gemini-2.0-flash"

with FakeProvider(rpm=8, window=2.0) as fake:
    gov = llm_governor.instrument({
        "backend": "memory",  # the default is a SQLite file shared by every process on the host
        "budget": {"per_day": "0.01"},
        "retry": {"max_wait": 5.0},
        "services": {"gemini": {"max_tokens": 1, "burst_capacity": 0, "refill_rate": 3.5}},
    })
    # Application code, unchanged. (Keep the client referenced while you use it.)
    client = genai.Client(api_key="gemini-example-key", http_options=types.HttpOptions(
        base_url=fake.gemini_base_url, retry_options=types.HttpRetryOptions(attempts=3)))

    started = time.monotonic()
    for i in range(10):  # more than the provider allows per window: the governor paces them
        reply = client.models.generate_content(
            model=MODEL, contents=f"Hello #{i}",
            config=types.GenerateContentConfig(max_output_tokens=16))
    print(f"10 calls in {time.monotonic() - started:.1f}s:", reply.text)

    fake.fail_next(1, kind="rate_limit", retry_after=1.0, provider="gemini")
    reply = client.models.generate_content(model=MODEL, contents="Once more")
    print("a 429 was absorbed (retryDelay honoured):", reply.text[:30])

    text = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model=MODEL, contents="Tell me a story", config={"max_output_tokens": 12}))
    print("stream:", text)

    vectors = client.models.embed_content(model="gemini-embedding-001",
                                          contents=["governor", "budget"])
    print("embeddings:", len(vectors.embeddings or []))

    try:  # a call the budget cannot cover is refused before it is sent...
        client.models.generate_content(model="gemini-2.5-pro", contents="An epic.")
    except errors.ClientError as exc:  # ...as Google's own 429
        print("refused:", exc.code, exc.status, "-", exc.message)

    statuses, billed = fake.ledger.count_by_status("gemini"), fake.ledger.total_billed("gemini")
    day = gov.budget_report()["day"]
    print(f"provider saw {len(fake.ledger)} requests {statuses}, billed ${billed}")
    print(f"governor recorded ${day['spent']} spent, ${day['remaining']} of the budget left")
    llm_governor.uninstrument()
