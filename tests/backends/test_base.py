"""The backend contract: a governed call uses only the call store (``CallStore``), never
the status store; and in ``TransactionalBackend`` the admission of a call without scope
values takes a path of its own (``_decide_unscoped``) that must decide and store exactly
what the general path (``_decide``, which calls with scope values take) would."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_governor
from llm_governor.backends import CallRecord, MemoryBackend, create_backend
from llm_governor.backends.base import StatusStore, Txn
from llm_governor.config import RateLimitConfig
from llm_governor.governor import limits_of
from llm_governor.policies.adaptive import ProviderLimits
from llm_governor.policies.admission import AdmitRequest, Decision, Observation
from tests.conftest import FakeClock

D = Decimal
LIM = limits_of(RateLimitConfig.model_validate({
    "max_tokens": 3, "refill_rate": 2.0, "burst_capacity": 1, "max_cost_per_minute": "0.05",
    "llm_tokens_per_minute": 2000, "max_concurrency": 3, "failure_threshold": 2,
    "recovery_timeout": 5, "min_interval": 0.01, "max_interval": 5.0}))
EMERGENCY = limits_of(RateLimitConfig.model_validate({
    "max_tokens": 1, "refill_rate": 0.5, "burst_capacity": 0, "max_cost_per_minute": "0.01"}))
BUDGETS = {"minute": D("0.04"), "day": D("0.2")}


class StatusSpy(MemoryBackend):
    """A memory backend that records every status-store method called on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status_reads: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name in _STATUS:
            object.__getattribute__(self, "status_reads").append(name)
        return object.__getattribute__(self, name)


_STATUS = frozenset(StatusStore.__abstractmethods__ | {"snapshot"}) - {"now"}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_governed_call_uses_only_the_call_store(governor_factory: Any,
                                                  is_async: bool) -> None:
    """Admitted, retried, settled and refused calls read no status: the hot path and the
    read model stay apart (status, exporters and the CLI read the snapshot)."""
    backend = StatusSpy({"day": D("0.0045")})
    governor_factory({"budget": {"per_day": "0.0045"}, "max_retries": 1, "services": {
        "svc": {"max_tokens": 100, "refill_rate": 100.0, "max_concurrency": 2,
                "min_interval": 0.001}}}, backend=backend)
    failures = [ConnectionResetError("reset")]

    def work() -> int:
        if failures:
            raise failures.pop()
        return 1

    async def awork() -> int:
        return work()

    fn: Any = llm_governor.rate_limited("svc", cost=D("0.001"))(awork if is_async else work)
    for _ in range(3):  # the first is retried once
        assert (asyncio.run(fn()) if is_async else fn()) == 1
    with pytest.raises(llm_governor.BudgetExceededError):
        asyncio.run(fn()) if is_async else fn()
    assert backend.status_reads == []
    assert backend.counters()["retries"]["svc"] == 1  # the retry really ran


class _General(MemoryBackend):
    """Every admission through the general path, as one with scope values takes it."""

    def _decide_unscoped(self, tx: Txn, req: AdmitRequest, lease_id: str | None, ttl: float,
                         now: float, emergency: bool, reserved: Decimal,
                         in_flight: int) -> Decision:
        return self._decide(tx, req, lease_id, ttl, now, emergency, reserved, in_flight, {})


def _state(b: MemoryBackend) -> dict[str, Any]:
    return {"services": dict(b._services), "spends": dict(b._spends), "leases": dict(b._leases),
            "counters": dict(b._counters), "done": dict(b._done), "scopes": dict(b._scopes)}


_admit = st.tuples(st.just("admit"), st.integers(0, 3), st.sampled_from([0.0, 150.0, 900.0]),
                   st.sampled_from(["0", "0.004", "0.02"]), st.booleans(), st.booleans(),
                   st.booleans())
_settle = st.tuples(st.just("settle"), st.integers(0, 20), st.sampled_from(["0", "0.003", "0.03"]),
                    st.sampled_from(["success", "failure", "throttled", "neutral", None]),
                    st.booleans())
_other = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.1, 0.7, 3.0, 30.0, 61.0])),
    st.tuples(st.just("emergency"), st.booleans()),
    st.tuples(st.just("observe"), st.sampled_from(["failure", "throttled", "success"])),
)


@settings(max_examples=150, deadline=None)
@given(budgets=st.booleans(), ops=st.lists(st.one_of(_admit, _settle, _other), max_size=60))
def test_the_unscoped_path_decides_and_stores_what_the_general_path_does(
        budgets: bool, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    limits = BUDGETS if budgets else {}
    fast, general = MemoryBackend(limits, clock), _General(limits, clock)
    leases: list[str] = []
    for n, op in enumerate(ops):
        kind = op[0]
        results = []
        for b in (fast, general):
            if kind == "admit":
                _, prio, tokens, cost, reserve, observe, lease = op
                req = AdmitRequest("svc", prio, tokens, D(cost), LIM, EMERGENCY,
                                   reserve=reserve, refuse_in_emergency=observe and not reserve,
                                   observe=observe)
                results.append(b.admit(req, f"lease-{n}" if lease and reserve else None, 30.0))
            elif kind == "settle":
                _, pick, cost, outcome, final = op
                lease_id = leases[pick % len(leases)] if leases else None
                obs = Observation(outcome) if outcome is not None else None
                record = CallRecord("svc", "m", "job", D(cost), "ok", None, 2, final=final,
                                    settle_id=lease_id)
                results.append(b.settle(lease_id, LIM, obs, record))
            elif kind == "advance":
                results.append(None)
            elif kind == "emergency":
                b.set_emergency(op[1])
            else:
                provider = ProviderLimits(limit_requests=4, remaining_requests=1,
                                          reset_requests=2.0, retry_after=1.5) \
                    if op[1] == "throttled" else None
                b.observe("svc", LIM, Observation(op[1], provider))
        if kind == "advance":
            clock.advance(op[1])
        if kind == "admit" and results[0].admitted and op[6] and op[4]:
            leases.append(f"lease-{n}")
        assert results[:1] == results[1:], op
        assert _state(fast) == _state(general), op


def test_a_backend_says_whether_other_processes_decide_on_its_state(tmp_path: Any) -> None:
    """Queue heads stagger their asks only where other processes' heads compete
    (``admission_queue.stagger``): never on the per-process memory backend."""
    assert not MemoryBackend().shared
    shared = create_backend(f"sqlite:///{tmp_path / 'governor.db'}", {})
    try:
        assert shared.shared
    finally:
        shared.close()
