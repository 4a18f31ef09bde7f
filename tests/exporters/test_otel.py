"""OpenTelemetry metrics and spans by the names of the contract (design §4,
"Telemetry names"), read back through the SDK's in-memory reader and exporter:
each instrument's name, kind, unit and attributes, the governor's INTERNAL span
and the GenAI CLIENT span of a governed call with their GenAI and
``llm_governor.*`` attributes, and the retry and throttle events. First driven
by ``@rate_limited`` and the governor's own call API (SDK-like calls carry the
``sdk`` and ``genai`` an adapter gives them), then by real openai/anthropic SDK
calls through the fake provider. The GenAI conventions per SDK and operation
are in test_genai.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, Sum
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

import llm_governor
from llm_governor import Priority
from llm_governor.admission_queue import Waiter
from llm_governor.events import Decided
from llm_governor.governor import CallSpec, Governor
from llm_governor.policies.retry import AttemptFailure
from llm_governor.pricing import Usage

from ._otel import Otel

GovFactory = Callable[..., Governor]
FAST = {"max_tokens": 100, "refill_rate": 100.0, "burst_capacity": 0, "min_interval": 0.001,
        "max_cost_per_minute": "100"}

# The contract: OTel name -> (kind, unit, attribute keys). error.type is present on
# errors only, account (the provider account, a limit scope) on SDK services' gauges.
CONTRACT: dict[str, tuple[str, str, set[str]]] = {
    "llm_governor.requests": ("counter", "", {"service", "model", "priority", "decision"}),
    "llm_governor.calls": ("counter", "", {"service", "model", "status"}),
    "llm_governor.retries": ("counter", "", {"service", "reason"}),
    "llm_governor.cost": ("counter", "USD", {"service", "model"}),
    "llm_governor.budget.remaining": ("gauge", "USD", {"window"}),
    "llm_governor.budget.limit": ("gauge", "USD", {"window"}),
    "llm_governor.tokens.available": ("gauge", "", {"service"}),
    "llm_governor.tokens.capacity": ("gauge", "", {"service"}),
    "llm_governor.queue.size": ("gauge", "", {"service"}),
    "llm_governor.queue.capacity": ("gauge", "", {"service"}),
    "llm_governor.queue.wait": ("histogram", "s", {"service", "priority"}),
    "llm_governor.circuit.state": ("gauge", "", {"service"}),
    "llm_governor.limit.rate": ("gauge", "", {"service"}),
    "llm_governor.emergency": ("gauge", "", set()),
    "gen_ai.client.operation.duration": ("histogram", "s", {
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model"}),
    "gen_ai.client.token.usage": ("histogram", "{token}", {
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
        "gen_ai.token.type"}),
}


@pytest.fixture
def gov(governor_factory: GovFactory, otel: Otel) -> Governor:
    return governor_factory(
        {"environment": "development", "budget": {"per_day": "10.00", "per_hour": "5.00"},
         "services": {"svc": {**FAST, "failure_threshold": 2, "recovery_timeout": 600}}},
        meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider)


def kind_of(m: Metric) -> str:
    if isinstance(m.data, Sum):
        return "counter" if m.data.is_monotonic else "updowncounter"
    if isinstance(m.data, Gauge):
        return "gauge"
    if isinstance(m.data, Histogram):
        return "histogram"
    return type(m.data).__name__


def sdk_spec(service: str, operation: str, model: str | None = None,
             **kw: Any) -> CallSpec:
    """A CallSpec as an SDK adapter makes it: the SDK and the request's GenAI attributes."""
    genai: dict[str, Any] = {"gen_ai.operation.name": operation,
                             "gen_ai.provider.name": service}
    if kw.get("max_output_tokens") is not None:
        genai["gen_ai.request.max_tokens"] = kw["max_output_tokens"]
    return CallSpec(service, operation, model, sdk=service, genai=genai, **kw)


