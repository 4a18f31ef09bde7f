"""A governed stream settles exactly once, however it ends.

Exhausted, closed early, used as a context manager, closed twice, or dropped
and garbage-collected: one settled call, the reservation released (nothing in
flight), and the charge is the billed usage when the stream delivered it, else
the reserved upper bound (the provider may have billed every token).
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import openai
import pytest

from llm_governor.testing import FakeProvider
from tests.instrumentation._spies import SettlementSpy

from .conftest import Driver, Governed, calls, eventually, httpx2, in_flight, state

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
    # openai 3 wraps the transport error, 2.x lets it through as is
    with pytest.raises((openai.APIConnectionError, httpx2.ReadError)):
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


# ------------------------------------------------ raw and streaming-response streams
RAW_READS = ("raw_parse", "streaming_parse", "streaming_lines", "streaming_read")


async def read_raw(d: Driver, service: str, how: str, **extra: Any) -> list[str]:
    """Make a streamed call through ``with_raw_response`` / ``with_streaming_response`` and
    read it as ``how`` says; the SSE data the user saw (parsed chunks as JSON text)."""
    if service == "openai":
        resource: Any = d.openai.chat.completions
        kw: dict[str, Any] = {"model": GPT, "messages": MESSAGES, "stream": True, **extra}
    else:
        resource = d.anthropic.messages
        kw = {"model": CLAUDE, "messages": MESSAGES, "stream": True, "max_tokens": 50, **extra}
    if how == "raw_parse":  # what ChatOpenAI(include_response_headers=True) does
        raw = await d.call(resource.with_raw_response.create, **kw)
        stream = await d.call(raw.parse)
        return [item.model_dump_json(exclude_unset=True) for item in await d.collect(stream)]
    async with d.enter(resource.with_streaming_response.create(**kw)) as response:
        if how == "streaming_parse":
            stream = await d.call(response.parse)
            return [item.model_dump_json(exclude_unset=True)
                    for item in await d.collect(stream)]
        if how == "streaming_lines":
            lines = await d.collect(response.iter_lines())
        else:
            lines = (await d.call(response.read)).decode().splitlines()
    return [line[5:].strip() for line in lines if line.startswith("data:")]


@pytest.mark.parametrize("service", ["openai", "anthropic"])
@pytest.mark.parametrize("how", RAW_READS)
async def test_raw_streams_cost_exactly_the_bill(how: str, service: str, driver: Driver,
                                                 fake: FakeProvider,
                                                 governed: Governed) -> None:
    """Not their reservation: usage is asked for (openai) and read from the events."""
    gov = governed()
    spy = SettlementSpy(gov)
    await read_raw(driver, service, how)
    assert await eventually(lambda: calls(gov) == 1)
    assert await eventually(lambda: in_flight(gov, service) == 0)
    billed = fake.ledger.total_billed()
    assert spy.settled == [billed] and spy.reserved[0] > billed


@pytest.mark.parametrize("how", RAW_READS)
async def test_raw_streams_read_what_they_would_bare(how: str, driver: Driver,
                                                     fake: FakeProvider,
                                                     governed: Governed) -> None:
    """The usage chunk the governor asked for, and the ``"usage": null`` it adds to every
    chunk, never reach the user, whichever way the stream is read."""
    bare = await read_raw(driver, "openai", how)
    governed()
    seen = await read_raw(driver, "openai", how)
    assert len(seen) == len(bare) and not any('"usage"' in data for data in seen)
    assert [data.replace(" ", "")[:60].split('"id"')[0] for data in seen] == \
        [data.replace(" ", "")[:60].split('"id"')[0] for data in bare]
    assert fake.ledger.entries[-1].output_tokens > 0


async def test_raw_stream_that_asked_for_usage_gets_it(driver: Driver, fake: FakeProvider,
                                                       governed: Governed) -> None:
    gov = governed()
    spy = SettlementSpy(gov)
    seen = await read_raw(driver, "openai", "streaming_lines",
                          stream_options={"include_usage": True})
    assert '"usage"' in seen[-2] and seen[-1] == "[DONE]"  # the user's own usage chunk
    assert await eventually(lambda: calls(gov) == 1)
    assert spy.settled == [fake.ledger.total_billed()]


@pytest.mark.parametrize("how", ["streaming_lines", "raw_parse"])
async def test_raw_stream_keeps_the_usage_a_server_always_sends(
        driver: Driver, fake: FakeProvider, governed: Governed, how: str) -> None:
    """An OpenAI-compatible server that ends every stream with a usage chunk, asked or not:
    the governor asked for it too, but the server did not honour the request the way
    api.openai.com does (``"usage": null`` on earlier chunks), so the user's raw stream
    keeps the chunk, as bare."""

    def shape(items: list[str]) -> list[Any]:
        out = []
        for item in items:
            if item == "[DONE]":
                out.append(item)
                continue
            chunk = json.loads(item)
            out.append({k: v for k, v in chunk.items() if k not in ("id", "created")})
        return out

    fake.usage_always = True
    try:
        bare = await read_raw(driver, "openai", how)
        gov = governed()
        got = await read_raw(driver, "openai", how)
    finally:
        fake.usage_always = False
    assert shape(got) == shape(bare)
    assert any('"usage"' in item and '"usage": null' not in item and '"usage":null' not in item
               for item in got)
    assert await eventually(lambda: calls(gov) == 1)
