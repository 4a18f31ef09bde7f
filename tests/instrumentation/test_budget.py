"""A hard budget holds under concurrency, and the governor's books match the provider's bill.

50 calls at once against $0.05 a day: the provider bills at most $0.05, every
refused call is refused before it reaches the provider (as the SDK's own
RateLimitError), and what the governor recorded equals the ledger, Decimal for
Decimal.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from llm_governor import BudgetExceededError
from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed, spent

BUDGET = Decimal("0.05")
MESSAGES = [{"role": "user", "content": "Write a long essay about rate limits."}]


@pytest.fixture
def costly() -> Any:
    with FakeProvider(output_tokens=400) as provider:  # ~$0.004 per gpt-4o call
        yield provider


def check_books(gov: Any, fake: FakeProvider, outcomes: list[Any]) -> None:
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, BudgetExceededError) for o in refused), refused
    billed = fake.ledger.total_billed()
    served = fake.ledger.served_count()
    assert served == len(outcomes) - len(refused) > 5
    assert len(fake.ledger) == served  # refusals never reached the provider
    assert billed <= BUDGET
    assert spent(gov) == billed
    assert gov.budget_report()["day"]["spent"] == billed
    assert gov.budget_report()["day"]["reserved"] == 0


async def test_concurrent_async_calls_stay_within_budget(costly: FakeProvider,
                                                         governed: Governed) -> None:
    d = Driver(costly, True)
    gov = governed({"budget": {"per_day": str(BUDGET)}})

    async def one() -> Any:
        try:
            return await d.openai.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                          max_tokens=400)
        except openai.RateLimitError as exc:
            return exc

    outcomes = await asyncio.gather(*(one() for _ in range(50)))
    check_books(gov, costly, list(outcomes))


def test_concurrent_threads_mixed_and_streaming_stay_within_budget(costly: FakeProvider,
                                                                   governed: Governed) -> None:
    d = Driver(costly, False)
    gov = governed({"budget": {"per_day": str(BUDGET)}})

    def one(i: int) -> Any:
        try:
            if i % 2:
                with d.anthropic.messages.stream(model="claude-3-5-haiku-latest",
                                                 messages=MESSAGES, max_tokens=400) as s:
                    return s.get_final_message()
            stream = d.openai.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                      max_tokens=400, stream=True)
            return list(stream)
        except (openai.RateLimitError, anthropic.RateLimitError) as exc:
            return exc

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(one, range(50)))
    check_books(gov, costly, outcomes)
