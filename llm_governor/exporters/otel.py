"""OpenTelemetry metrics and spans: the contract's ``llm_governor.*`` names and the
GenAI semantic conventions v1.41.1 (``schema_url`` 1.41.0, the schema file of that
release line).

Instruments come from the ``meter_provider`` / ``tracer_provider`` passed to
``instrument()`` or the global ones. With only ``opentelemetry-api``
installed they are no-ops and cost next to nothing. Metric attributes stay
bounded: service, model, priority, decision, status, error type, window, and
a scope value (``scope_<kind>``) only for kinds configured with
``metric_label = true``; never prompt text, never job ids (those are in the
JSON export and on spans), never keys or headers.

Spans of one governed SDK call (see docs/operations.md, "Spans")::

    llm_governor {service}        INTERNAL  admission → settlement: queue wait,
    │                                       throttling and refusal events, retries,
    │                                       llm_governor.* attributes
    └── {operation} {model}       CLIENT    first send → last byte: the GenAI span,
                                            the SDK's attempts inside it

A call refused at admission has only the INTERNAL span (an error there, never
a GenAI error); ``@rate_limited`` functions have only the INTERNAL span and
``llm_governor.*`` metrics. ``gen_ai.client.operation.duration`` is the
provider's work: the CLIENT span's time less what the governor held the call
between attempts (retry pacing, re-admission).
``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` switches to the
names of the unreleased conventions where they differ (:data:`LATEST`).

The gauges are observable: their callbacks read the backend when a reader
collects, so they show every process's shared state, not a local cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._version import __version__ as _VERSION
from ..accounts import scopes, service_of
from ..errors import GovernorError
from ..events import (
    Call,
    Decided,
    Observer,
    Overrun,
    ProviderLimitsSeen,
    Retried,
    Sent,
    Settled,
    Started,
    ThresholdCrossed,
)
from ..policies import admission, breaker
from .coexist import Coverage

if TYPE_CHECKING:
    from ..governor import Governor, GovernorSnapshot
    from ..pricing import Usage

__all__ = ["LATEST", "SCHEMA_URL", "SEMCONV_VERSION", "Telemetry", "error_type"]

logger = logging.getLogger("llm_governor")
_SCOPE = "llm_governor"
SEMCONV_VERSION = "1.41.1"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
#: released name → its name in the unreleased GenAI conventions (gen_ai_latest_experimental)
LATEST = {
    "gen_ai.usage.cache_creation.input_tokens": "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.client.token.usage": ("gen_ai.client.inference.operation.input_tokens",
                                  "gen_ai.client.inference.operation.output_tokens"),
}
# GenAI semconv provider names of our services when the adapter did not say.
PROVIDER_NAMES = {"openai": "openai", "azure_openai": "azure.ai.openai", "anthropic": "anthropic",
                  "gemini": "gcp.gemini", "deepgram": "deepgram"}
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                     40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)
# Request attributes that also go on the GenAI metrics (the rest are span-only).
_METRIC_KEYS = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                "server.address", "server.port")


def _latest_experimental() -> bool:
    opted = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return "gen_ai_latest_experimental" in (part.strip() for part in opted.split(","))


def error_type(exc: BaseException) -> str:
    """A low-cardinality ``error.type`` of ``exc`` (documented in docs/operations.md).

    The HTTP status of a provider's error answer (``"429"``, ``"500"``);
    ``"timeout"`` for every kind of timeout; ``"cancelled"``; else the
    exception's class by its public path (``"openai.APIConnectionError"``,
    ``"llm_governor.BudgetExceededError"``, ``"ValueError"`` for built-ins).
    """
    if not isinstance(exc, GovernorError):
        status = getattr(exc, "status_code", None)
        if not isinstance(status, int) or isinstance(status, bool):
            status = getattr(exc, "code", None)  # google.genai errors.APIError
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
            return str(status)
    if isinstance(exc, TimeoutError) or any("Timeout" in c.__name__ for c in type(exc).__mro__
                                           if c.__module__ != "builtins"):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    public: list[str] = []
    for part in cls.__module__.split("."):
        if part.startswith("_"):
            break
        public.append(part)
    return f"{'.'.join(public[:1] if isinstance(exc, GovernorError) else public)}." \
           f"{cls.__qualname__}"


def _where(key: str) -> dict[str, str]:
    """Gauge attributes of a limit scope: its service, and the account when it is one."""
    service = service_of(key)
    return {"service": service} if key == service else {"service": service, "account": key}


def _limit_scopes(view: GovernorSnapshot) -> list[str]:
    """Every limit scope: a service's accounts, or the service itself."""
    return scopes(set(view.config.services) | set(view.state.names))


