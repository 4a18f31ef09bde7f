"""Governed behaves as bare: the same requests on the wire, the same result or error.

Each case runs twice against the fake provider, bare then governed (limits
loose enough never to throttle), and compares what the provider saw (status,
``x-stainless-retry-count``, request body digest, in order) and what the
caller got (a summary of the result, or the exception's type and message).
The SDK's own retry decisions are the subject: retries after 5xx and 409,
server hints (``x-should-retry``, a ``retry-after`` beyond the SDK's cap),
the 401 token refresh of anthropic credentials, a middleware's
``RetryableError``, timeouts. Error responses carry ``retry-after-ms: 5`` so
the SDKs' own waits stay short.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_governor.testing import FakeProvider

from .conftest import ANTHROPIC_KEY, OPENAI_KEY, Governed

MESSAGES = [{"role": "user", "content": "hello there"}]
REQUEST_ID = re.compile(r"req_[0-9a-f]+")  # the fake's request ids differ run to run
Wire = list[tuple[int, str | None, str]]
Call = Callable[[Any], Any]


def openai_client(fake: FakeProvider, is_async: bool, **kw: Any) -> Any:
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    return cls(api_key=OPENAI_KEY, base_url=fake.openai_base_url, **kw)


def anthropic_client(fake: FakeProvider, is_async: bool, **kw: Any) -> Any:
    cls = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
    kw.setdefault("api_key", ANTHROPIC_KEY)
    return cls(base_url=fake.anthropic_base_url, **kw)


async def resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def chat_raw(client: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)


def messages_raw(client: Any) -> Any:
    return client.messages.with_raw_response.create(
        model="claude-3-5-haiku-latest", messages=MESSAGES, max_tokens=8)


async def outcome_of(make: Callable[[], Any], call: Call) -> str:
    """What the caller got: the parsed text and ``retries_taken``, or the error."""
    client = make()
    try:
        raw = await resolve(call(client))
    except Exception as exc:
        message = str(exc.args[0]) if exc.args else ""
        return f"{type(exc).__name__}: {REQUEST_ID.sub('req_*', message)}"
    parsed = await resolve(raw.parse())
    text = parsed.choices[0].message.content if hasattr(parsed, "choices") \
        else parsed.content[0].text
    return f"ok retries_taken={raw.retries_taken} text={text!r}"


def wire(fake: FakeProvider) -> Wire:
    return [(e.status, e.retry_count, e.body_sha256) for e in fake.ledger.entries]


async def bare_then_governed(fake: FakeProvider, governed: Governed,
                             setup: Callable[[FakeProvider], None],
                             make: Callable[[], Any], call: Call,
                             config: dict[str, Any] | None = None) -> tuple[Wire, str]:
    fake.set_headers({"retry-after-ms": "5"}, statuses=list(range(400, 600)))
    setup(fake)
    bare = await outcome_of(make, call)
    bare_wire = wire(fake)
    fake.reset()
    fake.set_headers({"retry-after-ms": "5"}, statuses=list(range(400, 600)))
    governed(config)
    setup(fake)
    assert await outcome_of(make, call) == bare
    assert wire(fake) == bare_wire
    return bare_wire, bare


SDKS = {"openai": (openai_client, chat_raw), "anthropic": (anthropic_client, messages_raw)}


@pytest.fixture(params=sorted(SDKS))
def sdk(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ------------------------------------------------------------------ retries
async def test_server_errors_are_retried_with_the_sdks_attempt_counter(
        sdk: str, fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    make, call = SDKS[sdk]
    seen, outcome = await bare_then_governed(
        fake, governed, lambda f: f.fail_next(2, status=500), lambda: make(fake, is_async), call)
    assert [(s, n) for s, n, _ in seen] == [(500, "0"), (500, "1"), (200, "2")]
    assert len({digest for *_, digest in seen}) == 1  # the same body every time
    assert "retries_taken=2" in outcome


async def test_x_should_retry_false_is_obeyed(sdk: str, fake: FakeProvider, governed: Governed,
                                              is_async: bool) -> None:
    make, call = SDKS[sdk]

    def setup(f: FakeProvider) -> None:
        f.set_headers({"x-should-retry": "false"}, statuses=[500])
        f.fail_next(1, status=500)

    seen, outcome = await bare_then_governed(fake, governed, setup,
                                             lambda: make(fake, is_async), call)
    assert [s for s, *_ in seen] == [500] and outcome.startswith("InternalServerError")


async def test_x_should_retry_true_retries_a_client_error(
        sdk: str, fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    make, call = SDKS[sdk]

    def setup(f: FakeProvider) -> None:
        f.set_headers({"x-should-retry": "true"}, statuses=[400])
        f.fail_next(1, status=400)

    seen, outcome = await bare_then_governed(fake, governed, setup,
                                             lambda: make(fake, is_async), call)
    assert [s for s, *_ in seen] == [400, 200] and "retries_taken=1" in outcome


async def test_409_is_retried(sdk: str, fake: FakeProvider, governed: Governed,
                              is_async: bool) -> None:
    make, call = SDKS[sdk]
    seen, _ = await bare_then_governed(fake, governed, lambda f: f.fail_next(1, status=409),
                                       lambda: make(fake, is_async), call)
    assert [s for s, *_ in seen] == [409, 200]


async def test_a_retry_after_beyond_the_sdks_cap_fails_fast(
        fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    """openai refuses to wait a ``retry-after`` above two minutes (anthropic waits it)."""
    import openai._constants

    if not hasattr(openai._constants, "MAX_RETRY_AFTER_DELAY"):
        pytest.skip("this openai version waits any retry-after (no MAX_RETRY_AFTER_DELAY)")
    make, call = SDKS["openai"]

    def setup(f: FakeProvider) -> None:
        f.set_headers({"retry-after-ms": "500000"}, statuses=[429])
        f.fail_next(1, kind="rate_limit", retry_after=500)

    seen, outcome = await bare_then_governed(fake, governed, setup,
                                             lambda: make(fake, is_async), call)
    assert [s for s, *_ in seen] == [429] and outcome.startswith("RateLimitError")


async def test_timeouts_are_retried_as_the_sdk_does(
        sdk: str, fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    make, call = SDKS[sdk]
    seen, outcome = await bare_then_governed(
        fake, governed, lambda f: f.fail_next(2, kind="hang"),
        lambda: make(fake, is_async, timeout=0.3, max_retries=1), call)
    assert len(seen) == 2 and outcome.startswith("APITimeoutError")


async def test_the_anthropic_token_refresh_retries_a_401_once(
        fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    from anthropic.lib.credentials import StaticToken

    def make() -> Any:
        return anthropic_client(fake, is_async, api_key=None, credentials=StaticToken("tok"))

    seen, outcome = await bare_then_governed(fake, governed, lambda f: f.fail_next(1, status=401),
                                             make, messages_raw)
    assert [(s, n) for s, n, _ in seen] == [(401, "0"), (200, "1")]
    assert outcome.startswith("ok")


async def test_a_middlewares_retryable_error_is_retried(
        fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    seen_by_middleware: list[int] = []

    def flaky(request: Any, call_next: Callable[[Any], Any]) -> Any:
        seen_by_middleware.append(request.retries_taken)
        if request.retries_taken == 0:
            raise anthropic.RetryableError("try again")
        return call_next(request)

    async def aflaky(request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        seen_by_middleware.append(request.retries_taken)
        if request.retries_taken == 0:
            raise anthropic.RetryableError("try again")
        return await call_next(request)

    def make() -> Any:
        return anthropic_client(fake, is_async, middleware=[aflaky if is_async else flaky])

    seen, outcome = await bare_then_governed(fake, governed, lambda f: None, make, messages_raw)
    assert [(s, n) for s, n, _ in seen] == [(200, "1")] and "retries_taken=1" in outcome
    assert seen_by_middleware == [0, 1, 0, 1]  # bare, then governed: the same attempts


# ------------------------------------------------------------------ 429s
async def test_a_429_is_resent_as_the_same_attempt_unless_told_otherwise(
        sdk: str, fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    """The one documented wire difference: a throttled attempt is re-sent by the
    governor as the same attempt (its retry count unchanged); with
    ``retry.absorb_throttled = false`` the SDK spends a retry on it, as bare."""
    make, call = SDKS[sdk]
    setup = lambda f: f.fail_next(1, kind="rate_limit", retry_after=0.01)  # noqa: E731
    seen, outcome = await bare_then_governed(
        fake, governed, setup, lambda: make(fake, is_async), call,
        config={"retry": {"absorb_throttled": False}})
    assert [(s, n) for s, n, _ in seen] == [(429, "0"), (200, "1")]
    fake.reset()
    governed({"retry": {"max_wait": 0.05}})
    setup(fake)
    absorbed = await outcome_of(lambda: make(fake, is_async), call)
    assert [(s, n) for s, n, _ in wire(fake)] == [(429, "0"), (200, "0")]
    assert absorbed == outcome.replace("retries_taken=1", "retries_taken=0")


# ------------------------------------------------------------------ telemetry
class Exploding(SimpleSpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("span processor bug")


async def test_a_failing_span_processor_never_fails_a_call(
        sdk: str, fake: FakeProvider, governed: Governed, is_async: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """Calls go on as bare; the failure is logged once, and counted (in the governor and
    in the status every process publishes)."""
    provider = TracerProvider()
    provider.add_span_processor(Exploding(InMemorySpanExporter()))
    gov = governed(tracer_provider=provider)
    make, call = SDKS[sdk]
    with caplog.at_level("WARNING", logger="llm_governor"):
        for _ in range(2):
            assert (await outcome_of(lambda: make(fake, is_async), call)).startswith("ok")
    assert [r.getMessage() for r in caplog.records if "telemetry failed" in r.getMessage()] \
        == ["RATE_LIMIT telemetry failed; calls go on without it "
            "(counted in Governor.telemetry_errors)"]
    assert gov.telemetry_errors >= 2
    assert gov.local_status()["telemetry_errors"] == gov.telemetry_errors


async def test_anthropics_own_spans_are_one_per_call(
        fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    """The SDK's built-in OpenTelemetry sees its attempts inside one call, as bare."""
    import inspect

    import anthropic

    if "open_telemetry" not in inspect.signature(anthropic.Anthropic.__init__).parameters:
        pytest.skip("this anthropic version has no built-in OpenTelemetry")
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))

    def make() -> Any:
        return anthropic_client(fake, is_async, open_telemetry={"tracer_provider": tracing})

    def spans() -> list[ReadableSpan]:
        found = list(exporter.get_finished_spans())
        exporter.clear()
        return found

    setup = lambda f: f.fail_next(1, status=500)  # noqa: E731
    await bare_then_governed(fake, governed, setup, make, messages_raw)
    got = spans()
    assert len(got) == 2, [s.name for s in got]  # one call bare, one governed
    assert got[0].name == got[1].name


