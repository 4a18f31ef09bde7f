"""instrument() / uninstrument(): lazy, idempotent, and exactly reversible."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import anthropic
import openai
import pytest
import wrapt

import llm_governor
from llm_governor.api import set_governor
from llm_governor.instrumentation import GovernorInstrumentor
from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed, calls, httpx2

PATCHED = [(cls, name) for sdk in (openai, anthropic)
           for cls in (sdk._base_client.SyncAPIClient, sdk._base_client.AsyncAPIClient)
           for name in ("request", "_sleep_for_retry")] + \
          [(cls, "_send_request") for cls in (openai._base_client.SyncAPIClient,
                                              openai._base_client.AsyncAPIClient,
                                              openai.OpenAI, openai.AsyncOpenAI)] + \
          [(cls, "_attempt_request") for cls in (anthropic._base_client.SyncAPIClient,
                                                 anthropic._base_client.AsyncAPIClient)]


def originals() -> list[object]:
    return [vars(cls)[name] for cls, name in PATCHED]


def chat(d: Driver) -> None:
    d.openai.chat.completions.create(model="gpt-4o-mini", max_tokens=4,
                                     messages=[{"role": "user", "content": "hi"}])


def test_uninstrument_restores_the_very_same_functions(fake: FakeProvider,
                                                       governed: Governed) -> None:
    before = originals()
    governed()
    wrapped = originals()
    assert all(isinstance(w, wrapt.FunctionWrapper) for w in wrapped)
    assert [w.__wrapped__ for w in wrapped] == before  # type: ignore[attr-defined]
    assert {"anthropic", "openai"} <= set(GovernorInstrumentor.patched_sdks())

    llm_governor.uninstrument()
    after = originals()
    assert all(a is b for a, b in zip(after, before, strict=True))
    assert GovernorInstrumentor.patched_sdks() == []


def test_instrument_twice_is_harmless(fake: FakeProvider, governed: Governed) -> None:
    before = originals()
    governed()
    gov = llm_governor.instrument()  # again, no new config: same governor, same patches
    assert [w.__wrapped__ for w in originals()] == before  # type: ignore[attr-defined]
    d = Driver(fake, False)
    chat(d)
    assert calls(gov) == 1 and len(fake.ledger) == 1

    gov2 = governed({"budget": {"per_day": "1"}})  # a new config replaces the governor only
    assert gov2 is not gov
    assert [w.__wrapped__ for w in originals()] == before  # type: ignore[attr-defined]
    chat(d)
    assert calls(gov2) == 1 and calls(gov) == 1


def test_uninstrumented_calls_go_straight_to_the_sdk(fake: FakeProvider,
                                                     governed: Governed) -> None:
    d = Driver(fake, False)
    gov = governed()
    chat(d)
    llm_governor.uninstrument()
    chat(d)
    assert calls(gov) == 1 and len(fake.ledger) == 2


def test_free_and_non_inference_endpoints_pass_ungoverned(fake: FakeProvider,
                                                          governed: Governed) -> None:
    d = Driver(fake, False)
    gov = governed()
    count = d.anthropic.messages.count_tokens(model="claude-3-5-haiku-latest",
                                              messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens > 0
    assert calls(gov) == 0 and gov.backend.counters().get("requests", {}) == {}


def test_the_opentelemetry_entry_point_uses_the_active_governor(fake: FakeProvider,
                                                                governed: Governed) -> None:
    """What ``opentelemetry-instrument`` does: load the entry point, instrument() bare."""
    (ep,) = [e for e in entry_points(group="opentelemetry_instrumentor")
             if e.name == "llm_governor"]
    assert ep.load() is GovernorInstrumentor
    gov = governed()
    llm_governor.uninstrument()
    set_governor(gov)
    instrumentor = GovernorInstrumentor()
    instrumentor.instrument()  # no getter: llm_governor.get_governor
    try:
        assert instrumentor.instrumentation_dependencies() == []
        chat(Driver(fake, False))
        assert calls(gov) == 1
    finally:
        instrumentor.uninstrument()


def test_an_sdk_imported_after_instrument_is_patched() -> None:
    script = textwrap.dedent("""
        import sys
        import llm_governor
        from llm_governor.testing import FakeProvider

        gov = llm_governor.instrument(config={"backend": "memory"})
        assert "openai" not in sys.modules and "anthropic" not in sys.modules, "imported early"

        import openai  # imported after instrument(): patched on import
        import wrapt
        from openai._base_client import SyncAPIClient
        assert isinstance(vars(SyncAPIClient)["request"], wrapt.FunctionWrapper)
        with FakeProvider() as fake:
            client = openai.OpenAI(api_key="k", base_url=fake.openai_base_url)
            client.embeddings.create(model="text-embedding-3-small", input="hi")
        calls = gov.backend.counters()["calls"]["openai"]["text-embedding-3-small"]
        assert calls == {"ok": 1}, calls
        assert "anthropic" not in sys.modules
        llm_governor.uninstrument()
        assert not isinstance(vars(SyncAPIClient)["request"], wrapt.FunctionWrapper)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_azure_clients_are_their_own_service_and_streams_are_not_altered(
        governed: Governed) -> None:
    """Azure deployments have quotas of their own; older api-versions reject stream_options."""
    bodies: list[bytes] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        bodies.append(request.content)
        assert "/openai/deployments/gpt-4o-mini/chat/completions" in str(request.url)
        return httpx2.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

    client = openai.AzureOpenAI(
        api_key="k", api_version="2024-06-01", azure_endpoint="https://example.invalid",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    gov = governed()
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=4,
                                   messages=[{"role": "user", "content": "hi"}])
    counted = gov.backend.counters()
    assert counted["calls"] == {"azure_openai": {"gpt-4o-mini": {"ok": 1}}}
    assert counted["cost"]["azure_openai"]["gpt-4o-mini"] > 0
    assert b"stream_options" not in bodies[0]


def test_an_sdk_outside_the_supported_range_stays_ungoverned_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import llm_governor.instrumentation as instrumentation
    from llm_governor.instrumentation import ADAPTERS, OpenAIAdapter, supported

    assert supported(OpenAIAdapter, "2.31.0") and supported(OpenAIAdapter, "3.57.0")
    assert not supported(OpenAIAdapter, "2.30.0") and not supported(OpenAIAdapter, "4.0.0")
    assert not supported(OpenAIAdapter, "1.109.1") and supported(OpenAIAdapter, None)
    assert all(a.distribution and len(a.versions) == 2 for a in ADAPTERS)

    llm_governor.uninstrument()
    real = instrumentation.sdk_version
    monkeypatch.setattr(instrumentation, "sdk_version",
                        lambda cls: "9.0.0" if cls is OpenAIAdapter else real(cls))
    monkeypatch.setattr(instrumentation._patcher, "_refused", set())
    with caplog.at_level(logging.WARNING, logger="llm_governor"):
        gov = llm_governor.instrument({"backend": "memory"})
        llm_governor.instrument({"backend": "memory"})  # again: still one warning
    try:
        assert "openai" not in GovernorInstrumentor.patched_sdks()
        assert "anthropic" in GovernorInstrumentor.patched_sdks()
        warned = [r for r in caplog.records if "openai 9.0.0 is not governed" in r.getMessage()]
        assert len(warned) == 1 and "openai>=2.31,<4" in warned[0].getMessage()
    finally:
        llm_governor.uninstrument()
        gov.close()
