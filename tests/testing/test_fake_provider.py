"""The fake provider, exercised through the unmodified official SDKs (no network)."""

from __future__ import annotations

import enum
import io
import re
import threading
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
from deepgram import DeepgramClient
from deepgram.core.api_error import ApiError
from genai_prices import Usage, calc_price
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from pydantic import BaseModel

from llm_governor.testing import FakeProvider, LedgerEntry, ModelPrice, format_duration

KEY = "test-key"
TEXTS: Any = ["a", "b"]
MSG: Any = [{"role": "user", "content": "hello world"}]  # one literal for both SDKs


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Owner(BaseModel):
    name: str
    score: float
    active: bool


class Pet(BaseModel):
    name: str
    age: int
    color: Color
    tags: list[str]
    owner: Owner | None
    born: datetime


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def oai(fake: FakeProvider, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=fake.openai_base_url, max_retries=0, **kw)


def claude(fake: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=fake.anthropic_base_url, max_retries=0)


def gemini(fake: FakeProvider) -> genai.Client:
    options = genai_types.HttpOptions(base_url=fake.gemini_base_url)
    return genai.Client(api_key=KEY, http_options=options)


def deepgram(fake: FakeProvider) -> DeepgramClient:
    return DeepgramClient(api_key=KEY, environment=fake.deepgram_environment(), max_retries=0)


def genai_cost(entry: LedgerEntry, provider_id: str) -> Decimal:
    usage = Usage(input_tokens=entry.input_tokens, output_tokens=entry.output_tokens)
    return calc_price(usage, model_ref=entry.model, provider_id=provider_id).total_price


