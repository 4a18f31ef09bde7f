"""Client timeouts: the provider hangs or is slow, the SDK times out and retries.

The provider bills a hung request at once and a slow one when it finally
answers, whether or not the client still listens. The governor cannot know
either bill, so each timed-out attempt is charged its reservation before the
SDK's retry, which needs a fresh one: 30 calls against $0.50 a day, each
attempt reserving about $0.01, run out of budget before the SDK runs out of
retries. The provider's bill stays under the budget and under what the
governor recorded, and ``check_budget`` tells the truth.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import openai
import pytest

import llm_governor
from llm_governor.testing import FakeProvider

from .conftest import (
    GPT,
    MESSAGES,
    Govern,
    Spy,
    audit,
    check_errors,
    errors_of,
    run_calls,
)

BUDGET = Decimal("0.50")


def clients(fake: FakeProvider, timeout: float) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    kw: dict[str, Any] = {"api_key": "sk-faults", "base_url": fake.openai_base_url,
                          "timeout": timeout}
    return openai.OpenAI(**kw), openai.AsyncOpenAI(**kw)


def assert_check_budget_tells_the_truth(recorded: Decimal) -> None:
    within, remaining = llm_governor.check_budget(Decimal("0.01"))
    assert remaining == BUDGET - recorded
    assert within == (Decimal("0.01") <= remaining)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_hanging_provider_with_sdk_retries_stays_within_budget(
        kind: str, is_async: bool, fake: FakeProvider, govern: Govern) -> None:
    gov = govern(kind, BUDGET)
    fake.set_fault("hang")
    sync_client, async_client = clients(fake, timeout=0.15)

    # no max_tokens: each attempt reserves the model's whole output cap (~$0.0099)
    results = run_calls(
        is_async, 30,
        lambda i: sync_client.chat.completions.create(model=GPT, messages=MESSAGES),
        lambda i: async_client.chat.completions.create(model=GPT, messages=MESSAGES))

    errors = errors_of(results)
    assert len(errors) == 30  # every call hung
    check_errors(errors)
    assert all(isinstance(e, (openai.APITimeoutError, openai.RateLimitError)) for e in errors)
    budget_stopped = [e for e in errors if isinstance(e, llm_governor.BudgetExceededError)
                      or "budget" in " ".join(getattr(e, "__notes__", []))]
    assert budget_stopped, "the budget, not the SDK's retries, ended some calls"
    books = audit(gov, fake, BUDGET)
    attempts = len(fake.ledger)
    assert 30 < attempts < 90  # retries happened, and fewer than the SDK would have made
    assert fake.ledger.count_by_outcome() == {"broken": attempts}
    # every billed attempt was charged its reservation (the same for all), until no
    # further attempt fitted in the budget
    per_attempt = books.recorded / attempts
    assert BUDGET - books.recorded < per_attempt
    assert_check_budget_tells_the_truth(books.recorded)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_slow_provider_billed_after_the_client_gave_up(
        is_async: bool, fake: FakeProvider, govern: Govern) -> None:
    gov = govern("memory", BUDGET)
    spy = Spy(gov)
    fake.fail_next(8, kind="slow", delay=0.6)  # billed 0.6 s later, the client waits 0.25 s
    sync_client, async_client = clients(fake, timeout=0.25)

    results = run_calls(
        is_async, 12,
        lambda i: sync_client.chat.completions.create(model=GPT, messages=MESSAGES,
                                                      max_tokens=50),
        lambda i: async_client.chat.completions.create(model=GPT, messages=MESSAGES,
                                                       max_tokens=50))

    check_errors(errors_of(results))
    assert ledger_settles(fake)  # the slow ones are billed late, after the clients left
    slow = [e for e in fake.ledger.entries if e.fault == "slow"]
    assert len(slow) == 8 and all(e.billed and e.outcome == "served" for e in slow)
    books = audit(gov, fake, BUDGET)
    (reservation,) = set(spy.reserved)
    assert len(spy.lost) >= 8 and {r.cost for r in spy.lost} == {reservation}
    assert books.recorded > books.billed  # the slow ones at their reservation
    assert_check_budget_tells_the_truth(books.recorded)


def ledger_settles(fake: FakeProvider, quiet: float = 0.8, timeout: float = 5.0) -> bool:
    """Wait until no new entry lands for ``quiet`` seconds (longer than the slow delay)."""
    deadline = time.monotonic() + timeout
    seen, since = len(fake.ledger), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if len(fake.ledger) != seen:
            seen, since = len(fake.ledger), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
    return False
