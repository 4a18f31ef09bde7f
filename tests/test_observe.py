"""Observe-only mode: nothing waits, nothing is refused, everything is counted.

``mode = "observe"`` globally, per service or per scope kind. The decisions a
call would have met are counted as ``would_<outcome>`` (backend counters,
``llm_governor.requests``), spend is recorded as usual. The wire-level
version with the real SDKs is in ``tests/instrumentation/test_scopes.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import pytest

import llm_governor
from llm_governor import BudgetExceededError, Priority, Refuse, scope
from llm_governor.governor import Governor

GovFactory = Callable[..., Governor]
D = Decimal
# one call per 5 s and a $0.02 day: enforced, 20 calls would take minutes or be refused
SLOW = {"max_tokens": 1, "burst_capacity": 0, "refill_rate": 0.2, "min_interval": 0.001,
        "max_interval": 10.0, "max_cost_per_minute": "1000", "request_timeout": 30}


@llm_governor.rate_limited("svc", Priority.NORMAL, Decimal("0.01"))
def call() -> str:
    return "ok"


@llm_governor.rate_limited("other", Priority.NORMAL, Decimal("0.01"))
def call_other() -> str:
    return "ok"


def requests(gov: Governor, service: str = "svc") -> dict[str, int]:
    return dict(gov.backend.counters().get("requests", {}).get(service, {}))


def test_observe_globally_never_waits_or_refuses_and_counts_what_would(
        governor_factory: GovFactory) -> None:
    gov = governor_factory({"mode": "observe", "budget": {"per_day": "0.02"},
                            "services": {"svc": SLOW}})
    started = time.monotonic()
    assert [call() for _ in range(20)] == ["ok"] * 20
    assert time.monotonic() - started < 5.0  # enforced, the bucket alone needs 95 s
    counted = requests(gov)
    assert counted["admitted"] == 1
    assert counted["would_budget_exceeded"] == 18  # the 3rd call on: over $0.02
    assert counted["would_rate_limited"] == 1  # the 2nd: within budget, over the rate
    assert gov.budget_report()["day"]["spent"] == D("0.20")  # spend is recorded all the same
    assert gov.budget_report()["day"]["reserved"] == 0


def test_observe_per_service_leaves_the_others_enforced(governor_factory: GovFactory) -> None:
    governor_factory({"budget": {"per_day": "0.02"},
                      "services": {"svc": {**SLOW, "mode": "observe"},
                                   "other": {**SLOW, "max_tokens": 100, "refill_rate": 100.0}}})
    assert [call() for _ in range(5)] == ["ok"] * 5
    with pytest.raises(BudgetExceededError):
        call_other()  # the observed service already spent the day


def test_observe_per_scope_kind(governor_factory: GovFactory) -> None:
    gov = governor_factory({
        "services": {"svc": {**SLOW, "max_tokens": 100, "refill_rate": 100.0}},
        "scopes": {"tenant": {"per_day": "0.02", "mode": "observe"},
                   "user": {"per_day": "0.03"}}})
    with scope(tenant="acme", user="u1"):
        assert [call() for _ in range(3)] == ["ok"] * 3
        with pytest.raises(BudgetExceededError) as info:
            call()
    assert info.value.scope == ("user", "u1")  # enforced kind refuses...
    # one count per admission: the 3rd call passed, but the observed tenant budget would
    # have refused it; the 4th met the enforced user budget
    assert requests(gov) == {"admitted": 2, "would_budget_exceeded": 1, "budget_exceeded": 1}
    report = gov.scope_report("tenant")["tenant=acme"]
    assert report["mode"] == "observe" and report["windows"]["day"]["spent"] == D("0.03")


def test_a_scope_kind_can_enforce_under_a_global_observe(governor_factory: GovFactory) -> None:
    gov = governor_factory({"mode": "observe", "budget": {"per_day": "0.01"},
                            "services": {"svc": {**SLOW, "max_tokens": 100,
                                                 "refill_rate": 100.0}},
                            "scopes": {"tenant": {"per_day": "0.02", "mode": "enforce"}}})
    with scope(tenant="acme"):
        assert call() == "ok"
        assert call() == "ok"  # over the observed global budget: counted only
        with pytest.raises(BudgetExceededError) as info:
            call()  # over the enforced tenant budget: refused
    assert info.value.scope == ("tenant", "acme")
    assert requests(gov) == {"admitted": 1, "would_budget_exceeded": 1, "budget_exceeded": 1}


def test_policies_are_counted_not_applied_in_observe_mode(governor_factory: GovFactory) -> None:
    gov = governor_factory({"mode": "observe", "services": {"svc": SLOW}},
                           policies=[lambda info: Refuse("no")])
    assert call() == "ok"
    assert requests(gov)["would_policy_refused"] == 1