def duration_seconds(text: str) -> float:
    """Parse OpenAI's reset format ('120ms', '1.5s', '6m0s')."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------ OpenAI


def test_openai_chat_create_usage_and_billing(fake: FakeProvider) -> None:
    reply = oai(fake).chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    assert reply.choices[0].message.content == "lorem ipsum dolor sit amet"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    # ceil(len("user" + "hello world") / 4) = ceil(15 / 4); roles count, they are strings
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 5)
    (entry,) = fake.ledger.entries
    assert (entry.provider, entry.endpoint, entry.status) == ("openai", "chat", 200)
    assert (entry.input_tokens, entry.output_tokens, entry.stream) == (4, 5, False)
    assert entry.api_key_seen and entry.priced and entry.metered
    assert entry.cost == genai_cost(entry, "openai") > 0
    assert entry.input_tokens <= entry.request_bytes
    assert fake.ledger.total_billed() == entry.cost


def test_openai_chat_stream_usage_chunk_only_when_asked(fake: FakeProvider) -> None:
    client = oai(fake)
    plain = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    assert all(c.usage is None for c in plain)
    assert plain[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in plain)
    assert len(text.split()) == 20

    with_usage = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    *body, last = with_usage
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 20)
    assert all(c.usage is None and len(c.choices) == 1 for c in body)
    assert [e.stream for e in fake.ledger] == [True, True]


def test_openai_chat_parse_with_pydantic_model(fake: FakeProvider) -> None:
    done = oai(fake).chat.completions.parse(model="gpt-4o-mini", messages=MSG, response_format=Pet)
    pet = done.choices[0].message.parsed
    assert isinstance(pet, Pet) and isinstance(pet.owner, Owner)
    assert pet.color is Color.RED and pet.tags == [] and pet.age == 1


def test_openai_responses_create_stream_parse(fake: FakeProvider) -> None:
    client = oai(fake)
    created = client.responses.create(model="gpt-4o-mini", input="hello", max_output_tokens=3)
    assert created.output_text == "lorem ipsum dolor"
    assert created.usage is not None and created.usage.output_tokens == 3

    with client.responses.stream(
        model="gpt-4o-mini", input="hello", instructions="be brief"
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) == 20 and final.output_text == "".join(deltas)
    assert final.usage is not None and final.usage.input_tokens == 4  # "hello" + "be brief"

    parsed = client.responses.parse(model="gpt-4o-mini", input="a pet", text_format=Pet)
    assert isinstance(parsed.output_parsed, Pet)
    assert [e.stream for e in fake.ledger] == [False, True, False]


def test_openai_embeddings_and_legacy_completions(fake: FakeProvider) -> None:
    client = oai(fake)
    packed = client.embeddings.create(model="text-embedding-3-small", input=["ab", "cd"])  # base64
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="ab", encoding_format="float", dimensions=4
    )
    assert len(packed.data) == 2 and len(packed.data[0].embedding) == 16
    assert len(floats.data[0].embedding) == 4 and packed.usage.prompt_tokens == 1
    legacy = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=3)
    assert legacy.choices[0].text == "lorem ipsum dolor"
    streamed = client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="hi",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    embed_entry = fake.ledger.entries[0]
    assert embed_entry.output_tokens == 0 and embed_entry.cost == genai_cost(embed_entry, "openai")


@pytest.mark.asyncio
async def test_openai_async(fake: FakeProvider) -> None:
    client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.openai_base_url, max_retries=0)
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert reply.usage is not None and reply.usage.completion_tokens == 20
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    async with client.responses.stream(model="gpt-4o-mini", input="x") as rstream:
        final = await rstream.get_final_response()
    assert final.usage is not None and final.usage.output_tokens == 20
    emb = await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert len(emb.data) == 1
    await client.close()
    assert fake.ledger.served_count() == 4


# --------------------------------------------------------------- Anthropic


def test_anthropic_create_stream_count_tokens_beta(fake: FakeProvider) -> None:
    client = claude(fake)
    model = "claude-3-5-haiku-latest"
    msg = client.messages.create(model=model, max_tokens=7, messages=MSG, system="sys")
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 7
    assert msg.usage.input_tokens == 5  # ceil(len("user" + "hello world" + "sys") / 4)
    with client.messages.stream(model=model, max_tokens=100, messages=MSG) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 20)
    assert final.stop_reason == "end_turn" and len(final.content[0].text.split()) == 20  # type: ignore[union-attr]
    counted = client.messages.count_tokens(model=model, messages=MSG)
    assert counted.input_tokens == 4
    beta = client.beta.messages.create(model=model, max_tokens=3, messages=MSG)  # ?beta=true
    assert beta.usage.output_tokens == 3
    parsed = client.messages.parse(model=model, max_tokens=100, messages=MSG, output_format=Pet)
    assert isinstance(parsed.parsed_output, Pet)

    entries = fake.ledger.entries
    free = [e for e in entries if e.endpoint == "count_tokens"]
    assert len(free) == 1 and free[0].cost == 0 and not free[0].metered
    for e in entries:
        if e.metered:
            assert e.cost == genai_cost(e, "anthropic") > 0


@pytest.mark.asyncio
async def test_anthropic_async(fake: FakeProvider) -> None:
    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.anthropic_base_url, max_retries=0)
    msg = await client.messages.create(model="claude-3-5-haiku-latest", max_tokens=50, messages=MSG)
    assert msg.usage.output_tokens == 20
    async with client.messages.stream(
        model="claude-3-5-haiku-latest", max_tokens=50, messages=MSG
    ) as stream:
        final = await stream.get_final_message()
    assert final.usage.output_tokens == 20
    await client.close()
    assert [e.stream for e in fake.ledger] == [False, True]


# ------------------------------------------------------------------ Gemini


def test_gemini_generate_stream_embed_parse(fake: FakeProvider) -> None:
    client = gemini(fake)
    model = "gemini-2.0-flash"
    reply = client.models.generate_content(
        model=model, contents="hello", config=genai_types.GenerateContentConfig(max_output_tokens=4)
    )
    assert reply.text == "lorem ipsum dolor sit"
    assert reply.usage_metadata is not None
    assert reply.usage_metadata.candidates_token_count == 4
    assert reply.usage_metadata.total_token_count == 4 + (
        reply.usage_metadata.prompt_token_count or 0
    )

    chunks = list(client.models.generate_content_stream(model=model, contents="hello"))
    counts = [c.usage_metadata.candidates_token_count or 0 for c in chunks if c.usage_metadata]
    assert len(counts) == len(chunks) == 20 and counts == list(range(1, 21))  # cumulative

    embedded = client.models.embed_content(model="gemini-embedding-001", contents=TEXTS)
    assert embedded.embeddings is not None and len(embedded.embeddings) == 2

    config = genai_types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=Pet
    )
    parsed = client.models.generate_content(model=model, contents="a pet", config=config)
    assert isinstance(parsed.parsed, Pet)

    entries = fake.ledger.entries
    assert [e.path.rsplit(":", 1)[1] for e in entries] == [
        "generateContent",
        "streamGenerateContent",
        "batchEmbedContents",
        "generateContent",
    ]
    for e in entries:
        assert e.cost == genai_cost(e, "google") > 0 and e.input_tokens <= e.request_bytes


@pytest.mark.asyncio
async def test_gemini_async(fake: FakeProvider) -> None:
    client = gemini(fake)
    reply = await client.aio.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert reply.usage_metadata is not None and reply.usage_metadata.candidates_token_count == 20
    stream = await client.aio.models.generate_content_stream(
        model="gemini-2.0-flash", contents="hi"
    )
    assert len([c async for c in stream]) == 20


# ---------------------------------------------------------------- Deepgram


def _wav(seconds: float, rate: int = 16_000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return buf.getvalue()


def test_deepgram_file_url_and_per_minute_billing() -> None:
    with FakeProvider(url_audio_seconds=90.0) as fake:
        client = deepgram(fake)
        raw = client.listen.v1.media.transcribe_file(request=b"\1" * 32_000, model="nova-3")
        wav = client.listen.v1.media.transcribe_file(request=_wav(0.5))
        url = client.listen.v1.media.transcribe_url(url="https://example.com/a.wav", model="nova-3")
        durations = [r.metadata.duration for r in (raw, wav, url)]
        assert durations == [2.0, 0.5, 90.0]  # 16 kB/s, WAV header, configured URL duration
        assert raw.results.channels[0].alternatives[0].transcript
        per_minute = Decimal("0.0043")
        costs = [e.cost for e in fake.ledger]
        assert costs == [per_minute * Decimal(s) / 60 for s in ("2.0", "0.5", "90.0")]
        assert all(e.api_key_seen and e.model == "nova-3" for e in fake.ledger)


def test_deepgram_concurrency_limit() -> None:
    with FakeProvider(max_concurrency=1, latency=0.3) as fake:
        client = deepgram(fake)
        barrier = threading.Barrier(2)

        def call() -> int:
            barrier.wait()
            try:
                client.listen.v1.media.transcribe_file(request=b"\0" * 1600)
            except ApiError as exc:
                return exc.status_code or -1
            return 200

        with ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(lambda _: call(), range(2)))
        assert statuses == [200, 429]
        assert fake.ledger.max_concurrency("deepgram") == 1
        assert fake.ledger.total_billed() == Decimal("0.0043") * Decimal("0.1") / 60


# ------------------------------------------------------------ rate limits


def test_rpm_enforced_with_headers_and_retry_after() -> None:
    with FakeProvider(rpm=2, window=0.5) as fake:
        client = oai(fake)
        first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert 0 < duration_seconds(first.headers["x-ratelimit-reset-requests"]) <= 0.5
        assert "x-ratelimit-limit-tokens" not in first.headers  # no TPM configured
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        err = info.value
        assert err.code == "rate_limit_exceeded" and err.type == "requests"
        assert err.response.headers["retry-after"] == "1"  # whole seconds, rounded up
        wait_ms = int(err.response.headers["retry-after-ms"])
        assert 0 < wait_ms <= 500
        assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
        time.sleep(wait_ms / 1000 + 0.02)
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert fake.ledger.count_by_status() == {200: 3, 429: 1}
        assert fake.max_in_window() == 2 and fake.ledger.max_in_window(0.5) == 2
        assert fake.ledger.entries[2].cost == 0


def test_tpm_enforced() -> None:
    with FakeProvider(tpm=50, window=1.0) as fake:  # each call: 4 in + 20 out = 24 tokens
        client = oai(fake)
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        assert second.headers["x-ratelimit-limit-tokens"] == "50"
        assert second.headers["x-ratelimit-remaining-tokens"] == "2"
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert info.value.type == "tokens" and "retry-after" in info.value.response.headers
        tiny: Any = [{"role": "u", "content": ""}]  # 1 input token + 1 output = the 2 left
        small = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=tiny, max_tokens=1
        )
        assert small.headers["x-ratelimit-remaining-tokens"] == "0"
        assert fake.ledger.max_tokens_in_window(1.0) <= 50


def test_limits_hold_under_concurrent_bursts() -> None:
    with FakeProvider(rpm=5, tpm=100, window=0.3) as fake:  # 24 tokens a call: TPM binds at 4
        client = oai(fake)

        def call(_: int) -> int:
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
            except openai.RateLimitError:
                return 429
            return 200

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, range(60)))
        assert statuses.count(200) >= 4 and statuses.count(429) > 0
        assert fake.ledger.max_in_window(0.3) <= 4
        assert fake.ledger.max_tokens_in_window(0.3) <= 100
        assert fake.ledger.count_by_status() == {200: statuses.count(200), 429: statuses.count(429)}


def test_anthropic_rate_limit_headers_and_429() -> None:
    with FakeProvider(rpm=1, tpm=1000, window=1.0) as fake:
        client = claude(fake)
        raw = client.messages.with_raw_response.create(
            model="claude-3-5-haiku-latest", max_tokens=10, messages=MSG
        )
        h = raw.headers
        assert (
            h["anthropic-ratelimit-requests-limit"],
            h["anthropic-ratelimit-requests-remaining"],
        ) == ("1", "0")
        reset = datetime.fromisoformat(h["anthropic-ratelimit-requests-reset"])
        assert reset.tzinfo is not None and 0 <= (reset - datetime.now(UTC)).total_seconds() <= 2
        assert h["anthropic-ratelimit-tokens-remaining"] == str(1000 - 14)
        assert h["anthropic-ratelimit-input-tokens-remaining"] == str(1000 - 4)
        assert h["anthropic-ratelimit-output-tokens-remaining"] == str(1000 - 10)
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(model="claude-3-5-haiku-latest", max_tokens=10, messages=MSG)
        assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert info.value.response.headers["retry-after"] == "1"


def test_gemini_429_carries_retry_info() -> None:
    with FakeProvider(rpm=1, window=1.0) as fake:
        client = gemini(fake)
        client.models.generate_content(model="gemini-2.0-flash", contents="hi")
        with pytest.raises(genai_errors.ClientError) as info:
            client.models.generate_content(model="gemini-2.0-flash", contents="hi")
        assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
        details = info.value.details["error"]["details"]
        retry = [d for d in details if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
        assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]


def test_set_limits_at_runtime(fake: FakeProvider) -> None:
    client = oai(fake)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    fake.set_limits(rpm=3, window=5.0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    fake.set_limits(rpm=None)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    # Limits are per provider: Anthropic has its own window.
    fake.set_limits(rpm=1)
    claude(fake).messages.create(model="claude-3-5-haiku-latest", max_tokens=5, messages=MSG)
    assert fake.limits.rpm == 1 and fake.limits.window == 5.0


# ------------------------------------------------------------------ faults


def test_fail_next_kinds_through_openai(fake: FakeProvider) -> None:
    client = oai(fake)

    def call(c: openai.OpenAI = client) -> None:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    fake.fail_next(1)
    with pytest.raises(openai.InternalServerError) as server_error:
        call()
    assert server_error.value.status_code == 500
    fake.fail_next(1, 503)
    with pytest.raises(openai.InternalServerError) as unavailable:
        call()
    assert unavailable.value.status_code == 503
    fake.fail_next(kind="reset")
    with pytest.raises(openai.APIConnectionError):
        call()
    fake.fail_next(kind="insufficient_quota")
    with pytest.raises(openai.RateLimitError) as quota:
        call()
    assert quota.value.code == "insufficient_quota" and quota.value.type == "insufficient_quota"
    fake.fail_next(kind="rate_limit", retry_after=2.5)
    with pytest.raises(openai.RateLimitError) as limited:
        call()
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.response.headers["retry-after-ms"] == "2500"
    fake.fail_next(kind="slow", delay=1.0)
    with pytest.raises(openai.APITimeoutError):
        call(oai(fake, timeout=0.2))
    fake.fail_next(provider="anthropic")  # only hits Anthropic traffic
    call()

    statuses = [(e.status, e.fault) for e in fake.ledger.entries[:5]]
    assert statuses == [
        (500, "error"),
        (503, "error"),
        (0, "reset"),
        (429, "insufficient_quota"),
        (429, "rate_limit"),
    ]
    assert all(e.cost == 0 for e in fake.ledger.entries[:5])
    with pytest.raises(anthropic.InternalServerError):
        claude(fake).messages.create(model="claude-3-5-haiku-latest", max_tokens=5, messages=MSG)


def test_faults_through_other_sdks(fake: FakeProvider) -> None:
    fake.fail_next(1, 529)
    with pytest.raises(anthropic.OverloadedError):
        claude(fake).messages.create(model="claude-3-5-haiku-latest", max_tokens=5, messages=MSG)
    fake.fail_next(kind="insufficient_quota")
    with pytest.raises(anthropic.BadRequestError, match="credit balance"):
        claude(fake).messages.create(model="claude-3-5-haiku-latest", max_tokens=5, messages=MSG)
    fake.fail_next(1, 503)
    client = gemini(fake)  # keep a reference: a collected genai.Client closes its HTTP client
    with pytest.raises(genai_errors.ServerError) as gerr:
        client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert gerr.value.status == "UNAVAILABLE"
    fake.fail_next(kind="insufficient_quota")
    with pytest.raises(ApiError) as derr:
        deepgram(fake).listen.v1.media.transcribe_file(request=b"\0" * 100)
    assert derr.value.status_code == 402


def test_set_fault_is_an_outage_until_cleared(fake: FakeProvider) -> None:
    client = oai(fake)
    fake.set_fault("error", 502)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    fake.set_fault(None)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert fake.ledger.count_by_status() == {502: 3, 200: 1}


# ----------------------------------------------------------- billing, misc


def test_price_overrides_and_unknown_models() -> None:
    prices = {
        "house-model": ModelPrice(input=Decimal(1), output=Decimal(2), per_request=Decimal("0.01"))
    }
    with FakeProvider(prices=prices) as fake:
        client = oai(fake)
        client.chat.completions.create(model="house-model", messages=MSG)
        client.chat.completions.create(model="no-such-model-xyz", messages=MSG)
        known, unknown = fake.ledger.entries
        assert known.priced and known.cost == (
            Decimal(4) * 1 + Decimal(20) * 2
        ) / 1_000_000 + Decimal("0.01")
        assert not unknown.priced and unknown.cost == 0 and unknown.status == 200


def test_raw_http_keepalive_and_missing_key(fake: FakeProvider) -> None:
    with httpx.Client(base_url=fake.base_url) as http:
        plain = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG})
        sse = http.post(
            "/v1/messages", json={"model": "m", "max_tokens": 2, "messages": MSG, "stream": True}
        )
        again = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
        missing = http.post("/v1/nope", json={})
        bad = http.post("/v1/chat/completions", content=b"{not json")
    assert plain.headers["content-length"] == str(len(plain.content))
    assert sse.headers["transfer-encoding"] == "chunked" and sse.text.endswith(
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert again.status_code == 200 and missing.status_code == 404 and bad.status_code == 400
    assert [e.api_key_seen for e in fake.ledger] == [False, False, False, False]
    assert fake.ledger.count_by_status() == {200: 3, 400: 1}


def test_concurrent_sdk_connections_and_clean_stop() -> None:
    baseline = threading.active_count()
    started = time.perf_counter()
    fake = FakeProvider().start()
    assert time.perf_counter() - started < 0.05
    client = oai(fake)
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(
                lambda _: client.chat.completions.create(model="gpt-4o-mini", messages=MSG),
                range(40),
            )
        )
    assert len(replies) == 40 and fake.ledger.served_count() == 40
    assert threading.active_count() > baseline  # pooled keep-alive connections are open
    fake.stop()  # must close them and join every server thread
    assert threading.active_count() == baseline
    client.close()


def test_format_duration() -> None:
    cases = {0.12: "120ms", 0.0: "0s", 1.0: "1s", 1.5: "1.5s", 360.0: "6m0s", 3723.0: "1h2m3s"}
    assert {k: format_duration(k) for k in cases} == cases
