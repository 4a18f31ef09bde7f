"""Calls longer than the lease: the heartbeat keeps their hold, on every backend.

A lease lives ``lease_ttl`` (here 1 s) and the process's heartbeat renews it
every third of that, so a call that waits 1.4 s for the provider and then
streams for another 0.8 s keeps its budget hold and its concurrency slot the
whole time: with ``max_concurrency = 1`` a second call never runs alongside it.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import openai

from llm_governor.governor import limits_of
from llm_governor.policies.admission import AdmitRequest
from llm_governor.testing import FakeProvider
from tests.conftest import FakeClock

from .conftest import GPT, MESSAGES, Govern, audit, check_errors, flying, make_backend, outcome

BUDGET = Decimal("0.50")
LATENCY = 1.4  # > lease_ttl: without renewal the lease would expire mid-call


def test_renewal_keeps_the_lease_whole(kind: str, tmp_path: Path) -> None:
    """The backend step the heartbeat uses: expiry moves, amount and service stay."""
    clock = FakeClock()
    backend = make_backend(kind, tmp_path, {"day": BUDGET}, clock)
    try:
        from llm_governor.config import RateLimitConfig

        limits = limits_of(RateLimitConfig(max_concurrency=1))
        req = AdmitRequest("openai", 2, 10.0, Decimal("0.125"), limits, limits)
        assert backend.admit(req, "lease-1", 1.0).admitted
        for _ in range(3):
            clock.advance(0.6)
            assert backend.renew(["lease-1", "gone"], 1.0) == 1
            assert backend.budget_status()[1:] == (Decimal("0.125"), 1)
            assert backend.in_flight("openai") == 1
            assert not backend.admit(req, "lease-2", 1.0).admitted  # the slot is held
        clock.advance(1.1)  # no renewal: it expires
        assert backend.budget_status()[1:] == (0, 0)
        assert backend.admit(req, "lease-2", 1.0).admitted
    finally:
        backend.close()


def test_long_call_and_slow_stream_keep_their_slot_past_the_lease_ttl(
        kind: str, fake: FakeProvider, govern: Govern) -> None:
    gov = govern(kind, BUDGET, lease_ttl=1, services={"openai": {"max_concurrency": 1}})
    fake.latency = LATENCY
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    closed_at: list[float] = []
    held: list[tuple[Decimal, int, int]] = []
    streaming = threading.Event()

    def long_stream() -> int:
        stream = client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=10,
                                                stream=True)
        chunks = 0
        for _ in stream:  # read slowly: 10 chunks over 0.8 s
            chunks += 1
            streaming.set()
            time.sleep(0.08)
            _, reserved, leases = gov.backend.budget_status()
            held.append((reserved, leases, flying(gov, "openai")))
        closed_at.append(time.monotonic())
        return chunks

    first = threading.Thread(target=lambda: held.append(outcome(long_stream)))  # type: ignore
    first.start()
    time.sleep(0.1)
    second = outcome(client.chat.completions.create, model=GPT, messages=MESSAGES,
                     max_tokens=12)
    first.join()

    check_errors([r for r in (second,) if isinstance(r, BaseException)])
    assert not isinstance(second, BaseException)
    stream_entry, call_entry = fake.ledger.entries
    assert stream_entry.stream and not call_entry.stream
    assert fake.ledger.max_concurrency() == 1
    assert call_entry.time >= closed_at[0]  # admitted only once the stream was done
    during = [h for h in held if isinstance(h, tuple)]
    assert during and all(r > 0 and leases == 1 and slots == 1 for r, leases, slots in during)
    assert streaming.is_set()
    audit(gov, fake, BUDGET, exact=True)
