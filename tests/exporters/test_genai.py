"""The GenAI semantic conventions (v1.41.1) per SDK and operation, through the unmodified
SDKs against the fake provider, read back with the OTel SDK's in-memory exporter and
reader: span structure (the governor's INTERNAL span, the GenAI CLIENT span under it,
from first send to last byte), names, attributes and their values (operation and
provider names per client class and endpoint, ``server.*``, the request's own max
tokens, response id/model/finish reasons, service tier, cache and reasoning tokens),
streams (time to first chunk, per chunk), provider errors and retries, scope version
and ``schema_url``, ``gen_ai_latest_experimental``, the opt-in cost attributes.
Coexistence with another GenAI instrumentation is in test_coexist.py.
"""

from __future__ import annotations

import struct
from typing import Any
from urllib.parse import urlsplit

import anthropic
import openai
import pytest
from deepgram import AsyncDeepgramClient, DeepgramClient
from google import genai
from google.genai import types
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from llm_governor import __version__
from llm_governor.exporters.otel import SCHEMA_URL
from llm_governor.instrumentation.anthropic import AnthropicAdapter
from llm_governor.instrumentation.google_genai import GeminiAdapter
from llm_governor.testing import FakeProvider
from tests.instrumentation.conftest import Driver

from ._otel import Otel
from .conftest import Instrument

HAIKU = "claude-3-5-haiku-latest"


@pytest.fixture
def fake(sdk_fake: FakeProvider) -> FakeProvider:
    return sdk_fake


def port(fake: FakeProvider) -> int | None:
    return urlsplit(fake.openai_base_url).port


def the_call(otel: Otel, schema: str | None = SCHEMA_URL) -> tuple[ReadableSpan,
                                                                   ReadableSpan]:
    """The INTERNAL and CLIENT spans of the only call, checked for their structure."""
    spans = otel.finished()
    (internal,) = [s for s in spans if s.kind is SpanKind.INTERNAL]
    (client,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert client.parent is not None and client.parent.span_id == internal.context.span_id
    assert internal.start_time <= client.start_time <= client.end_time <= internal.end_time
    assert client.instrumentation_scope.name == "llm_governor"
    assert client.instrumentation_scope.version == __version__
    assert (client.instrumentation_scope.schema_url or None) == schema
    assert not any(k.startswith("gen_ai.") for k in internal.attributes)
    return internal, client


def metric_attrs(otel: Otel, name: str) -> list[dict[str, Any]]:
    return [dict(p.attributes) for p in otel.points(name)]


# ------------------------------------------------------------------ openai
async def test_openai_chat(instrument: Instrument, otel: Otel, fake: FakeProvider,
                           is_async: bool) -> None:
    instrument()
    d = Driver(fake, is_async)
    reply = await d.call(d.openai.chat.completions.create, model="gpt-4o-mini", max_tokens=16,
                         n=2, temperature=0.2, top_p=0.9, seed=7, stop=["END"],
                         messages=[{"role": "user", "content": "Say hi"}])
    _, span = the_call(otel)
    a = span.attributes
    assert span.name == "chat gpt-4o-mini"
    assert a["gen_ai.operation.name"] == "chat" and a["openai.api.type"] == "chat_completions"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == port(fake)
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.request.max_tokens"] == 16  # the request's, not the governor's n x 16
    assert a["gen_ai.request.choice.count"] == 2
    assert a["gen_ai.request.temperature"] == 0.2 and a["gen_ai.request.top_p"] == 0.9
    assert a["gen_ai.request.seed"] == 7 and list(a["gen_ai.request.stop_sequences"]) == ["END"]
    assert "gen_ai.request.stream" not in a
    assert a["gen_ai.response.id"] == reply.id
    assert a["gen_ai.response.model"] == reply.model
    assert list(a["gen_ai.response.finish_reasons"]) == [c.finish_reason for c in reply.choices]
    assert a["openai.response.service_tier"] == "default"
    assert a["openai.response.system_fingerprint"] == "fp_fake"
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert "gen_ai.usage.cost.amount" not in a  # opt-in
    (duration,) = metric_attrs(otel, "gen_ai.client.operation.duration")
    assert duration == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": reply.model,
        "server.address": "127.0.0.1", "server.port": port(fake),
        "openai.response.service_tier": "default",
        "openai.response.system_fingerprint": "fp_fake"}
    tokens = metric_attrs(otel, "gen_ai.client.token.usage")
    assert sorted(t.pop("gen_ai.token.type") for t in tokens) == ["input", "output"]
    assert all(t == duration for t in tokens)  # same attributes, never error.type
    assert not otel.points("gen_ai.client.operation.time_to_first_chunk")  # not a stream


