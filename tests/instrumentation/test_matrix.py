"""The coverage matrix, through the unmodified SDKs against the fake provider.

sync/async × create/parse/stream/raw/streaming-response × openai (chat,
Responses, embeddings) / anthropic (messages). Every case runs twice on the
same clients (created before ``instrument()``): bare, then governed. The user
sees the same result both times (ids and timestamps aside: no hidden chunk
shows), and the governed call was admitted, counted and charged exactly what
the provider billed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed, calls, in_flight, spent

GPT = "gpt-4o-mini"
EMBED = "text-embedding-3-small"
INSTRUCT = "gpt-3.5-turbo-instruct"
CLAUDE = "claude-3-5-haiku-latest"
MESSAGES = [{"role": "user", "content": "Say hello to the governor"}]


class Pet(pydantic.BaseModel):
    name: str
    legs: int


Case = Callable[[Driver], Awaitable[Any]]
CASES: dict[str, tuple[str, Case]] = {}


def case(service: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[fn.__name__] = (service, fn)
        return fn
    return register


# ------------------------------------------------------------ openai chat
@case("openai")
async def chat_create(d: Driver) -> Any:
    return await d.call(d.openai.chat.completions.create, model=GPT, messages=MESSAGES,
                        max_tokens=8)


@case("openai")
async def chat_parse(d: Driver) -> Any:
    r = await d.call(d.openai.chat.completions.parse, model=GPT, messages=MESSAGES,
                     response_format=Pet)
    assert isinstance(r.choices[0].message.parsed, Pet)
    return r


@case("openai")
async def chat_stream(d: Driver) -> Any:
    stream = await d.call(d.openai.chat.completions.create, model=GPT, messages=MESSAGES,
                          max_tokens=8, stream=True)
    chunks = await d.collect(stream)
    assert all(c.choices for c in chunks), "a usage chunk the user did not ask for showed"
    return chunks


@case("openai")
async def chat_stream_helper(d: Driver) -> Any:
    async with d.enter(d.openai.chat.completions.stream(
            model=GPT, messages=MESSAGES, max_tokens=64)) as stream:
        events = await d.collect(stream)
        final = await d.call(stream.get_final_completion)
    assert final.usage is None  # as without the governor: nobody asked for it
    return [events, final]


@case("openai")
async def chat_raw(d: Driver) -> Any:
    raw = await d.call(d.openai.chat.completions.with_raw_response.create, model=GPT,
                       messages=MESSAGES, max_tokens=8)
    return await d.call(raw.parse)


@case("openai")
async def chat_raw_stream(d: Driver) -> Any:
    raw = await d.call(d.openai.chat.completions.with_raw_response.create, model=GPT,
                       messages=MESSAGES, max_tokens=8, stream=True,
                       stream_options={"include_usage": True})
    chunks = await d.collect(await d.call(raw.parse))
    assert chunks[-1].usage is not None  # asked for, so shown
    return chunks


@case("openai")
async def chat_streaming_response(d: Driver) -> Any:
    async with d.enter(d.openai.chat.completions.with_streaming_response.create(
            model=GPT, messages=MESSAGES, max_tokens=8)) as response:
        return await d.call(response.parse)


@case("openai")
async def chat_streaming_response_stream(d: Driver) -> Any:
    async with d.enter(d.openai.chat.completions.with_streaming_response.create(
            model=GPT, messages=MESSAGES, max_tokens=8, stream=True,
            stream_options={"include_usage": True})) as response:
        return await d.collect(await d.call(response.parse))


@case("openai")
async def completions_create(d: Driver) -> Any:
    return await d.call(d.openai.completions.create, model=INSTRUCT, prompt="Say hello",
                        max_tokens=8)


@case("openai")
async def completions_stream(d: Driver) -> Any:
    stream = await d.call(d.openai.completions.create, model=INSTRUCT, prompt="Say hello",
                          max_tokens=8, stream=True)
    chunks = await d.collect(stream)
    assert all(c.choices for c in chunks)
    return chunks


# ------------------------------------------------------- openai responses
@case("openai")
async def responses_create(d: Driver) -> Any:
    return await d.call(d.openai.responses.create, model=GPT, input="Say hello",
                        max_output_tokens=9)


@case("openai")
async def responses_parse(d: Driver) -> Any:
    r = await d.call(d.openai.responses.parse, model=GPT, input="A pet", text_format=Pet)
    assert isinstance(r.output_parsed, Pet)
    return r


@case("openai")
async def responses_stream(d: Driver) -> Any:
    stream = await d.call(d.openai.responses.create, model=GPT, input="Say hello",
                          max_output_tokens=9, stream=True)
    return await d.collect(stream)


@case("openai")
async def responses_stream_helper(d: Driver) -> Any:
    async with d.enter(d.openai.responses.stream(model=GPT, input="Say hello",
                                                 max_output_tokens=9)) as stream:
        return await d.collect(stream)


@case("openai")
async def responses_raw(d: Driver) -> Any:
    raw = await d.call(d.openai.responses.with_raw_response.create, model=GPT,
                       input="Say hello", max_output_tokens=9)
    return await d.call(raw.parse)


@case("openai")
async def responses_streaming_response(d: Driver) -> Any:
    async with d.enter(d.openai.responses.with_streaming_response.create(
            model=GPT, input="Say hello", max_output_tokens=9, stream=True)) as response:
        return await d.collect(await d.call(response.parse))


# ------------------------------------------------------ openai embeddings
@case("openai")
async def embeddings_create(d: Driver) -> Any:
    return await d.call(d.openai.embeddings.create, model=EMBED, input=["one", "two"])


@case("openai")
async def embeddings_raw(d: Driver) -> Any:
    raw = await d.call(d.openai.embeddings.with_raw_response.create, model=EMBED, input="one")
    return await d.call(raw.parse)


@case("openai")
async def embeddings_streaming_response(d: Driver) -> Any:
    async with d.enter(d.openai.embeddings.with_streaming_response.create(
            model=EMBED, input="one")) as response:
        return await d.call(response.json)


# ---------------------------------------------------------------- anthropic
@case("anthropic")
async def messages_create(d: Driver) -> Any:
    return await d.call(d.anthropic.messages.create, model=CLAUDE, messages=MESSAGES,
                        max_tokens=8)


@case("anthropic")
async def messages_parse(d: Driver) -> Any:
    r = await d.call(d.anthropic.messages.parse, model=CLAUDE, messages=MESSAGES,
                     max_tokens=64, output_format=Pet)
    assert isinstance(r.parsed_output, Pet)
    return r


@case("anthropic")
async def messages_stream(d: Driver) -> Any:
    stream = await d.call(d.anthropic.messages.create, model=CLAUDE, messages=MESSAGES,
                          max_tokens=8, stream=True)
    return await d.collect(stream)


@case("anthropic")
async def messages_stream_helper(d: Driver) -> Any:
    async with d.enter(d.anthropic.messages.stream(model=CLAUDE, messages=MESSAGES,
                                                   max_tokens=8)) as stream:
        events = await d.collect(stream)
        final = await d.call(stream.get_final_message)
    return [events, final]


@case("anthropic")
async def messages_beta_create(d: Driver) -> Any:
    return await d.call(d.anthropic.beta.messages.create, model=CLAUDE, messages=MESSAGES,
                        max_tokens=8)


@case("anthropic")
async def messages_raw(d: Driver) -> Any:
    raw = await d.call(d.anthropic.messages.with_raw_response.create, model=CLAUDE,
                       messages=MESSAGES, max_tokens=8)
    return await d.call(raw.parse)


@case("anthropic")
async def messages_raw_stream(d: Driver) -> Any:
    raw = await d.call(d.anthropic.messages.with_raw_response.create, model=CLAUDE,
                       messages=MESSAGES, max_tokens=8, stream=True)
    return await d.collect(await d.call(raw.parse))


@case("anthropic")
async def messages_streaming_response(d: Driver) -> Any:
    async with d.enter(d.anthropic.messages.with_streaming_response.create(
            model=CLAUDE, messages=MESSAGES, max_tokens=8)) as response:
        return await d.call(response.parse)


@case("anthropic")
async def messages_streaming_response_lines(d: Driver) -> Any:
    async with d.enter(d.anthropic.messages.with_streaming_response.create(
            model=CLAUDE, messages=MESSAGES, max_tokens=8, stream=True)) as response:
        lines = response.iter_lines()
        return [line for line in await d.collect(lines) if not line.startswith("data:")]


# ------------------------------------------------------------------- checks
_VOLATILE_KEYS = {"id", "created", "created_at", "item_id"}
_ID = re.compile(r"^(chatcmpl-|resp_|msg_|req_|cmpl-)\w+$")


def normalized(value: Any) -> Any:
    """What the user sees, minus per-call ids and timestamps."""
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True, warnings="none")
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [normalized(v) for v in value]
    if isinstance(value, str) and _ID.match(value):
        return "<id>"
    return value


@pytest.mark.parametrize("name", sorted(CASES))
async def test_governed_call_is_unchanged_and_accounted(
        name: str, driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    service, run = CASES[name]
    bare = normalized(await run(driver))
    assert len(fake.ledger) == 1
    fake.reset()

    gov = governed()  # the clients were created before: still governed
    result = normalized(await run(driver))

    assert result == bare
    served = fake.ledger.entries
    assert [e.status for e in served] == [200]
    assert calls(gov, service) == 1
    assert in_flight(gov, service) == 0
    billed = fake.ledger.total_billed()
    assert billed > Decimal(0)
    assert spent(gov) == billed  # exactly what the provider billed, Decimal for Decimal
    counters = gov.backend.counters()
    assert counters["requests"][service] == {"admitted": 1}
