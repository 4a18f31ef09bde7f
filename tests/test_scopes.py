"""Budgets and limits per tenant, user and job, through the public API.

``scope()`` labels calls; ``[scopes.<kind>]`` gives the values of a kind their
own budgets, rate limits and mode. Driven here by ``@rate_limited`` (the
instrumented SDKs are in ``tests/instrumentation/test_scopes.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import llm_governor
from llm_governor import BudgetExceededError, ConfigError, Priority, scope
from llm_governor.context import current_job, current_labels
from llm_governor.governor import Governor

GovFactory = Callable[..., Governor]
D = Decimal
FAST = {"max_tokens": 1000, "refill_rate": 1000.0, "burst_capacity": 0, "min_interval": 0.001,
        "max_cost_per_minute": "1000", "request_timeout": 2}
TENANTS: dict[str, Any] = {
    "tenant": {"per_day": "0.05", "per_month": "1.00",
               "overrides": {"acme": {"per_day": "0.50"}}},
    "user": {"per_hour": "0.03"},
}


@llm_governor.rate_limited("svc", Priority.NORMAL, Decimal("0.01"))
def call() -> str:
    return "ok"


def calls_until_refused(limit: int = 200) -> tuple[int, BudgetExceededError]:
    for n in range(limit):
        try:
            call()
        except BudgetExceededError as exc:
            return n, exc
    raise AssertionError("never refused")


# ------------------------------------------------------------------ scope()
def test_scopes_nest_and_inner_labels_win() -> None:
    assert current_labels() == {}
    with scope(tenant="acme", user="u1") as outer:
        assert outer == {"tenant": "acme", "user": "u1"}
        with scope(user="u2", job="j") as inner:
            assert inner == {"tenant": "acme", "user": "u2", "job": "j"}
            assert current_job() == "j"
        assert current_labels() == {"tenant": "acme", "user": "u1"}
    assert current_labels() == {}


async def test_scopes_follow_tasks_and_async_with() -> None:
    async def labels() -> dict[str, str]:
        await asyncio.sleep(0)
        return dict(current_labels())

    async with scope(tenant="a"):
        task = asyncio.create_task(labels())
        with scope(tenant="b"):
            assert await labels() == {"tenant": "b"}
        assert await task == {"tenant": "a"}


def test_job_is_a_scope_and_still_yields_its_id() -> None:
    with llm_governor.job("video_123") as job_id:
        assert job_id == "video_123"
        assert current_labels() == {"job": "video_123"} and current_job() == "video_123"
    with pytest.raises(ValueError, match="non-empty string"):
        llm_governor.job("")


@pytest.mark.parametrize(("labels", "message"), [
    ({"tenant": "has space"}, "tenant='has space'"),
    ({"tenant": "a|b"}, "without whitespace or '|'"),
    ({"tenant": "x" * 129}, "1-128 characters"),
    ({"tenant": 42}, "tenant=42"),
    ({"tenant": ""}, "tenant=''"),
    ({"Bad-Kind": "v"}, "scope kind 'Bad-Kind'"),
])
def test_bad_labels_are_refused_at_the_scope_call(labels: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("(", r"\(")):
        scope(**labels)
    assert current_labels() == {}


def test_ids_with_colons_slashes_and_at_signs_are_fine() -> None:
    with scope(user="alice@example.com", job="s3://bucket/key.mp4", tenant="org:42"):
        assert current_labels()["job"] == "s3://bucket/key.mp4"


# ---------------------------------------------------------------- budgets
def test_each_tenant_has_its_own_budget_and_the_refusal_says_whose(
        governor_factory: GovFactory) -> None:
    governor_factory({"services": {"svc": FAST}, "scopes": TENANTS})
    with scope(tenant="small"):
        n, exc = calls_until_refused()
    assert n == 5
    assert exc.scope == ("tenant", "small") and exc.window == "day"
    assert exc.remaining == 0 and exc.requested == D("0.01")
    assert "day budget of tenant=small" in str(exc)
    with scope(tenant="other"):
        assert calls_until_refused()[0] == 5  # another tenant is untouched
    with scope(tenant="acme"):  # its override: 0.50 a day, 1.00 a month
        assert calls_until_refused()[0] == 50


def test_the_tightest_of_nested_scopes_refuses(governor_factory: GovFactory) -> None:
    governor_factory({"services": {"svc": FAST}, "scopes": TENANTS})
    with scope(tenant="acme", user="u1"):
        n, exc = calls_until_refused()
    assert n == 3 and exc.scope == ("user", "u1") and exc.window == "hour"


def test_the_global_budget_still_applies_and_names_no_scope(
        governor_factory: GovFactory) -> None:
    governor_factory({"services": {"svc": FAST}, "scopes": TENANTS,
                      "budget": {"per_day": "0.02"}})
    with scope(tenant="acme"):
        n, exc = calls_until_refused()
    assert n == 2 and exc.scope is None


def test_unknown_kinds_label_without_limits_and_say_so_once(
        governor_factory: GovFactory, caplog: pytest.LogCaptureFixture) -> None:
    gov = governor_factory({"services": {"svc": FAST}, "scopes": TENANTS})
    caplog.set_level(logging.DEBUG, "llm_governor")
    with scope(team="blue"):
        for _ in range(3):
            call()
    said = [r for r in caplog.records if "scope kind 'team' is not configured" in r.message]
    assert len(said) == 1
    assert gov.backend.scope_status() == {}


def test_check_budget_answers_for_scopes(governor_factory: GovFactory) -> None:
    governor_factory({"services": {"svc": FAST}, "scopes": TENANTS,
                      "budget": {"per_day": "10"}})
    with scope(tenant="t1"):
        call()
        call()
    assert llm_governor.check_budget("0.03", tenant="t1") == (True, D("0.03"))
    assert llm_governor.check_budget("0.04", tenant="t1") == (False, D("0.03"))
    assert llm_governor.check_budget("0.04", tenant="t2") == (True, D("0.05"))
    assert llm_governor.check_budget("0.04") == (True, D("9.98"))


def test_status_lists_top_spenders_per_kind(governor_factory: GovFactory) -> None:
    governor_factory({"services": {"svc": FAST}, "scopes": TENANTS})
    for tenant, n in (("a", 1), ("b", 3), ("c", 2)):
        with scope(tenant=tenant):
            for _ in range(n):
                call()
    health = llm_governor.get_rate_limit_health()
    assert list(health["scopes"]["tenant"]) == ["b", "c", "a"]
    assert health["scopes"]["tenant"]["b"]["windows"]["day"] == {
        "limit": "0.05", "spent": "0.03", "reserved": "0", "remaining": "0.02"}
    assert health["scopes"]["user"] == {}
    doc = json.loads(llm_governor.export_rate_limit_metrics())
    assert doc["scopes"]["tenant"]["b"]["windows"]["month"]["spent"] == "0.03"


def test_a_kind_without_budgets_still_tracks_spend_for_status(
        governor_factory: GovFactory) -> None:
    gov = governor_factory({"services": {"svc": FAST},
                            "scopes": {"team": {"requests_per_minute": 1000}}})
    with scope(team="red"):
        call()
    row = gov.scope_report("team")["team=red"]
    assert row["windows"]["day"]["spent"] == D("0.01") and row["windows"]["day"]["limit"] is None


def test_scope_request_limits_hold_one_value_not_the_others(
        governor_factory: GovFactory) -> None:
    governor_factory({"services": {"svc": {**FAST, "request_timeout": 0.2}},
                      "scopes": {"user": {"requests_per_minute": 2}}})
    with scope(user="chatty"):
        call()
        call()
        with pytest.raises(llm_governor.RateLimitExceededError) as info:
            call()
    assert info.value.scope == ("user", "chatty")
    assert "limits of user=chatty" in str(info.value)
    with scope(user="quiet"):
        call()


@pytest.mark.parametrize(("config", "message"), [
    ({"scopes": {"bad kind": {}}}, "bad kind"),
    ({"scopes": {"tenant": {"per_day": "-1"}}}, "per_day"),
    ({"scopes": {"tenant": {"overrides": {"a b": {}}}}}, "a b"),
    ({"scopes": {"tenant": {"mode": "watch"}}}, "watch"),
    ({"alerts": {"budget_thresholds": [0.5, 1.5]}}, "budget_thresholds"),
    ({"policies": ["no_colon"]}, "no_colon"),
    ({"policies": ["tests.test_scopes:missing"]}, "missing"),
])
def test_bad_scope_config_names_the_value(governor_factory: GovFactory,
                                          config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        governor_factory(config)


# ------------------------------------------------------- concurrency, every backend
@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    from tests._redis_server import shared_server

    return shared_server().url


async def test_asyncio_tasks_never_overshoot_a_scope_or_the_global_budget(
        governor_factory: GovFactory, backend_url: str) -> None:
    gov = governor_factory({
        "backend": backend_url, "namespace": f"scopes-async-{id(backend_url)}",
        "budget": {"per_day": "0.50"},
        "scopes": {"tenant": {"per_day": "0.20", "overrides": {"big": {"per_day": "1.00"}}},
                   "user": {"per_hour": "0.07"}},
        "services": {"svc": FAST}})
    if backend_url.startswith("redis"):
        gov.backend.reset()

    @llm_governor.rate_limited("svc", Priority.NORMAL, Decimal("0.01"))
    async def work() -> None:
        await asyncio.sleep(0.001)

    async def tenant_user(tenant: str, user: str) -> int:
        done = 0
        with scope(tenant=tenant, user=user):
            for _ in range(40):
                try:
                    await work()
                    done += 1
                except BudgetExceededError:
                    await asyncio.sleep(0.001)
        return done

    pairs = [(t, f"{t}-u{i}") for t in ("a", "b", "big") for i in range(4)]
    done = await asyncio.gather(*(tenant_user(t, u) for t, u in pairs))
    report = gov.scope_report()
    day = {k: row["windows"]["day"]["spent"] for k, row in report.items()
           if k.startswith("tenant=")}
    # demand (12 users × $0.07, tenants a and b capped at $0.20) exceeds the global $0.50:
    # which tenant gets how much is a race, but no window is ever overshot
    assert day["tenant=a"] <= D("0.20") and day["tenant=b"] <= D("0.20")
    assert day["tenant=big"] <= D("1.00")
    users = {k: row["windows"]["hour"]["spent"] for k, row in report.items()
             if k.startswith("user=")}
    assert max(users.values()) <= D("0.07")
    assert sum(day.values()) == sum(users.values()) == D("0.50")  # the global one, filled
    assert gov.budget_report()["day"]["spent"] == sum(done) * D("0.01") == D("0.50")
    assert gov.budget_report()["day"]["reserved"] == 0
