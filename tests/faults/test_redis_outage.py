"""Redis hangs (SIGSTOP) while settlements are in flight, then comes back (SIGCONT).

The backend's socket timeout is 0.3 s. Six calls are admitted into Redis, the
server is stopped while the provider works on them, and they settle: the
first settlement's script is written to the socket, times out on the client
and runs on the server once it continues; the governor has meanwhile settled
it locally (``on_backend_error = "local"``, one warning) and journaled it.
More calls are admitted locally during the outage. When the server continues,
the probe replays the journal: a settlement the server already ran counts
once (idempotent per settle id), the leases admitted before the outage are
released, and what Redis recorded equals what the provider billed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from llm_governor.backends.redis import RedisBackend
from llm_governor.testing import FakeProvider
from tests.conftest import require

from .conftest import (
    GPT,
    MESSAGES,
    Govern,
    audit,
    calls,
    check_errors,
    in_threads,
    namespace_for,
    wait_for,
)

BUDGET = Decimal("0.50")


def calls_in(counters: dict[str, Any]) -> int:
    return sum(n for models in counters.get("calls", {}).values()
               for statuses in models.values() for n in statuses.values())


@pytest.fixture
def server() -> Iterator[object]:
    from tests._redis_server import REDIS_SERVER, RedisServer

    require(REDIS_SERVER is not None, "redis-server is not installed")
    srv = RedisServer().start()
    yield srv
    if srv.proc is not None:
        os.kill(srv.proc.pid, signal.SIGCONT)
    srv.stop()


def test_stopped_redis_during_settlement_counts_each_call_once(
        server: object, fake: FakeProvider, govern: Govern, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from tests._redis_server import RedisServer

    assert isinstance(server, RedisServer) and server.proc is not None
    backend = RedisBackend(server.url, {"day": BUDGET}, namespace=namespace_for(tmp_path),
                           socket_timeout=0.3)
    gov = govern("memory", BUDGET, backend=backend)
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    fake.latency = 0.4

    def chat(i: int) -> object:
        return client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=12)

    def stop_then_continue() -> None:
        time.sleep(0.15)  # six calls admitted into Redis, waiting on the provider
        os.kill(server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        time.sleep(2.0)
        os.kill(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

    # what Redis had counted when it answered again, before the journal was replayed
    at_recovery: list[int] = []
    store, ping = backend.store, backend.store.ping

    def ping_and_look() -> None:
        ping()
        at_recovery.append(calls_in(store.counters()))

    store.ping = ping_and_look  # type: ignore[method-assign]
    outage = threading.Thread(target=stop_then_continue)
    outage.start()
    first = in_threads(6, chat)  # they settle while Redis is stopped
    during = [chat(i) for i in range(2)]  # admitted locally, degraded
    assert backend.degraded
    outage.join()
    assert wait_for(lambda: not backend.degraded, 5), "the probe did not find Redis again"
    after = in_threads(3, chat)

    check_errors([r for r in first + during + after if isinstance(r, BaseException)])
    assert not [r for r in first + during + after if isinstance(r, BaseException)]
    lost = [r for r in caplog.records if "cannot use its redis backend" in r.getMessage()]
    assert len(lost) == 1
    assert fake.ledger.served_count() == len(fake.ledger) == 11
    # Redis again: each call counted once, spend == bill (usage known), no ghost lease
    assert calls(gov) == 11
    # some settlements had timed out on the client and yet run on the server: replayed,
    # they counted once
    assert at_recovery and at_recovery[-1] >= 1, at_recovery
    audit(gov, fake, BUDGET, exact=True)
    assert gov.backend.budget_status()[1:] == (0, 0)