# ------------------------------------------------------------------ usage chunks
async def test_a_servers_own_usage_chunk_reaches_the_user(
        fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    """A server that always ends a stream with usage: governed, the user sees it too."""
    fake.usage_always = True
    try:
        async def chunks(client: Any) -> list[Any]:
            stream = await resolve(client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=8, stream=True))
            if is_async:
                return [c async for c in stream]
            return list(stream)

        bare = await chunks(openai_client(fake, is_async))
        gov = governed()
        got = await chunks(openai_client(fake, is_async))
    finally:
        fake.usage_always = False
    assert len(got) == len(bare) and got[-1].usage is not None and not got[-1].choices
    assert [c.model_dump(exclude_unset=True, exclude={"id", "created"}) for c in got] == \
        [c.model_dump(exclude_unset=True, exclude={"id", "created"}) for c in bare]
    assert gov.backend.counters()["cost"]["openai"]["gpt-4o-mini"] == fake.ledger.entries[-1].cost


# ------------------------------------------------------------------ google-genai, deepgram
async def test_gemini_retries_are_its_retry_options_bare_or_governed(
        fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    from google.genai import errors, types

    from .test_gemini import Gemini

    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.01)

    async def run() -> tuple[list[int], str]:
        fake.fail_next(2, status=503, provider="gemini")
        g = Gemini(fake, is_async, retry_options=retry)
        try:
            text = (await g.generate()).text
        except errors.APIError as exc:
            text = f"{type(exc).__name__} {exc.code}"
        statuses = [e.status for e in fake.ledger.entries]
        fake.reset()
        return statuses, text

    bare = await run()
    governed({"services": {"gemini": {"max_tokens": 100, "refill_rate": 100.0,
                                      "min_interval": 0.001}}})
    assert await run() == bare
    assert bare[0] == [503, 503, 200]
    fake.fail_next(3, status=503, provider="gemini")
    with pytest.raises(errors.ServerError):  # attempts run out: the SDK's own error
        await Gemini(fake, is_async, retry_options=retry).generate()
    assert [e.status for e in fake.ledger.entries] == [503] * 3


