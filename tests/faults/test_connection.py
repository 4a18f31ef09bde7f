"""The connection is lost: after the request was sent, before it was processed, or never made.

``reset_after_send``: the provider processed and billed the request, then the
connection died without a byte of the reply. The governor charges that attempt
its reservation before the SDK retries, and the retry needs a fresh one.

``reset``: the provider dropped the connection before processing (nothing
billed). On the wire it is the same as ``reset_after_send`` (the request left,
no reply came), so the charging rule cannot tell them apart and charges the
reservation too: the governor's books stay above the bill, never below. Only a
request that provably never left (the connection was refused) is free.
"""

from __future__ import annotations

import socket
from decimal import Decimal

import openai
import pytest

from llm_governor.testing import FakeProvider

from .conftest import (
    GPT,
    MESSAGES,
    Clients,
    Govern,
    Spy,
    audit,
    check_errors,
    errors_of,
    idle,
    in_tasks,
    in_threads,
    maybe,
    spent,
)

BUDGET = Decimal("0.10")


async def ten_calls(c: Clients) -> list[object]:
    def one(i: int) -> object:
        return c.openai.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=30)

    if c.is_async:
        return await in_tasks(10, lambda i: maybe(one(i)))
    return in_threads(10, one)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_reset_after_send_is_charged_its_reservation_then_retried(
        kind: str, is_async: bool, fake: FakeProvider, govern: Govern) -> None:
    gov = govern(kind, BUDGET)
    spy = Spy(gov)
    fake.fail_next(6, kind="reset_after_send")

    results = await ten_calls(Clients(fake, is_async))

    assert not errors_of(results)  # the SDK retried each lost attempt, and it went through
    assert fake.ledger.count_by_outcome() == {"broken": 6, "served": 10}
    books = audit(gov, fake, BUDGET)
    (reservation,) = set(spy.reserved)  # ten calls + six retries, one request shape
    assert len(spy.reserved) == 16
    assert [r.cost for r in spy.lost] == [reservation] * 6
    served = sum((e.cost for e in fake.ledger.entries if e.outcome == "served"), Decimal(0))
    assert books.recorded == served + 6 * reservation  # usage where known, else the bound
    assert books.recorded > books.billed


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_reset_before_processing_is_unbilled_and_charged_like_any_lost_attempt(
        is_async: bool, fake: FakeProvider, govern: Govern) -> None:
    gov = govern("memory", BUDGET)
    spy = Spy(gov)
    fake.fail_next(3, kind="reset")

    results = await ten_calls(Clients(fake, is_async))

    assert not errors_of(results)
    assert fake.ledger.count_by_outcome() == {"reset": 3, "served": 10}
    assert all(not e.billed for e in fake.ledger.entries if e.outcome == "reset")
    books = audit(gov, fake, BUDGET)
    (reservation,) = set(spy.reserved)
    assert books.recorded == books.billed + 3 * reservation


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.mark.parametrize(("kind", "is_async"), [("memory", False), ("memory", True),
                                                ("sqlite", False), ("redis", True)])
async def test_connection_refused_never_left_and_is_free(
        kind: str, is_async: bool, govern: Govern) -> None:
    gov = govern(kind, BUDGET)
    spy = Spy(gov)
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    client = cls(api_key="sk-faults", base_url=f"http://127.0.0.1:{closed_port()}/v1",
                 max_retries=1)

    with pytest.raises(openai.APIConnectionError) as caught:
        await maybe(client.chat.completions.create(model=GPT, messages=MESSAGES,
                                                   max_tokens=30))

    check_errors([caught.value])
    assert idle(gov)
    assert spent(gov) == 0 and spy.charges == [0]
    assert len(spy.reserved) == 1  # the retry of an unsent attempt kept its reservation
