"""Govern any function, no SDK needed: the decorator, retries, budgets and fallbacks.

Run: python examples/decorator_budget.py
"""

from __future__ import annotations

from decimal import Decimal

import llm_governor
from llm_governor import BudgetExceededError, Priority, check_budget, graceful_api_call

llm_governor.instrument({
    "backend": "memory",                      # the default is a SQLite file shared per host
    "budget": {"per_day": "0.10"},
    "services": {"my_service": {"max_tokens": 5, "refill_rate": 20.0, "min_interval": 0.01},
                 # transient failures (timeouts, connection errors, 429, 5xx) retried twice
                 "flaky_service": {"max_retries": 2, "min_interval": 0.01}},
})

attempts: list[str] = []


@llm_governor.rate_limited("flaky_service", cost=Decimal("0"))
def flaky_api_call() -> str:
    attempts.append("sent")
    if len(attempts) < 3:
        raise ConnectionResetError("connection reset by peer")
    return "answered"


# The decorator's tenacity loop retries; the governor paces and re-admits each retry.
print(f"flaky service: {flaky_api_call()} after {len(attempts)} attempts")


@llm_governor.rate_limited("my_service", Priority.HIGH, Decimal("0.01"))
def expensive_api_call(data: str) -> str:
    return f"processed {data}"


def local_processing(data: str) -> str:
    return f"processed {data} locally"


calls = 0
try:
    while True:
        expensive_api_call(f"item-{calls}")
        calls += 1
except BudgetExceededError as exc:
    print(f"{calls} calls fit the $0.10 budget; then: {exc}")

within, remaining = check_budget(Decimal("0.01"))
print(f"check_budget($0.01) -> within={within}, remaining=${remaining}")

# When the governed service refuses (budget, open circuit, rate limit), fall back:
print(graceful_api_call(expensive_api_call, local_processing, "my_service", "item-x"))