_READERS: dict[int, weakref.ref[Telemetry]] = {}
"""id of a meter → the newest Telemetry made on it, whose governor its gauges read."""


def _records(provider: Any) -> bool:
    """Whether ``provider`` (a tracer or meter provider, None: none given) records:
    not the API's proxy before the application sets one, nor a no-op one."""
    if provider is None:
        return False
    name = type(provider).__name__
    return not (name.startswith("NoOp") or name in ("ProxyTracerProvider",
                                                     "_ProxyMeterProvider"))


def _epoch_ns(monotonic: float) -> int:
    """A past ``time.monotonic()`` value as an epoch timestamp in ns (span end times)."""
    return time.time_ns() - int(max(0.0, time.monotonic() - monotonic) * 1e9)


class _CallState:
    """What telemetry keeps per call between its events."""

    __slots__ = ("client_span", "genai_metrics", "span", "waited")

    def __init__(self) -> None:
        self.span: Any = None  # the governor's own INTERNAL span
        self.client_span: Any = None  # the GenAI CLIENT span, from the first send
        self.genai_metrics = False  # the gen_ai.client.* metrics are recorded for this call
        self.waited = 0.0  # queue wait already recorded (a re-admission records its own)


class Telemetry(Observer):
    """Emits the contract's metrics, the governor's span and the GenAI client span.

    An observer of the governor's events (:mod:`llm_governor.events`): its spans
    live here, per call, and disappear with the call if it is dropped unsettled.
    The gauges read the governor's snapshot (its read model), nothing else.
    """

    def __init__(self, governor: Governor, meter_provider: Any = None,
                 tracer_provider: Any = None) -> None:
        self._gov = governor
        version = _VERSION
        self.latest = _latest_experimental()
        schema = None if self.latest else SCHEMA_URL
        tcfg = governor.config.telemetry
        self.genai_mode = tcfg.genai
        self.cost_attributes = tcfg.cost_attributes
        self.coverage = Coverage()
        # Whether spans and metrics go anywhere (see ``tracing`` and ``metering``).
        self._tracing = _records(tracer_provider)
        self._metering = _records(meter_provider)
        self._checked = 0.0  # monotonic time the global providers were last looked at
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(
            _SCOPE, version, schema_url=schema)
        self._meter_key = id(meter)
        self._cached: tuple[float, GovernorSnapshot] | None = None
        _READERS[self._meter_key] = weakref.ref(self)
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            _SCOPE, version, schema_url=schema)
        self.requests = meter.create_counter(
            "llm_governor.requests", description="Admission decisions by outcome")
        self.calls = meter.create_counter(
            "llm_governor.calls", description="Governed calls completed, by status")
        self.retries = meter.create_counter(
            "llm_governor.retries", description="Attempts retried by the governor, by reason")
        self.cost = meter.create_counter(
            "llm_governor.cost", unit="USD", description="Settled cost of governed calls")
        self.thresholds = meter.create_counter(
            "llm_governor.budget.threshold",
            description="Budget thresholds crossed ([alerts] budget_thresholds), once per "
                        "window instance, threshold and scope")
        self.overruns = meter.create_counter(
            "llm_governor.budget.overrun", unit="USD",
            description="Cost charged above a call's reservation (usage above its upper bound)")
        self.queue_wait = meter.create_histogram(
            "llm_governor.queue.wait", unit="s", description="Time spent waiting for admission")
        self.op_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration", explicit_bucket_boundaries_advisory=list(
                _DURATION_BUCKETS))
        self.ttfc = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk, measured from when the client "
                        "issues the generation request to when the first chunk is received "
                        "in the response stream.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS))
        self.tpoc = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk", unit="s",
            description="Time per output chunk, recorded for each chunk received after the "
                        "first one, measured as the time elapsed from the end of the previous "
                        "chunk to the end of the current chunk.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS))
        self.token_usage: Any = None
        self.input_tokens: Any = None
        self.output_tokens: Any = None
        if self.latest:
            names = LATEST["gen_ai.client.token.usage"]
            self.input_tokens = meter.create_histogram(
                names[0], unit="{token}",
                description="The number of input (prompt) tokens used per inference operation.",
                explicit_bucket_boundaries_advisory=list(_TOKEN_BUCKETS))
            self.output_tokens = meter.create_histogram(
                names[1], unit="{token}",
                description="The number of output (completion) tokens used per inference "
                            "operation.",
                explicit_bucket_boundaries_advisory=list(_TOKEN_BUCKETS))
        else:
            self.token_usage = meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=list(_TOKEN_BUCKETS))
        g = meter.create_observable_gauge
        g("llm_governor.budget.remaining", [self._budget("remaining", fresh=True)], unit="USD",
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
        self._start_threshold_series()
        self._calls: weakref.WeakKeyDictionary[Call, _CallState] = weakref.WeakKeyDictionary()

    def _start_threshold_series(self) -> None:
        """Every threshold series that can be known in advance starts at 0, so the first
        crossing is an increase Prometheus sees (a series born at 1 shows none)."""
        gov = self._gov
        thresholds = gov.config.alerts.budget_thresholds
        rows = [("global", window) for window in gov.budget_limits]
        for kind, cfg in gov.config.scopes.items():
            if not cfg.metric_label:
                rows += [(kind, window) for window in cfg.windows()]
        for kind, window in rows:
            for threshold in thresholds:
                self.thresholds.add(0, {"scope_kind": kind, "window": window,
                                        "threshold": float(threshold)})

    def budget_threshold(self, key: str, window: str, threshold: Decimal) -> None:
        kind, _, value = key.partition("=")
        attrs: dict[str, Any] = {"scope_kind": kind or "global", "window": window,
                                 "threshold": float(threshold)}
        cfg = self._gov.config.scopes.get(kind)
        if cfg is not None and cfg.metric_label:
            attrs["scope"] = value
        self.thresholds.add(1, attrs)

    # ------------------------------------------------------------ per call
    def _governor_attributes(self, call: Call) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "llm_governor.service": call.service,
            "llm_governor.priority": call.priority,
            "llm_governor.reserved_usd": float(call.reserved),
        }
        if call.job:
            attrs["llm_governor.job"] = call.job
        for kind, value in call.labels.items():
            attrs[f"llm_governor.scope.{kind}"] = value
        if call.observe:
            attrs["llm_governor.mode"] = "observe"
        return attrs

    @property
    def listening(self) -> bool:  # type: ignore[override]
        """Events matter only while spans or metrics go somewhere."""
        if self._tracing or self._metering:
            return True
        self._look()
        return self._tracing or self._metering

    @property
    def tracing(self) -> bool:
        """Whether spans go anywhere: a recording tracer provider was passed, or the
        application has set a global one (until then the API hands out non-recording
        spans, and building their attributes is wasted work on every call)."""
        if not self._tracing:
            self._look()
        return self._tracing

    @property
    def metering(self) -> bool:
        """Whether metrics go anywhere (as :attr:`tracing`, for the meter provider).
        Instruments made before the application sets its provider record into it from
        then on: the API's proxies delegate."""
        if not self._metering:
            self._look()
        return self._metering

    def _look(self) -> None:
        """Look at the global providers, at most once a second: an application that sets
        them after ``instrument()`` is recorded from then on, within a second."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        self._tracing = self._tracing or _records(trace.get_tracer_provider())
        self._metering = self._metering or _records(metrics.get_meter_provider())

    def on_start(self, event: Started) -> None:
        """The governor's INTERNAL span, from admission to settlement."""
        if not self.tracing:
            return
        call = event.call
        attrs = self._governor_attributes(call)
        attrs["llm_governor.operation"] = call.spec.operation
        if call.spec.model:
            attrs["llm_governor.model"] = call.spec.model
        state = self._calls[call] = _CallState()
        state.span = self._tracer.start_span(f"llm_governor {call.service}",
                                             kind=SpanKind.INTERNAL, attributes=attrs)

    def genai_for(self, call: Call) -> tuple[bool, bool]:
        """Whether this call gets ``(the GenAI span, the gen_ai.client.* metrics)``.

        In ``auto``: neither when another instrumentation covers the call; no span
        when the SDK client emits GenAI spans itself (it records no metrics).
        """
        spec = call.spec
        if spec.sdk is None or spec.genai is None or self.genai_mode == "off":
            return False, False
        if self.genai_mode == "on":
            return True, True
        if self.coverage.covered(spec.sdk, spec.operation) is not None:
            return False, False
        return not spec.sdk_spans, True

    def on_send(self, event: Sent) -> None:
        """The first attempt leaves the process: the GenAI CLIENT span starts."""
        tracing, metering = self.tracing, self.metering
        if not (tracing or metering):
            return
        call = event.call
        state = self._state(call)
        span, genai_metrics = self.genai_for(call)
        state.genai_metrics = genai_metrics and metering
        if not (span and tracing):
            return
        genai = call.spec.genai or {}
        attrs: dict[str, Any] = dict(genai)
        model = call.spec.model  # after a policy's substitution, the model asked for
        if model:
            attrs["gen_ai.request.model"] = model
        attrs.update(self._governor_attributes(call))
        op = genai.get("gen_ai.operation.name", call.spec.operation)
        parent = trace.set_span_in_context(state.span) if state.span is not None else None
        state.client_span = self._tracer.start_span(
            f"{op} {model}" if model else str(op), context=parent, kind=SpanKind.CLIENT,
            attributes=attrs)

    def on_admit(self, event: Decided) -> None:
        call, outcome = event.call, event.outcome
        metering = self.metering
        if metering:
            self.requests.add(1, {"service": call.service, "model": call.model,
                                  "priority": call.priority, "decision": outcome,
                                  **call.metric_attributes})
        if outcome == "queued":  # a wait began; the admission or refusal ending it is the event
            return
        state = self._calls.get(call)
        if state is None and not metering:
            return
        # event.queue_wait is cumulative over the call's admissions (first one and retries).
        waited = event.queue_wait - (state.waited if state is not None else 0.0)
        if outcome == "admitted":
            if state is not None:
                state.waited = event.queue_wait
            if metering:
                self.queue_wait.record(waited, {"service": call.service,
                                                "priority": call.priority})
        if state is not None and (outcome != "admitted" or waited > 0):
            attrs = {"llm_governor.decision": outcome,
                     "llm_governor.retry_after_s": event.retry_after,
                     "llm_governor.queue_wait_s": waited}
            for span in (state.span, state.client_span):
                if span is not None:
                    span.add_event("llm_governor.throttle", attrs)

    def on_retry(self, event: Retried) -> None:
        call = event.call
        if self.metering:
            self.retries.add(1, {"service": call.service, "reason": event.reason})
        attrs = {"llm_governor.attempt": event.attempt, "llm_governor.reason": event.reason,
                 "llm_governor.wait_s": event.wait if event.wait is not None else -1.0}
        state = self._calls.get(call)
        if state is not None:
            for span in (state.span, state.client_span):
                if span is not None:
                    span.add_event("llm_governor.retry", attrs)

    def on_overrun(self, event: Overrun) -> None:
        if self.metering:
            self.overruns.add(float(event.amount), {"service": event.call.service,
                                                    "model": event.call.model})

    def on_provider_limits(self, event: ProviderLimitsSeen) -> None:
        p = event.limits
        if p.remaining_requests is not None:
            self._provider[(event.service, "requests")] = p.remaining_requests
        if p.remaining_tokens is not None:
            self._provider[(event.service, "tokens")] = p.remaining_tokens

    def on_threshold(self, event: ThresholdCrossed) -> None:
        self.budget_threshold(event.key, event.window, event.threshold)

    def on_settle(self, event: Settled) -> None:
        call, error, cost = event.call, event.error, event.cost
        state = self._calls.pop(call, None)
        metering = self.metering
        if state is None and not metering:
            return
        kind = None if error is None else error_type(error)
        # Only calls that were admitted and ran count in llm_governor.calls; a refusal at
        # admission is already counted by its decision in llm_governor.requests and must
        # not look like a provider failure.
        if event.ran and metering:
            call_attrs: dict[str, Any] = {"service": call.service, "model": call.model,
                                          "status": "ok" if error is None else "error",
                                          **call.metric_attributes}
            if kind:
                call_attrs["error.type"] = kind
            self.calls.add(1, call_attrs)
        if cost and metering:
            self.cost.add(float(cost), {"service": call.service, "model": call.model,
                                        **call.metric_attributes})
        if state is None:
            return
        final: dict[str, Any] = {
            "llm_governor.queue_wait_s": event.queue_wait, "llm_governor.cost_usd": float(cost),
            "llm_governor.attempts": event.attempts, "llm_governor.emergency": event.emergency,
        }
        if event.held:
            final["llm_governor.held_s"] = event.held
        if event.would:
            final["llm_governor.would"] = event.would
        if state.genai_metrics or state.client_span is not None:
            self._end_client(event, state, kind, final)
        span = state.span
        if span is None:
            return
        state.span = None
        if kind:
            final["error.type"] = kind
            span.set_status(Status(StatusCode.ERROR, kind))
        span.set_attributes(final)
        span.end()

    def _state(self, call: Call) -> _CallState:
        state = self._calls.get(call)
        if state is None:
            state = self._calls[call] = _CallState()
        return state

    def _end_client(self, event: Settled, state: _CallState, kind: str | None,
                    final: dict[str, Any]) -> None:
        """Record the ``gen_ai.client.*`` metrics of a sent call and end its GenAI span."""
        span, state.client_span = state.client_span, None
        record, state.genai_metrics = state.genai_metrics, False
        usage, cost = event.usage, event.cost
        spec = event.call.spec
        genai = spec.genai or {}
        end = event.last_chunk if spec.stream and event.last_chunk else time.monotonic()
        attrs = {k: genai[k] for k in _METRIC_KEYS if k in genai}
        if spec.model:
            attrs["gen_ai.request.model"] = spec.model
        info = usage.response if usage is not None else None
        out: dict[str, Any] = dict(final)
        if info is not None:
            if info.model:
                attrs["gen_ai.response.model"] = out["gen_ai.response.model"] = info.model
            if info.id:
                out["gen_ai.response.id"] = info.id
            if info.finish_reasons:
                out["gen_ai.response.finish_reasons"] = list(info.finish_reasons)
        if spec.sdk == "openai" and usage is not None:
            if usage.service_tier:
                attrs["openai.response.service_tier"] = usage.service_tier
            if info is not None and info.system_fingerprint:
                attrs["openai.response.system_fingerprint"] = info.system_fingerprint
            out.update((k, v) for k, v in attrs.items() if k.startswith("openai."))
        duration = max(0.0, end - event.sent_at - event.held)
        if record:
            self.op_duration.record(duration, {**attrs, "error.type": kind} if kind else attrs)
        if usage is not None:
            self._usage(usage, attrs, out, record)
        if spec.stream and event.first_chunk:
            first = max(0.0, event.first_chunk - event.sent_at - event.held)
            out["gen_ai.response.time_to_first_chunk"] = first
            if record:
                self.ttfc.record(first, attrs)
                for gap in event.chunk_gaps:
                    self.tpoc.record(gap, attrs)
        if self.cost_attributes and (cost or usage is not None):
            out["gen_ai.usage.cost.amount"] = float(cost)
            out["gen_ai.usage.cost.currency"] = "USD"
            out["gen_ai.usage.cost.source"] = "local"
        if span is None:
            return
        if kind:
            out["error.type"] = kind
            span.set_status(Status(StatusCode.ERROR, kind))
        span.set_attributes(out)
        span.end(end_time=_epoch_ns(end))

    def _usage(self, usage: Usage, attrs: Mapping[str, Any], out: dict[str, Any],
               record: bool = True) -> None:
        out["gen_ai.usage.input_tokens"] = usage.input_tokens
        out["gen_ai.usage.output_tokens"] = usage.output_tokens
        if usage.cache_read_tokens:
            out["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
        if usage.cache_write_tokens:
            name = "gen_ai.usage.cache_creation.input_tokens"
            out[str(LATEST[name]) if self.latest else name] = usage.cache_write_tokens
        if usage.reasoning_tokens:
            out["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
        if usage.audio_seconds:
            out["llm_governor.audio_seconds"] = usage.audio_seconds
        for count, direction in ((usage.input_tokens, "input"),
                                 (usage.output_tokens, "output")):
            if not count or not record:
                continue  # embeddings and audio: no such tokens
            if self.latest:
                (self.input_tokens if direction == "input" else self.output_tokens).record(
                    count, attrs)
            else:
                self.token_usage.record(count, {**attrs, "gen_ai.token.type": direction})

    # ----------------------------------------------------------- gauges
    # A meter keeps the first callbacks registered under a name, so the gauges read
    # through the newest Telemetry made on this meter: after ``instrument(config=…)``
    # replaces the governor, they report the new one, never the closed one.
    def _reader(self) -> Telemetry:
        ref = _READERS.get(self._meter_key)
        found = ref() if ref is not None else None
        return found if found is not None else self

    def _view(self, fresh: bool) -> GovernorSnapshot:
        """The current governor's snapshot. A reader calls the gauges in the order they
        were made, so the first one (``fresh``) reads the backend and the rest of the
        collection reuse its snapshot: one read per collection, one consistent picture."""
        reader = self._reader()
        now = time.monotonic()
        cached = reader._cached
        if fresh or cached is None or now - cached[0] > 1.0:
            cached = reader._cached = (now, reader._gov.snapshot(scopes=False))
        return cached[1]

    def _observe(self, what: str, read: Callable[[GovernorSnapshot], Iterable[Observation]],
                 fresh: bool = False) -> Iterable[Observation]:
        try:
            return list(read(self._view(fresh)))
        except Exception:
            logger.debug("gauge %s failed", what, exc_info=True)
            return []

    def _svc(self, key: str) -> Any:
        def read(view: GovernorSnapshot) -> Iterable[Observation]:
            for svc in _limit_scopes(view):
                snap = admission.snapshot(view.state.state(svc), view.service_limits(svc)[1],
                                          view.now)
                yield Observation(float(snap[key]), _where(svc))

        return lambda options: self._observe(key, read)

    def _circuit(self, options: CallbackOptions) -> Iterable[Observation]:
        def read(view: GovernorSnapshot) -> Iterable[Observation]:
            for svc in _limit_scopes(view):
                snap = admission.snapshot(view.state.state(svc), view.service_limits(svc)[1],
                                          view.now)
                yield Observation(breaker.state_code(str(snap["circuit_state"])), _where(svc))

        return self._observe("circuit", read)

    def _budget(self, key: str, fresh: bool = False) -> Any:
        def read(view: GovernorSnapshot) -> Iterable[Observation]:
            for window, row in view.budget_report().items():
                yield Observation(float(row[key]), {"window": window})

        return lambda options: self._observe(f"budget {key}", read, fresh)

    def _queue_size(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe("queue size", lambda view: (
            Observation(view.queues.get(svc, 0), _where(svc)) for svc in _limit_scopes(view)))

    def _queue_capacity(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe("queue capacity", lambda view: (
            Observation(view.service_limits(svc)[0].max_queue_size, _where(svc))
            for svc in _limit_scopes(view)))

    def _provider_remaining(self, options: CallbackOptions) -> Iterable[Observation]:
        for (svc, resource), value in list(self._reader()._provider.items()):
            yield Observation(value, {"service": svc, "resource": resource})

    def _emergency(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe("emergency", lambda view: [
            Observation(1 if view.state.emergency else 0)])

    def _degraded(self, options: CallbackOptions) -> Iterable[Observation]:
        name = self._reader()._gov.backend.name
        return self._observe("degraded", lambda view: [
            Observation(1 if view.state.degraded else 0, {"backend": name})])

    def close(self) -> None:
        """Nothing to flush: providers belong to the application."""
