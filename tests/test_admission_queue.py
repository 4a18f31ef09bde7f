"""Admission queue ordering, shedding and wake-ups; retry budget arithmetic."""

from __future__ import annotations

import asyncio
import threading

from llm_governor.admission_queue import STAGGER, AdmissionQueue, Waiter, stagger


def test_priority_then_fifo_order() -> None:
    q = AdmissionQueue(10)
    low1, normal, low2, critical = Waiter(3), Waiter(2), Waiter(3), Waiter(0)
    for w in (low1, normal, low2, critical):
        assert q.enter(w)
    order = []
    while len(q):
        head = next(w for w in (low1, normal, low2, critical) if q.is_head(w))
        order.append(head)
        q.leave(head)
    assert order == [critical, normal, low1, low2]


def test_full_queue_sheds_newest_lowest_for_higher_priority_only() -> None:
    q = AdmissionQueue(2)
    a, b = Waiter(3), Waiter(3)
    assert q.enter(a) and q.enter(b)
    assert not q.enter(Waiter(3))  # same priority: the newcomer is refused
    high = Waiter(1)
    assert q.enter(high)
    assert b.shed and not a.shed
    assert q.is_head(high)


def test_leaving_head_wakes_the_next_thread() -> None:
    q = AdmissionQueue(5)
    first, second = Waiter(2), Waiter(2)
    q.enter(first)
    q.enter(second)
    woke = threading.Event()

    def wait() -> None:
        second.wait(5.0)
        woke.set()

    t = threading.Thread(target=wait)
    t.start()
    q.leave(first)
    assert woke.wait(2.0)
    t.join()


async def test_async_waiter_is_woken_from_another_thread() -> None:
    q = AdmissionQueue(5)
    first = Waiter(2)
    second = Waiter(2, loop=asyncio.get_running_loop())
    q.enter(first)
    q.enter(second)
    threading.Timer(0.05, q.leave, args=(first,)).start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await second.await_(5.0)
    assert loop.time() - start < 2.0
    assert q.is_head(second)


def test_a_head_that_waited_longer_asks_again_sooner() -> None:
    """Heads of several processes wait for the same token: the longest waiter asks
    first, by a few milliseconds at most, never more than its wait again."""
    ages = [0.0, 0.01, 0.1, 1.0, 10.0, 100.0]
    delays = [stagger(age, 0.025) for age in ages]
    assert delays == sorted(delays, reverse=True) and len(set(delays)) == len(delays)
    assert delays[0] == min(STAGGER, 0.025) and delays[-1] > 0
    assert stagger(0.0, 0.001) == 0.001  # a short wait is not tripled
    assert stagger(0.0, 0.0) == 0.0
