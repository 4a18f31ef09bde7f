"""A budget per customer and per end user, and a cheaper model when money runs low.

A SaaS serves tenants through one OpenAI key. Each tenant gets $0.002 a day
("acme" pays for $0.01, "initech" for $0.0001), each end user $0.0015 an hour.
Below 30% of a budget, gpt-4o calls go to gpt-4o-mini instead; a tenant that
spends its day anyway is refused (as the SDK's own RateLimitError, which says
whose budget it was) while the others go on. Crossing 50% and 90% of a budget
logs a ``budget_threshold`` alert.

Offline: the openai SDK talks to the bundled fake provider on 127.0.0.1.

Run: python examples/per_tenant_budgets.py
"""

from __future__ import annotations

import openai

import llm_governor
from llm_governor import scope
from llm_governor.testing import FakeProvider

CONFIG = {
    "backend": "memory",
    "scopes": {
        "tenant": {"per_day": "0.002", "per_month": "0.05",
                   "overrides": {"acme": {"per_day": "0.01"},
                                 "initech": {"per_day": "0.0001"}}},
        "user": {"per_hour": "0.0015", "requests_per_minute": 60},
    },
    "alerts": {"budget_thresholds": [0.5, 0.9]},
}

with FakeProvider() as fake:
    gov = llm_governor.instrument(CONFIG, policies=[
        llm_governor.downgrade_when_budget_low({"gpt-4o": "gpt-4o-mini"}, below=0.3)])
    client = openai.OpenAI(api_key="sk-example", base_url=fake.openai_base_url)

    def ask(tenant: str, user: str, model: str, question: str) -> str:
        with scope(tenant=tenant, user=user):  # e.g. in a request middleware
            reply = client.chat.completions.create(
                model=model, max_tokens=40, messages=[{"role": "user", "content": question}])
            return reply.model

    for tenant, users, model in (("acme", ["ann", "bob", "cy"], "gpt-4o"),
                                 ("globex", ["dee", "eve"], "gpt-4o"),
                                 ("initech", ["ivy"], "gpt-4o-mini")):
        for i in range(12):
            user = users[i % len(users)]
            try:
                answered_by = ask(tenant, user, model, f"Question {i} from {user}")
                print(f"{tenant}/{user}: answered by {answered_by}")
            except openai.RateLimitError as exc:
                # also an llm_governor.BudgetExceededError: .scope says whose budget
                kind, value = exc.scope or ("global", "")  # type: ignore[attr-defined]
                print(f"{tenant}/{user}: refused, the {exc.window} budget of "  # type: ignore[attr-defined]
                      f"{kind} {value} is spent")
                break

    ok, left = llm_governor.check_budget("0.001", tenant="globex")
    print(f"can globex spend $0.001 more today? {ok} (${left} left)")
    print("top spending tenants:")
    for value, row in llm_governor.get_rate_limit_health()["scopes"]["tenant"].items():
        day = row["windows"]["day"]
        print(f"  {value}: ${day['spent']} of ${day['limit']} today")
    print(f"the provider billed ${fake.ledger.total_billed()} for {len(fake.ledger)} requests, "
          f"models {sorted({e.model for e in fake.ledger})}")
    llm_governor.uninstrument()
    gov.close()
