"""An audit log of governed calls: an observer of the governor's events.

The governor tells observers what it did as small frozen records
(:mod:`llm_governor.events`); this one writes a JSON line per finished call
(who asked, model, cost, attempts, outcome) and counts the waits and retries.
Observers never change a call, and one that fails is logged, not raised.

Offline: the openai SDK talks to the bundled fake provider on 127.0.0.1.

Run: python examples/audit_log.py
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter

import openai

import llm_governor
from llm_governor import events
from llm_governor.testing import FakeProvider


class AuditLog(events.Observer):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.decisions: Counter[str] = Counter()

    def on_admit(self, event: events.Decided) -> None:
        self.decisions[event.outcome] += 1

    def on_retry(self, event: events.Retried) -> None:
        self.decisions[f"retried after {event.reason}"] += 1

    def on_settle(self, event: events.Settled) -> None:
        call = event.call
        self.lines.append(json.dumps({
            "tenant": call.labels.get("tenant"), "model": call.model,
            "cost_usd": str(event.cost), "attempts": event.attempts,
            "outcome": "ok" if event.error is None else type(event.error).__name__,
        }))


with FakeProvider() as fake:
    gov = llm_governor.instrument({"backend": "memory", "budget": {"per_day": "0.00015"}})
    audit = AuditLog()
    gov.add_observer(audit)

    client = openai.OpenAI(api_key="sk-example", base_url=fake.openai_base_url, max_retries=2)
    fake.fail_next(1, kind="rate_limit", retry_after=0.05)  # one 429, retried by the SDK
    for tenant in ("acme", "globex", "acme", "initech"):
        # a call the spent budget cannot cover is refused before it is sent
        with llm_governor.scope(tenant=tenant), contextlib.suppress(openai.RateLimitError):
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=200,
                messages=[{"role": "user", "content": "Summarise our quarter."}])

    for line in audit.lines:
        print(line)
    print("decisions:", dict(sorted(audit.decisions.items())))
    llm_governor.uninstrument()
    gov.close()
