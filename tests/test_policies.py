"""Custom policies through the public API: installed by ``instrument(policies=…)`` or
the config, consulted before admission, never able to break a call.

The built-ins' own logic is in ``tests/policies/test_custom.py``; model
substitution on the wire, per SDK, in ``tests/instrumentation/test_scopes.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import llm_governor
from llm_governor import (
    CallInfo,
    PolicyRefusedError,
    Priority,
    Refuse,
    Reprioritize,
    Substitute,
    scope,
)
from llm_governor.governor import Governor

GovFactory = Callable[..., Governor]
FAST = {"max_tokens": 1000, "refill_rate": 1000.0, "burst_capacity": 0, "min_interval": 0.001,
        "max_cost_per_minute": "1000"}
seen: list[CallInfo] = []
budgets: list[tuple[Any, Any]] = []


def recording_policy(info: CallInfo) -> None:
    """Importable by name, for the config entry point."""
    seen.append(info)
    budgets.append((info.budget_left, info.budget_fraction_left))


@llm_governor.rate_limited("svc", Priority.LOW, Decimal("0.01"), model="big")
def call() -> str:
    return "ok"


def requests(gov: Governor) -> dict[str, int]:
    return dict(gov.backend.counters().get("requests", {}).get("svc", {}))


def test_a_policy_sees_the_call_read_only(governor_factory: GovFactory) -> None:
    seen.clear()
    budgets.clear()
    governor_factory({"services": {"svc": FAST}, "budget": {"per_day": "1.00"},
                      "policies": ["tests.test_policies:recording_policy"]})
    with scope(tenant="acme"):
        call()
    (info,) = seen
    assert (info.service, info.model, info.operation, info.priority) == ("svc", "big", "call",
                                                                         Priority.LOW)
    assert dict(info.labels) == {"tenant": "acme"}
    assert info.estimated_cost == Decimal("0.01")
    assert budgets == [(Decimal("1.00"), 1.0)]  # as the call was about to be admitted
    assert len(info.fingerprint) == 32
    with pytest.raises(AttributeError):
        info.model = "other"  # type: ignore[misc]


def test_refuse_fails_the_call_with_its_reason(governor_factory: GovFactory) -> None:
    def no_big_models(info: CallInfo) -> Refuse | None:
        return Refuse("big models are off today") if info.model == "big" else None

    gov = governor_factory({"services": {"svc": FAST}}, policies=[no_big_models])
    with pytest.raises(PolicyRefusedError) as exc:
        call()
    assert exc.value.policy == "no_big_models" and exc.value.reason == "big models are off today"
    assert isinstance(exc.value, llm_governor.GovernorError)
    assert "policy no_big_models refused this svc call" in str(exc.value)
    assert requests(gov) == {"policy_refused": 1}


def test_reprioritize_changes_the_priority_of_admission(governor_factory: GovFactory) -> None:
    gov = governor_factory({"services": {"svc": FAST}},
                           policies=[lambda info: Reprioritize("critical"), recording_policy])
    seen.clear()
    call()
    assert seen[0].priority == Priority.CRITICAL
    assert requests(gov) == {"admitted": 1}


def test_a_failing_policy_is_logged_once_and_skipped(governor_factory: GovFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def broken(info: CallInfo) -> None:
        raise KeyError("oops")

    governor_factory({"services": {"svc": FAST}},
                     policies=[broken, lambda info: 42, lambda info: Refuse("after")])
    caplog.set_level(logging.WARNING, "llm_governor")
    for _ in range(3):
        with pytest.raises(PolicyRefusedError):  # the later policies still ran
            call()
    failed = [r for r in caplog.records if "policy broken failed" in r.message]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert any("returned 42" in r.message for r in caplog.records)


def test_substitute_without_a_model_to_change_is_skipped(governor_factory: GovFactory) -> None:
    gov = governor_factory({"services": {"svc": FAST}},
                           policies=[lambda info: Substitute("small")])
    assert call() == "ok"  # a decorated function has no model argument to change
    assert requests(gov) == {"admitted": 1}


def test_instrument_takes_policies(governor_factory: GovFactory) -> None:
    def refuse_all(info: CallInfo) -> Refuse:
        return Refuse("closed")

    gov = llm_governor.instrument({"backend": "memory", "services": {"svc": FAST}},
                                  policies=[refuse_all])
    try:
        assert gov.policies == [refuse_all]
        with pytest.raises(PolicyRefusedError):
            call()
    finally:
        llm_governor.uninstrument()
        gov.close()


@pytest.mark.parametrize(("entry", "message"), [
    ("tests.test_policies:FAST", "is a dict, not a callable"),
    ("tests.nowhere:policy", "cannot import 'tests.nowhere:policy'"),
])
def test_config_entries_that_are_not_policies(governor_factory: GovFactory, entry: str,
                                              message: str) -> None:
    with pytest.raises(llm_governor.ConfigError, match=message):
        governor_factory({"policies": [entry]})


def test_downgrade_when_budget_low_reads_the_scope_budget(governor_factory: GovFactory) -> None:
    picked: list[Any] = []

    def spy(info: CallInfo) -> None:
        picked.append((info.model, info.budget_fraction_left))

    downgrade = llm_governor.downgrade_when_budget_low({"big": "small"}, below=0.5)
    governor_factory({"services": {"svc": FAST}, "scopes": {"tenant": {"per_day": "0.04"}}},
                     policies=[downgrade, spy])
    with scope(tenant="t"):
        for _ in range(4):
            call()
    # after two calls half the tenant's day is gone: the policy asks for "small", which
    # a decorated function cannot switch to, so the model stays (see the SDK tests)
    assert [round(f, 2) for _, f in picked] == [1.0, 0.75, 0.5, 0.25]
