"""The in-process monitor: each alert type firing and not firing through
``RateLimitMonitor.evaluate()``, the ready-made log handler's ``RATE_LIMIT``
lines with the seed's phrases, the documented health formula, and the
background thread started and stopped through the public API.

Most tests run on a memory backend driven by a :class:`FakeClock`, so time
(bucket refill, windows, cost rates) moves only when the test says so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import llm_governor
from llm_governor import Priority, RateLimitAlert
from llm_governor.admission_queue import Waiter
from llm_governor.backends import MemoryBackend
from llm_governor.exporters.monitor import RateLimitMonitor, health, log_alert_handler
from llm_governor.governor import Governor
from tests.conftest import FakeClock

GovFactory = Callable[..., Governor]
BUILT_INS = ("anthropic", "deepgram", "gemini", "openai")


def make(governor_factory: GovFactory, clock: FakeClock, svc: dict[str, Any] | None = None,
         **config: Any) -> Governor:
    """A governor on a memory backend that runs on ``clock``."""
    cfg = {"backend": "memory", **config,
           "services": {"svc": {"max_tokens": 10, "burst_capacity": 0, "refill_rate": 1.0,
                                "max_cost_per_minute": "100", "failure_threshold": 3,
                                "recovery_timeout": 600, "request_timeout": 1,
                                **(svc or {})}}}
    windows = llm_governor.load_config(cfg).budget.windows()
    return governor_factory(cfg, backend=MemoryBackend(windows, clock))


def calls(n: int, *, fail: bool = False, cost: str = "0.01",
          priority: Priority = Priority.CRITICAL) -> None:
    """``n`` governed calls to "svc" (CRITICAL: no bucket headroom left for others)."""
    @llm_governor.rate_limited("svc", priority, Decimal(cost))
    def call() -> None:
        if fail:
            raise ConnectionError("provider down")

    for _ in range(n):
        with contextlib.suppress(ConnectionError):
            call()


def evaluate(gov: Governor, monitor: RateLimitMonitor | None = None) -> dict[str, RateLimitAlert]:
    monitor = monitor or RateLimitMonitor(gov, lambda a: None, publish=False)
    return {a.alert_type: a for a in monitor.evaluate()}


# ------------------------------------------------------------------ alert types
def test_a_healthy_governor_raises_nothing(governor_factory: GovFactory,
                                           clock: FakeClock) -> None:
    gov = make(governor_factory, clock, budget={"per_day": "10"})
    calls(3)
    assert evaluate(gov) == {}


def test_circuit_breaker_open(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock)
    calls(2, fail=True)
    assert "circuit_breaker_open" not in evaluate(gov)  # 2 of 3 failures: still closed
    calls(1, fail=True)
    alert = evaluate(gov)["circuit_breaker_open"]
    assert (alert.service, alert.severity, alert.value) == ("svc", "critical", 2.0)
    assert "Circuit breaker open for svc after 3 consecutive failures" in alert.message
    assert alert.timestamp == clock.now  # the backend's clock


def test_high_failure_rate(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock, {"failure_threshold": 100})
    calls(4)
    calls(1, fail=True)  # 20%: at the threshold, not above
    assert "high_failure_rate" not in evaluate(gov)
    calls(1, fail=True)  # 2 of 6
    alert = evaluate(gov)["high_failure_rate"]
    assert alert.value == pytest.approx(2 / 6) and alert.threshold == 0.2
    assert alert.severity == "warning" and "33%" in alert.message


def test_high_failure_rate_needs_enough_calls(governor_factory: GovFactory,
                                              clock: FakeClock) -> None:
    gov = make(governor_factory, clock, {"failure_threshold": 100})
    calls(2, fail=True)  # 100% of only 2 attempts: below min_calls_for_failure_rate=5
    assert "high_failure_rate" not in evaluate(gov)


def test_queue_backup(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock, {"max_queue_size": 5})
    q = gov.queue("svc")
    waiters = [Waiter(int(Priority.NORMAL)) for _ in range(4)]
    for w in waiters[:3]:
        assert q.enter(w)
    assert "queue_backup" not in evaluate(gov)  # 60%
    assert q.enter(waiters[3])
    alert = evaluate(gov)["queue_backup"]  # 80%
    assert alert.value == pytest.approx(0.8) and alert.threshold == 0.8
    assert "Queue backup for svc" in alert.message
    for w in waiters:
        q.leave(w)


def test_queue_backup_of_another_process(governor_factory: GovFactory,
                                         clock: FakeClock) -> None:
    """Queues live in each process: the monitor reads what the others published."""
    gov = make(governor_factory, clock, {"max_queue_size": 10})
    gov.backend.publish_process("other-host:123:abc", {"pid": 123, "queues": {"svc": 9},
                                                       "in_flight": {}}, ttl=10)
    alert = evaluate(gov)["queue_backup"]
    assert alert.value == pytest.approx(0.9)
    report = health(gov)["services"]["svc"]
    assert (report["queue_size"], report["queue_size_local"]) == (9, 0)
    clock.advance(11)  # the other process stopped publishing: it is gone
    assert "queue_backup" not in evaluate(gov)


def test_cost_spike(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock)
    monitor = RateLimitMonitor(gov, lambda a: None, publish=False)
    assert evaluate(gov, monitor) == {}
    calls(1, cost="0.10")  # baseline: $0.10 over a minute
    clock.advance(60)
    assert "cost_spike" not in evaluate(gov, monitor)
    calls(5, cost="0.10")  # $0.50 the next minute: 5x the baseline
    clock.advance(60)
    alert = evaluate(gov, monitor)["cost_spike"]
    assert alert.value == pytest.approx(0.5)
    assert alert.threshold == pytest.approx(3 * 0.10)  # 3x the baseline
    assert alert.message.startswith("Cost spike: spending $0.5000/min")


def test_steady_spend_is_no_cost_spike(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock)
    monitor = RateLimitMonitor(gov, lambda a: None, publish=False)
    for _ in range(4):
        calls(2, cost="0.10")
        clock.advance(60)
        assert "cost_spike" not in evaluate(gov, monitor)


def test_low_tokens(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock)
    calls(8)  # 2 of 10 left
    assert "low_tokens" not in evaluate(gov)
    calls(2)  # empty bucket
    alert = evaluate(gov)["low_tokens"]
    assert alert.value == pytest.approx(0.0) and alert.severity == "info"
    assert "Low tokens for svc" in alert.message


def test_low_tokens_needs_recent_calls(governor_factory: GovFactory, clock: FakeClock) -> None:
    """An idle service with an empty bucket (e.g. just emptied by another process long
    ago) does not alert: only services in use do."""
    gov = make(governor_factory, clock)
    calls(10)
    clock.advance(180)  # refilled, and the recent-outcome window has passed
    assert "low_tokens" not in evaluate(gov)


def test_budget_nearly_exhausted(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock, budget={"per_day": "1.00"})
    calls(1, cost="0.85")
    assert "budget_nearly_exhausted" not in evaluate(gov)  # 15% left
    calls(1, cost="0.10")
    alert = evaluate(gov)["budget_nearly_exhausted"]
    assert alert.value == pytest.approx(0.05) and alert.severity == "warning"
    assert "$0.05 of $1.00 left this day" in alert.message


def test_exhausted_budget_is_critical(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock, budget={"per_hour": "0.10"})
    calls(1, cost="0.10")
    alert = evaluate(gov)["budget_nearly_exhausted"]
    assert alert.severity == "critical" and alert.value == 0.0
    assert health(gov)["overall_status"] == "critical"


def test_budget_threshold_alerts_once_per_crossing_from_any_process(
        governor_factory: GovFactory, tmp_path: Any) -> None:
    config = {"backend": f"sqlite:///{tmp_path}/state.db", "budget": {"per_day": "1.00"},
              "scopes": {"tenant": {"per_month": "0.20"}},
              "alerts": {"budget_thresholds": [0.5, 0.9]},
              "services": {"svc": {"max_tokens": 100, "refill_rate": 100.0,
                                   "max_cost_per_minute": "100"}}}
    watcher = governor_factory(config)
    seen: list[RateLimitAlert] = []
    monitor = RateLimitMonitor(watcher, seen.append, publish=False)
    monitor.evaluate()  # takes note of the crossings so far (none)
    other = llm_governor.Governor(llm_governor.load_config(config))  # another process's
    try:
        @llm_governor.rate_limited("svc", Priority.NORMAL, Decimal("0.06"))
        def call() -> None:
            return None

        llm_governor.api.set_governor(other)
        with llm_governor.scope(tenant="acme"):
            call()
            call()  # 0.12 of the tenant's 0.20: 50% crossed
        monitor.evaluate()
        with llm_governor.scope(tenant="acme"):
            call()  # 0.18: 90% crossed
        monitor.evaluate()
        monitor.evaluate()  # nothing new: nothing raised
    finally:
        llm_governor.api.set_governor(watcher)
        other.close()
    assert [(a.alert_type, a.service, a.value, a.severity) for a in seen
            if a.alert_type == "budget_threshold"] == [
        ("budget_threshold", "tenant=acme", 0.5, "warning"),
        ("budget_threshold", "tenant=acme", 0.9, "warning")]
    thresholds = [a for a in seen if a.alert_type == "budget_threshold"]
    assert thresholds[1].message == "90% of the month budget of tenant=acme is spent"


def test_alerts_repeat_at_most_once_a_minute(governor_factory: GovFactory,
                                             clock: FakeClock) -> None:
    gov = make(governor_factory, clock)
    seen: list[RateLimitAlert] = []
    monitor = RateLimitMonitor(gov, seen.append, publish=False)
    calls(3, fail=True)
    monitor.evaluate()
    monitor.evaluate()
    clock.advance(30)
    monitor.evaluate()
    assert [a.alert_type for a in seen].count("circuit_breaker_open") == 1
    clock.advance(31)
    monitor.evaluate()
    assert [a.alert_type for a in seen].count("circuit_breaker_open") == 2


def test_thresholds_are_configurable(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock, {"failure_threshold": 100},
               monitor={"failure_rate_threshold": 0.5, "min_calls_for_failure_rate": 2})
    calls(2)
    calls(1, fail=True)
    assert "high_failure_rate" not in evaluate(gov)  # 33% < 50%
    calls(2, fail=True)
    assert "high_failure_rate" in evaluate(gov)  # 60%


def test_a_failing_callback_does_not_stop_the_monitor(governor_factory: GovFactory,
                                                      clock: FakeClock,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    gov = make(governor_factory, clock)

    def explode(alert: RateLimitAlert) -> None:
        raise RuntimeError("callback bug")

    calls(3, fail=True)
    with caplog.at_level(logging.ERROR, "llm_governor"):
        assert [a.alert_type for a in RateLimitMonitor(gov, explode, publish=False)
                .evaluate()] == ["circuit_breaker_open"]
    assert "alert callback failed" in caplog.text


# ------------------------------------------------------------------ log handler
def test_log_alert_handler_lines_match_the_seed_recipes(
        governor_factory: GovFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    gov = make(governor_factory, clock)
    monitor = RateLimitMonitor(gov, log_alert_handler, publish=False)
    with caplog.at_level(logging.INFO, "llm_governor"):
        monitor.evaluate()
        calls(1, cost="0.10")
        clock.advance(60)
        monitor.evaluate()
        calls(5, cost="0.20")  # $1.00 in the next minute
        calls(3, fail=True)  # and the breaker opens
        clock.advance(60)
        monitor.evaluate()
    lines = [r for r in caplog.records if r.name == "llm_governor" and "ALERT" in r.getMessage()]
    messages = [r.getMessage() for r in lines]
    assert all(m.startswith("RATE_LIMIT ALERT") for m in messages)
    assert any("Circuit breaker" in m and "circuit_breaker_open" in m for m in messages)
    assert any("Cost spike" in m and "cost_spike" in m for m in messages)
    breaker = next(r for r in lines if "circuit_breaker_open" in r.getMessage())
    assert breaker.levelno == logging.CRITICAL


def test_log_alert_handler_cost_spike_phrase(caplog: pytest.LogCaptureFixture) -> None:
    alert = RateLimitAlert("cost_spike", "all", "warning",
                           "Cost spike: spending $1.0000/min vs $0.1000/min before", 1.0, 0.3)
    with caplog.at_level(logging.INFO, "llm_governor"):
        log_alert_handler(alert)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "RATE_LIMIT" in text and "Cost spike" in text and "cost_spike" in text
    assert "service=all" in text and "threshold=0.3" in text


# ------------------------------------------------------------------ health formula
def test_health_of_an_idle_governor(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock)
    h = health(gov)
    assert h["overall_status"] == "healthy" and h["health_score"] == 100.0
    assert set(h["services"]) == {*BUILT_INS, "svc"}
    assert h["emergency_mode"] is False and h["backend_degraded"] is False
    assert h["budgets"] == {}


def test_health_formula_values(governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock, {"failure_threshold": 100, "max_queue_size": 4})
    calls(6)
    calls(2, fail=True)  # 8 of 10 tokens used, success 6/8
    q = gov.queue("svc")
    w = Waiter(int(Priority.NORMAL))
    q.enter(w)  # queue 1 of 4
    s = health(gov)["services"]["svc"]
    expected = 100 - 30 * (1 - 6 / 8) - 10 * (1 / 4) - 10 * (1 - 2 / 10)
    assert s["health_score"] == pytest.approx(round(expected, 1))  # 80.0
    assert (s["success_rate"], s["recent_calls"], s["queue_fill"]) == (0.75, 8, 0.25)
    h = health(gov)
    scores = [100.0] * 4 + [s["health_score"]]
    assert h["health_score"] == pytest.approx(round((min(scores) + sum(scores) / 5) / 2, 1))
    assert h["overall_status"] == "healthy"  # 88.0
    q.leave(w)


def test_open_circuit_is_at_least_degraded(governor_factory: GovFactory,
                                           clock: FakeClock) -> None:
    gov = make(governor_factory, clock)
    calls(3, fail=True)
    h = health(gov)
    s = h["services"]["svc"]
    expected = 100 - 50 - 30 * 1.0 - 10 * (1 - 7 / 10)
    assert s["health_score"] == pytest.approx(expected)  # 17.0
    assert h["health_score"] == pytest.approx((17 + (400 + 17) / 5) / 2)  # 50.2
    assert h["overall_status"] == "degraded"
    clock.advance(600)  # recovery timeout: half-open
    s = health(gov)["services"]["svc"]
    assert s["circuit_state"] == "half_open"
    assert s["health_score"] == pytest.approx(75.0)  # 100 - 25; old outcomes aged out


def test_budget_fill_lowers_the_overall_score(governor_factory: GovFactory,
                                              clock: FakeClock) -> None:
    gov = make(governor_factory, clock, {"max_tokens": 1000, "refill_rate": 100.0},
               budget={"per_day": "1.00"})
    calls(1, cost="0.80")  # 20% left: 40 * (0.5 - 0.2) = 12 points off
    h = health(gov)
    assert h["health_score"] == pytest.approx(100 - 12, abs=0.1)
    assert h["budgets"]["day"]["remaining"] == "0.20"
    assert h["overall_status"] == "healthy"


def test_emergency_mode_is_degraded_and_uses_emergency_limits(
        governor_factory: GovFactory, clock: FakeClock) -> None:
    gov = make(governor_factory, clock)
    gov.set_emergency(True)
    h = health(gov)
    assert h["emergency_mode"] is True and h["overall_status"] == "degraded"
    assert h["services"]["svc"]["tokens_capacity"] == 1.0


def test_public_health_function(governor_factory: GovFactory, clock: FakeClock) -> None:
    make(governor_factory, clock)
    h = llm_governor.get_rate_limit_health()
    assert set(h) >= {"overall_status", "health_score", "services"}
    assert 0 <= h["health_score"] <= 100


# ------------------------------------------------------------------ threads
def test_start_and_stop_monitoring(governor_factory: GovFactory) -> None:
    governor_factory({"backend": "memory", "services": {"svc": {
        "failure_threshold": 2, "recovery_timeout": 600}}})
    got: list[RateLimitAlert] = []
    fired = threading.Event()

    def callback(alert: RateLimitAlert) -> None:
        got.append(alert)
        fired.set()

    before = {t.name for t in threading.enumerate()}
    monitor = llm_governor.start_rate_limit_monitoring(callback, interval=0.05)
    assert "llm-governor-monitor" in {t.name for t in threading.enumerate()} - before
    calls(2, fail=True)
    assert fired.wait(5), "no alert from the monitor thread"
    assert got[0].alert_type == "circuit_breaker_open"
    # a second start replaces the first monitor rather than adding a thread
    again = llm_governor.start_rate_limit_monitoring(callback, interval=0.05)
    assert again is not monitor
    assert sum(t.name == "llm-governor-monitor" for t in threading.enumerate()) == 1
    llm_governor.stop_rate_limit_monitoring()
    deadline = time.monotonic() + 5
    while any(t.name == "llm-governor-monitor" for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    llm_governor.stop_rate_limit_monitoring()  # idempotent


def test_monitor_thread_keeps_the_process_listed(governor_factory: GovFactory) -> None:
    gov = governor_factory({"backend": "memory"})
    llm_governor.start_rate_limit_monitoring(lambda a: None, interval=0.05)
    deadline = time.monotonic() + 5
    while gov.process_id not in gov.backend.processes():
        assert time.monotonic() < deadline, "the monitor did not publish this process"
        time.sleep(0.02)
    llm_governor.stop_rate_limit_monitoring()


def test_monitor_interval_must_be_positive(governor_factory: GovFactory) -> None:
    gov = governor_factory({"backend": "memory"})
    with pytest.raises(ValueError, match="interval"):
        RateLimitMonitor(gov, None, 0)


# --------------------------------------------------------------------- from a snapshot
def test_health_and_alerts_are_functions_of_a_fabricated_snapshot() -> None:
    """No governor, no backend: a snapshot made by hand gives the documented health and
    the alerts its state calls for (an open circuit, a spent budget, another process's
    full queue, a degraded backend)."""
    from llm_governor.backends.base import Snapshot
    from llm_governor.governor import GovernorSnapshot, limits_of
    from llm_governor.policies import budget
    from llm_governor.policies.admission import ServiceState
    from llm_governor.policies.breaker import BreakerState

    config = llm_governor.load_config({
        "backend": "memory", "budget": {"per_day": "10"},
        "services": {"svc": {"max_tokens": 10, "refill_rate": 1.0, "max_queue_size": 4}}})
    now = 1_700_000_000.0
    minute = budget.window_start("minute", now)
    cfg = config.service("svc")
    state = Snapshot(
        now, states={"svc": ServiceState(breaker=BreakerState("open", 5, 0, now - 1),
                                         minute=minute, ok=1, failed=9)},
        names=("svc",), spends={"day": budget.WindowSpend(budget.window_start("day", now),
                                                           Decimal("9.5"))},
        reserved=Decimal("0.5"), leases=1, in_flight={"svc": 1},
        processes={"other:1": {"queues": {"svc": 4}}}, degraded=True)
    view = GovernorSnapshot(state, config, "me:1", config.budget.windows(), None,
                            {"svc": (cfg, limits_of(cfg))}, {"svc": 1})

    h = health(view)
    svc = h["services"]["svc"]
    assert (svc["circuit_state"], svc["success_rate"], svc["queue_size"]) == ("open", 0.1, 5)
    assert svc["queue_fill"] == 1.0 and svc["in_flight"] == 1
    # 100 - 50 (open) - 30·0.9 (failures) - 10 (a full queue) - 10·(1 - 10/10): 13
    assert svc["health_score"] == 13.0
    assert h["overall_status"] == "critical"  # spent and reserved: nothing left today
    assert h["budgets"]["day"]["remaining"] == "0.0"
    assert h["backend_degraded"] is True

    idle = Governor(config, publish=False)  # its own state is pristine: alerts come from view
    try:
        raised = RateLimitMonitor(idle, lambda a: None, publish=False).evaluate(view=view)
        assert {a.alert_type for a in raised} == {
            "circuit_breaker_open", "high_failure_rate", "queue_backup",
            "budget_nearly_exhausted", "backend_degraded"}
        assert RateLimitMonitor(idle, lambda a: None, publish=False).evaluate() == []
    finally:
        idle.close()
