"""Fixtures for end-to-end tests through the unmodified SDKs against the loopback fake provider.

``governed(config)`` is ``llm_governor.instrument()`` on the memory backend,
undone (uninstrumented, previous governor restored) after the test. Clients
come from :class:`Driver`, which lets one test body run against the sync and
the async clients alike.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anthropic
import openai
import openai._base_client
import pytest

import llm_governor
from llm_governor.api import set_governor
from llm_governor.governor import Governor
from llm_governor.policies.admission import ServiceState
from llm_governor.testing import FakeProvider

#: the HTTP library the SDKs are built on: httpx2 (openai 3, anthropic 1 on), else httpx
httpx2: Any = getattr(openai._base_client, "httpx2", None) or openai._base_client.httpx
OPENAI_KEY = "sk-test-OPENAI-SECRET-3f9a1c7e"
ANTHROPIC_KEY = "sk-ant-test-ANTHROPIC-SECRET-b72d4e10"
# Limits loose enough that only what a test sets up throttles it.
FAST = {"max_tokens": 100, "refill_rate": 100.0, "burst_capacity": 0, "min_interval": 0.001,
        "max_cost_per_minute": "100", "max_queue_size": 1000}
Governed = Callable[..., Governor]


@pytest.fixture(scope="session")
def shared_fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def fake(shared_fake: FakeProvider) -> FakeProvider:
    """The session's fake provider, as new: no limits, faults, history or ledger."""
    shared_fake.set_limits(rpm=None, tpm=None, window=60.0, max_concurrency=None)
    shared_fake.reset()
    return shared_fake


@pytest.fixture
def governed() -> Iterator[Governed]:
    """``governed(config=None, **instrument_kwargs)``: instrument on the memory backend."""
    previous = set_governor(None)
    made: list[Governor] = []

    def factory(config: dict[str, Any] | None = None, **kwargs: Any) -> Governor:
        cfg: dict[str, Any] = {"backend": "memory", "retry": {"max_wait": 0.05}, **(config or {})}
        services = cfg.setdefault("services", {})
        for name in ("openai", "anthropic", "azure_openai"):
            services[name] = {**FAST, **services.get(name, {})}
        gov = llm_governor.instrument(config=cfg, **kwargs)
        made.append(gov)
        return gov

    yield factory
    llm_governor.uninstrument()
    set_governor(previous)
    for gov in made:
        gov.close()


class Driver:
    """The sync or async clients of both SDKs, and helpers that await only when needed."""

    def __init__(self, fake: FakeProvider, is_async: bool, **client_kwargs: Any) -> None:
        self.is_async = is_async
        oa = openai.AsyncOpenAI if is_async else openai.OpenAI
        an = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        self.openai: Any = oa(api_key=OPENAI_KEY, base_url=fake.openai_base_url,
                              **client_kwargs)
        self.anthropic: Any = an(api_key=ANTHROPIC_KEY, base_url=fake.anthropic_base_url,
                                 **client_kwargs)

    @staticmethod
    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    @staticmethod
    async def collect(iterable: Any) -> list[Any]:
        if hasattr(iterable, "__aiter__"):
            return [item async for item in iterable]
        return list(iterable)

    @staticmethod
    async def next(iterator: Any) -> Any:
        if hasattr(iterator, "__anext__"):
            return await iterator.__anext__()
        return next(iterator)

    @staticmethod
    @asynccontextmanager
    async def enter(manager: Any) -> AsyncIterator[Any]:
        if hasattr(manager, "__aenter__"):
            async with manager as value:
                yield value
        else:
            with manager as value:
                yield value


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def is_async(request: pytest.FixtureRequest) -> bool:
    """One test body for the sync and the async clients."""
    return bool(request.param)


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def driver(request: pytest.FixtureRequest, fake: FakeProvider) -> Driver:
    return Driver(fake, request.param)


def calls(gov: Governor, service: str | None = None) -> int:
    """Settled calls (any status) the governor counted."""
    counted = gov.backend.counters().get("calls", {})
    return sum(n for svc, models in counted.items() if service in (None, svc)
               for statuses in models.values() for n in statuses.values())


def in_flight(gov: Governor, service: str) -> int:
    """Calls of ``service`` in flight, over all its provider accounts (limit scopes)."""
    return sum(gov.backend.in_flight(key) for key in gov.scopes(service))


def state(gov: Governor, service: str) -> ServiceState:
    """The limit state of ``service``'s one provider account in the test."""
    (key,) = gov.scopes(service)
    return gov.backend.service_state(key)


def spent(gov: Governor) -> Decimal:
    """Everything the governor charged, over all services and models."""
    costs = gov.backend.counters().get("cost", {})
    return sum((c for models in costs.values() for c in models.values()), Decimal(0))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` (e.g. a settlement on the reaper thread) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """:func:`wait_for` that lets the event loop run (async generators finalize on it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
