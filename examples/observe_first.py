"""Watch first, then enforce: run the governor in observe mode and read its report.

``mode = "observe"`` changes nothing a call does: no wait, no refusal, no
model swap. The governor still counts every decision it *would* have made
(``would_budget_exceeded``, ``would_rate_limited``…, also in the
``llm_governor.requests`` metric and on spans), so a team can run it in
production, read the report, tune the limits and then switch to enforce.

Offline: the openai SDK talks to the bundled fake provider on 127.0.0.1.

Run: python examples/observe_first.py
"""

from __future__ import annotations

import time

import openai

import llm_governor
from llm_governor import scope
from llm_governor.testing import FakeProvider

LIMITS = {
    "budget": {"per_day": "0.002"},
    "scopes": {"tenant": {"per_day": "0.0008", "requests_per_minute": 5}},
    "services": {"openai": {"max_tokens": 5, "refill_rate": 0.5}},
}


def traffic(client: openai.OpenAI) -> tuple[int, int, float]:
    """A burst of 16 calls from two tenants; returns (answered, refused, seconds)."""
    answered = refused = 0
    started = time.monotonic()
    for i in range(16):
        with scope(tenant="acme" if i % 4 else "globex"):
            try:
                client.chat.completions.create(
                    model="gpt-4o", max_tokens=30,
                    messages=[{"role": "user", "content": f"Question {i}"}])
                answered += 1
            except openai.RateLimitError:
                refused += 1
    return answered, refused, time.monotonic() - started


with FakeProvider() as fake:
    client = openai.OpenAI(api_key="sk-example", base_url=fake.openai_base_url, max_retries=0)

    # 1. observe: the same traffic as without the governor, and a report
    gov = llm_governor.instrument({"backend": "memory", "mode": "observe", **LIMITS})
    answered, refused, took = traffic(client)
    print(f"observe: {answered} answered, {refused} refused, {took:.1f}s")
    would = gov.backend.counters()["requests"]["openai"]
    print("observe: decisions the governor would have made:", dict(sorted(would.items())))
    for tenant, row in llm_governor.get_rate_limit_health()["scopes"]["tenant"].items():
        day = row["windows"]["day"]
        print(f"observe: tenant {tenant} spent ${day['spent']} of a ${day['limit']} day")
    gov.close()

    # 2. enforce: the same traffic, now limited
    gov = llm_governor.instrument({"backend": "memory", "mode": "enforce", **LIMITS,
                                   "services": {"openai": {**LIMITS["services"]["openai"],
                                                           "request_timeout": 1}}})
    answered, refused, took = traffic(client)
    print(f"enforce: {answered} answered, {refused} refused, {took:.1f}s")
    print("enforce: decisions:", dict(sorted(gov.backend.counters()["requests"]["openai"]
                                             .items())))
    llm_governor.uninstrument()
    gov.close()
