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


def test_a_retrying_call_keeps_its_slot_and_never_waits_for_itself(
        kind: str, fake: FakeProvider, govern: Govern) -> None:
    """With ``max_concurrency = 1``, a call retrying (a 503, then a 429 whose wait is longer
    than the lease) keeps its slot and its hold through the waits, while a second call
    waits in the queue for that slot. The retry's re-admission must not queue behind the
    caller waiting for the slot the retry holds: both finish in seconds, one at a time,
    not when the second call's ``request_timeout`` (30 s) gives up."""
    gov = govern(kind, BUDGET, lease_ttl=1, services={"openai": {"max_concurrency": 1}},
                 retry={"max_wait": 2.0, "budget_ratio": 10, "budget_min_per_minute": 10_000})
    fake.fail_next(1, status=503)
    fake.fail_next(1, kind="rate_limit", retry_after=1.5)
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=3)
    held: list[tuple[Decimal, int]] = []
    done: dict[str, float] = {}
    start = time.monotonic()

    def call(name: str) -> None:
        result = outcome(client.chat.completions.create, model=GPT, messages=MESSAGES,
                         max_tokens=10)
        done[name] = time.monotonic() - start
        check_errors([result] if isinstance(result, BaseException) else [])

    first = threading.Thread(target=call, args=("first",))
    first.start()
    time.sleep(0.3)  # the first call is retrying: the second queues for the slot
    second = threading.Thread(target=call, args=("second",))
    second.start()
    while first.is_alive():
        _, reserved, leases = gov.backend.budget_status()
        held.append((reserved, leases))
        time.sleep(0.1)
    first.join()
    second.join()

    assert set(done) == {"first", "second"}
    assert max(done.values()) < 10, done  # not the 30 s of a queue waiting for itself
    assert fake.ledger.max_concurrency() == 1
    assert [e.status for e in fake.ledger.entries] == [503, 429, 200, 200]
    # through the 1.5 s wait (longer than the 1 s lease) the first call's hold stayed
    assert held and all(leases >= 1 and reserved > 0 for reserved, leases in held)
    audit(gov, fake, BUDGET, exact=True)