async def test_openai_responses_is_chat_with_its_api_type(
        instrument: Instrument, otel: Otel, fake: FakeProvider, is_async: bool) -> None:
    instrument()
    d = Driver(fake, is_async)
    reply = await d.call(d.openai.responses.create, model="gpt-4o-mini", input="Say hi",
                         max_output_tokens=12, service_tier="flex")
    _, span = the_call(otel)
    a = span.attributes
    assert span.name == "chat gpt-4o-mini"
    assert a["gen_ai.operation.name"] == "chat" and a["openai.api.type"] == "responses"
    assert a["gen_ai.request.max_tokens"] == 12
    assert a["openai.request.service_tier"] == "flex"
    assert a["openai.response.service_tier"] == "flex"
    assert a["gen_ai.response.id"] == reply.id
    assert list(a["gen_ai.response.finish_reasons"]) == [reply.status]


async def test_openai_embeddings(instrument: Instrument, otel: Otel, fake: FakeProvider,
                                 is_async: bool) -> None:
    instrument()
    d = Driver(fake, is_async)
    await d.call(d.openai.embeddings.create, model="text-embedding-3-small",
                 input=["a", "b"], dimensions=8)
    _, span = the_call(otel)
    assert span.name == "embeddings text-embedding-3-small"
    assert span.attributes["gen_ai.embeddings.dimension.count"] == 8
    tokens = metric_attrs(otel, "gen_ai.client.token.usage")
    assert [t["gen_ai.token.type"] for t in tokens] == ["input"]  # no output tokens


async def test_openai_stream_times_its_chunks(instrument: Instrument, otel: Otel,
                                              fake: FakeProvider, is_async: bool) -> None:
    instrument()
    d = Driver(fake, is_async)
    stream = await d.call(d.openai.chat.completions.create, model="gpt-4o-mini",
                          max_tokens=5, stream=True,
                          messages=[{"role": "user", "content": "Count"}])
    chunks = await d.collect(stream)
    _, span = the_call(otel)
    a = span.attributes
    assert a["gen_ai.request.stream"] is True
    assert 0 <= a["gen_ai.response.time_to_first_chunk"] <= (span.end_time
                                                            - span.start_time) / 1e9
    assert a["gen_ai.usage.output_tokens"] == 5  # from the usage chunk the user never saw
    assert list(a["gen_ai.response.finish_reasons"]) == ["length"]
    (first,) = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert first.count == 1
    (per_chunk,) = otel.points("gen_ai.client.operation.time_per_output_chunk")
    # every chunk after the first one, the hidden usage chunk included
    assert per_chunk.count == len(chunks)


async def test_retries_are_inside_one_span_and_only_provider_work_is_timed(
        instrument: Instrument, otel: Otel, fake: FakeProvider, is_async: bool) -> None:
    instrument()
    d = Driver(fake, is_async, max_retries=2)
    fake.fail_next(1, 500)
    await d.call(d.openai.chat.completions.create, model="gpt-4o-mini", max_tokens=4,
                 messages=[{"role": "user", "content": "x"}])
    internal, span = the_call(otel)
    assert span.status.status_code is not StatusCode.ERROR
    assert span.attributes["llm_governor.attempts"] == 2
    assert [e.name for e in span.events] == ["llm_governor.retry"]
    assert [e.name for e in internal.events] == ["llm_governor.retry"]
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert "error.type" not in duration.attributes  # the call succeeded
    held = span.attributes["llm_governor.held_s"]
    assert duration.sum == pytest.approx((span.end_time - span.start_time) / 1e9 - held,
                                         abs=0.01)


async def test_a_provider_error_is_a_genai_error_by_status(
        instrument: Instrument, otel: Otel, fake: FakeProvider, is_async: bool) -> None:
    instrument()
    d = Driver(fake, is_async, max_retries=0)
    fake.fail_next(1, 400)
    with pytest.raises(openai.BadRequestError):
        await d.call(d.openai.chat.completions.create, model="gpt-4o-mini", max_tokens=4,
                     messages=[{"role": "user", "content": "x"}])
    internal, span = the_call(otel)
    for s in (internal, span):
        assert s.status.status_code is StatusCode.ERROR
        assert s.attributes["error.type"] == "400"
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "400"
    assert not otel.points("gen_ai.client.token.usage")
    (calls,) = otel.points("llm_governor.calls")
    assert calls.attributes["error.type"] == "400"


