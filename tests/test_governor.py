"""The governor through the public API, without any SDK: decorator, budgets, queue,
deadlines, emergency mode, fallbacks, and the seed's usage examples."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import llm_governor
from llm_governor import Priority
from llm_governor.governor import CallSpec, Governor

GovFactory = Callable[..., Governor]
FAST = {"max_tokens": 1000, "refill_rate": 1000.0, "burst_capacity": 0,
        "max_cost_per_minute": "1000"}


def test_every_contract_name_imports() -> None:
    names = ["instrument", "uninstrument", "get_governor", "Priority", "priority", "job",
             "rate_limited", "graceful_api_call", "check_budget", "get_service_config",
             "get_rate_limit_health", "export_rate_limit_metrics",
             "start_rate_limit_monitoring", "stop_rate_limit_monitoring", "log_alert_handler",
             "enable_emergency_mode", "disable_emergency_mode", "is_emergency_mode",
             "RateLimitConfig", "RateLimitAlert", "GovernorError", "RateLimitExceededError",
             "QueueFullError", "CircuitBreakerOpenError", "BudgetExceededError"]
    for name in names:
        assert hasattr(llm_governor, name), name
    assert issubclass(llm_governor.QueueFullError, llm_governor.RateLimitExceededError)
    assert [p.name for p in Priority] == ["CRITICAL", "HIGH", "NORMAL", "LOW"]


def test_seed_examples_run_as_written(governor_factory: GovFactory) -> None:
    governor_factory({"budget": {"per_day": "1.00"}, "services": {"my_service": FAST}})
    from llm_governor import (
        BudgetExceededError,
        check_budget,
        export_rate_limit_metrics,
        get_rate_limit_health,
        graceful_api_call,
        rate_limited,
    )

    @rate_limited("my_service", Priority.HIGH, Decimal("0.01"))
    def expensive_api_call(data: str) -> str:
        return f"api:{data}"

    assert expensive_api_call("x") == "api:x"

    estimated_cost = Decimal("0.05")
    within_budget, remaining = check_budget(estimated_cost)
    if not within_budget:
        raise BudgetExceededError("Insufficient budget")
    assert remaining == Decimal("0.99")

    def expensive_ai_service() -> str:
        raise ConnectionError("down")

    def local_processing() -> str:
        return "local"

    result = graceful_api_call(service_func=expensive_ai_service,
                               fallback_func=local_processing, service_name="ai_service")
    assert result == "local"

    health = get_rate_limit_health()
    assert health["overall_status"] in ("healthy", "degraded", "critical")
    assert 0 <= health["health_score"] <= 100
    assert "my_service" in health["services"]
    import json
    metrics = json.loads(export_rate_limit_metrics())
    assert metrics["costs"]["by_service"]["my_service"] == "0.01"


def test_budget_of_ten_cents_admits_exactly_ten_calls(governor_factory: GovFactory) -> None:
    governor_factory({"budget": {"per_day": "0.10"}, "services": {"svc": FAST}})

    @llm_governor.rate_limited("svc", cost=Decimal("0.01"))
    def call() -> None:
        return None

    for _ in range(10):
        call()
    with pytest.raises(llm_governor.BudgetExceededError) as info:
        call()
    assert info.value.remaining == Decimal("0.00")
    assert info.value.requested == Decimal("0.01")
    assert "$0.00 left" in str(info.value) and "day" in str(info.value)


async def test_async_decorator_shares_the_budget(governor_factory: GovFactory) -> None:
    governor_factory({"budget": {"per_day": "0.10"}, "services": {"svc": FAST}})

    @llm_governor.rate_limited("svc", cost=Decimal("0.01"))
    async def call(i: int) -> int:
        await asyncio.sleep(0.001)
        return i

    results = await asyncio.gather(*(call(i) for i in range(30)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, llm_governor.BudgetExceededError)]
    assert len(ok) == 10 and len(refused) == 20


def test_wait_beyond_deadline_raises_with_exact_retry_after(governor_factory: GovFactory) -> None:
    governor_factory({"services": {"slow": {"max_tokens": 1, "burst_capacity": 0,
                                            "refill_rate": 0.1, "request_timeout": 0.5}}})

    @llm_governor.rate_limited("slow", Priority.CRITICAL)
    def call() -> None:
        return None

    call()
    started = time.monotonic()
    with pytest.raises(llm_governor.RateLimitExceededError) as info:
        call()
    assert time.monotonic() - started < 0.4  # fails fast: the wait exceeds the deadline
    assert info.value.retry_after is not None and 9.0 < info.value.retry_after <= 10.0


def test_queue_admits_by_priority(governor_factory: GovFactory) -> None:
    governor_factory({"services": {"q": {"max_tokens": 1, "burst_capacity": 0,
                                         "refill_rate": 20.0, "max_queue_size": 50}}})
    order: list[str] = []
    lock = threading.Lock()

    def make(name: str, prio: Priority) -> Callable[[], None]:
        @llm_governor.rate_limited("q", prio)
        def call() -> None:
            with lock:
                order.append(name)
        return call

    make("warmup", Priority.CRITICAL)()
    threads = [threading.Thread(target=make(f"low{i}", Priority.LOW)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    time.sleep(0.01)
    crit = threading.Thread(target=make("critical", Priority.CRITICAL))
    crit.start()
    for t in [*threads, crit]:
        t.join(5)
    # the critical call arrived last but overtakes every low one still waiting
    assert order.index("critical") <= 2
    assert order[0] == "warmup"


def test_full_queue_sheds_lowest_priority(governor_factory: GovFactory) -> None:
    governor_factory({"services": {"q": {"max_tokens": 1, "burst_capacity": 0,
                                         "refill_rate": 5.0, "max_queue_size": 2,
                                         "request_timeout": 5}}})
    errors: dict[str, BaseException] = {}

    def run(name: str, prio: Priority) -> None:
        @llm_governor.rate_limited("q", prio)
        def call() -> None:
            return None
        try:
            call()
        except llm_governor.GovernorError as exc:
            errors[name] = exc

    run("first", Priority.NORMAL)
    lows = [threading.Thread(target=run, args=(f"low{i}", Priority.LOW)) for i in range(2)]
    for t in lows:  # one after the other: low1 is the younger in the queue
        t.start()
        time.sleep(0.05)
    high = threading.Thread(target=run, args=("high", Priority.HIGH))
    high.start()
    for t in [*lows, high]:
        t.join(10)
    assert "high" not in errors
    assert isinstance(errors.get("low1"), llm_governor.QueueFullError)


def test_breaker_opens_on_failures_and_fails_fast(governor_factory: GovFactory) -> None:
    governor_factory({"services": {"flaky": {**FAST, "failure_threshold": 3,
                                             "recovery_timeout": 30}}})

    @llm_governor.rate_limited("flaky")
    def call() -> None:
        raise TimeoutError("provider down")

    for _ in range(3):
        with pytest.raises(TimeoutError):
            call()
    with pytest.raises(llm_governor.CircuitBreakerOpenError) as info:
        call()
    assert info.value.retry_after is not None and 29 < info.value.retry_after <= 30
    assert "Circuit breaker open for flaky" in str(info.value)
    assert llm_governor.get_rate_limit_health()["services"]["flaky"]["circuit_state"] == "open"


def test_emergency_mode_drops_to_minimums(governor_factory: GovFactory) -> None:
    governor_factory({"services": {"svc": {**FAST, "request_timeout": 1}}})

    @llm_governor.rate_limited("svc", Priority.CRITICAL)
    def call() -> None:
        return None

    for _ in range(5):
        call()
    llm_governor.enable_emergency_mode()
    assert llm_governor.is_emergency_mode()
    call()
    with pytest.raises(llm_governor.RateLimitExceededError):
        call()  # emergency: one request per 10 s, longer than the 1 s deadline
    llm_governor.disable_emergency_mode()
    call()


def test_emergency_refuse_action(governor_factory: GovFactory) -> None:
    governor_factory({"emergency_action": "refuse", "services": {"svc": FAST}})
    llm_governor.enable_emergency_mode()

    @llm_governor.rate_limited("svc")
    def call() -> None:
        return None

    with pytest.raises(llm_governor.EmergencyModeError):
        call()


def test_priority_and_job_context(governor_factory: GovFactory) -> None:
    gov = governor_factory({"services": {"svc": FAST}})
    with llm_governor.priority(Priority.HIGH), llm_governor.job("video_123"):
        t = gov.admit(CallSpec("svc", cost=Decimal("0.02")))
    assert t.priority is Priority.HIGH and t.job == "video_123"
    gov.settle(t)
    assert gov.backend.counters()["job"]["video_123"] == Decimal("0.02")
    with pytest.raises(ValueError, match="priority 'urgent'"), llm_governor.priority("urgent"):
        pass


def test_cost_estimate_context_replaces_computed_bound(governor_factory: GovFactory) -> None:
    gov = governor_factory({"services": {"svc": FAST}})
    with llm_governor.cost_estimate("0.07"):
        t = gov.admit(CallSpec("svc", model="gpt-4o", prompt_bytes=10))
    assert t.reserved == Decimal("0.07")
    gov.settle(t, cost=Decimal("0.05"))
    assert gov.backend.counters()["cost"]["svc"]["gpt-4o"] == Decimal("0.05")


def test_graceful_api_call_without_fallback_reraises(governor_factory: GovFactory) -> None:
    governor_factory()

    def boom() -> None:
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        llm_governor.graceful_api_call(boom, None, "svc")


async def test_graceful_api_call_async(governor_factory: GovFactory) -> None:
    governor_factory()

    async def service(x: int) -> int:
        raise ConnectionError

    async def fallback(x: int) -> int:
        return x + 1

    assert await llm_governor.graceful_api_call(service, fallback, "svc", 41) == 42


def test_get_service_config_follows_environment(governor_factory: GovFactory) -> None:
    governor_factory({"environment": "production"})
    cfg = llm_governor.get_service_config("anthropic")
    assert (cfg.max_tokens, cfg.refill_rate, cfg.max_cost_per_minute, cfg.recovery_timeout) == \
        (1, 0.25, Decimal("1.25"), 90)


def test_settle_is_idempotent(governor_factory: GovFactory) -> None:
    gov = governor_factory({"budget": {"per_day": "1"}, "services": {"svc": FAST}})
    t = gov.admit(CallSpec("svc", cost=Decimal("0.10")))
    assert gov.settle(t, cost=Decimal("0.04")) == Decimal("0.04")
    assert gov.settle(t, cost=Decimal("0.04")) == Decimal(0)
    assert gov.budget_report()["day"]["spent"] == Decimal("0.04")
    assert gov.budget_report()["day"]["reserved"] == Decimal(0)


def test_decorator_on_function_without_name_args(governor_factory: GovFactory) -> None:
    governor_factory()

    @llm_governor.rate_limited
    def plain(x: Any) -> Any:
        return x

    assert plain(3) == 3
    with pytest.raises(ValueError, match="service name"):
        llm_governor.rate_limited("")


# --------------------------------------------------------------------- retries of functions
class Flaky:
    """A function that raises ``errors`` in turn, then returns "ok"; sync or async."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    def step(self) -> str:
        self.calls.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def decorated(service: str, flaky: Flaky, is_async: bool) -> Callable[[], Any]:
    """``flaky`` behind ``@rate_limited(service)``, called to completion either way."""
    if is_async:
        @llm_governor.rate_limited(service, cost=Decimal("0.10"))
        async def acall() -> str:
            return flaky.step()

        return lambda: asyncio.run(acall())

    @llm_governor.rate_limited(service, cost=Decimal("0.10"))
    def call() -> str:
        return flaky.step()

    return call


