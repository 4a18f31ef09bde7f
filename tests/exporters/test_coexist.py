"""Coexistence with another GenAI instrumentation (``telemetry.genai``), with
opentelemetry-instrumentation-openai-v2 installed and active beside llm-governor, both
exporting to the same in-memory reader: in ``auto`` one ``gen_ai.client.token.usage``
point per token type and call (openai-v2's), where ``on`` gives two; calls openai-v2
does not cover (the Responses API in its 2.4b0) keep llm-governor's GenAI data; an
instrumentation activated after llm-governor is noticed; the governor's own
``llm_governor.*`` span and metrics stay, nested under the other instrumentation's span.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import wrapt
from opentelemetry.trace import SpanKind

from llm_governor.exporters.coexist import Coverage, foreign_wrapper
from llm_governor.testing import FakeProvider

from ._otel import Otel
from .conftest import Instrument

openai_v2 = pytest.importorskip("opentelemetry.instrumentation.openai_v2")


@pytest.fixture
def fake(sdk_fake: FakeProvider) -> FakeProvider:
    return sdk_fake


@pytest.fixture
def other(otel: Otel) -> Iterator[Any]:
    """opentelemetry-instrumentation-openai-v2, ready to instrument into ``otel``."""
    instrumentor = openai_v2.OpenAIInstrumentor()

    def activate() -> None:
        instrumentor.instrument(meter_provider=otel.meter_provider,
                                tracer_provider=otel.tracer_provider)

    yield activate
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def token_points(otel: Otel) -> Counter[tuple[str, str, str]]:
    """``(scope, model, token type)`` → points of gen_ai.client.token.usage."""
    found: Counter[tuple[str, str, str]] = Counter()
    data = otel.reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "gen_ai.client.token.usage":
                    for p in m.data.data_points:
                        found[(sm.scope.name, str(p.attributes["gen_ai.request.model"]),
                               str(p.attributes["gen_ai.token.type"]))] += p.count
    return found


def chat(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=4,
                                   messages=[{"role": "user", "content": "hi"}])


def ours(points: Counter[tuple[str, str, str]]) -> int:
    return sum(n for (scope, _, _), n in points.items() if scope == "llm_governor")


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_no_duplicate_token_usage_with_openai_v2_in_auto(
        instrument: Instrument, otel: Otel, fake: FakeProvider, other: Any,
        mode: str) -> None:
    other()
    gov = instrument(telemetry={"genai": mode})
    client = openai.OpenAI(api_key="sk-x", base_url=fake.openai_base_url)
    chat(client)
    client.responses.create(model="gpt-4o", input="hi", max_output_tokens=4)
    points = token_points(otel)
    chats = {k: n for k, n in points.items() if k[1] == "gpt-4o-mini"}
    # the chat completion: openai-v2's points, and in "on" llm-governor's as well
    theirs = {k: n for k, n in chats.items() if k[0] != "llm_governor"}
    assert sorted(theirs.values()) == [1, 1]
    assert ours(Counter(chats)) == (0 if mode == "auto" else 2)
    # the Responses call, which openai-v2 2.4b0 does not instrument: llm-governor reports it
    assert points[("llm_governor", "gpt-4o", "input")] == 1
    assert points[("llm_governor", "gpt-4o", "output")] == 1
    # the governor's own data stays, its span under openai-v2's CLIENT span
    assert otel.value("llm_governor.calls", service="openai", status="ok") == 2
    spans = otel.finished()
    internal = [s for s in spans if s.name == "llm_governor openai"]
    assert len(internal) == 2
    outer = [s for s in spans if s.kind is SpanKind.CLIENT
             and s.instrumentation_scope.name != "llm_governor"]
    assert len(outer) == 1
    assert any(s.parent is not None and s.parent.span_id == outer[0].context.span_id
               for s in internal)
    assert gov.telemetry.coverage.covered("openai", "chat") is not None


def test_an_instrumentation_activated_later_is_noticed(
        instrument: Instrument, otel: Otel, fake: FakeProvider, other: Any) -> None:
    gov = instrument()
    gov.telemetry.coverage = Coverage(ttl=0.0)  # re-check at once instead of within 1 s
    client = openai.OpenAI(api_key="sk-x", base_url=fake.openai_base_url)
    chat(client)
    assert ours(token_points(otel)) == 2
    other()
    chat(client)
    assert ours(token_points(otel)) == 2  # nothing more of ours
    assert sum(token_points(otel).values()) == 4


def _their_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


def test_foreign_wrappers_are_told_from_ours() -> None:
    class Resource:
        def create(self) -> str:
            return "made"

    assert foreign_wrapper(vars(Resource)["create"]) is None
    wrapt.wrap_function_wrapper(Resource, "create", _their_wrapper)
    assert foreign_wrapper(vars(Resource)["create"]) == __name__
    assert Resource().create() == "made"

    from llm_governor.instrumentation._base import note_veto

    own = wrapt.FunctionWrapper(lambda: None, note_veto)  # any llm_governor function
    assert foreign_wrapper(own) is None


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_anthropic_sdk_own_spans_are_not_doubled(instrument: Instrument, otel: Otel,
                                                 fake: FakeProvider, mode: str) -> None:
    anthropic = pytest.importorskip("anthropic")
    instrument(telemetry={"genai": mode})
    client = anthropic.Anthropic(api_key="sk-ant-x", base_url=fake.anthropic_base_url,
                                 open_telemetry={"tracer_provider": otel.tracer_provider})
    client.messages.create(model="claude-3-5-haiku-latest", max_tokens=4,
                           messages=[{"role": "user", "content": "hi"}])
    clients = [s for s in otel.finished() if s.kind is SpanKind.CLIENT]
    scopes = sorted(s.instrumentation_scope.name for s in clients)
    # the SDK's own GenAI span of the call, and in "on" llm-governor's as well
    assert scopes == (["com.anthropic.sdk.python"] if mode == "auto"
                      else ["com.anthropic.sdk.python", "llm_governor"])
    # the SDK records no metrics: llm-governor's gen_ai.client.* are the only ones
    assert ours(token_points(otel)) == 2
    assert otel.points("gen_ai.client.operation.duration")
