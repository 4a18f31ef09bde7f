"""google-genai, governed: through the unmodified SDK against the fake provider.

The same cases run on ``client.models`` and ``client.aio.models``: the user
sees what they would have seen without the governor, the governor charges
exactly what the provider billed, paces calls, absorbs 429s (waiting what
``RetryInfo.retryDelay`` says), never multiplies attempts with the SDK's own
``HttpRetryOptions``, settles every stream once, and refuses as Google's own
``ClientError`` (429).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
import pytest
import wrapt
from google import genai
from google.genai import _api_client, errors, types

import llm_governor
from llm_governor import BudgetExceededError, GovernorError, RateLimitExceededError
from llm_governor.instrumentation.google_genai import (
    _max_output_tokens,
    gemini_usage,
    retry_delay,
)
from llm_governor.pricing import Usage
from llm_governor.testing import FakeProvider
from tests.instrumentation._spies import SettlementSpy

from .conftest import FAST, Driver, Governed, calls, eventually, in_flight, spent, state

MODEL = "gemini-2.0-flash"
EMBED = "gemini-embedding-001"


def config(gemini: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"services": {"gemini": {**FAST, **(gemini or {})}}, **top}


class Gemini:
    """One ``genai.Client`` (kept referenced: the SDK closes unreferenced clients) and its
    sync or async ``models``."""

    def __init__(self, fake: FakeProvider, is_async: bool, **http: Any) -> None:
        self.is_async = is_async
        self.client = genai.Client(api_key="gemini-test-SECRET", http_options=types.HttpOptions(
            base_url=fake.gemini_base_url, **http))
        self.models: Any = self.client.aio.models if is_async else self.client.models

    async def generate(self, **kw: Any) -> Any:
        kw.setdefault("contents", "Say hello to the governor")
        return await Driver.call(self.models.generate_content, model=MODEL, **kw)

    async def stream(self, **kw: Any) -> Any:
        """The chunk iterator (sync) or async iterator."""
        kw.setdefault("contents", "Tell me a story")
        return await Driver.call(self.models.generate_content_stream, model=MODEL, **kw)

    async def embed(self) -> Any:
        return await Driver.call(self.models.embed_content, model=EMBED,
                                 contents=["one", "two three"])


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def gemini(request: pytest.FixtureRequest, fake: FakeProvider) -> Gemini:
    return Gemini(fake, request.param)


def statuses(fake: FakeProvider) -> list[int]:
    return [e.status for e in fake.ledger.entries]


# ------------------------------------------------------------------ matrix
Case = Callable[[Gemini], Awaitable[Any]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


@case
async def generate(g: Gemini) -> Any:
    return await g.generate()


@case
async def generate_configured(g: Gemini) -> Any:
    return await g.generate(config=types.GenerateContentConfig(
        max_output_tokens=7, system_instruction="Be brief.", candidate_count=1))


@case
async def generate_json(g: Gemini) -> Any:
    class Pet(pydantic.BaseModel):
        name: str
        legs: int

    r = await g.generate(config=types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=Pet))
    assert isinstance(r.parsed, Pet)
    return r


@case
async def stream(g: Gemini) -> Any:
    return await Driver.collect(await g.stream(config={"max_output_tokens": 6}))


@case
async def embed(g: Gemini) -> Any:
    return await g.embed()


@case
async def chat(g: Gemini) -> Any:
    chats = g.client.aio.chats if g.is_async else g.client.chats
    session = chats.create(model=MODEL)
    return await Driver.call(session.send_message, "Hello there")


_VOLATILE = {"response_id", "sdk_http_response", "create_time"}


def normalized(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, (list, tuple)):
        return [normalized(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(CASES))
async def test_governed_call_is_unchanged_and_accounted(
        name: str, gemini: Gemini, fake: FakeProvider, governed: Governed) -> None:
    run = CASES[name]
    bare = normalized(await run(gemini))
    assert len(fake.ledger) == 1
    fake.reset()

    gov = governed(config())  # the client was created before instrument(): still governed
    assert normalized(await run(gemini)) == bare
    assert statuses(fake) == [200]
    assert calls(gov, "gemini") == 1
    assert in_flight(gov, "gemini") == 0
    billed = fake.ledger.total_billed("gemini")
    assert billed > 0
    assert spent(gov) == billed  # Decimal for Decimal
    assert gov.backend.counters()["requests"]["gemini"] == {"admitted": 1}


async def test_ungoverned_endpoints_pass_through(gemini: Gemini, fake: FakeProvider,
                                                 governed: Governed) -> None:
    gov = governed(config())
    counted = await Driver.call(gemini.models.count_tokens, model=MODEL, contents="hello")
    assert counted.total_tokens > 0
    assert statuses(fake) == [200]
    assert calls(gov) == 0


def test_uninstrument_restores_the_sdk(governed: Governed) -> None:
    base = _api_client.BaseApiClient
    names = ("request", "request_streamed", "async_request", "async_request_streamed")
    before = [vars(base)[n] for n in names]
    governed(config())
    assert all(isinstance(vars(base)[n], wrapt.FunctionWrapper) for n in names)
    llm_governor.uninstrument()
    assert all(vars(base)[n] is b for n, b in zip(names, before, strict=True))


# ------------------------------------------------------------------ pacing
async def test_calls_are_paced_to_the_configured_rate(
        gemini: Gemini, fake: FakeProvider, governed: Governed) -> None:
    governed(config({"max_tokens": 2, "burst_capacity": 0, "refill_rate": 10.0,
                     "min_interval": 0.1}))
    started = time.monotonic()
    if gemini.is_async:
        await asyncio.gather(*(gemini.generate() for _ in range(12)))
    else:
        for _ in range(12):
            await gemini.generate()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 8.0  # 2 at once, then 10 more at 10/s
    assert statuses(fake) == [200] * 12
    # what the provider saw, not only what we slept: no half second of it holds more than
    # the burst and half a second at the rate (one more for a boundary). Its span is no
    # measure: a first connection's set-up on a busy machine can delay the first arrivals
    # (0.84 s seen for 0.9 s of pacing).
    assert fake.max_in_window(0.5) <= 2 + 5 + 1


# ------------------------------------------------------------------ retries
RETRYING = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.01)


async def test_429_is_absorbed_after_the_retry_delay(fake: FakeProvider, governed: Governed,
                                                     is_async: bool) -> None:
    """With retries configured, a 429 is re-sent after its retryDelay as the same attempt."""
    gov = governed(config(retry={"max_wait": 5.0}))
    fake.fail_next(1, kind="rate_limit", retry_after=1.0, provider="gemini")  # retryDelay "1s"
    reply = await Gemini(fake, is_async, retry_options=RETRYING).generate()
    assert reply.text
    first, second = fake.ledger.entries
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.95
    assert gov.backend.counters()["retries"]["gemini"] == 1
    assert spent(gov) == fake.ledger.total_billed()


async def test_429_before_a_stream_is_absorbed(fake: FakeProvider, governed: Governed,
                                               is_async: bool) -> None:
    gov = governed(config(retry={"max_wait": 0.05}))
    fake.fail_next(1, kind="rate_limit", retry_after=None, provider="gemini")
    g = Gemini(fake, is_async, retry_options=RETRYING)
    chunks = await Driver.collect(await g.stream())
    assert chunks and chunks[-1].usage_metadata.candidates_token_count == 20
    assert statuses(fake) == [429, 200]
    assert calls(gov, "gemini") == 1
    assert spent(gov) == fake.ledger.total_billed()


async def test_without_retry_options_a_429_is_raised_as_bare(
        gemini: Gemini, fake: FakeProvider, governed: Governed) -> None:
    """The SDK would not retry: the governor does not either (it paces the next calls)."""
    gov = governed(config(retry={"max_wait": 0.05}))
    fake.fail_next(1, kind="rate_limit", retry_after=1.0, provider="gemini")
    with pytest.raises(errors.ClientError) as caught:
        await gemini.generate()
    assert caught.value.code == 429 and statuses(fake) == [429]
    assert state(gov, "gemini").adaptive.blocked_until > 0  # the next calls wait the delay


@pytest.mark.parametrize(("client_attempts", "sent"), [(None, 1), (1, 1), (4, 4)])
async def test_the_sdks_retry_options_decide_the_attempts(
        client_attempts: int | None, sent: int, fake: FakeProvider, governed: Governed,
        is_async: bool) -> None:
    """As bare: no HttpRetryOptions, one attempt; with them, their attempts (never more)."""
    retry = None if client_attempts is None else types.HttpRetryOptions(
        attempts=client_attempts, initial_delay=0.01, max_delay=0.01)
    g = Gemini(fake, is_async, retry_options=retry)
    gov = governed(config(retry={"max_wait": 0.01}))
    fake.set_fault("error", status=503, provider="gemini")
    with pytest.raises(errors.ServerError) as caught:
        await g.generate()
    assert caught.value.code == 503
    assert statuses(fake) == [503] * sent
    assert calls(gov, "gemini") == 1
    assert in_flight(gov, "gemini") == 0


async def test_per_request_retry_options_set_the_attempts(
        gemini: Gemini, fake: FakeProvider, governed: Governed) -> None:
    governed(config(retry={"max_wait": 0.01}))
    fake.fail_next(3, status=500, provider="gemini")
    options = types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=2))
    with pytest.raises(errors.ServerError):
        await gemini.generate(config=types.GenerateContentConfig(http_options=options))
    assert statuses(fake) == [500, 500]


async def test_exhausted_quota_is_not_retried(gemini: Gemini, fake: FakeProvider,
                                              governed: Governed) -> None:
    governed(config(retry={"max_wait": 0.01}))
    fake.fail_next(1, kind="insufficient_quota", provider="gemini")
    with pytest.raises(errors.ClientError) as caught:
        await gemini.generate()
    assert caught.value.code == 429 and not isinstance(caught.value, GovernorError)
    assert statuses(fake) == [429]


# ------------------------------------------------------------------ streams
async def exhausted(g: Gemini) -> Any:
    it = await g.stream()
    chunks = await Driver.collect(it)
    assert len(chunks) == 20
    return it


async def broken_off(g: Gemini) -> Any:
    it = await g.stream()
    await Driver.next(it)
    await Driver.call(it.aclose if g.is_async else it.close)
    return it


async def dropped(g: Gemini) -> Any:
    it = await g.stream()
    await Driver.next(it)
    del it  # never closed: the garbage collector ends it
    gc.collect()
    return None


@pytest.mark.parametrize("end", [exhausted, broken_off, dropped],
                         ids=lambda f: f.__name__)
async def test_stream_settles_exactly_once(
        end: Callable[[Gemini], Awaitable[Any]], gemini: Gemini, fake: FakeProvider,
        governed: Governed) -> None:
    gov = governed(config())
    spy = SettlementSpy(gov)
    kept = await end(gemini)
    assert await eventually(lambda: calls(gov, "gemini") == 1)
    gc.collect()
    await asyncio.sleep(0.05)
    assert len(spy.settled) == 1 and len(spy.reserved) == 1
    assert in_flight(gov, "gemini") == 0
    if end is exhausted:
        assert spy.settled[0] == fake.ledger.total_billed()  # the last chunk's counts
    else:  # the provider may have billed every token: charge the reservation
        assert spy.settled[0] == spy.reserved[0] >= fake.ledger.total_billed()
    del kept


async def test_a_stream_is_only_sent_when_iterated(fake: FakeProvider,
                                                   governed: Governed) -> None:
    g = Gemini(fake, False)
    gov = governed(config())
    it = await g.stream()
    assert len(fake.ledger) == 0 and in_flight(gov, "gemini") == 0  # lazy, as the SDK
    assert len(await Driver.collect(it)) == 20
    assert calls(gov, "gemini") == 1


# ------------------------------------------------------------------ rejections
async def test_budget_refusal_is_googles_own_429(gemini: Gemini, fake: FakeProvider,
                                                 governed: Governed) -> None:
    governed(config(budget={"per_day": "0.000001"}))
    with pytest.raises(errors.ClientError) as caught:
        await gemini.generate()
    err: Any = caught.value
    assert isinstance(err, BudgetExceededError) and isinstance(err, GovernorError)
    assert err.code == 429 and err.status == "RESOURCE_EXHAUSTED"
    assert "RATE_LIMIT" in err.message
    with pytest.raises(errors.APIError):  # a stream refuses on its first chunk
        await Driver.collect(await gemini.stream())
    assert len(fake.ledger) == 0


async def test_rate_refusal_carries_a_retry_delay(gemini: Gemini, fake: FakeProvider,
                                                  governed: Governed) -> None:
    governed(config({"max_tokens": 1, "burst_capacity": 0, "refill_rate": 0.2,
                     "min_interval": 0.1, "request_timeout": 0.05}))
    await gemini.generate()
    with pytest.raises(errors.ClientError) as caught:
        await gemini.generate()
    err: Any = caught.value
    assert isinstance(err, RateLimitExceededError)
    assert err.code == 429 and retry_delay(err.details) == pytest.approx(5, abs=1)
    assert err.response.status_code == 429
    assert len(fake.ledger) == 1
    with pytest.raises(errors.APIError) as again:  # handlers for any Google error catch it
        await gemini.generate()
    assert again.value.code == 429


# ------------------------------------------------------------------ parsing
def test_usage_bills_thoughts_as_output_and_reads_the_cache() -> None:
    u = gemini_usage({"promptTokenCount": 100, "candidatesTokenCount": 20,
                      "thoughtsTokenCount": 30, "cachedContentTokenCount": 60,
                      "toolUsePromptTokenCount": 5, "totalTokenCount": 155})
    assert u == Usage(105, 50, 60, reasoning_tokens=30)  # thoughts are output, counted apart
    assert gemini_usage(None) is None


def test_retry_delay_forms() -> None:
    def body(delay: Any) -> dict[str, Any]:
        return {"error": {"code": 429, "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}}
    assert retry_delay(body("41s")) == 41.0
    assert retry_delay(body("0.250s")) == 0.25
    assert retry_delay(body({"seconds": 2, "nanos": 500_000_000})) == 2.5
    assert retry_delay(body("soon")) is None
    assert retry_delay({"error": {"code": 429}}) is None
    assert retry_delay([body("3s")]) == 3.0


def test_max_output_tokens_bounds_candidates_and_thinking() -> None:
    cfg = {"maxOutputTokens": 100, "candidateCount": 3, "thinkingConfig": {"thinking_budget": 50}}
    assert _max_output_tokens({"generationConfig": cfg}) == 350
    assert _max_output_tokens({"generationConfig": {"candidateCount": 2}}) is None
    assert _max_output_tokens({}) is None
