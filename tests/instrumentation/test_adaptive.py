"""Provider rate-limit headers and 429s drive the adaptive rate; nonsense headers are ignored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from llm_governor.instrumentation._headers import (
    anthropic_limits,
    openai_limits,
    parse_duration,
    retry_after,
)
from llm_governor.policies.adaptive import AdaptiveState
from llm_governor.policies.admission import snapshot
from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed, httpx2, state

MESSAGES = [{"role": "user", "content": "hi"}]


def rate_in_force(gov: Any, service: str) -> float:
    limits = gov._resolve(service, None)[1]
    return float(snapshot(state(gov, service), limits, gov.backend.now())["rate"])


async def test_openai_headers_lower_the_rate(driver: Driver, fake: FakeProvider,
                                             governed: Governed) -> None:
    fake.set_limits(rpm=60, window=2.0)  # 30 requests/s; the governor allows 100
    gov = governed()
    await driver.call(driver.openai.chat.completions.create, model="gpt-4o-mini",
                      messages=MESSAGES, max_tokens=4)
    adaptive = state(gov, "openai").adaptive
    assert 0 < adaptive.request_cap <= 30.0
    assert rate_in_force(gov, "openai") <= 30.0 < 100.0


async def test_anthropic_headers_lower_the_rate(driver: Driver, fake: FakeProvider,
                                                governed: Governed) -> None:
    fake.set_limits(rpm=60, tpm=100_000, window=2.0)
    gov = governed()
    await driver.call(driver.anthropic.messages.create, model="claude-3-5-haiku-latest",
                      messages=MESSAGES, max_tokens=4)
    adaptive = state(gov, "anthropic").adaptive
    assert adaptive.request_cap > 0 and adaptive.token_cap > 0
    assert rate_in_force(gov, "anthropic") < 100.0


async def test_a_429_slows_down(driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    gov = governed()
    fake.fail_next(1, kind="rate_limit", retry_after=0.05)
    await driver.call(driver.openai.chat.completions.create, model="gpt-4o-mini",
                      messages=MESSAGES, max_tokens=4)
    assert 0 < state(gov, "openai").adaptive.rate < 100.0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_malformed_headers_are_ignored(is_async: bool, governed: Governed) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
            headers={"x-ratelimit-limit-requests": "NaN",
                     "x-ratelimit-remaining-requests": "-5",
                     "x-ratelimit-reset-requests": "soon",
                     "x-ratelimit-limit-tokens": "lots",
                     "x-ratelimit-remaining-tokens": "inf",
                     "x-ratelimit-reset-tokens": "-1s"})

    transport = httpx2.MockTransport(handler)
    client: Any = openai.AsyncOpenAI(api_key="k", base_url="http://fake.invalid/v1",
                                     http_client=httpx2.AsyncClient(transport=transport)) \
        if is_async else openai.OpenAI(api_key="k", base_url="http://fake.invalid/v1",
                                       http_client=httpx2.Client(transport=transport))
    gov = governed()
    r = await Driver.call(client.chat.completions.create, model="gpt-4o-mini",
                          messages=MESSAGES)
    assert r.choices[0].message.content == "ok"
    assert state(gov, "openai").adaptive == AdaptiveState()


# -------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("0s", 0.0),
    ("1.5", 1.5), ("2m", 120.0),
    ("", None), ("-1s", None), ("1x", None), ("s", None), ("1s2", None), ("nan", None),
    (None, None),
])
def test_durations(text: str | None, seconds: float | None) -> None:
    found = parse_duration(text)
    assert found == pytest.approx(seconds) if seconds is not None else found is None


def test_openai_limits() -> None:
    found = openai_limits({
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6m0s"})
    assert found is not None
    assert (found.limit_requests, found.remaining_requests, found.reset_requests) == (60, 59, 1)
    assert (found.limit_tokens, found.remaining_tokens, found.reset_tokens) == (1000, 900, 360)
    assert openai_limits({}) is None
    assert openai_limits({"x-ratelimit-remaining-requests": "-3"}) is None


def test_anthropic_limits() -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    past = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
    found = anthropic_limits({
        "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": soon,
        "anthropic-ratelimit-input-tokens-limit": "4000",
        "anthropic-ratelimit-input-tokens-remaining": "3000",
        "anthropic-ratelimit-input-tokens-reset": past})
    assert found is not None
    assert found.remaining_requests == 49 and 28 < (found.reset_requests or 0) <= 30
    assert found.remaining_tokens == 3000 and found.reset_tokens is None  # a past reset
    assert anthropic_limits({"anthropic-ratelimit-requests-reset": "tomorrow"}) is None


def test_retry_after() -> None:
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "-2"}) is None
    assert retry_after({"retry-after": "whenever"}) is None
    assert retry_after({}) is None
    later = (datetime.now(UTC) + timedelta(seconds=20)).strftime(
        "%a, %d %b %Y %H:%M:%S GMT")
    assert 15 < (retry_after({"retry-after": later}) or 0) <= 20
