"""OpenTelemetry metrics and spans, by the names of the public contract.

Instruments come from the ``meter_provider`` / ``tracer_provider`` passed to
``instrument()`` or the global ones. With only ``opentelemetry-api``
installed they are no-ops and cost next to nothing. Attributes stay bounded:
service, model, priority, decision, status, error type, window; never prompt
text, never job ids (those are in the JSON export), never keys or headers.

The gauges are observable: their callbacks read the backend when a reader
collects, so they show every process's shared state, not a local cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._version import __version__ as _VERSION
from ..accounts import scopes, service_of
from ..policies import admission, breaker

if TYPE_CHECKING:
    from ..governor import Governor, Ticket
    from ..pricing import Usage

__all__ = ["Telemetry"]

logger = logging.getLogger("llm_governor")
_SCOPE = "llm_governor"
# GenAI semconv provider names of our services.
PROVIDER_NAMES = {"openai": "openai", "azure_openai": "azure.ai.openai", "anthropic": "anthropic",
                  "gemini": "gcp.gemini", "deepgram": "deepgram"}
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                     40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


def _where(key: str) -> dict[str, str]:
    """Gauge attributes of a limit scope: its service, and the account when it is one."""
    service = service_of(key)
    return {"service": service} if key == service else {"service": service, "account": key}


class Telemetry:
    """Emits the contract's metrics and one CLIENT span per governed call."""

    def __init__(self, governor: Governor, meter_provider: Any = None,
                 tracer_provider: Any = None) -> None:
        self._gov = governor
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(_SCOPE, _VERSION)
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(_SCOPE,
                                                                                  _VERSION)
        self.requests = meter.create_counter(
            "llm_governor.requests", description="Admission decisions by outcome")
        self.calls = meter.create_counter(
            "llm_governor.calls", description="Governed calls completed, by status")
        self.retries = meter.create_counter(
            "llm_governor.retries", description="Attempts retried by the governor, by reason")
        self.cost = meter.create_counter(
            "llm_governor.cost", unit="USD", description="Settled cost of governed calls")
        self.overruns = meter.create_counter(
            "llm_governor.budget.overrun", unit="USD",
            description="Cost charged above a call's reservation (usage above its upper bound)")
        self.queue_wait = meter.create_histogram(
            "llm_governor.queue.wait", unit="s", description="Time spent waiting for admission")
        self.op_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration", explicit_bucket_boundaries_advisory=list(
                _DURATION_BUCKETS))
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Measures number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(_TOKEN_BUCKETS))
        g = meter.create_observable_gauge
        g("llm_governor.budget.remaining", [self._budget("remaining")], unit="USD",
          description="Budget left per window after reservations")
        g("llm_governor.budget.limit", [self._budget("limit")], unit="USD",
          description="Budget per window")
        g("llm_governor.tokens.available", [self._svc("tokens_available")], unit="",
          description="Request bucket fill")
        g("llm_governor.tokens.capacity", [self._svc("tokens_capacity")], unit="",
          description="Request bucket capacity")
        g("llm_governor.limit.rate", [self._svc("rate")], unit="",
          description="Request rate in force, requests per second (adaptive)")
        g("llm_governor.circuit.state", [self._circuit], unit="",
          description="0 closed, 1 half-open, 2 open")
        g("llm_governor.queue.size", [self._queue_size], unit="",
          description="Calls waiting for admission in this process")
        g("llm_governor.queue.capacity", [self._queue_capacity], unit="",
          description="max_queue_size")
        g("llm_governor.provider.remaining", [self._provider_remaining], unit="",
          description="Remaining capacity the provider reported")
        g("llm_governor.emergency", [self._emergency], unit="",
          description="1 while emergency mode is on")
        g("llm_governor.backend.degraded", [self._degraded], unit="",
          description="1 while the shared backend is unreachable and limits are local")
        self._provider: dict[tuple[str, str], float] = {}
        # Queue wait already recorded per ticket (lease id): a retry's re-admission
        # records only its own wait, not the call's cumulative one again.
        self._waited: dict[str, float] = {}

    # ------------------------------------------------------------ per call
    def start_call(self, t: Ticket) -> None:
        op = t.spec.operation
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER_NAMES.get(t.service, t.service),
            "llm_governor.service": t.service,
            "llm_governor.priority": t.priority.name.lower(),
            "llm_governor.reserved_usd": float(t.reserved),
        }
        if t.spec.model:
            attrs["gen_ai.request.model"] = t.spec.model
        if t.spec.max_output_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = t.spec.max_output_tokens
        if t.job:
            attrs["llm_governor.job"] = t.job
        name = f"{op} {t.spec.model}" if t.spec.model else op
        t.span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)

    def decision(self, t: Ticket, outcome: str, retry_after: float) -> None:
        prio = t.priority.name.lower()
        self.requests.add(1, {"service": t.service, "model": t.model, "priority": prio,
                              "decision": outcome})
        if outcome == "queued":  # a wait began; the admission or refusal ending it is the event
            return
        # t.queue_wait is cumulative over the call's admissions (first one and retries).
        waited = t.queue_wait - self._waited.get(t.lease_id, 0.0)
        if outcome == "admitted":
            self._waited[t.lease_id] = t.queue_wait
            self.queue_wait.record(waited, {"service": t.service, "priority": prio})
        span = t.span
        if span is not None and (outcome != "admitted" or waited > 0):
            span.add_event("llm_governor.throttle", {
                "llm_governor.decision": outcome, "llm_governor.retry_after_s": retry_after,
                "llm_governor.queue_wait_s": waited})
        if outcome == "circuit_open":
            logger.warning("RATE_LIMIT Circuit breaker open for %s: call refused", t.service)

    def retry(self, t: Ticket, reason: str, wait: float | None) -> None:
        self.retries.add(1, {"service": t.service, "reason": reason})
        if t.span is not None:
            t.span.add_event("llm_governor.retry", {
                "llm_governor.attempt": t.attempts, "llm_governor.reason": reason,
                "llm_governor.wait_s": wait if wait is not None else -1.0})
        logger.info("RATE_LIMIT retrying %s call after %s (attempt %d)", t.service, reason,
                    t.attempts)

    def overrun(self, t: Ticket, amount: Decimal) -> None:
        self.overruns.add(float(amount), {"service": t.service, "model": t.model})

    def provider_remaining(self, service: str, resource: str, value: float) -> None:
        self._provider[(service, resource)] = value

    def end_call(self, t: Ticket, status: str, error_type: str | None, usage: Usage | None,
                 cost: Decimal) -> None:
        duration = time.monotonic() - t.started
        self._waited.pop(t.lease_id, None)
        # Only calls that were admitted and ran count in llm_governor.calls (settle()
        # marks the ticket first); a refusal at admission is already counted by its
        # decision in llm_governor.requests and must not look like a provider failure.
        if t.settled:
            call_attrs: dict[str, Any] = {"service": t.service, "model": t.model,
                                          "status": status}
            if error_type:
                call_attrs["error.type"] = error_type
            self.calls.add(1, call_attrs)
        if cost:
            self.cost.add(float(cost), {"service": t.service, "model": t.model})
        genai: dict[str, Any] = {"gen_ai.operation.name": t.spec.operation,
                                 "gen_ai.provider.name": PROVIDER_NAMES.get(t.service, t.service)}
        if t.spec.model:
            genai["gen_ai.request.model"] = t.spec.model
        if error_type:
            genai["error.type"] = error_type
        self.op_duration.record(duration, genai)
        if usage is not None:
            if usage.input_tokens:
                self.token_usage.record(usage.input_tokens, {**genai, "gen_ai.token.type": "input"})
            if usage.output_tokens:
                self.token_usage.record(usage.output_tokens,
                                        {**genai, "gen_ai.token.type": "output"})
        span = t.span
        if span is None:
            return
        t.span = None
        attrs: dict[str, Any] = {
            "llm_governor.queue_wait_s": t.queue_wait, "llm_governor.cost_usd": float(cost),
            "llm_governor.attempts": t.attempts, "llm_governor.emergency": t.emergency,
        }
        if usage is not None:
            attrs["gen_ai.usage.input_tokens"] = usage.input_tokens
            attrs["gen_ai.usage.output_tokens"] = usage.output_tokens
        if error_type:
            attrs["error.type"] = error_type
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.set_attributes(attrs)
        span.end()

    # ----------------------------------------------------------- gauges
    def _services(self) -> list[str]:
        """Every limit scope: a service's accounts, or the service itself."""
        return scopes(set(self._gov.config.services) | set(self._gov.backend.services()))

    def _snapshots(self) -> dict[str, dict[str, Any]]:
        """Every service's state from the backend (so every process's), read now.

        In emergency mode the emergency limits are the ones in force, so bucket
        capacity and rate come from them.
        """
        gov = self._gov
        now = gov.backend.now()
        emergency = gov.emergency()
        snaps = {}
        for svc in self._services():
            _, limits, emergency_limits = gov._resolve(svc, None)
            snaps[svc] = admission.snapshot(gov.backend.service_state(svc),
                                            emergency_limits if emergency else limits, now)
        return snaps

    def _svc(self, key: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            try:
                snaps = self._snapshots()
            except Exception:
                logger.debug("gauge %s failed", key, exc_info=True)
                return []
            return [Observation(float(snap[key]), _where(svc))
                    for svc, snap in snaps.items()]
        return callback

    def _circuit(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            snaps = self._snapshots()
        except Exception:
            logger.debug("circuit gauge failed", exc_info=True)
            return []
        return [Observation(breaker.state_code(str(snap["circuit_state"])), _where(svc))
                for svc, snap in snaps.items()]

    def _budget(self, key: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            try:
                report = self._gov.budget_report()
            except Exception:
                logger.debug("budget gauge failed", exc_info=True)
                return []
            return [Observation(float(row[key]), {"window": window})
                    for window, row in report.items()]
        return callback

    def _queue_size(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(len(q) if (q := self._gov._queues.get(svc)) else 0,
                                _where(svc)) for svc in self._services()]
        except Exception:
            logger.debug("queue gauge failed", exc_info=True)
            return []

    def _queue_capacity(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(self._gov.service_config(svc).max_queue_size, _where(svc))
                    for svc in self._services()]
        except Exception:
            logger.debug("queue capacity gauge failed", exc_info=True)
            return []

    def _provider_remaining(self, options: CallbackOptions) -> Iterable[Observation]:
        for (svc, resource), value in list(self._provider.items()):
            yield Observation(value, {"service": svc, "resource": resource})

    def _emergency(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(1 if self._gov.emergency() else 0)]
        except Exception:
            logger.debug("emergency gauge failed", exc_info=True)
            return []

    def _degraded(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1 if getattr(self._gov.backend, "degraded", False) else 0,
                          {"backend": self._gov.backend.name})

    def close(self) -> None:
        """Nothing to flush: providers belong to the application."""
