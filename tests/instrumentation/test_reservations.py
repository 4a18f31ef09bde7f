"""``reservation = "learned"``: calls that set no max output tokens fit small budgets.

Frameworks leave ``max_tokens`` unset, so the worst case reserves the model's
whole output cap ($0.0098 for gpt-4o-mini, $0.16 for gpt-4o). Learned
reservations bound it by what the model recently output; an output above the
bound is charged in full (a counted overrun), and the budget then refuses:
spend never exceeds the budget by more than one call.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

import llm_governor
from llm_governor import BudgetExceededError
from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed, spent

MINI = "gpt-4o-mini"
GPT = "gpt-4o"
MESSAGES = [{"role": "user", "content": "hi"}]


async def ask(d: Driver, model: str = MINI) -> Any:
    return await d.call(d.openai.chat.completions.create, model=model, messages=MESSAGES)


async def served(d: Driver, limit: int, model: str = MINI) -> int:
    """Calls (no max_tokens) served before the budget refuses, up to ``limit``."""
    for n in range(limit):
        try:
            await ask(d, model)
        except BudgetExceededError:
            return n
    return limit


async def test_a_cent_serves_many_uncapped_calls_when_learned(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    served_by: dict[str, int] = {}
    for mode in ("worst_case", "learned"):
        fake.reset()
        gov = governed({"budget": {"per_day": "0.01"}, "reservation": mode,
                        "learned": {"warmup": 5}})
        served_by[mode] = await served(driver, 300)
        assert spent(gov) == fake.ledger.total_billed() <= Decimal("0.01")
        llm_governor.uninstrument()
    # worst case: each call reserves the 16,384-token cap ($0.0098) and bills ~$0.000015,
    # so the cent refuses once less than $0.0098 of it is left
    assert served_by["worst_case"] < 20
    # learned: once warm, each call reserves its recent outputs (the 256-token floor)
    assert served_by["learned"] == 300


async def test_overrun_is_charged_and_the_budget_then_refuses(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    budget = Decimal("0.012")
    gov = governed({"budget": {"per_day": str(budget)}, "reservation": "learned",
                    "learned": {"warmup": 3, "floor": 16}})
    for _ in range(3):  # warm-up at the worst case: 20 tokens each
        await ask(driver)
    previous = fake.output_tokens
    fake.output_tokens = 1500  # the model turns verbose: $0.0009 per call, bound was 20
    try:
        assert await served(driver, 100) < 100
    finally:
        fake.output_tokens = previous
    one_call = Decimal(1500) * Decimal("0.60") / 1_000_000 + Decimal("0.0001")
    assert spent(gov) == fake.ledger.total_billed()
    assert spent(gov) <= budget + one_call  # never more than one call over
    counted = gov.backend.counters().get("overrun", {})
    assert sum(c for models in counted.values() for c in models.values()) > 0


async def test_learned_never_below_the_floor_and_warms_up_at_the_worst_case(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    gov = governed({"reservation": "learned", "learned": {"warmup": 2, "floor": 100}})
    reserved: list[Decimal] = []
    original = gov.ticket

    def ticket(spec: Any) -> Any:
        t = original(spec)
        reserved.append(t.reserved)
        return t

    gov.ticket = ticket  # type: ignore[method-assign]
    for _ in range(4):
        await ask(driver)
    worst, learned = reserved[0], reserved[-1]
    assert reserved[1] == worst  # still warming up
    assert learned < worst / 50  # 100 tokens (the floor) instead of 16,384
    assert learned >= Decimal(100) * Decimal("0.60") / 1_000_000


async def test_a_refusal_caused_by_the_reservations_size_says_so(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    governed({"budget": {"per_day": "0.05"}})
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(driver, GPT)  # reserves gpt-4o's 16,384-token cap: $0.16 > $0.05
    err = llm_governor.refusal(caught.value)
    assert isinstance(err, BudgetExceededError) and err.reservation_bound
    assert 'reservation = "learned"' in str(err) and "max_tokens" in str(err)
    assert len(fake.ledger) == 0

    capped = await driver.call(driver.openai.chat.completions.create, model=GPT,
                               messages=MESSAGES, max_tokens=100)
    assert capped.usage.completion_tokens <= 100


async def test_a_spent_budget_is_not_blamed_on_the_reservation(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    governed({"budget": {"per_day": "0.0001"}})
    while True:
        try:
            await driver.call(driver.openai.chat.completions.create, model=MINI,
                              messages=MESSAGES, max_tokens=20)
        except BudgetExceededError as exc:
            assert not exc.reservation_bound and "reservation" not in str(exc)
            break


@pytest.mark.parametrize("where", ["service", "scope", "scope_override"])
async def test_reservation_is_set_per_service_and_per_scope(
        where: str, driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    config: dict[str, Any] = {"learned": {"warmup": 1}}
    if where == "service":
        config["services"] = {"openai": {"reservation": "learned"}}
    elif where == "scope":
        config["scopes"] = {"tenant": {"per_day": "0.01", "reservation": "learned"}}
    else:
        config["scopes"] = {"tenant": {"per_day": "0.01",
                                       "overrides": {"acme": {"reservation": "learned"}}}}
    gov = governed(config)
    with llm_governor.scope(tenant="acme"):
        await ask(driver)
        t = gov.ticket(llm_governor.CallSpec(service="openai", model=MINI))
    assert t.reservation == "learned"
    with llm_governor.scope(tenant="other"):
        t = gov.ticket(llm_governor.CallSpec(service="openai", model=MINI))
    assert t.reservation == ("worst_case" if where == "scope_override" else "learned")


async def test_capped_calls_warm_up_a_model_too_small_a_budget_cannot_afford_uncapped(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    """gpt-4o's worst case ($0.16) never fits a cent; capped calls that stop before their
    cap teach the learner, and then uncapped calls fit."""
    gov = governed({"budget": {"per_day": "0.01"}, "reservation": "learned",
                    "learned": {"warmup": 3}})
    with pytest.raises(BudgetExceededError) as caught:
        await ask(driver, GPT)
    assert "warms up (0 of 3" in str(caught.value)
    for _ in range(3):
        await driver.call(driver.openai.chat.completions.create, model=GPT,
                          messages=MESSAGES, max_tokens=200)  # outputs 20: not truncated
    truncated = await driver.call(driver.openai.chat.completions.create, model=GPT,
                                  messages=MESSAGES, max_tokens=5)
    assert truncated.usage.completion_tokens == 5
    assert gov.learner.seen("openai", GPT) == 3  # the truncated one taught nothing
    assert await served(driver, 10, GPT) == 10
    assert spent(gov) == fake.ledger.total_billed() <= Decimal("0.01")
