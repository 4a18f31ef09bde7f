"""One contract, every backend: the same steps must give the same decisions.

Runs over the ``make_backend`` fixture (memory, SQLite, and Redis when its
server is available). Backends that take time from a server
(``uses_server_clock``) skip the tests that need an exact clock.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from llm_governor.backends import Backend, CallRecord
from llm_governor.config import RateLimitConfig
from llm_governor.governor import limits_of
from llm_governor.policies import adaptive
from llm_governor.policies.adaptive import ProviderLimits
from llm_governor.policies.admission import AdmitRequest, Limits, Observation
from tests.conftest import BackendFactory, FakeClock

D = Decimal


def limits(**kw: object) -> Limits:
    base = {"max_tokens": 2, "refill_rate": 1.0, "burst_capacity": 0,
            "max_cost_per_minute": "100", **kw}
    return limits_of(RateLimitConfig.model_validate(base))


EMERGENCY = limits(max_tokens=1, refill_rate=0.1)


def req(lim: Limits, *, cost: str = "0.01", prio: int = 2, reserve: bool = True,
        tokens: float = 0.0, service: str = "svc") -> AdmitRequest:
    return AdmitRequest(service, prio, tokens, D(cost), lim, EMERGENCY, reserve=reserve)


def exact_clock(b: Backend) -> None:
    if getattr(b, "uses_server_clock", False):
        pytest.skip("backend takes time from its server")


def record(cost: str = "0", status: str = "ok", service: str = "svc") -> CallRecord:
    return CallRecord(service, "m", "job-1", D(cost), status)


def test_bucket_admits_capacity_then_refills(make_backend: BackendFactory,
                                             clock: FakeClock) -> None:
    b = make_backend(clock=clock)
    exact_clock(b)
    lim = limits()
    top = [b.admit(req(lim, prio=0), None, 60).admitted for _ in range(3)]
    assert top == [True, True, False]
    d = b.admit(req(lim, prio=0), None, 60)
    assert d.outcome == "rate_limited" and abs(d.retry_after - 1.0) < 1e-6
    clock.advance(1.0)
    assert b.admit(req(lim, prio=0), None, 60).admitted


def test_lower_priorities_leave_headroom(make_backend: BackendFactory, clock: FakeClock) -> None:
    b = make_backend(clock=clock)
    exact_clock(b)
    lim = limits(max_tokens=10)
    low = sum(b.admit(req(lim, prio=3), None, 60).admitted for _ in range(10))
    assert low < 10
    assert b.admit(req(lim, prio=0), None, 60).admitted


def test_budget_reservations_are_hard(make_backend: BackendFactory, clock: FakeClock) -> None:
    b = make_backend({"day": D("0.10")}, clock=clock)
    exact_clock(b)
    lim = limits(max_tokens=1000, refill_rate=1000.0)
    ids = [f"l{i}" for i in range(12)]
    decisions = [b.admit(req(lim, cost="0.03"), i, 60) for i in ids]
    assert [d.admitted for d in decisions] == [True] * 3 + [False] * 9
    refused = decisions[3]
    assert refused.outcome == "budget_exceeded" and refused.remaining == D("0.01")
    assert refused.window == "day"
    b.settle("l0", lim, Observation("success"), record("0.005"))
    spends, reserved, live = b.budget_status()
    assert spends["day"].spent == D("0.005") and reserved == D("0.06") and live == 2
    assert b.admit(req(lim, cost="0.03"), "l99", 60).admitted


def test_budget_reset_forgets_spend_but_not_holds_or_costs(make_backend: BackendFactory,
                                                          clock: FakeClock) -> None:
    b = make_backend({"hour": D("0.15"), "day": D("0.15")}, clock=clock)
    lim = limits(max_tokens=1000, refill_rate=1000.0)
    for i in range(3):
        assert b.admit(req(lim, cost="0.03"), f"s{i}", 60).admitted
        b.settle(f"s{i}", lim, Observation("success"), record("0.03"))
    assert b.admit(req(lim, cost="0.03"), "held", 60).admitted  # in flight: its hold stays
    assert b.admit(req(lim, cost="0.05"), "x", 60).outcome == "budget_exceeded"

    assert b.reset_budget(["hour"]) == {"hour": D("0.09")}
    spends, reserved, live = b.budget_status()
    assert "hour" not in spends and spends["day"].spent == D("0.09")
    assert (reserved, live) == (D("0.03"), 1)
    assert b.admit(req(lim, cost="0.05"), "y", 60).outcome == "budget_exceeded"  # day binds

    assert b.reset_budget(scope=("tenant", "acme")) == {}  # no scoped state: nothing
    assert b.reset_budget() == {"day": D("0.09")}
    assert b.admit(req(lim, cost="0.05"), "z", 60).admitted
    assert D(b.counters()["cost"]["svc"]["m"]) == D("0.09")  # what was paid stays paid
    assert b.reset_budget() == {}


def test_a_crashed_callers_lease_expires_charged_and_frees_its_slot(
        make_backend: BackendFactory, clock: FakeClock) -> None:
    """Its process died mid-call: the provider may have billed it, so the reservation is
    charged at expiry (not released), the slot frees, and a late settle counts once."""
    b = make_backend({"day": D("0.10")}, clock=clock)
    exact_clock(b)
    lim = limits(max_tokens=100, refill_rate=100.0, max_concurrency=1)
    assert b.admit(req(lim, cost="0.05"), "crashed", 30).admitted
    assert not b.admit(req(lim, cost="0.01"), "x", 30).admitted  # the slot is held
    clock.advance(31)
    assert b.admit(req(lim, cost="0.01"), "x", 30).admitted
    spends, reserved, live = b.budget_status()
    assert spends["day"].spent == D("0.05") and reserved == D("0.01") and live == 1
    counted = b.counters()
    assert counted["expired"]["svc"] == 1 and counted["cost"]["svc"]["(expired)"] == D("0.05")
    b.settle("crashed", lim, None, record(cost="0.02"))  # it was only paused: counted once
    assert b.budget_status()[0]["day"].spent == D("0.05")
    assert not b.admit(req(lim, cost="0.05"), "y", 30).admitted  # 0.05 + 0.01 + 0.05 > 0.10


def test_concurrency_slots(make_backend: BackendFactory, clock: FakeClock) -> None:
    b = make_backend(clock=clock)
    lim = limits(max_tokens=100, refill_rate=100.0, max_concurrency=2)
    assert b.admit(req(lim), "a", 60).admitted
    assert b.admit(req(lim), "b", 60).admitted
    d = b.admit(req(lim), "c", 60)
    assert not d.admitted and d.outcome == "rate_limited"
    assert b.in_flight("svc") == 2
    b.settle("a", lim, Observation("success"), record())
    assert b.admit(req(lim), "c", 60).admitted


def test_retry_attempts_skip_budget_and_slots(make_backend: BackendFactory,
                                              clock: FakeClock) -> None:
    b = make_backend({"day": D("0.01")}, clock=clock)
    lim = limits(max_tokens=100, refill_rate=100.0, max_concurrency=1)
    assert b.admit(req(lim), "a", 60).admitted
    assert b.admit(req(lim, reserve=False), None, 60).admitted


def test_breaker_opens_and_recovers(make_backend: BackendFactory, clock: FakeClock) -> None:
    b = make_backend(clock=clock)
    exact_clock(b)
    lim = limits(max_tokens=100, refill_rate=100.0, failure_threshold=3, recovery_timeout=10,
                 success_threshold=1)
    for _ in range(3):
        b.observe("svc", lim, Observation("failure"))
    d = b.admit(req(lim), None, 60)
    assert d.outcome == "circuit_open" and abs(d.retry_after - 10) < 1e-6
    clock.advance(10)
    assert b.admit(req(lim), "p", 60).admitted
    b.settle("p", lim, Observation("success"), record())
    assert b.service_state("svc").breaker.state == "closed"


def test_emergency_flag_switches_limits_everywhere(make_backend: BackendFactory,
                                                   clock: FakeClock) -> None:
    b = make_backend(clock=clock)
    lim = limits(max_tokens=100, refill_rate=100.0)
    b.set_emergency(True)
    assert b.emergency()
    results = [b.admit(req(lim), None, 60) for _ in range(3)]
    assert [d.admitted for d in results] == [True, False, False]
    assert all(d.emergency for d in results)
    b.set_emergency(False)
    assert not b.emergency()


def test_throttle_and_headers_lower_the_rate(make_backend: BackendFactory,
                                             clock: FakeClock) -> None:
    b = make_backend(clock=clock)
    lim = limits(max_tokens=5, refill_rate=2.0, min_interval=0.1, max_interval=5.0,
                 backoff_multiplier=2.0)
    b.observe("svc", lim, Observation("throttled"))
    assert b.service_state("svc").adaptive.rate == 1.0
    b.observe("svc", lim, Observation("success", ProviderLimits(
        limit_requests=100, remaining_requests=30, reset_requests=60.0)))
    assert abs(b.service_state("svc").adaptive.request_cap - 100 / 60 * adaptive.PACE) < 1e-9


def test_counters_costs_and_jobs(make_backend: BackendFactory, clock: FakeClock) -> None:
    b = make_backend({"day": D("1")}, clock=clock)
    lim = limits(max_tokens=100, refill_rate=100.0)
    b.admit(req(lim), "a", 60)
    b.settle("a", lim, Observation("success"), record("0.0123"))
    b.admit(req(lim), "b", 60)
    b.settle("b", lim, None, CallRecord("svc", "m", None, D(0), "error", "Boom", attempts=3))
    c = b.counters()
    assert c["requests"]["svc"]["admitted"] == 2
    assert c["calls"]["svc"]["m"] == {"ok": 1, "error": 1}
    assert D(c["cost"]["svc"]["m"]) == D("0.0123")
    assert D(c["job"]["job-1"]) == D("0.0123")
    assert c["retries"]["svc"] == 2
    assert "svc" in b.services()


def test_process_status_is_published_with_ttl(make_backend: BackendFactory,
                                              clock: FakeClock) -> None:
    b = make_backend(clock=clock)
    exact_clock(b)
    b.publish_process("p1", {"pid": 1, "queues": {"svc": 3}}, ttl=5)
    assert b.processes()["p1"]["queues"] == {"svc": 3}
    clock.advance(6)
    assert "p1" not in b.processes()


def test_state_persists_across_instances_when_shared(make_backend: BackendFactory,
                                                     clock: FakeClock) -> None:
    first = make_backend({"day": D("1")}, clock=clock)
    if first.name == "memory":
        pytest.skip("memory state is per instance by design")
    lim = limits()
    first.admit(req(lim), "a", 60)
    first.settle("a", lim, Observation("success"), record("0.25"))
    first.set_emergency(True)
    second = make_backend({"day": D("1")}, clock=clock)
    spends, _, _ = second.budget_status()
    assert spends["day"].spent == D("0.25")
    assert second.emergency()


def test_a_snapshot_is_every_read_at_once(make_backend: BackendFactory,
                                          clock: FakeClock) -> None:
    """``snapshot()`` holds what the piecewise reads return, on every backend."""
    from llm_governor.policies.scopes import ScopeRequest

    b = make_backend({"day": D("1")}, clock=clock)
    lim = limits(max_tokens=100, refill_rate=100.0, max_concurrency=5)
    tenant = ScopeRequest("tenant=acme", budgets={"day": D("0.5")})
    held = AdmitRequest("svc", 2, 0.0, D("0.04"), lim, EMERGENCY, scopes=(tenant,))
    assert b.admit(held, "held", 60).admitted
    assert b.admit(req(lim, cost="0.02", service="other"), "done", 60).admitted
    b.settle("done", lim, Observation("success"), record("0.015", service="other"))
    b.observe("svc", lim, Observation("failure"))
    b.publish_process("p1", {"pid": 1, "queues": {"svc": 2}}, ttl=30)
    b.set_emergency(True)

    snap = b.snapshot()
    assert snap.emergency is True and snap.degraded is False
    assert set(snap.names) == set(b.services()) >= {"svc", "other"}
    assert snap.counters == b.counters()
    assert snap.processes == b.processes() == {"p1": {"pid": 1, "queues": {"svc": 2}}}
    assert snap.budget_status() == b.budget_status()
    assert (snap.reserved, snap.leases) == (D("0.04"), 1)
    assert snap.in_flight == {"svc": 1} and b.in_flight("svc") == 1
    assert snap.state("svc") == b.service_state("svc")
    assert snap.state("svc").breaker.failures == 1
    assert snap.scope_status() == b.scope_status()
    assert snap.scope_status("tenant", "acme")["tenant=acme"][1] == D("0.04")
    assert b.snapshot(scopes=False).scopes == {}
