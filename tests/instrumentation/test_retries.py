"""The governor owns retries: the SDK's loop is off, attempts are classified and counted.

What the provider's ledger saw is the proof: how many attempts, with which
status, how far apart. The breaker counts 5xx, timeouts and connection errors
only.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed, httpx2, state

GPT = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]


async def chat(client: Any) -> Any:
    return await Driver.call(client.chat.completions.create, model=GPT, messages=MESSAGES,
                             max_tokens=4)


def statuses(fake: FakeProvider) -> list[int]:
    return [e.status for e in fake.ledger.entries]


async def test_429_waits_what_retry_after_says(driver: Driver, fake: FakeProvider,
                                               governed: Governed) -> None:
    gov = governed({"retry": {"max_wait": 5.0}})
    fake.fail_next(1, kind="rate_limit", retry_after=0.4)
    await chat(driver.openai)
    first, second = fake.ledger.entries
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.39
    assert gov.backend.counters()["retries"]["openai"] == 1


async def test_insufficient_quota_is_retried_as_the_sdk_does_but_never_slows_us(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    """The SDK retries every 429 and keeps doing so governed; out of credit is not throttling."""
    gov = governed()
    fake.fail_next(3, kind="insufficient_quota")
    with pytest.raises(openai.RateLimitError) as caught:
        await chat(driver.openai)
    assert caught.value.code == "insufficient_quota"
    assert statuses(fake) == [429, 429, 429]  # 1 + the client's max_retries=2
    assert state(gov, "openai").adaptive.rate == 0.0  # not slowed down


async def test_server_errors_are_retried_and_open_the_breaker(driver: Driver, fake: FakeProvider,
                                                              governed: Governed) -> None:
    gov = governed({"services": {"openai": {"failure_threshold": 3}}})
    fake.fail_next(2, status=500)
    await chat(driver.openai)  # two failures, then a success: the user never notices
    assert statuses(fake) == [500, 500, 200]

    fake.reset()
    fake.set_fault("error", status=503)
    with pytest.raises(openai.InternalServerError):
        await chat(driver.openai)
    assert statuses(fake) == [503, 503, 503]  # the client's max_retries=2: three attempts
    assert state(gov, "openai").breaker.state == "open"


async def test_connection_errors_are_retried(driver: Driver, fake: FakeProvider,
                                             governed: Governed) -> None:
    gov = governed()
    fake.fail_next(1, kind="reset")
    await chat(driver.openai)
    assert statuses(fake) == [0, 200]
    assert gov.backend.counters()["retries"]["openai"] == 1


async def test_client_errors_are_not_retried_nor_counted(driver: Driver, fake: FakeProvider,
                                                         governed: Governed) -> None:
    gov = governed({"services": {"openai": {"failure_threshold": 2}}})
    fake.set_fault("error", status=400)
    for _ in range(4):
        with pytest.raises(openai.BadRequestError):
            await chat(driver.openai)
    assert statuses(fake) == [400] * 4
    breaker = state(gov, "openai").breaker
    assert (breaker.state, breaker.failures) == ("closed", 0)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_parse_errors_are_not_counted(is_async: bool, governed: Governed) -> None:
    """A 200 whose body is not what the SDK expects is fatal, not a provider failure."""
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=b"{not json", headers={
            "content-type": "application/json"})

    if is_async:
        client: Any = openai.AsyncOpenAI(api_key="k", base_url="http://fake.invalid/v1",
                                         http_client=httpx2.AsyncClient(
                                             transport=httpx2.MockTransport(handler)))
    else:
        client = openai.OpenAI(api_key="k", base_url="http://fake.invalid/v1",
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    gov = governed({"services": {"openai": {"failure_threshold": 1}}})
    with pytest.raises(ValueError):  # the SDK's own JSONDecodeError, unchanged
        await chat(client)
    assert state(gov, "openai").breaker.failures == 0
    assert gov.backend.counters()["calls"]["openai"][GPT] == {"error": 1}


async def test_attempts_come_from_the_client_unless_configured(
        fake: FakeProvider, governed: Governed) -> None:
    fake.set_fault("error", status=500)
    patient = Driver(fake, False, max_retries=3)
    governed({"services": {"openai": {"failure_threshold": 100}}})
    with pytest.raises(openai.InternalServerError):
        await chat(patient.openai)
    assert len(fake.ledger) == 4  # 1 + max_retries, and the SDK did not retry on its own

    fake.ledger.clear()
    with pytest.raises(openai.InternalServerError):
        await chat(patient.openai.with_options(max_retries=0))
    assert len(fake.ledger) == 1

    fake.ledger.clear()
    governed({"services": {"openai": {"failure_threshold": 100, "max_retries": 1}}})
    with pytest.raises(openai.InternalServerError):
        await chat(patient.openai)
    assert len(fake.ledger) == 2


async def test_retry_budget_stops_a_storm(fake: FakeProvider, governed: Governed) -> None:
    fake.set_fault("error", status=500)
    eager = Driver(fake, True, max_retries=5)
    gov = governed({"retry": {"budget_ratio": 0, "budget_min_per_minute": 3, "max_wait": 0.01},
                    "services": {"openai": {"failure_threshold": 100}}})
    for _ in range(5):
        with pytest.raises(openai.InternalServerError):
            await chat(eager.openai)
    assert len(fake.ledger) == 5 + 3  # without the budget: 5 × 6 attempts
    assert gov.backend.counters()["retries"]["openai"] == 3
