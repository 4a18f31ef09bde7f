"""Processes: forked children settle their own calls once; a killed one's lease expires.

A parent instruments and forks four children (the multiprocessing ``fork``
context: children exit the way multiprocessing workers do). Each opens a
stream, drops it unconsumed and collects garbage, then exits: its call is
settled exactly once, at its reservation (the usage never arrived), in the
shared SQLite file (or Redis). The parent's own stream, open across the fork
and dropped by every child, is settled by the parent alone, with its usage.

A child killed with SIGKILL while its call hangs at the provider holds a
lease nobody will release: it expires within ``lease_ttl`` (1 s), not the
call's ``request_timeout`` (30 s), and another process takes the slot.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from llm_governor.governor import Governor
from llm_governor.testing import FakeProvider

from .conftest import (
    GPT,
    MESSAGES,
    Govern,
    Spy,
    audit,
    calls,
    config,
    flying,
    spent,
    wait_for,
)

FORK = multiprocessing.get_context("fork")
BUDGET = Decimal("0.50")
_inherited: list[Any] = []  # what a forked child finds of its parent's objects


def _drop_a_stream(base_url: str) -> None:
    """In a forked child: open a stream, drop it unconsumed, drop the parent's copy too."""
    client = openai.OpenAI(api_key="sk-faults", base_url=base_url, max_retries=0)  # one account
    stream = client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=12,
                                            stream=True)
    next(iter(stream))  # one chunk read, the rest (and the usage) never
    del stream
    _inherited.clear()  # the parent's in-flight stream, as the child sees it
    gc.collect()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_forked_children_settle_their_own_streams_once(
        kind: str, fake: FakeProvider, govern: Govern) -> None:
    gov = govern(kind, BUDGET)
    spy = Spy(gov)
    parent = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    _inherited.append(parent.chat.completions.create(model=GPT, messages=MESSAGES,
                                                     max_tokens=12, stream=True))
    (reservation,) = spy.reserved

    children = [FORK.Process(target=_drop_a_stream, args=(fake.openai_base_url,))
                for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(20)
    assert [c.exitcode for c in children] == [0, 0, 0, 0]

    # every child settled its call once, at its reservation; the parent's is still open
    assert wait_for(lambda: calls(gov) == 4, 5), gov.backend.counters()
    assert spent(gov) == 4 * reservation
    assert gov.backend.budget_status()[1:] == (reservation, 1)
    assert len(fake.ledger) == 5

    stream = _inherited.pop()
    chunks = list(stream)
    assert chunks
    books = audit(gov, fake, BUDGET)
    assert calls(gov) == 5
    parent_entry = fake.ledger.entries[0]
    assert books.recorded == 4 * reservation + parent_entry.cost
    assert spy.charges == [parent_entry.cost]  # the parent settled its own, with its usage


def _hang_then_get_killed(cfg: dict[str, Any], base_url: str) -> None:
    import llm_governor

    llm_governor.instrument(cfg)
    client = openai.OpenAI(api_key="sk-faults", base_url=base_url, max_retries=0)  # one account
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=12)


def kill_a_hanging_child(kind: str, fake: FakeProvider, govern: Govern,
                         tmp_path: Path) -> tuple[Governor, float]:
    """A child process holds the only slot, its call hanging at the provider (billed); SIGKILL."""
    services = {"openai": {"max_concurrency": 1, "request_timeout": 30}}
    cfg = config(kind, tmp_path, BUDGET, services, lease_ttl=1)
    fake.fail_next(kind="hang")
    victim = FORK.Process(target=_hang_then_get_killed, args=(cfg, fake.openai_base_url))
    victim.start()
    try:
        assert wait_for(lambda: len(fake.ledger) == 1, 10)  # it holds the slot, hanging
        gov = govern(kind, BUDGET, services, lease_ttl=1)
        assert flying(gov, "openai") == 1
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        victim.join(5)
    finally:
        if victim.is_alive():
            victim.kill()
    assert victim.exitcode == -signal.SIGKILL
    return gov, killed


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_killed_process_lease_expires_within_the_lease_ttl(
        kind: str, fake: FakeProvider, govern: Govern, tmp_path: Path) -> None:
    gov, killed = kill_a_hanging_child(kind, fake, govern, tmp_path)

    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=12)
    took = time.monotonic() - killed
    assert took < 2.5, f"the slot came back after {took:.1f}s (lease_ttl=1s)"
    assert len(fake.ledger) == 2 and fake.ledger.max_concurrency() == 1
    assert gov.backend.budget_status()[1:] == (0, 0)
    assert spent(gov) <= BUDGET


