"""A governed stream settles exactly once, however it ends.

Exhausted, closed early, used as a context manager, closed twice, or dropped
and garbage-collected: one settled call, the reservation released (nothing in
flight), and the charge is the billed usage when the stream delivered it, else
the reserved upper bound (the provider may have billed every token).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest

from llm_governor.testing import FakeProvider
from tests.instrumentation._spies import SettlementSpy

from .conftest import Driver, Governed, calls, eventually, in_flight, state

GPT = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-latest"
MESSAGES = [{"role": "user", "content": "Tell me a story"}]


async def open_stream(d: Driver, service: str) -> Any:
    if service == "openai":
        return await d.call(d.openai.chat.completions.create, model=GPT, messages=MESSAGES,
                            max_tokens=12, stream=True)
    return await d.call(d.anthropic.messages.create, model=CLAUDE, messages=MESSAGES,
                        max_tokens=12, stream=True)


async def close(stream: Any) -> None:
    await Driver.call(stream.close)


async def exhausted(d: Driver, service: str) -> bool:
    stream = await open_stream(d, service)
    await d.collect(stream)
    await close(stream)  # closing again changes nothing
    await d.collect(stream)
    return True


async def closed_early(d: Driver, service: str) -> bool:
    stream = await open_stream(d, service)
    await d.next(stream)
    await close(stream)
    await close(stream)
    return False


async def context_manager(d: Driver, service: str) -> bool:
    async with d.enter(await open_stream(d, service)) as stream:
        await d.collect(stream)
    return True


async def context_manager_left_early(d: Driver, service: str) -> bool:
    async with d.enter(await open_stream(d, service)) as stream:
        await d.next(stream)
    return False


async def dropped(d: Driver, service: str) -> bool:
    stream = await open_stream(d, service)
    await d.next(stream)
    del stream
    gc.collect()
    await asyncio.sleep(0)  # let an async generator's finalizer run on the loop
    return False


async def dropped_unread(d: Driver, service: str) -> bool:
    stream = await open_stream(d, service)
    del stream
    gc.collect()
    return False


ENDINGS: dict[str, Callable[[Driver, str], Awaitable[bool]]] = {
    f.__name__: f for f in (exhausted, closed_early, context_manager, context_manager_left_early,
                            dropped, dropped_unread)}


@pytest.mark.parametrize("service", ["openai", "anthropic"])
@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_stream_settles_exactly_once(ending: str, service: str, driver: Driver,
                                           fake: FakeProvider, governed: Governed) -> None:
    gov = governed()
    spy = SettlementSpy(gov)
    complete = await ENDINGS[ending](driver, service)

    assert await eventually(lambda: calls(gov) >= 1), "the stream was never settled"
    assert await eventually(lambda: in_flight(gov, service) == 0)
    await asyncio.sleep(0.02)  # a second settlement, if there were one, would show by now
    assert calls(gov) == 1
    assert len(spy.settled) == 1
    assert fake.ledger.served_count() == 1
    billed = fake.ledger.total_billed()
    if complete:
        assert spy.settled == [billed]
    else:
        assert spy.settled == spy.reserved and spy.reserved[0] > billed


class Broken(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A body that breaks after its first chunk, as a dropped connection does."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            yield chunk
            raise httpx2.ReadError("connection dropped")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk
            raise httpx2.ReadError("connection dropped")

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_stream_failing_midway_settles_as_failure(driver: Driver, fake: FakeProvider,
                                                        governed: Governed) -> None:
    """The error reaches the user unchanged; the call settles once, as a breaker failure."""
    gov = governed()
    spy = SettlementSpy(gov)
    stream = await open_stream(driver, "openai")
    stream.response.stream = Broken(stream.response.stream)
    with pytest.raises(openai.APIConnectionError):
        await driver.collect(stream)
    assert await eventually(lambda: calls(gov) == 1)
    assert gov.backend.counters()["calls"]["openai"][GPT] == {"error": 1}
    assert in_flight(gov, "openai") == 0
    assert state(gov, "openai").breaker.failures == 1
    assert spy.settled == spy.reserved  # no usage came: the upper bound


async def test_streaming_response_left_unread_settles_at_the_reservation(
        driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    gov = governed()
    spy = SettlementSpy(gov)
    async with driver.enter(driver.openai.chat.completions.with_streaming_response.create(
            model=GPT, messages=MESSAGES, max_tokens=12)):
        pass  # the provider answered (and billed); the body was never read
    assert await eventually(lambda: calls(gov) == 1)
    assert spy.settled == spy.reserved and spy.reserved[0] > fake.ledger.total_billed()