@pytest.mark.parametrize("scenario", ["429 not in codes", "429 in codes", "attempts run out"])
async def test_gemini_throttles_and_attempts_run_out_as_bare(
        fake: FakeProvider, governed: Governed, is_async: bool, scenario: str) -> None:
    """A 429 is re-sent in place of the SDK's retry only when the SDK's own
    ``http_status_codes`` retry it; when attempts run out, the same error."""
    from google.genai import errors, types

    from .test_gemini import Gemini

    codes = [503] if scenario == "429 not in codes" else None
    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.01,
                                   http_status_codes=codes)

    async def run() -> tuple[list[int], str]:
        if scenario == "attempts run out":
            fake.fail_next(3, status=503, provider="gemini")
        else:
            fake.fail_next(1, kind="rate_limit", retry_after=0.01, provider="gemini")
        try:
            text = (await Gemini(fake, is_async, retry_options=retry).generate()).text
        except errors.APIError as exc:
            text = f"{type(exc).__name__} {exc.code} {exc.message}"
        statuses = [e.status for e in fake.ledger.entries]
        fake.reset()
        return statuses, text

    bare = await run()
    governed({"retry": {"max_wait": 0.05},
              "services": {"gemini": {"max_tokens": 100, "refill_rate": 100.0,
                                      "min_interval": 0.001}}})
    assert await run() == bare
    assert bare[0] == {"429 not in codes": [429], "429 in codes": [429, 200],
                       "attempts run out": [503, 503, 503]}[scenario]