def spans_of(otel: Otel) -> tuple[ReadableSpan, ReadableSpan]:
    """The governor's INTERNAL span and the GenAI CLIENT span of the only call."""
    spans = otel.finished()
    (internal,) = [s for s in spans if s.kind is SpanKind.INTERNAL]
    (client,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    return internal, client


def failing(reason: str, kind: str = "failure", retry_after: float | None = 0.0) -> AttemptFailure:
    return AttemptFailure(kind, retry_after, None, reason)  # type: ignore[arg-type]


def sdk_like_call(gov: Governor, spec: CallSpec, failures: list[AttemptFailure],
                  usage: Usage | None) -> str:
    """What an SDK adapter does: admit; each attempt reported, each retry paced by the
    governor (the SDK's own loop allowing ``spec.max_retries``); settle with usage."""
    t = gov.admit(spec)
    pending = list(failures)
    retries = spec.max_retries if spec.max_retries is not None else 2
    for attempt in range(retries + 1):
        gov.attempt_started(t)
        if not pending:
            gov.attempt_succeeded(t)
            gov.settle(t, usage)
            return "response"
        gov.attempt_failed(t, pending.pop(0), answered=True)
        if attempt == retries:
            break
        refusal = gov.retry(t, 0.0)
        assert refusal is None
    exc = RuntimeError("attempt failed")
    gov.settle(t, error=exc)
    raise exc


# ------------------------------------------------------------------ metrics
def test_every_contract_instrument_has_its_kind_unit_and_attributes(
        gov: Governor, otel: Otel) -> None:
    @llm_governor.rate_limited("svc", Priority.HIGH, Decimal("0.02"), model="m1")
    def ok() -> str:
        return "ok"

    @llm_governor.rate_limited("svc", model="m1")
    def broken() -> None:
        raise ValueError("boom")

    assert ok() == "ok"
    with pytest.raises(ValueError):
        broken()
    sdk_like_call(gov, sdk_spec("openai", "chat", "gpt-4o-mini", max_output_tokens=50,
                                cost=Decimal("0.01")),
                  [failing("server_error")], Usage(input_tokens=12, output_tokens=7))

    metrics = otel.metrics()
    for name, (kind, unit, keys) in CONTRACT.items():
        assert name in metrics, f"{name} not emitted"
        m = metrics[name]
        assert kind_of(m) == kind, name
        assert (m.unit or "") == unit, (name, m.unit)
        assert m.data.data_points, name
        for p in m.data.data_points:
            got = set(p.attributes)
            extra = got - keys
            assert keys <= got, (name, got)
            assert extra <= {"error.type"}, (name, extra)

    assert otel.value("llm_governor.requests", service="svc", model="m1", priority="high",
                      decision="admitted") == 1
    assert otel.value("llm_governor.calls", service="svc", model="m1", status="ok") == 1
    errors = [p for p in otel.points("llm_governor.calls") if p.attributes["status"] == "error"]
    assert [dict(p.attributes) for p in errors] == [
        {"service": "svc", "model": "m1", "status": "error", "error.type": "ValueError"}]
    # broken() may have reached its service before raising: charged its reservation (0.01)
    assert otel.value("llm_governor.cost", service="svc", model="m1") == pytest.approx(0.03)
    assert otel.value("llm_governor.retries", service="openai", reason="server_error") == 1
    assert otel.value("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) == 1
    usage = {p.attributes["gen_ai.token.type"]: p.sum
             for p in otel.points("gen_ai.client.token.usage")}
    assert usage == {"input": 12, "output": 7}
    # @rate_limited functions are not GenAI calls: only llm_governor.* data of theirs
    duration = otel.points("gen_ai.client.operation.duration")
    assert {p.attributes["gen_ai.provider.name"] for p in duration} == {"openai"}
    assert not any("error.type" in p.attributes for p in duration)  # retried, then succeeded


def test_gauges_follow_the_governor_that_replaced_the_first(otel: Otel) -> None:
    """A meter keeps the first gauges registered under a name: after
    ``instrument(config=…)`` replaces the governor, they must read the new one."""
    def limit() -> float:
        points = otel.points("llm_governor.budget.limit")
        assert len(points) == 1, points
        return float(points[0].value)

    first = llm_governor.instrument({"backend": "memory", "budget": {"per_day": "10"}},
                                    meter_provider=otel.meter_provider)
    try:
        assert limit() == 10.0
        second = llm_governor.instrument({"backend": "memory", "budget": {"per_day": "3"}},
                                         meter_provider=otel.meter_provider)
        assert second is not first
        assert limit() == 3.0
    finally:
        llm_governor.uninstrument()


def test_gauges_read_the_shared_state(gov: Governor, otel: Otel) -> None:
    @llm_governor.rate_limited("svc", cost=Decimal("0.50"))
    def spend() -> None:
        return None

    @llm_governor.rate_limited("svc")
    def broken() -> None:
        raise ConnectionError("down")

    spend()

    def gauge(name: str, **attrs: Any) -> float:
        pts = [p for p in otel.points(name)
               if all(p.attributes.get(k) == v for k, v in attrs.items())]
        assert len(pts) == 1, (name, attrs, pts)
        return float(pts[0].value)

    assert gauge("llm_governor.budget.limit", window="day") == 10.0
    assert gauge("llm_governor.budget.remaining", window="day") == pytest.approx(9.5)
    assert gauge("llm_governor.budget.remaining", window="hour") == pytest.approx(4.5)
    assert gauge("llm_governor.tokens.capacity", service="svc") == 100.0
    assert 98.0 <= gauge("llm_governor.tokens.available", service="svc") <= 100.0
    assert gauge("llm_governor.limit.rate", service="svc") == pytest.approx(100.0)
    assert gauge("llm_governor.queue.size", service="svc") == 0
    assert gauge("llm_governor.queue.capacity", service="svc") == 200  # development preset
    assert gauge("llm_governor.circuit.state", service="svc") == 0
    assert gauge("llm_governor.emergency") == 0
    # built-in services are always reported, so dashboards show them before any call
    assert {p.attributes["service"] for p in otel.points("llm_governor.circuit.state")} >= {
        "openai", "anthropic", "gemini", "deepgram", "svc"}

    for _ in range(2):
        with pytest.raises(ConnectionError):
            broken()
    assert gauge("llm_governor.circuit.state", service="svc") == 2  # open

    gov.set_emergency(True)
    assert gauge("llm_governor.emergency") == 1
    # the emergency limits are the ones in force
    assert gauge("llm_governor.tokens.capacity", service="svc") == 1
    assert gauge("llm_governor.limit.rate", service="svc") == pytest.approx(0.1)


def test_ratio_alert_pairs_carry_identical_attributes(gov: Governor, otel: Otel) -> None:
    """The shipped ratio alerts divide these pairs one-to-one on every label."""
    @llm_governor.rate_limited("svc")
    def ok() -> None:
        return None

    ok()
    for num, den in (("llm_governor.tokens.available", "llm_governor.tokens.capacity"),
                     ("llm_governor.queue.size", "llm_governor.queue.capacity"),
                     ("llm_governor.budget.remaining", "llm_governor.budget.limit")):
        a = sorted(tuple(sorted(p.attributes.items())) for p in otel.points(num))
        b = sorted(tuple(sorted(p.attributes.items())) for p in otel.points(den))
        assert a and a == b, (num, den)


def test_each_refusal_is_a_decision_not_a_failed_call(
        governor_factory: GovFactory, otel: Otel) -> None:
    gov = governor_factory(
        {"budget": {"per_day": "1.00"}, "emergency_action": "refuse", "services": {
            "svc": {**FAST, "failure_threshold": 1, "recovery_timeout": 600},
            "slow": {"max_tokens": 1, "burst_capacity": 0, "refill_rate": 0.01,
                     "max_interval": 100, "request_timeout": 0.05},
            "full": {**FAST, "max_queue_size": 1}}},
        meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider)

    def run(service: str, cost: str = "0.01") -> None:
        llm_governor.rate_limited(service, cost=Decimal(cost))(lambda: None)()

    with pytest.raises(llm_governor.BudgetExceededError):
        run("svc", "2.00")
    run("slow")
    with pytest.raises(llm_governor.RateLimitExceededError):
        run("slow")
    blocker = Waiter(int(Priority.CRITICAL))
    assert gov.queue("full").enter(blocker)
    try:
        with pytest.raises(llm_governor.QueueFullError):
            run("full")
    finally:
        gov.queue("full").leave(blocker)
    with pytest.raises(ConnectionError):
        llm_governor.rate_limited("svc")(lambda: (_ for _ in ()).throw(ConnectionError()))()
    with pytest.raises(llm_governor.CircuitBreakerOpenError):
        run("svc")
    gov.set_emergency(True)
    with pytest.raises(llm_governor.EmergencyModeError):
        run("full")

    decisions = {(p.attributes["service"], p.attributes["decision"]): p.value
                 for p in otel.points("llm_governor.requests")}
    for key in [("svc", "budget_exceeded"), ("slow", "rate_limited"), ("full", "queue_full"),
                ("svc", "circuit_open"), ("full", "emergency")]:
        assert decisions.get(key) == 1, (key, decisions)
    # llm_governor.calls counts calls that ran: one ok ("slow"), one failed ("svc")
    calls = {(p.attributes["service"], p.attributes["status"]): p.value
             for p in otel.points("llm_governor.calls")}
    assert calls == {("slow", "ok"): 1, ("svc", "error"): 1}
    refused = [s for s in otel.finished() if s.status.status_code is StatusCode.ERROR
               and s.attributes.get("error.type") != "ConnectionError"]
    assert len(refused) == 5
    for span in refused:
        events = [e for e in span.events if e.name == "llm_governor.throttle"]
        assert len(events) == 1, span.name
        assert events[0].attributes["llm_governor.decision"] != "admitted"


def test_metric_attributes_stay_bounded(gov: Governor, otel: Otel) -> None:
    """No job ids or prompt text on metrics: those live in spans and the JSON export."""
    @llm_governor.rate_limited("svc", cost=Decimal("0.01"))
    def ok(prompt: str) -> str:
        return prompt

    for i in range(5):
        with llm_governor.job(f"job-{i}-unique"):
            ok("a secret prompt text")
    for name, m in otel.metrics().items():
        for p in m.data.data_points:
            for value in p.attributes.values():
                assert "job-" not in str(value) and "prompt" not in str(value), name
    jobs = {s.attributes.get("llm_governor.job") for s in otel.finished()}
    assert jobs == {f"job-{i}-unique" for i in range(5)}


def test_only_kinds_with_metric_label_label_metrics(governor_factory: GovFactory,
                                                    otel: Otel) -> None:
    governor_factory({"services": {"svc": FAST},
                      "scopes": {"tenant": {"per_day": "1", "metric_label": True},
                                 "user": {"per_day": "1"}}},
                     meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider)

    @llm_governor.rate_limited("svc", cost=Decimal("0.01"))
    def ok() -> None:
        return None

    for user in ("u1", "u2", "u3"):
        with llm_governor.scope(tenant="acme", user=user, region="eu"):
            ok()
    for name in ("llm_governor.requests", "llm_governor.calls", "llm_governor.cost"):
        points = otel.points(name)
        assert {p.attributes.get("scope_tenant") for p in points} == {"acme"}, name
        assert not any("scope_user" in p.attributes or "scope_region" in p.attributes
                       for p in points), name
    assert otel.value("llm_governor.calls", scope_tenant="acme", status="ok") == 3
    span = otel.finished()[0]
    assert (span.attributes["llm_governor.scope.tenant"], span.attributes[
        "llm_governor.scope.user"], span.attributes["llm_governor.scope.region"]) == (
        "acme", "u1", "eu")  # every label on the span: spans are not aggregated


def test_budget_thresholds_fire_once_per_window_threshold_and_scope(
        governor_factory: GovFactory, otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    gov = governor_factory({"services": {"svc": FAST}, "budget": {"per_day": "0.10"},
                            "scopes": {"tenant": {"per_day": "0.04"}},
                            "alerts": {"budget_thresholds": [0.5, 0.8]}},
                           meter_provider=otel.meter_provider,
                           tracer_provider=otel.tracer_provider)
    # before any spend, every series that can be known starts at 0 (Prometheus sees the 1st)
    assert {(p.attributes["scope_kind"], p.attributes["window"], p.attributes["threshold"])
            for p in otel.points("llm_governor.budget.threshold")} == {
        ("global", "day", 0.5), ("global", "day", 0.8), ("tenant", "day", 0.5),
        ("tenant", "day", 0.8)}

    @llm_governor.rate_limited("svc", cost=Decimal("0.01"))
    def ok() -> None:
        return None

    for tenant in ("a", "b"):
        with llm_governor.scope(tenant=tenant):
            for _ in range(4):
                ok()  # each tenant: 0.01 … 0.04 of 0.04 → 50% and 80% crossed once
    assert otel.value("llm_governor.budget.threshold", scope_kind="tenant", threshold=0.5) == 2
    assert otel.value("llm_governor.budget.threshold", scope_kind="tenant", threshold=0.8) == 2
    assert otel.value("llm_governor.budget.threshold", scope_kind="global", threshold=0.5) == 1
    assert otel.value("llm_governor.budget.threshold", scope_kind="global", threshold=0.8) == 1
    counted = gov.backend.counters()["alerts"]["budget_threshold"]
    assert counted == {"tenant=a": {"day": {"0.5": 1, "0.8": 1}},
                       "tenant=b": {"day": {"0.5": 1, "0.8": 1}},
                       "all": {"day": {"0.5": 1, "0.8": 1}}}
    logged = [r.getMessage() for r in caplog.records if "budget threshold" in r.getMessage()]
    assert "RATE_LIMIT budget threshold: 80% of the day budget of tenant=a is spent " \
           "($0.04 of $0.04)" in logged


# ------------------------------------------------------------------ spans
def test_span_of_a_governed_call(gov: Governor, otel: Otel) -> None:
    with llm_governor.priority(Priority.HIGH):
        sdk_like_call(gov, sdk_spec("openai", "chat", "gpt-4o-mini", max_output_tokens=64,
                                    cost=Decimal("0.003")),
                      [], Usage(input_tokens=30, output_tokens=12))
    internal, span = spans_of(otel)
    assert internal.name == "llm_governor openai"
    assert span.parent is not None and span.parent.span_id == internal.context.span_id
    assert internal.start_time <= span.start_time <= span.end_time <= internal.end_time
    assert not any(k.startswith("gen_ai.") for k in internal.attributes)
    assert internal.attributes["llm_governor.cost_usd"] == span.attributes[
        "llm_governor.cost_usd"]
    assert span.name == "chat gpt-4o-mini"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is not StatusCode.ERROR
    a = span.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.request.max_tokens"] == 64
    assert a["gen_ai.usage.input_tokens"] == 30
    assert a["gen_ai.usage.output_tokens"] == 12
    assert a["llm_governor.priority"] == "high"
    assert a["llm_governor.reserved_usd"] == pytest.approx(0.003)
    assert a["llm_governor.cost_usd"] > 0
    assert a["llm_governor.attempts"] == 1
    assert a["llm_governor.queue_wait_s"] == 0.0
    assert a["llm_governor.emergency"] is False
    assert not span.events


def test_span_without_model_is_named_by_operation(gov: Governor, otel: Otel) -> None:
    @llm_governor.rate_limited("svc")
    def transcribe_batch() -> None:
        return None

    transcribe_batch()
    (span,) = otel.finished()  # only the governor's span: a function is no GenAI call
    assert span.name == "llm_governor svc"
    assert span.kind is SpanKind.INTERNAL
    assert span.attributes["llm_governor.operation"] == "transcribe_batch"
    assert not any(k.startswith("gen_ai.") for k in span.attributes)


def test_retry_events_and_attempts(gov: Governor, otel: Otel) -> None:
    sdk_like_call(gov, sdk_spec("openai", "chat", "gpt-4o-mini", max_retries=3,
                                cost=Decimal("0.001")),
                  [failing("server_error"), failing("rate_limited", "throttled", 0.01)],
                  Usage(input_tokens=5, output_tokens=5))
    internal, span = spans_of(otel)  # the retries are inside the one GenAI span
    assert [e.name for e in internal.events] == [e.name for e in span.events]
    assert span.attributes["llm_governor.attempts"] == 3
    # the time the governor held the call between attempts is not provider latency
    held = span.attributes["llm_governor.held_s"]
    assert held >= 0.01
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration.sum == pytest.approx((span.end_time - span.start_time) / 1e9 - held,
                                         abs=0.005)
    retries = [e for e in span.events if e.name == "llm_governor.retry"]
    assert [e.attributes["llm_governor.reason"] for e in retries] == ["server_error",
                                                                       "rate_limited"]
    assert [e.attributes["llm_governor.attempt"] for e in retries] == [1, 2]
    assert retries[1].attributes["llm_governor.wait_s"] == pytest.approx(0.01)
    assert otel.value("llm_governor.retries", service="openai") == 2
    # one call, one completed call, whatever the number of attempts
    assert otel.value("llm_governor.calls", service="openai", status="ok") == 1


def test_failed_call_span_has_error_status(gov: Governor, otel: Otel) -> None:
    with pytest.raises(RuntimeError):
        sdk_like_call(gov, sdk_spec("openai", "chat", "gpt-4o", max_retries=1,
                                    cost=Decimal("0.001")),
                      [failing("server_error"), failing("server_error")], None)
    internal, span = spans_of(otel)
    assert internal.status.status_code is StatusCode.ERROR
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "RuntimeError"
    assert span.attributes["llm_governor.attempts"] == 2
    assert span.attributes["llm_governor.cost_usd"] == 0.0
    # the last failure is not followed by a retry: one retry, not two
    assert [e.name for e in span.events] == ["llm_governor.retry"]
    assert otel.value("llm_governor.retries", service="openai") == 1
    assert otel.value("llm_governor.calls", service="openai", status="error") == 1


def test_throttle_event_when_a_call_waits_for_admission(
        governor_factory: GovFactory, otel: Otel) -> None:
    governor_factory({"services": {"svc": {"max_tokens": 1, "burst_capacity": 0,
                                           "refill_rate": 20.0, "min_interval": 0.01,
                                           "max_cost_per_minute": "100"}}},
                     meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider)

    @llm_governor.rate_limited("svc", cost=Decimal("0.001"))
    def ok() -> None:
        return None

    ok()
    ok()  # the bucket holds one request: this one waits ~50 ms
    first, second = otel.finished()
    assert not [e for e in first.events if e.name == "llm_governor.throttle"]
    (event,) = [e for e in second.events if e.name == "llm_governor.throttle"]
    assert event.attributes["llm_governor.decision"] == "admitted"
    assert 0.01 < event.attributes["llm_governor.queue_wait_s"] < 1.0
    assert second.attributes["llm_governor.queue_wait_s"] == \
        event.attributes["llm_governor.queue_wait_s"]
    waits = otel.points("llm_governor.queue.wait")
    assert sum(p.count for p in waits) == 2
    assert sum(p.sum for p in waits) == pytest.approx(
        event.attributes["llm_governor.queue_wait_s"])


def test_queue_wait_is_recorded_once_per_admission(gov: Governor, otel: Otel) -> None:
    """A retry's re-admission records its own wait, not the call's total again."""
    t = gov.admit(CallSpec("svc", cost=Decimal("0.001")))
    t.queue_wait = 0.25  # as if the first admission had waited
    assert t.call is not None
    gov.telemetry.on_admit(Decided(t.call, "admitted", 0.0, t.queue_wait))
    # a re-admission that did not wait
    gov.telemetry.on_admit(Decided(t.call, "admitted", 0.0, t.queue_wait))
    gov.settle(t)
    waits = otel.points("llm_governor.queue.wait")
    assert sum(p.sum for p in waits) == pytest.approx(0.25)
    assert sum(p.count for p in waits) == 3


def test_without_sdk_providers_it_is_a_no_op(governor_factory: GovFactory) -> None:
    """Only the OTel API (global no-op providers): calls work, nothing is recorded."""
    governor_factory({"services": {"svc": FAST}})

    @llm_governor.rate_limited("svc")
    def ok() -> int:
        return 1

    assert sum(ok() for _ in range(50)) == 50


LATE_PROVIDERS = """
import time
from decimal import Decimal
import llm_governor
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

gov = llm_governor.instrument({"backend": "memory",
                               "services": {"svc": {"max_tokens": 100, "refill_rate": 100.0}}})

@llm_governor.rate_limited("svc", cost=Decimal("0.001"))
def ok() -> int:
    return 1

assert sum(ok() for _ in range(20)) == 20
assert not gov.telemetry.tracing and not gov.telemetry.metering
assert len(gov.telemetry._calls) == 0  # no span was started, no per-call state kept
spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
tracer = TracerProvider()
tracer.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracer)
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
time.sleep(1.1)  # the providers are looked at once a second
ok()
names = [s.name for s in spans.get_finished_spans()]
assert names == ["llm_governor svc"], names
data = reader.get_metrics_data()
got = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
assert {"llm_governor.requests", "llm_governor.calls", "llm_governor.cost"} <= got, got
print("recorded after the application set its providers")
"""


def test_providers_set_after_instrument_are_recorded_into(tmp_path: Path) -> None:
    """No provider: nothing is built per call. Providers the application sets later
    (as the OpenTelemetry agent or an app's start-up code may, after ``instrument()``)
    receive spans and metrics from then on."""
    script = tmp_path / "late.py"
    script.write_text(LATE_PROVIDERS)
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    for name in ("LLM_GOVERNOR_CONFIG", "OTEL_PYTHON_TRACER_PROVIDER",
                 "OTEL_PYTHON_METER_PROVIDER"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recorded after the application set its providers" in proc.stdout


# ------------------------------------------------------------------ real SDKs
ROOT = Path(__file__).resolve().parents[2]
HAVE_INSTRUMENTATION = (ROOT / "llm_governor" / "instrumentation" / "openai.py").exists()
needs_instrumentation = pytest.mark.skipif(
    not HAVE_INSTRUMENTATION, reason="llm_governor/instrumentation/openai.py not written yet")
API_KEY = "sk-test-otel-0123456789abcdef"


@pytest.fixture
def fake() -> Iterator[Any]:
    from llm_governor.testing import FakeProvider

    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def instrumented(otel: Otel) -> Iterator[Governor]:
    from llm_governor.api import set_governor

    previous = set_governor(None)
    svc = {**FAST, "failure_threshold": 50}
    gov = llm_governor.instrument(
        {"backend": "memory", "services": {"openai": svc, "anthropic": svc}},
        meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider)
    try:
        yield gov
    finally:
        llm_governor.uninstrument()
        set_governor(previous)
        gov.close()


@needs_instrumentation
def test_openai_sdk_call_emits_the_contract(instrumented: Governor, otel: Otel,
                                            fake: Any) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key=API_KEY, max_retries=2)
    fake.fail_next(1, 500)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=16,
        messages=[{"role": "user", "content": "Say hi"}])
    assert reply.usage is not None
    spans = [s for s in otel.finished() if s.name == "chat gpt-4o-mini"]
    assert len(spans) == 1, [s.name for s in otel.finished()]
    span = spans[0]
    assert span.kind is SpanKind.CLIENT
    a = span.attributes
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert a["llm_governor.attempts"] == 2
    assert a["llm_governor.cost_usd"] > 0
    assert a["llm_governor.reserved_usd"] >= a["llm_governor.cost_usd"]
    assert [e.name for e in span.events].count("llm_governor.retry") == 1
    assert otel.value("llm_governor.requests", service="openai", model="gpt-4o-mini",
                      decision="admitted") >= 1
    assert otel.value("llm_governor.calls", service="openai", status="ok") == 1
    assert otel.value("llm_governor.retries", service="openai") == 1
    assert otel.value("llm_governor.cost", service="openai", model="gpt-4o-mini") > 0
    tokens = {p.attributes["gen_ai.token.type"]: p.sum
              for p in otel.points("gen_ai.client.token.usage")
              if p.attributes["gen_ai.provider.name"] == "openai"}
    assert tokens == {"input": reply.usage.prompt_tokens,
                      "output": reply.usage.completion_tokens}
    assert fake.ledger.count_by_status("openai") == {500: 1, 200: 1}


@needs_instrumentation
def test_anthropic_sdk_call_emits_the_contract(instrumented: Governor, otel: Otel,
                                               fake: Any) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key=API_KEY)
    model = "claude-3-5-haiku-latest"
    reply = client.messages.create(model=model, max_tokens=32,
                                   messages=[{"role": "user", "content": "Say hi"}])
    spans = [s for s in otel.finished() if s.attributes.get("gen_ai.provider.name")
             == "anthropic"]
    assert len(spans) == 1
    span = spans[0]
    assert span.name == f"chat {model}"
    assert span.kind is SpanKind.CLIENT
    assert span.attributes["gen_ai.usage.input_tokens"] == reply.usage.input_tokens
    assert span.attributes["gen_ai.usage.output_tokens"] == reply.usage.output_tokens
    assert span.attributes["gen_ai.request.max_tokens"] == 32
    assert otel.value("llm_governor.calls", service="anthropic", status="ok") == 1


@needs_instrumentation
def test_sdk_rejection_is_a_throttle_event(governor_factory: GovFactory, otel: Otel,
                                           fake: Any) -> None:
    openai = pytest.importorskip("openai")
    from llm_governor.api import set_governor

    previous = set_governor(None)
    gov = llm_governor.instrument(
        {"backend": "memory", "budget": {"per_day": "0.0000001"},
         "services": {"openai": FAST}},
        meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider)
    try:
        client = openai.OpenAI(base_url=fake.openai_base_url, api_key=API_KEY)
        with pytest.raises(llm_governor.BudgetExceededError):
            client.chat.completions.create(model="gpt-4o", max_tokens=500,
                                           messages=[{"role": "user", "content": "x"}])
    finally:
        llm_governor.uninstrument()
        set_governor(previous)
        gov.close()
    # never sent: no GenAI span, no GenAI sample; the refusal is the governor's span's error
    (span,) = otel.finished()
    assert span.name == "llm_governor openai" and span.kind is SpanKind.INTERNAL
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "llm_governor.BudgetExceededError"
    (event,) = [e for e in span.events if e.name == "llm_governor.throttle"]
    assert event.attributes["llm_governor.decision"] == "budget_exceeded"
    assert otel.value("llm_governor.requests", decision="budget_exceeded") == 1
    assert otel.value("llm_governor.calls", service="openai") == 0
    assert not otel.points("gen_ai.client.operation.duration")