class Status(Exception):
    """An HTTP client's error carrying the status and the response headers."""

    def __init__(self, status_code: int, retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.response = type("R", (), {"headers": {"retry-after": retry_after}
                                       if retry_after else {}})()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_decorated_function_is_retried_by_a_tenacity_loop_the_governor_paces(
        governor_factory: GovFactory, is_async: bool) -> None:
    gov = governor_factory({"max_retries": 3, "budget": {"per_day": "10"},
                            "services": {"api": FAST}})
    flaky = Flaky(ConnectionResetError("reset"), Status(503), Status(429, retry_after="0.3"))
    assert decorated("api", flaky, is_async)() == "ok"
    assert len(flaky.calls) == 4
    assert flaky.calls[3] - flaky.calls[2] >= 0.3  # the 429's retry-after was honoured
    counters = gov.backend.counters()
    assert counters["retries"]["api"] == 3
    # the reset may have reached the server: charged; the 503 and the 429 were answered
    spent, _, leases = gov.backend.budget_status()
    assert spent["day"].spent == Decimal("0.20") and leases == 0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_only_transient_errors_are_retried_and_none_by_default(
        governor_factory: GovFactory, is_async: bool) -> None:
    governor_factory({"max_retries": 2, "services": {"api": FAST, "plain": FAST}})
    flaky = Flaky(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        decorated("api", flaky, is_async)()
    assert len(flaky.calls) == 1
    flaky = Flaky(Status(404))
    with pytest.raises(Status):
        decorated("api", flaky, is_async)()
    assert len(flaky.calls) == 1

    governor_factory({"services": {"api": FAST}})  # no max_retries: one attempt
    flaky = Flaky(TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        decorated("api", flaky, is_async)()
    assert len(flaky.calls) == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_vetoed_retry_raises_the_functions_own_error_with_a_note(
        governor_factory: GovFactory, is_async: bool) -> None:
    gov = governor_factory({"max_retries": 3, "services": {"api": FAST},
                            "retry": {"budget_ratio": 0.0, "budget_min_per_minute": 0}})
    error = ConnectionResetError("reset by peer")
    flaky = Flaky(error)
    with pytest.raises(ConnectionResetError) as info:
        decorated("api", flaky, is_async)()
    assert info.value is error and len(flaky.calls) == 1
    assert any("llm-governor did not retry" in note and "retry budget" in note
               for note in getattr(info.value, "__notes__", []))
    _, _, leases = gov.backend.budget_status()
    assert leases == 0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_decorated_function_out_of_retries_raises_its_last_error(
        governor_factory: GovFactory, is_async: bool) -> None:
    """max_retries + 1 attempts, each retry paced, then the last attempt's own error
    (the first attempt runs outside tenacity, the retries inside it)."""
    gov = governor_factory({"max_retries": 2, "services": {"api": FAST}})
    last = ConnectionResetError("third")
    flaky = Flaky(ConnectionResetError("first"), TimeoutError("second"), last,
                  ConnectionResetError("never raised"))
    with pytest.raises(ConnectionResetError) as info:
        decorated("api", flaky, is_async)()
    assert info.value is last and len(flaky.calls) == 3
    assert not getattr(info.value, "__notes__", [])  # stopped, not vetoed
    counters = gov.backend.counters()
    assert counters["retries"]["api"] == 2
    assert counters["calls"]["api"]["unknown"]["error"] == 1


def test_graceful_api_call_retries_before_it_falls_back(governor_factory: GovFactory) -> None:
    governor_factory({"max_retries": 1, "services": {"api": FAST}})
    flaky = Flaky(ConnectionResetError("reset"))
    assert llm_governor.graceful_api_call(flaky.step, lambda: "fallback", "api") == "ok"
    assert len(flaky.calls) == 2
    flaky = Flaky(ConnectionResetError("reset"), ConnectionResetError("again"))
    assert llm_governor.graceful_api_call(flaky.step, lambda: "fallback", "api") == "fallback"
    assert len(flaky.calls) == 2
