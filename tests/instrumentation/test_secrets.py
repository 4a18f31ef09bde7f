"""API keys never appear in logs, spans, exports or errors.

A workload that succeeds, retries, streams, fails and is refused runs with
every logger at DEBUG and an in-memory span exporter; then every log line,
span (name, attributes, events, status), the JSON export and every error
(message, repr, notes, synthetic response and request) is scanned for the keys.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llm_governor
from llm_governor.testing import FakeProvider

from .conftest import ANTHROPIC_KEY, OPENAI_KEY, Driver, Governed

SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, OPENAI_KEY.split("-")[-1], ANTHROPIC_KEY.split("-")[-1])
MESSAGES = [{"role": "user", "content": "hi"}]


def describe_error(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), *getattr(exc, "__notes__", [])]
    response: Any = getattr(exc, "response", None)
    if response is not None:
        parts += [str(response.headers), response.text, str(response.request.url),
                  str(response.request.headers)]
    body = getattr(exc, "body", None)
    parts.append(repr(body))
    return "\n".join(parts)


def test_keys_never_leak(fake: FakeProvider, governed: Governed,
                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    governed({"budget": {"per_day": "0.02"},
              "services": {"openai": {"failure_threshold": 2}}},
             tracer_provider=tracer_provider)
    d = Driver(fake, False)
    errors: list[BaseException] = []

    def attempt(fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            errors.append(exc)
            return None

    chat = d.openai.chat.completions.create
    attempt(chat, model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)
    fake.fail_next(1, kind="rate_limit", retry_after=0.01)
    attempt(chat, model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)
    list(chat(model="gpt-4o-mini", messages=MESSAGES, max_tokens=4, stream=True))
    attempt(d.anthropic.messages.create, model="claude-3-5-haiku-latest", messages=MESSAGES,
            max_tokens=4)
    fake.fail_next(3, kind="insufficient_quota")  # the SDK's attempt and its 2 retries
    attempt(chat, model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)
    attempt(chat, model="gpt-4o", messages=MESSAGES, max_tokens=8000)  # over budget
    fake.set_fault("error", status=500)
    attempt(chat, model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)  # opens the breaker
    attempt(chat, model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)  # circuit open
    assert len(errors) == 4

    texts = [caplog.text, llm_governor.export_rate_limit_metrics()]
    texts += [describe_error(e) for e in errors]
    spans = exporter.get_finished_spans()
    assert len(spans) >= 6
    for span in spans:
        texts.append(span.to_json())
    blob = "\n".join(texts)
    assert "RATE_LIMIT" in blob  # the scan saw real content
    for secret in SECRETS:
        assert secret not in blob