async def test_a_connection_error_has_its_public_class_path(
        instrument: Instrument, otel: Otel, is_async: bool) -> None:
    instrument()
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    client = cls(api_key="sk-x", base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        await Driver.call(client.chat.completions.create, model="gpt-4o-mini", max_tokens=4,
                          messages=[{"role": "user", "content": "x"}])
    _, span = the_call(otel)
    assert span.attributes["error.type"] == "openai.APIConnectionError"


def test_azure_and_compatible_hosts_are_named_by_the_conventions() -> None:
    from llm_governor.instrumentation._genai import openai_host_provider
    from llm_governor.instrumentation.openai import OpenAIAdapter

    azure = openai.AzureOpenAI(api_key="k", api_version="2024-10-21",
                               azure_endpoint="https://x.openai.azure.com")
    assert OpenAIAdapter().provider_name(azure, "x.openai.azure.com") == "azure.ai.openai"
    plain = openai.OpenAI(api_key="k")
    assert OpenAIAdapter().provider_name(plain, "api.openai.com") == "openai"
    assert openai_host_provider("api.groq.com") == "groq"
    assert openai_host_provider("api.deepseek.com") == "deepseek"
    assert openai_host_provider("llm.internal") == "openai"


# ------------------------------------------------------------------ anthropic
async def test_anthropic_messages_with_cache(instrument: Instrument, otel: Otel,
                                             fake: FakeProvider, is_async: bool) -> None:
    instrument(telemetry={"cost_attributes": True})
    d = Driver(fake, is_async)
    system = [{"type": "text", "text": "Be brief. " * 50,
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    reply = await d.call(d.anthropic.messages.create, model=HAIKU, max_tokens=32,
                         stop_sequences=["END"], system=system,
                         messages=[{"role": "user", "content": "Say hi"}])
    _, span = the_call(otel)
    a = span.attributes
    assert span.name == f"chat {HAIKU}"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.max_tokens"] == 32
    assert list(a["gen_ai.request.stop_sequences"]) == ["END"]
    assert a["gen_ai.response.id"] == reply.id
    assert list(a["gen_ai.response.finish_reasons"]) == [reply.stop_reason]
    written = reply.usage.cache_creation_input_tokens
    assert written > 0
    assert a["gen_ai.usage.cache_creation.input_tokens"] == written
    # input_tokens: all of the input, cache writes and reads included
    assert a["gen_ai.usage.input_tokens"] == reply.usage.input_tokens + written
    assert not any(k.startswith("openai.") for k in a)
    assert a["gen_ai.usage.cost.amount"] == a["llm_governor.cost_usd"] > 0
    assert a["gen_ai.usage.cost.currency"] == "USD"
    assert a["gen_ai.usage.cost.source"] == "local"


async def test_anthropic_stream(instrument: Instrument, otel: Otel, fake: FakeProvider,
                                is_async: bool) -> None:
    instrument()
    d = Driver(fake, is_async)
    async with d.enter(d.anthropic.messages.stream(
            model=HAIKU, max_tokens=8,
            messages=[{"role": "user", "content": "Count"}])) as stream:
        await d.collect(stream.text_stream)
    _, span = the_call(otel)
    a = span.attributes
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.model"] == HAIKU
    assert list(a["gen_ai.response.finish_reasons"]) == ["max_tokens"]
    assert "gen_ai.response.time_to_first_chunk" in a
    assert otel.points("gen_ai.client.operation.time_per_output_chunk")[0].count > 1


def test_anthropic_bedrock_and_vertex_clients_are_their_providers() -> None:
    adapter = AnthropicAdapter()
    names = {}
    for cls_name in ("AnthropicBedrock", "AsyncAnthropicVertex", "Anthropic"):
        cls = type(cls_name, (anthropic.Anthropic,), {})
        names[cls_name] = adapter.provider_name(cls(api_key="k"), None)
    assert names == {"AnthropicBedrock": "aws.bedrock", "AsyncAnthropicVertex": "gcp.vertex_ai",
                     "Anthropic": "anthropic"}
    # the SDK's own client classes (not constructed: they need cloud credentials)
    for cls, name in ((anthropic.AnthropicBedrock, "aws.bedrock"),
                      (anthropic.AsyncAnthropicVertex, "gcp.vertex_ai")):
        assert adapter.provider_name(object.__new__(cls), None) == name


# ------------------------------------------------------------------ gemini
async def test_gemini_generate_and_stream(instrument: Instrument, otel: Otel,
                                          fake: FakeProvider, is_async: bool) -> None:
    instrument()
    client = genai.Client(api_key="gemini-test", http_options=types.HttpOptions(
        base_url=fake.gemini_base_url))
    models: Any = client.aio.models if is_async else client.models
    config = types.GenerateContentConfig(max_output_tokens=10, candidate_count=1,
                                         temperature=0.1,
                                         thinking_config=types.ThinkingConfig(
                                             thinking_budget=100))
    stream = await Driver.call(models.generate_content_stream, model="gemini-2.0-flash",
                               contents="Tell me", config=config)
    await Driver.collect(stream)
    _, span = the_call(otel)
    a = span.attributes
    assert span.name == "generate_content gemini-2.0-flash"
    assert a["gen_ai.provider.name"] == "gcp.gemini"
    assert a["gen_ai.request.max_tokens"] == 10  # not 10 + the thinking budget
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.model"] == "gemini-2.0-flash"
    assert list(a["gen_ai.response.finish_reasons"]) == ["MAX_TOKENS"]
    assert a["gen_ai.response.id"]
    assert otel.points("gen_ai.client.operation.time_to_first_chunk")[0].count == 1


def test_gemini_on_vertex_is_vertex_ai() -> None:
    adapter = GeminiAdapter()
    vertex = type("Api", (), {"vertexai": True})()
    studio = type("Api", (), {"vertexai": False})()
    assert adapter.provider_name(vertex, "us-central1-aiplatform.googleapis.com") == \
        "gcp.vertex_ai"
    assert adapter.provider_name(studio, "generativelanguage.googleapis.com") == "gcp.gemini"


# ------------------------------------------------------------------ deepgram
def _wav(seconds: float, rate: int = 16_000) -> bytes:
    data = b"\0\0" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


async def test_deepgram_transcription(instrument: Instrument, otel: Otel,
                                      fake: FakeProvider, is_async: bool) -> None:
    instrument()
    cls = AsyncDeepgramClient if is_async else DeepgramClient
    client: Any = cls(api_key="dg-test", environment=fake.deepgram_environment())
    await Driver.call(client.listen.v1.media.transcribe_file, request=_wav(2.0))
    _, span = the_call(otel)
    assert span.name == "transcription nova-3"
    assert span.attributes["gen_ai.provider.name"] == "deepgram"
    assert span.attributes["llm_governor.audio_seconds"] == pytest.approx(2.0)
    assert not otel.points("gen_ai.client.token.usage")  # audio is billed by the minute


# ------------------------------------------------------------------ switches
async def test_genai_off_keeps_only_the_governors_data(
        instrument: Instrument, otel: Otel, fake: FakeProvider) -> None:
    instrument(telemetry={"genai": "off"})
    d = Driver(fake, False)
    await d.call(d.openai.chat.completions.create, model="gpt-4o-mini", max_tokens=4,
                 messages=[{"role": "user", "content": "x"}])
    (span,) = otel.finished()
    assert span.kind is SpanKind.INTERNAL
    assert not any(name.startswith("gen_ai.") for name in otel.metrics())
    assert otel.value("llm_governor.calls", service="openai") == 1


async def test_latest_experimental_names(instrument: Instrument, otel: Otel,
                                         fake: FakeProvider,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    instrument()
    d = Driver(fake, False)
    system = [{"type": "text", "text": "Be brief. " * 50,
               "cache_control": {"type": "ephemeral"}}]
    reply = await d.call(d.anthropic.messages.create, model=HAIKU, max_tokens=8,
                         system=system, messages=[{"role": "user", "content": "x"}])
    _, span = the_call(otel, schema=None)  # the GenAI repository publishes no schema yet
    assert span.attributes["gen_ai.usage.cache_write.input_tokens"] == \
        reply.usage.cache_creation_input_tokens
    assert "gen_ai.usage.cache_creation.input_tokens" not in span.attributes
    names = set(otel.metrics())
    assert "gen_ai.client.token.usage" not in names
    (inputs,) = otel.points("gen_ai.client.inference.operation.input_tokens")
    (outputs,) = otel.points("gen_ai.client.inference.operation.output_tokens")
    assert (inputs.sum, outputs.sum) == (span.attributes["gen_ai.usage.input_tokens"],
                                         span.attributes["gen_ai.usage.output_tokens"])
    assert "gen_ai.token.type" not in inputs.attributes
