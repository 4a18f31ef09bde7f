"""Billed replies that never deliver their usage: cut streams, no usage, malformed bodies.

The provider did the work and bills it in full, but the governor never learns
the usage: a stream cut after two frames, a reply without any ``usage``, a
200 whose JSON does not parse. Each is charged its reservation (an upper
bound of the bill), whatever the SDK, sync or async, plain stream or
``with_streaming_response``; the user sees exactly what the bare SDK raises.
A raw stream whose garbage line the user never parses still carries its
usage, and is charged exactly.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from llm_governor.testing import FakeProvider

from .conftest import (
    CLAUDE,
    GPT,
    MESSAGES,
    Clients,
    Govern,
    Spy,
    audit,
    check_errors,
    collect,
    entered,
    maybe,
)

MAX_TOKENS = 40


def create(c: Clients, sdk: str, **kw: Any) -> Any:
    if sdk == "openai":
        return c.openai.chat.completions.create(model=GPT, messages=MESSAGES,
                                                max_tokens=MAX_TOKENS, **kw)
    return c.anthropic.messages.create(model=CLAUDE, messages=MESSAGES, max_tokens=MAX_TOKENS,
                                       **kw)


async def one_call(c: Clients, sdk: str, shape: str) -> Any:
    """One call of ``shape`` read to its end as a user would; returns what it gave."""
    if shape == "plain":
        return await maybe(create(c, sdk))
    if shape == "stream":
        return await collect(await maybe(create(c, sdk, stream=True)))
    # with_streaming_response: the raw SSE lines (openai's usage asked for explicitly)
    api = c.openai.chat.completions if sdk == "openai" else c.anthropic.messages
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if sdk == "openai" \
        else {}
    kw: dict[str, Any] = {"max_tokens": MAX_TOKENS, "stream": True, **extra}
    model = GPT if sdk == "openai" else CLAUDE
    async with entered(api.with_streaming_response.create(model=model, messages=MESSAGES,
                                                          **kw)) as response:
        return await collect(response.iter_lines())


CASES = [
    # (fault, shape): is the governor left without usage (charged the reservation)?
    ("cut_stream", "stream", True),
    ("cut_stream", "raw", True),
    ("no_usage", "plain", True),
    ("no_usage", "stream", True),
    ("no_usage", "raw", True),
    ("malformed", "plain", True),
    ("malformed", "stream", True),
    ("malformed", "raw", False),  # the user reads raw lines: the usage frame still arrives
]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize(("fault", "shape", "unknown"), CASES,
                         ids=[f"{f}-{s}" for f, s, _ in CASES])
async def test_billed_reply_without_usage_is_charged_its_reservation(
        fault: str, shape: str, unknown: bool, sdk: str, is_async: bool,
        fake: FakeProvider, govern: Govern) -> None:
    budget = Decimal("0.05")
    gov = govern("memory", budget)
    spy = Spy(gov)
    fake.fail_next(kind=fault, frames=2)  # type: ignore[arg-type]

    try:
        await one_call(Clients(fake, is_async, max_retries=0), sdk, shape)
        error = None
    except Exception as exc:
        error = exc

    if error is not None:
        check_errors([error])
    (entry,) = fake.ledger.entries
    assert entry.billed and entry.fault == fault
    books = audit(gov, fake, budget, exact=not unknown)
    (reservation,) = spy.reserved
    assert spy.charges == [reservation if unknown else entry.cost]
    assert books.recorded >= books.billed > 0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_broken_replies_mixed_on_every_backend(
        kind: str, is_async: bool, fake: FakeProvider, govern: Govern) -> None:
    """Every broken kind through both SDKs, with good replies in between, on each backend."""
    budget = Decimal("0.05")
    gov = govern(kind, budget)
    spy = Spy(gov)
    c = Clients(fake, is_async, max_retries=0)
    errors = []
    for fault in ("cut_stream", "no_usage", "malformed", None):
        for sdk in ("openai", "anthropic"):
            for shape in ("plain", "stream", "raw"):
                if fault is not None:
                    fake.fail_next(kind=fault)  # type: ignore[arg-type]
                try:
                    await one_call(c, sdk, shape)
                except Exception as exc:
                    errors.append(exc)
    check_errors(errors)
    assert len(fake.ledger) == fake.ledger.billed_count() == 24
    books = audit(gov, fake, budget)
    assert len(spy.reserved) >= 24
    assert books.recorded > books.billed
