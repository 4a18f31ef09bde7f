"""Fixtures of the exporter tests: in-memory OTel providers, the sync/async switch, and
``instrument(**config)`` for SDK calls through the fake provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llm_governor.governor import Governor
from llm_governor.testing import FakeProvider
from tests.instrumentation.conftest import FAST, Governed, governed, is_async

from ._otel import Otel, new_otel

__all__ = ["FAST", "Instrument", "governed", "instrument", "is_async", "otel", "sdk_fake"]

Instrument = Callable[..., Governor]


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = new_otel()
    yield made
    made.shutdown()


@pytest.fixture(scope="module")
def sdk_fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def instrument(otel: Otel, sdk_fake: FakeProvider, governed: Governed) -> Instrument:
    """``instrument(**config)``: the SDK tests' ``governed`` (memory backend, loose limits
    for every service), exporting to ``otel``; the fake provider reset."""
    sdk_fake.reset()

    def factory(**config: Any) -> Governor:
        services = {name: FAST for name in ("openai", "anthropic", "gemini", "deepgram")}
        return governed({**config, "services": services}, meter_provider=otel.meter_provider,
                        tracer_provider=otel.tracer_provider)

    return factory