async def test_deepgram_retries_are_its_own_bare_or_governed(
        fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    from .test_deepgram import Deepgram

    async def run() -> tuple[list[int], float]:
        fake.fail_next(1, status=500, provider="deepgram")
        fake.fail_next(1, status=409, provider="deepgram")
        result = await Deepgram(fake, is_async).file()
        statuses = [e.status for e in fake.ledger.entries]
        fake.reset()
        return statuses, result.metadata.duration

    fake.set_headers({"retry-after": "0.01"}, statuses=[409, 500])
    bare = await run()
    fake.set_headers({"retry-after": "0.01"}, statuses=[409, 500])
    governed({"services": {"deepgram": {"max_tokens": 100, "refill_rate": 100.0,
                                        "min_interval": 0.001}}})
    assert await run() == bare == ([500, 409, 200], 2.0)


# ------------------------------------------------------------------ bodies the SDK cannot replay
class OneShot:
    """A file the SDK can read once and not rewind (a pipe, a socket, a generator)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data


@pytest.mark.parametrize("body", ["one-shot", "seekable"])
async def test_an_upload_the_sdk_cannot_replay_is_not_sent_again(
        governed: Governed, is_async: bool, body: str) -> None:
    """openai's transcription upload after a 500: the SDK retries a seekable file (rewound)
    and never a one-shot one (it raises the 500); governed, the same requests and result.
    (No governed anthropic operation takes a file body.)"""
    import io

    from .conftest import httpx2  # the SDK's own HTTP library (httpx on older openai)

    audio = b"RIFF" + bytes(64)
    seen: list[tuple[int, bytes]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        status = 500 if not seen else 200
        seen.append((status, request.read()))
        if status == 500:
            return httpx2.Response(500, headers={"retry-after-ms": "5"},
                                   json={"error": {"message": "boom", "type": "server_error"}})
        return httpx2.Response(200, json={"text": "hello"})

    async def run() -> tuple[list[tuple[int, int]], str]:
        seen.clear()
        if is_async:
            http: Any = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
            client: Any = openai.AsyncOpenAI(api_key=OPENAI_KEY, http_client=http)
        else:
            http = httpx2.Client(transport=httpx2.MockTransport(handler))
            client = openai.OpenAI(api_key=OPENAI_KEY, http_client=http)
        file = OneShot(audio) if body == "one-shot" else io.BytesIO(audio)
        try:
            result = await resolve(client.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", file)))
            got = f"ok {result.text}"
        except openai.APIStatusError as exc:
            got = f"{type(exc).__name__} {exc.status_code}"
        finally:
            await resolve(http.aclose() if is_async else http.close())
        return [(status, len(sent)) for status, sent in seen], got

    bare = await run()
    governed()
    assert await run() == bare
    if body == "one-shot" and hasattr(openai._base_client, "_RequestBodyReplay"):
        # the SDK's replay guard (openai 3): bare, a one-shot body is never sent twice
        assert bare[1] == "InternalServerError 500" and [s for s, _ in bare[0]] == [500]
    elif body == "one-shot":  # older SDKs re-send what is left of it (nothing), governed too
        assert [s for s, _ in bare[0]] == [500, 200]
    else:
        assert bare[1] == "ok hello" and [s for s, _ in bare[0]] == [500, 200]
        assert bare[0][0][1] == bare[0][1][1] > len(audio)  # the whole file, both times


async def test_a_vetoed_retry_raises_the_sdks_own_error_with_a_note(
        sdk: str, fake: FakeProvider, governed: Governed, is_async: bool) -> None:
    """The retry budget refuses the SDK's retry: the caller gets the SDK's own error for
    the 500, as a bare client with no retries left raises it, with a note saying why."""
    make, call = SDKS[sdk]
    fake.set_headers({"retry-after-ms": "5"}, statuses=list(range(400, 600)))
    fake.fail_next(1, status=500)
    bare = await outcome_of(lambda: make(fake, is_async, max_retries=0), call)
    fake.reset()
    fake.set_headers({"retry-after-ms": "5"}, statuses=list(range(400, 600)))
    governed({"retry": {"budget_ratio": 0.0, "budget_min_per_minute": 0}})
    fake.fail_next(1, status=500)
    client = make(fake, is_async, max_retries=2)
    with pytest.raises(Exception) as info:
        await resolve(call(client))
    got = info.value
    assert f"{type(got).__name__}: {REQUEST_ID.sub('req_*', str(got.args[0]))}" == bare
    assert [e.status for e in fake.ledger.entries] == [500]
    assert any(note.startswith("llm-governor did not retry") and "retry budget" in note
               for note in getattr(got, "__notes__", []))
