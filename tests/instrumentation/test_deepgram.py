"""deepgram-sdk v7, governed: pre-recorded transcription against the fake provider.

Sync and async clients alike: the transcript is what it would have been, the
cost is per audio minute exactly as billed, the reservation bounds the audio
before the call (WAV header, bytes at the assumed bitrate, or the configured
bound for URLs), the concurrency cap holds at the provider, 429s are absorbed,
the SDK's own retries never add to ours, and refusals are Deepgram's own
``ApiError`` with status 429.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import pydantic
import pytest
import wrapt
from deepgram import AsyncDeepgramClient, DeepgramClient
from deepgram.core import http_client
from deepgram.core.api_error import ApiError

import llm_governor
from llm_governor import BudgetExceededError, GovernorError, cost_estimate, job
from llm_governor.backends import MemoryBackend
from llm_governor.governor import Governor
from llm_governor.media import wav_seconds
from llm_governor.testing import FakeProvider

from .conftest import FAST, Driver, Governed, calls, in_flight, spent

PER_MINUTE = Decimal("0.0043")  # nova-3, in the governor's and the fake's price tables
URL = "https://media.example.com/interview.mp3"


def wav(seconds: float, rate: int = 16_000) -> bytes:
    """A mono 16-bit PCM WAV file of silence."""
    data = b"\0\0" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def config(deepgram: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"services": {"deepgram": {**FAST, **(deepgram or {})}}, **top}


class Deepgram:
    def __init__(self, fake: FakeProvider, is_async: bool, **client: Any) -> None:
        self.is_async = is_async
        cls = AsyncDeepgramClient if is_async else DeepgramClient
        self.client: Any = cls(api_key="dg-test-SECRET", environment=fake.deepgram_environment(),
                               **client)
        self.media: Any = self.client.listen.v1.media

    async def file(self, audio: Any = None, **kw: Any) -> Any:
        return await Driver.call(self.media.transcribe_file,
                                 request=wav(2.0) if audio is None else audio, **kw)

    async def url(self, **kw: Any) -> Any:
        return await Driver.call(self.media.transcribe_url, url=URL, **kw)


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def deepgram(request: pytest.FixtureRequest, fake: FakeProvider) -> Deepgram:
    return Deepgram(fake, request.param)


def statuses(fake: FakeProvider) -> list[int]:
    return [e.status for e in fake.ledger.entries]


class Reservations:
    """The cost each admitted call reserved."""

    def __init__(self, gov: Governor) -> None:
        self.costs: list[Decimal] = []
        admit = gov.backend.admit

        def spy(req: Any, lease_id: Any, ttl: float) -> Any:
            decision = admit(req, lease_id, ttl)
            if decision.admitted and lease_id is not None:
                self.costs.append(req.cost)
            return decision

        gov.backend.admit = spy  # type: ignore[method-assign]


# ------------------------------------------------------------------ matrix
Case = Callable[[Deepgram], Awaitable[Any]]
CASES: dict[str, Case] = {
    "file": lambda d: d.file(),
    "file_options": lambda d: d.file(wav(3.5), model="nova-3", smart_format=True,
                                          punctuate=True),
    "url": lambda d: d.url(model="nova-3"),
    "raw_file": lambda d: Driver.call(d.media.with_raw_response.transcribe_file,
                                      request=wav(1.0)),
}
_VOLATILE = {"request_id", "created"}


def normalized(value: Any) -> Any:
    if hasattr(value, "data") and hasattr(value, "headers"):  # with_raw_response
        value = value.data
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(CASES))
async def test_governed_call_is_unchanged_and_costed_per_audio_minute(
        name: str, deepgram: Deepgram, fake: FakeProvider, governed: Governed) -> None:
    run = CASES[name]
    bare = normalized(await run(deepgram))
    fake.reset()

    gov = governed(config())  # the client was created before instrument(): still governed
    assert normalized(await run(deepgram)) == bare
    assert statuses(fake) == [200]
    assert calls(gov, "deepgram") == 1 and in_flight(gov, "deepgram") == 0
    billed = fake.ledger.total_billed("deepgram")
    assert billed > 0 and spent(gov) == billed  # metadata.duration × price, Decimal for Decimal


async def test_reservation_bounds_the_audio_before_the_call(
        deepgram: Deepgram, fake: FakeProvider, governed: Governed) -> None:
    gov = governed(config({"cost_per_request": "0.05", "audio_bytes_per_second": 8000}))
    seen = Reservations(gov)
    await deepgram.file(wav(90.5))                 # WAV header: exactly 91 s (rounded up)
    await deepgram.file(b"\x01" * 8000 * 30)       # other bytes: size at 8000 B/s = 30 s
    await deepgram.url()                           # unknown length: the configured bound
    with cost_estimate("0.02"):
        await deepgram.url()                       # ...or the stated one
    assert seen.costs == [PER_MINUTE * 91 / 60, PER_MINUTE * 30 / 60, Decimal("0.05"),
                          Decimal("0.02")]
    assert spent(gov) == fake.ledger.total_billed()  # settled at metadata.duration


def test_uninstrument_restores_the_sdk(governed: Governed) -> None:
    classes = (http_client.HttpClient, http_client.AsyncHttpClient)
    before = [vars(cls)["request"] for cls in classes]
    governed(config())
    assert all(isinstance(vars(cls)["request"], wrapt.FunctionWrapper) for cls in classes)
    llm_governor.uninstrument()
    assert all(vars(cls)["request"] is b for cls, b in zip(classes, before, strict=True))


def test_wav_duration_from_the_header() -> None:
    assert wav_seconds(wav(2.5)) == 2.5
    assert wav_seconds(wav(1.0, rate=8000)) == 1.0
    assert wav_seconds(b"ID3\x04" + b"\0" * 100) is None
    assert wav_seconds(b"RIFF") is None


# ------------------------------------------------------------------ limits
async def test_concurrency_cap_holds_at_the_provider(governed: Governed, is_async: bool) -> None:
    with FakeProvider(latency=0.15, max_concurrency=2) as fake:
        d = Deepgram(fake, is_async)
        governed(config({"max_concurrency": 2}))
        started = time.monotonic()
        if is_async:
            await asyncio.gather(*(d.file(wav(1.0)) for _ in range(8)))
        else:
            errors: list[BaseException] = []

            def transcribe() -> None:
                try:
                    d.media.transcribe_file(request=wav(1.0))
                except BaseException as exc:  # surfaced below
                    errors.append(exc)

            threads = [threading.Thread(target=transcribe) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors
        assert time.monotonic() - started >= 4 * 0.15 * 0.9
        assert statuses(fake) == [200] * 8  # the provider never had to refuse one
        assert fake.ledger.max_concurrency("deepgram") == 2


async def test_calls_are_paced_to_the_configured_rate(
        deepgram: Deepgram, fake: FakeProvider, governed: Governed) -> None:
    governed(config({"max_tokens": 2, "burst_capacity": 0, "refill_rate": 10.0,
                     "min_interval": 0.1}))
    started = time.monotonic()
    if deepgram.is_async:
        await asyncio.gather(*(deepgram.file(wav(0.5)) for _ in range(10)))
    else:
        for _ in range(10):
            await deepgram.file(wav(0.5))
    assert 0.7 <= time.monotonic() - started < 8.0  # 2 at once, then 8 more at 10/s
    assert statuses(fake) == [200] * 10


# ------------------------------------------------------------------ retries
async def test_429_is_absorbed_after_retry_after(deepgram: Deepgram, fake: FakeProvider,
                                                 governed: Governed) -> None:
    gov = governed(config(retry={"max_wait": 5.0}))
    fake.fail_next(1, kind="rate_limit", retry_after=0.4, provider="deepgram")
    result = await deepgram.file()
    assert result.metadata.duration == 2.0
    first, second = fake.ledger.entries
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.39
    assert gov.backend.counters()["retries"]["deepgram"] == 1
    assert spent(gov) == fake.ledger.total_billed()


class SlowObserve(MemoryBackend):
    """A backend whose writes of an attempt's outcome take a round trip of 0.4 s (a
    remote store under load), and which says it blocks, as SQLite and Redis do."""

    blocking = True

    def __init__(self) -> None:
        super().__init__({})
        self.observed: list[str] = []

    def observe(self, service: str, limits: Any, obs: Any) -> None:
        time.sleep(0.4)
        super().observe(service, limits, obs)
        self.observed.append(obs.outcome)


async def test_an_async_retry_predicate_never_blocks_the_event_loop(
        fake: FakeProvider, governed: Governed) -> None:
    """Deepgram's retry predicate is synchronous, also for the async client: the 429 it
    sees is recorded on the ticket at once and written to the backend off the loop."""
    backend = SlowObserve()
    gov = governed(config(retry={"max_wait": 5.0}), backend=backend)
    client = Deepgram(fake, is_async=True)
    fake.fail_next(1, kind="rate_limit", retry_after=0.6, provider="deepgram")
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.ensure_future(ticker())
    try:
        result = await client.file()
    finally:
        done.set()
        await ticking
    assert result.metadata.duration == 2.0
    assert [e.status for e in fake.ledger.entries] == [429, 200]
    assert backend.observed[:1] == ["throttled"]  # the 429 reached the shared state
    assert max(gaps) < 0.3, max(gaps)  # the loop never sat out the 0.4 s write
    assert spent(gov) == fake.ledger.total_billed() > 0  # the 429 free, the answer charged
    assert in_flight(gov, "deepgram") == 0


@pytest.mark.parametrize(("client_retries", "sent"), [(None, 3), (0, 1), (1, 2)])
async def test_sdk_retries_never_multiply_ours(
        client_retries: int | None, sent: int, fake: FakeProvider, governed: Governed,
        is_async: bool) -> None:
    kwargs = {} if client_retries is None else {"max_retries": client_retries}
    d = Deepgram(fake, is_async, **kwargs)
    gov = governed(config(retry={"max_wait": 0.01}))
    fake.set_fault("error", status=503, provider="deepgram")
    with pytest.raises(ApiError) as caught:  # the SDK's own error, from the last response
        await d.file()
    assert caught.value.status_code == 503 and not isinstance(caught.value, GovernorError)
    assert statuses(fake) == [503] * sent
    assert calls(gov, "deepgram") == 1 and in_flight(gov, "deepgram") == 0


async def test_out_of_credit_402_is_not_retried(deepgram: Deepgram, fake: FakeProvider,
                                                governed: Governed) -> None:
    governed(config(retry={"max_wait": 0.01}))
    fake.fail_next(1, kind="insufficient_quota", provider="deepgram")
    with pytest.raises(ApiError) as caught:
        await deepgram.file()
    assert caught.value.status_code == 402
    assert statuses(fake) == [402]


async def test_a_streamed_upload_is_retried_as_bare(deepgram: Deepgram, fake: FakeProvider,
                                                    governed: Governed) -> None:
    """The SDK retries an iterator body it already consumed (an empty body the provider
    refuses): governed, the same requests go out; the configured bound is reserved."""
    audio = wav(1.0)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(audio), 4096):
            yield audio[i:i + 4096]

    async def achunks() -> Any:
        for chunk in chunks():
            yield chunk

    fake.fail_next(1, status=500, provider="deepgram")
    with pytest.raises(ApiError):
        await deepgram.file(achunks() if deepgram.is_async else chunks())
    bare = statuses(fake)
    assert bare[0] == 500
    fake.reset()
    gov = governed(config({"cost_per_request": "0.03"}, retry={"max_wait": 0.01}))
    seen = Reservations(gov)
    fake.fail_next(1, status=500, provider="deepgram")
    with pytest.raises(ApiError):
        await deepgram.file(achunks() if deepgram.is_async else chunks())
    assert statuses(fake) == bare
    fake.reset()
    result = await deepgram.file(achunks() if deepgram.is_async else chunks())
    assert result.metadata.duration == 1.0
    assert seen.costs == [Decimal("0.03")] * 2
    assert spent(gov) == fake.ledger.total_billed()


# ------------------------------------------------------------------ rejections
async def test_budget_refusal_is_deepgrams_own_429(deepgram: Deepgram, fake: FakeProvider,
                                                   governed: Governed) -> None:
    governed(config(budget={"per_day": "0.001"}))
    await deepgram.file(wav(10.0))  # $0.000717: fits
    with pytest.raises(ApiError) as caught:
        await deepgram.file(wav(60.0))  # $0.0043: refused before it is sent
    err: Any = caught.value
    assert isinstance(err, BudgetExceededError) and isinstance(err, GovernorError)
    # out of credit until the day resets: no retry hint, and a "do not retry"
    assert err.status_code == 429 and "retry-after" not in err.headers
    assert err.headers["x-should-retry"] == "false" and err.retry_after > 60
    assert "RATE_LIMIT" in err.body["err_msg"]
    assert statuses(fake) == [200]


async def test_job_costs_add_up(deepgram: Deepgram, fake: FakeProvider,
                                governed: Governed) -> None:
    gov = governed(config())
    with job("video_123"):
        for seconds in (1.0, 2.0, 0.5):
            await deepgram.file(wav(seconds))
    assert gov.backend.counters()["job"]["video_123"] == PER_MINUTE * Decimal("3.5") / 60
    assert fake.ledger.total_billed() == PER_MINUTE * Decimal("3.5") / 60
