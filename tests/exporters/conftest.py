"""Fixtures of the exporter tests: in-memory OTel providers, the sync/async switch, and
``instrument(**config)`` for SDK calls through the fake provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import llm_governor
from llm_governor.api import set_governor
from llm_governor.governor import Governor
from llm_governor.testing import FakeProvider

from ._otel import Otel, new_otel

Instrument = Callable[..., Governor]
# Limits loose enough that only what a test sets up throttles it.
FAST = {"max_tokens": 100, "refill_rate": 100.0, "burst_capacity": 0, "min_interval": 0.001,
        "max_cost_per_minute": "100", "max_queue_size": 1000}


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = new_otel()
    yield made
    made.shutdown()


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def is_async(request: pytest.FixtureRequest) -> bool:
    """One test body for the sync and the async clients."""
    return bool(request.param)


@pytest.fixture(scope="module")
def sdk_fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def instrument(otel: Otel, sdk_fake: FakeProvider) -> Iterator[Instrument]:
    """``instrument(**config)``: the governor on the memory backend, exporting to ``otel``;
    the fake provider reset."""
    previous = set_governor(None)
    sdk_fake.reset()
    made: list[Governor] = []

    def factory(**config: Any) -> Governor:
        cfg: dict[str, Any] = {"backend": "memory", "retry": {"max_wait": 0.05}, **config}
        cfg["services"] = {name: FAST for name in ("openai", "anthropic", "gemini", "deepgram")}
        gov = llm_governor.instrument(cfg, meter_provider=otel.meter_provider,
                                      tracer_provider=otel.tracer_provider)
        made.append(gov)
        return gov

    yield factory
    llm_governor.uninstrument()
    set_governor(previous)
    for gov in made:
        gov.close()