def test_killed_process_call_is_charged_when_its_lease_expires(
        fake: FakeProvider, govern: Govern, tmp_path: Path) -> None:
    """The killed child's hung call was billed: its lease expires charged, not released."""
    gov, _ = kill_a_hanging_child("sqlite", fake, govern, tmp_path)
    assert wait_for(lambda: gov.backend.budget_status()[2] == 0, 3)
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=12)  # sweeps it
    books = audit(gov, fake, BUDGET)  # recorded >= billed: the killed call at its reservation
    assert gov.backend.counters()["expired"]["openai"] == 1
    assert books.recorded > books.billed


def _long_call(base_url: str) -> None:
    """In a forked child: one call that takes the provider's whole (slow) latency."""
    client = openai.OpenAI(api_key="sk-faults", base_url=base_url, max_retries=0)
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=10)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_forked_childs_heartbeat_renews_its_long_call(
        kind: str, fake: FakeProvider, govern: Govern) -> None:
    """The heartbeat is per process: a child's own keeps its 3 s call's lease (1 s) alive,
    so the slot stays taken the whole time, as seen from the parent."""
    gov = govern(kind, BUDGET, lease_ttl=1, services={"openai": {"max_concurrency": 1}})
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=10)  # a live parent
    fake.latency = 3.0
    child = FORK.Process(target=_long_call, args=(fake.openai_base_url,))
    child.start()
    time.sleep(0.4)
    seen = []
    for _ in range(20):  # from 0.4 s to 2.4 s into the child's 3 s call
        seen.append(flying(gov, "openai"))
        time.sleep(0.1)
    child.join(10)
    assert child.exitcode == 0
    assert seen == [1] * 20
    fake.latency = 0.0
    audit(gov, fake, BUDGET, exact=True)


def test_children_forked_while_the_parents_settler_runs_settle_their_own_streams(
        fake: FakeProvider, govern: Govern, tmp_path: Path) -> None:
    """The parent's stream settler thread is alive at the fork: each child still gets a
    settler of its own (a thread does not survive a fork), so every dropped stream settles."""
    from llm_governor.instrumentation import streams

    gov = govern("sqlite", BUDGET)
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    stream = client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=12,
                                            stream=True)
    next(iter(stream))
    del stream
    gc.collect()
    assert streams._reaper is not None  # the parent's settler, alive while children fork
    children = [FORK.Process(target=_drop_a_stream, args=(fake.openai_base_url,))
                for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(20)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert wait_for(lambda: calls(gov) == 4, 5), calls(gov)
    audit(gov, fake, BUDGET)


def test_sibling_children_never_share_lease_ids() -> None:
    """Ids differ by more than the pid, which the OS reuses: a settlement remembered as
    applied under a reused id would drop a new call's charge."""
    from llm_governor.governor import new_lease_id

    read, write = os.pipe()
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.write(write, (new_lease_id() + "\n").encode())
            os._exit(0)
        os.waitpid(pid, 0)
    os.close(write)
    with os.fdopen(read) as lines:
        first, second = lines.read().split()
    prefix = new_lease_id().rsplit("-", 2)[0]
    assert len({first.rsplit("-", 2)[0], second.rsplit("-", 2)[0], prefix}) == 3
