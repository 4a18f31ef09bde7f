"""Hostile modes of the fake provider: billed faults, lying headers, per-key limits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from google.genai import errors as genai_errors

from llm_governor.testing import FakeProvider, LedgerEntry, key_fingerprint
from tests.testing.test_fake_provider import KEY, MSG, claude, deepgram, gemini, oai

MODEL = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-latest"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=MSG, **kw)


def full_price(fake: FakeProvider) -> Decimal:
    """What a normal chat call costs on this fake (4 input + 20 output tokens)."""
    probe = FakeProvider().start()
    try:
        chat(oai(probe))
        return probe.ledger.total_billed()
    finally:
        probe.stop()


def sse_payloads(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def raw_post(fake: FakeProvider, path: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=fake.base_url, headers={"authorization": f"Bearer {KEY}"}) as http:
        return http.post(path, json=body)


# ------------------------------------------------------------ billed faults


def test_hang_bills_at_once_and_waits_for_the_client(fake: FakeProvider) -> None:
    price = full_price(fake)
    fake.fail_next(kind="hang")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(oai(fake, timeout=0.4))
    assert time.monotonic() - started >= 0.4
    (entry,) = fake.ledger.entries
    assert (entry.status, entry.outcome, entry.fault) == (200, "broken", "hang")
    assert entry.billed and entry.cost == price and entry.input_tokens == 4
    deadline = time.monotonic() + 2
    while fake.ledger.entries[0].end - entry.time < 0.3 and time.monotonic() < deadline:
        time.sleep(0.02)  # the server notices the client's close and stamps the end
    assert fake.ledger.entries[0].end - entry.time >= 0.3
    chat(oai(fake))  # the concurrency slot was released, the server still serves


def test_hang_is_billed_while_hanging_and_stop_is_prompt() -> None:
    fake = FakeProvider(max_concurrency=1).start()
    fake.fail_next(kind="hang")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            chat(oai(fake, timeout=30))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 2
    while not len(fake.ledger) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.ledger.billed_count() == 1 and thread.is_alive()
    with pytest.raises(openai.RateLimitError):  # the hung request holds the only slot
        chat(oai(fake))
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0
    thread.join(5)
    assert not thread.is_alive() and isinstance(errors[0], openai.APIConnectionError)


def test_reset_after_send_is_billed_reset_is_not(fake: FakeProvider) -> None:
    price = full_price(fake)
    fake.fail_next(kind="reset")
    fake.fail_next(kind="reset_after_send")
    for _ in range(2):
        with pytest.raises(openai.APIConnectionError):
            chat(oai(fake))
    before, after = fake.ledger.entries
    assert (before.status, before.outcome, before.billed, before.cost) == (
        0,
        "reset",
        False,
        Decimal(0),
    )
    assert (after.status, after.outcome, after.billed, after.cost) == (200, "broken", True, price)
    assert fake.ledger.total_billed() == price and fake.ledger.billed_count() == 1


def test_cut_stream_sends_k_frames_then_resets(fake: FakeProvider) -> None:
    price = full_price(fake)
    fake.fail_next(kind="cut_stream", frames=3)
    got: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in chat(oai(fake), stream=True):
            got.append(chunk)
    assert len(got) == 3 and got[0].choices[0].delta.role == "assistant"

    fake.fail_next(kind="cut_stream", frames=2, provider="anthropic")
    events: list[Any] = []
    with pytest.raises(httpx2.TransportError):  # anthropic's stream raises it as is
        stream = claude(fake).messages.create(
            model=CLAUDE, max_tokens=50, messages=MSG, stream=True
        )
        for event in stream:
            events.append(event)
    assert [e.type for e in events] == ["message_start", "content_block_start"]

    fake.fail_next(kind="cut_stream")  # non-stream: headers and half the body
    with (
        httpx.Client(base_url=fake.base_url) as http,
        http.stream("POST", "/v1/chat/completions", json={"model": MODEL, "messages": MSG}) as r,
    ):
        assert r.status_code == 200 and int(r.headers["content-length"]) > 0
        with pytest.raises(httpx.HTTPError):
            r.read()
    entries = fake.ledger.entries
    assert [(e.outcome, e.fault) for e in entries] == [("broken", "cut_stream")] * 3
    assert entries[0].cost == entries[2].cost == price and all(e.billed for e in entries)


def test_no_usage_everywhere(fake: FakeProvider) -> None:
    client = oai(fake)
    fake.set_fault("no_usage")
    assert chat(client).usage is None
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks and all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert client.responses.create(model=MODEL, input="hi").usage is None
    with client.responses.stream(model=MODEL, input="hi") as rstream:
        assert rstream.get_final_response().usage is None
    raw = raw_post(fake, "/v1/messages", {"model": CLAUDE, "max_tokens": 5, "messages": MSG})
    assert "usage" not in raw.json()
    streamed = raw_post(
        fake, "/v1/messages", {"model": CLAUDE, "max_tokens": 5, "messages": MSG, "stream": True}
    )
    kinds = [json.loads(p)["type"] for p in sse_payloads(streamed.text)]
    assert "message_start" in kinds and "message_delta" in kinds and "usage" not in streamed.text
    gem = gemini(fake)
    assert (
        gem.models.generate_content(model="gemini-2.0-flash", contents="hi").usage_metadata is None
    )
    stream = gem.models.generate_content_stream(model="gemini-2.0-flash", contents="hi")
    assert all(c.usage_metadata is None for c in stream)
    with httpx.Client(base_url=fake.base_url) as http:
        listen = http.post("/v1/listen", content=b"\0" * 1600)
    assert listen.status_code == 200 and "duration" not in listen.json()["metadata"]
    fake.set_fault(None)
    assert all(e.billed and e.outcome == "served" and e.cost > 0 for e in fake.ledger)
    assert fake.ledger.billed_count() == len(fake.ledger) == 9


def test_malformed_json_and_stream(fake: FakeProvider) -> None:
    fake.fail_next(2, kind="malformed")
    body = {"model": MODEL, "messages": MSG}
    plain = raw_post(fake, "/v1/chat/completions", body)
    assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        plain.json()
    streamed = raw_post(fake, "/v1/chat/completions", {**body, "stream": True})
    payloads = sse_payloads(streamed.text)
    bad = [p for p in payloads if p != "[DONE]" and not _parses(p)]
    assert len(bad) == 1 and 0 < payloads.index(bad[0]) < len(payloads) - 1
    fake.fail_next(kind="malformed", provider="anthropic")
    with pytest.raises(ValueError):
        list(claude(fake).messages.create(model=CLAUDE, max_tokens=5, messages=MSG, stream=True))
    assert [(e.status, e.outcome, e.billed) for e in fake.ledger] == [(200, "broken", True)] * 3


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_inflate_usage_reports_counts_and_bills_the_extra() -> None:
    with FakeProvider(tpm=1000, window=5.0) as fake:
        client = oai(fake)
        fake.fail_next(kind="inflate_usage", extra_input_tokens=500)
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
        reply = raw.parse()
        assert reply.usage is not None and reply.usage.prompt_tokens == 504
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - 524)
        (entry,) = fake.ledger.entries
        assert (entry.input_tokens, entry.outcome, entry.fault) == (504, "served", "inflate_usage")
        assert entry.cost > full_price(fake)
        fake.set_fault("inflate_usage", extra_input_tokens=10, provider="anthropic")
        msg = claude(fake).messages.create(model=CLAUDE, max_tokens=5, messages=MSG)
        assert msg.usage.input_tokens == 14
        assert chat(client).usage.prompt_tokens == 4  # provider filter


def test_billed_faults_wait_for_an_admitted_request() -> None:
    with FakeProvider(rpm=1, window=0.4) as fake:
        client = oai(fake)
        chat(client)
        fake.fail_next(kind="no_usage")
        with pytest.raises(openai.RateLimitError):
            chat(client)  # the limiter's 429 does not consume the fault
        time.sleep(0.45)
        assert chat(client).usage is None
        assert [(e.status, e.fault) for e in fake.ledger] == [
            (200, None),
            (429, None),
            (200, "no_usage"),
        ]


# ---------------------------------------------------------------- usage chunk


def test_usage_null_on_chunks_and_usage_always(fake: FakeProvider) -> None:
    body = {"model": MODEL, "messages": MSG, "stream": True}
    asked = sse_payloads(
        raw_post(
            fake, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
        ).text
    )
    *chunks, last, done = asked
    assert done == "[DONE]" and json.loads(last)["usage"]["prompt_tokens"] == 4
    assert all("usage" in json.loads(c) and json.loads(c)["usage"] is None for c in chunks)
    legacy = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": True}
    old = sse_payloads(
        raw_post(
            fake, "/v1/completions", {**legacy, "stream_options": {"include_usage": True}}
        ).text
    )
    assert all(json.loads(c)["usage"] is None for c in old[:-2])

    plain = sse_payloads(raw_post(fake, "/v1/chat/completions", body).text)
    assert all("usage" not in json.loads(c) for c in plain[:-1])
    fake.usage_always = True
    always = sse_payloads(raw_post(fake, "/v1/chat/completions", body).text)
    final = json.loads(always[-2])
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 20
    assert all("usage" not in json.loads(c) for c in always[:-2])
    chunks_sdk = list(chat(oai(fake), stream=True))
    assert chunks_sdk[-1].choices == [] and chunks_sdk[-1].usage is not None
    with FakeProvider(usage_always=True) as other:
        assert other.usage_always
        assert list(chat(oai(other), stream=True))[-1].usage is not None


# --------------------------------------------------------------- headers


def test_set_headers_overrides_and_filters(fake: FakeProvider) -> None:
    fake.set_headers({"retry-after": "1e9"}, statuses=[429])
    fake.set_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "999999999s"},
        provider="openai",
        statuses=[200],
    )
    fake.set_headers({"X-RateLimit-Limit-Requests": "1e-308", "content-length": "0"})
    client = oai(fake)
    ok = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert ok.headers["x-ratelimit-reset-requests"] == "999999999s"
    assert ok.headers.get_list("x-ratelimit-limit-requests") == ["1e-308"]
    assert ok.parse().usage is not None  # framing headers are never overridden
    fake.fail_next(kind="rate_limit", retry_after=2.0)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    headers = info.value.response.headers
    assert headers.get_list("retry-after") == ["1e9"] and headers["retry-after-ms"] == "2000"
    assert "x-ratelimit-remaining-requests" not in headers  # that rule is for 200s only
    msg = claude(fake).messages.with_raw_response.create(model=CLAUDE, max_tokens=5, messages=MSG)
    assert "x-ratelimit-reset-requests" not in msg.headers  # that rule is for openai only
    assert msg.headers["x-ratelimit-limit-requests"] == "1e-308"

    fake.set_headers(None, provider="openai")
    assert "x-ratelimit-reset-requests" not in chat_headers(client)
    assert chat_headers(client)["x-ratelimit-limit-requests"] == "1e-308"
    fake.set_headers(None)
    assert "x-ratelimit-limit-requests" not in chat_headers(client)
    fake.set_headers({"x-custom": "1"})
    fake.reset()
    assert "x-custom" not in chat_headers(client)


def chat_headers(client: openai.OpenAI) -> httpx2.Headers:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
    return raw.headers


def test_provider_retry_headers_are_as_documented() -> None:
    with FakeProvider(rpm=1, tpm=10_000, window=1.0) as fake:
        chat(oai(fake))
        with pytest.raises(openai.RateLimitError) as oerr:
            chat(oai(fake))
        oh = oerr.value.response.headers
        assert int(oh["retry-after-ms"]) <= 1000 and oh["retry-after"] == "1"
        assert oh["x-ratelimit-remaining-requests"] == "0"
        assert oh["x-ratelimit-reset-tokens"].endswith(("ms", "s"))

        claude(fake).messages.create(model=CLAUDE, max_tokens=5, messages=MSG)
        with pytest.raises(anthropic.RateLimitError) as aerr:
            claude(fake).messages.create(model=CLAUDE, max_tokens=5, messages=MSG)
        ah = aerr.value.response.headers
        assert ah["retry-after"] == "1" and "retry-after-ms" not in ah  # Anthropic: seconds only
        for name in ("requests", "tokens", "input-tokens", "output-tokens"):
            reset = datetime.fromisoformat(ah[f"anthropic-ratelimit-{name}-reset"])
            assert reset.tzinfo is not None and reset >= datetime.now(UTC).replace(microsecond=0)

        client = gemini(fake)
        client.models.generate_content(model="gemini-2.0-flash", contents="hi")
        with pytest.raises(genai_errors.ClientError) as gerr:
            client.models.generate_content(model="gemini-2.0-flash", contents="hi")
        assert "retry-after" not in (gerr.value.response.headers or {})
        details = {d["@type"].rsplit(".", 1)[1]: d for d in gerr.value.details["error"]["details"]}
        assert details["RetryInfo"]["retryDelay"] == "1s"
        (violation,) = details["QuotaFailure"]["violations"]
        assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
        assert violation["quotaValue"] == "1"
        assert violation["quotaDimensions"]["model"] == "gemini-2.0-flash"


def test_gemini_exhausted_quota_says_per_day(fake: FakeProvider) -> None:
    fake.fail_next(kind="insufficient_quota", provider="gemini")
    client = gemini(fake)  # keep a reference: a collected genai.Client closes its HTTP client
    with pytest.raises(genai_errors.ClientError) as info:
        client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    (failure,) = info.value.details["error"]["details"]  # no RetryInfo: waiting won't help
    assert "PerDay" in failure["violations"][0]["quotaId"]


# ---------------------------------------------------------------- per key


def test_per_key_limits_are_independent_accounts() -> None:
    with FakeProvider(rpm=1, window=5.0, per_key=True) as fake:
        first = openai.OpenAI(api_key="key-one", base_url=fake.openai_base_url, max_retries=0)
        second = openai.OpenAI(api_key="key-two", base_url=fake.openai_base_url, max_retries=0)
        raw = first.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        raw = second.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"  # its own bucket
        with pytest.raises(openai.RateLimitError):
            chat(first)
        one, two = key_fingerprint("key-one"), key_fingerprint("key-two")
        assert len(one) == 8 and one != two
        assert [e.key_id for e in fake.ledger] == [one, two, one]
        assert fake.ledger.count_by_status(key_id=one) == {200: 1, 429: 1}
        assert fake.ledger.total_billed(key_id=two) == fake.ledger.total_billed() / 2
        assert all("key-" not in repr(e) for e in fake.ledger)

        fake.set_limits(per_key=False)  # one shared bucket from here on
        assert fake.limits.per_key is False
        chat(second)
        with pytest.raises(openai.RateLimitError):
            chat(first)


def test_per_key_covers_every_sdk_auth_header() -> None:
    with FakeProvider(per_key=True) as fake:
        chat(oai(fake))  # Authorization: Bearer
        claude(fake).messages.create(model=CLAUDE, max_tokens=5, messages=MSG)  # x-api-key
        gem = gemini(fake)
        gem.models.generate_content(model="gemini-2.0-flash", contents="hi")
        deepgram(fake).listen.v1.media.transcribe_file(request=b"\0" * 1600)  # Token scheme
        assert {e.key_id for e in fake.ledger} == {key_fingerprint(KEY)}
        with httpx.Client(base_url=fake.base_url) as http:
            http.post("/v1/chat/completions", json={"model": MODEL, "messages": MSG})
        assert fake.ledger.entries[-1].key_id is None


# ------------------------------------------------------------------ ledger


def test_ledger_outcomes_and_helpers(fake: FakeProvider) -> None:
    client = oai(fake)
    chat(client)
    fake.fail_next(kind="error")
    fake.fail_next(kind="reset")
    fake.fail_next(kind="malformed")
    for _ in range(3):
        with pytest.raises((openai.APIError, ValueError)):
            chat(client)
    assert fake.ledger.count_by_outcome() == {"served": 1, "rejected": 1, "reset": 1, "broken": 1}
    assert fake.ledger.billed_count() == 2 and fake.ledger.served_count() == 1
    assert fake.ledger.count_by_status() == {200: 2, 500: 1, 0: 1}
    served, _, _, broken = fake.ledger.entries
    assert fake.ledger.total_billed() == served.cost + broken.cost == 2 * served.cost


def test_ledger_entry_outcome_defaults_follow_status() -> None:
    common: dict[str, Any] = {
        "time": 0.0,
        "end": 0.0,
        "provider": "openai",
        "endpoint": "chat",
        "path": "/v1/chat/completions",
        "model": MODEL,
        "input_tokens": 0,
        "output_tokens": 0,
        "audio_seconds": 0.0,
        "cost": Decimal(0),
        "priced": True,
        "stream": False,
        "api_key_seen": True,
        "metered": True,
        "fault": None,
        "request_bytes": 10,
    }
    assert LedgerEntry(status=200, **common).outcome == "served"
    assert LedgerEntry(status=429, **common).outcome == "rejected"
    assert LedgerEntry(status=0, **common).outcome == "reset"
    broken = LedgerEntry(status=200, outcome="broken", **common)
    assert broken.billed and broken.key_id is None
