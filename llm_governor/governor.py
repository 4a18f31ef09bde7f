"""The governor: the pipeline one call goes through.

``admit`` (queue → emergency → breaker → budget reservation, concurrency slot
and rate buckets in one backend step) → the caller's attempts (retried by
:meth:`run_attempts`, each re-admitted through the rate buckets) → ``settle``
(real cost charged, unused reservation released, outcome fed to breaker and
adaptive limits). Policies decide, the backend stores, telemetry reports; this
module only sequences them, for threads and asyncio alike.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    stop_after_attempt,
)

from .backends import Backend, CallRecord, create_backend
from .config import GovernorConfig, RateLimitConfig
from .context import Priority, current_cost_override, current_job, current_priority
from .errors import (
    BudgetExceededError,
    CircuitBreakerOpenError,
    EmergencyModeError,
    GovernorError,
    QueueFullError,
    RateLimitExceededError,
)
from .policies import adaptive, budget
from .policies.adaptive import ProviderLimits
from .policies.admission import AdmitRequest, Decision, Limits, Observation
from .policies.queue import AdmissionQueue, Waiter
from .policies.retry import AttemptFailure, RetryBudget, wait_provider
from .pricing import Pricer, Usage

__all__ = ["CallSpec", "Governor", "Ticket"]

logger = logging.getLogger("llm_governor")
T = TypeVar("T")
_ZERO = Decimal(0)
FAILURE_ATTR = "llm_governor_failure"
# Lease ids: unique per process run, cheap to make (uuid4 per call costs ~4 µs).
_LEASE_PREFIX = f"{uuid.uuid4().hex[:12]}-"
_lease_seq = itertools.count()


@dataclass(frozen=True, slots=True)
class CallSpec:
    """What the governor needs to know about a call before making it."""

    service: str
    operation: str = "call"
    model: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    prompt_bytes: int = 0
    audio_bytes: int = 0
    audio_seconds: float | None = None
    embedding: bool = False
    priority: Priority | None = None  # None: from context
    job: str | None = None  # None: from context
    cost: Decimal | None = None  # a stated estimate replaces the computed upper bound
    max_retries: int | None = None  # the client's own setting, when known


class Ticket:
    """One admitted call, from admission to settlement (settles exactly once)."""

    __slots__ = ("attempts", "cfg", "emergency", "failure", "job", "lease_id", "limits",
                 "llm_tokens", "model", "priority", "provider", "queue_wait", "reserved",
                 "service", "settled", "span", "spec", "started", "usage_hint")

    def __init__(self, spec: CallSpec, cfg: RateLimitConfig, limits: Limits,
                 reserved: Decimal, llm_tokens: int, priority: Priority, job: str | None) -> None:
        self.spec = spec
        self.service = spec.service
        self.model = spec.model or "unknown"
        self.cfg = cfg
        self.limits = limits
        self.reserved = reserved
        self.llm_tokens = llm_tokens
        self.priority = priority
        self.job = job
        self.lease_id = f"{_LEASE_PREFIX}{os.getpid()}-{next(_lease_seq)}"
        self.started = time.monotonic()
        self.queue_wait = 0.0
        self.attempts = 1
        self.settled = False
        self.emergency = False
        self.provider: ProviderLimits | None = None
        self.failure: AttemptFailure | None = None
        self.span: Any = None
        self.usage_hint: Usage | None = None


def limits_of(cfg: RateLimitConfig) -> Limits:
    floor, ceiling = adaptive.bounds(cfg.refill_rate, cfg.min_interval, cfg.max_interval)
    return Limits(
        capacity=float(cfg.capacity), refill_rate=cfg.refill_rate, rate_floor=floor,
        rate_ceiling=ceiling, backoff_multiplier=cfg.backoff_multiplier,
        tokens_per_minute=float(cfg.llm_tokens_per_minute),
        cost_per_minute=cfg.max_cost_per_minute,
        cost_per_minute_f=float(cfg.max_cost_per_minute), max_concurrency=cfg.max_concurrency,
        failure_threshold=cfg.failure_threshold, success_threshold=cfg.success_threshold,
        recovery_timeout=float(cfg.recovery_timeout),
    )


def _clean(part: str) -> str:
    return part.replace("|", "/")


class Governor:
    """Owns config, backend, pricing, queues and telemetry; governs calls."""

    def __init__(
        self,
        config: GovernorConfig,
        *,
        backend: Backend | None = None,
        meter_provider: Any = None,
        tracer_provider: Any = None,
    ) -> None:
        from .exporters.otel import Telemetry

        self.config = config
        self.budget_limits = config.budget.windows()
        self.backend = backend or create_backend(
            config.backend, self.budget_limits, namespace=config.namespace,
            on_error=config.on_backend_error, degraded_budget_share=config.degraded_budget_share,
        )
        self.pricer = Pricer(config.prices)
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._queues: dict[str, AdmissionQueue] = {}
        self._limits: dict[tuple[str, str | None], tuple[RateLimitConfig, Limits, Limits]] = {}
        self._retry_budgets: dict[str, RetryBudget] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last_publish = 0.0
        self.telemetry = Telemetry(self, meter_provider, tracer_provider)

    # ----------------------------------------------------------------- config
    def service_config(self, service: str, model: str | None = None) -> RateLimitConfig:
        return self._resolve(service, model)[0]

    def _resolve(self, service: str, model: str | None) -> tuple[RateLimitConfig, Limits, Limits]:
        key = (service, model)
        found = self._limits.get(key)
        if found is None:
            cfg = self.config.service(service, model)
            found = (cfg, limits_of(cfg), limits_of(self.config.emergency_service(service)))
            self._limits[key] = found
        return found

    def queue(self, service: str) -> AdmissionQueue:
        q = self._queues.get(service)
        if q is None:
            with self._lock:
                q = self._queues.setdefault(
                    service, AdmissionQueue(self.config.service(service).max_queue_size))
        return q

    def retry_budget(self, service: str) -> RetryBudget:
        rb = self._retry_budgets.get(service)
        if rb is None:
            rb = self._retry_budgets.setdefault(service, RetryBudget(
                self.config.retry.budget_ratio, self.config.retry.budget_min_per_minute))
        return rb

    # -------------------------------------------------------------- admission
    def ticket(self, spec: CallSpec) -> Ticket:
        """Estimate the call and prepare its ticket (no state touched yet)."""
        cfg, limits, _ = self._resolve(spec.service, spec.model)
        stated = spec.cost if spec.cost is not None else current_cost_override()
        cost, tokens = self.pricer.estimate(
            spec.service, spec.model, cfg, prompt_bytes=spec.prompt_bytes,
            max_output_tokens=spec.max_output_tokens, audio_bytes=spec.audio_bytes,
            audio_seconds=spec.audio_seconds, embedding=spec.embedding,
        ) if stated is None else (stated, spec.prompt_bytes + (spec.max_output_tokens or 0))
        prio = spec.priority if spec.priority is not None else current_priority()
        return Ticket(spec, cfg, limits, cost, tokens, prio, spec.job or current_job())

    def _request(self, t: Ticket, reserve: bool = True) -> AdmitRequest:
        _, limits, emergency = self._resolve(t.spec.service, t.spec.model)
        return AdmitRequest(
            t.service, int(t.priority), float(t.llm_tokens), t.reserved, limits, emergency,
            reserve=reserve, refuse_in_emergency=self.config.emergency_action == "refuse",
        )

    def _refusal(self, t: Ticket, d: Decision) -> GovernorError:
        svc = t.service
        if d.outcome == "budget_exceeded":
            return BudgetExceededError(
                f"RATE_LIMIT budget exceeded: the {d.window} budget has ${d.remaining} left, "
                f"this {svc} call needs up to ${t.reserved}",
                remaining=d.remaining, requested=t.reserved, window=d.window, service=svc,
                retry_after=d.retry_after,
            )
        if d.outcome == "circuit_open":
            return CircuitBreakerOpenError(
                f"RATE_LIMIT Circuit breaker open for {svc}: failing fast for another "
                f"{d.retry_after:.1f}s", service=svc, retry_after=d.retry_after,
            )
        if d.outcome == "emergency":
            return EmergencyModeError(
                f"RATE_LIMIT emergency mode is on and refuses {svc} calls", service=svc,
            )
        return RateLimitExceededError(
            f"RATE_LIMIT {svc} call not admitted within request_timeout="
            f"{t.cfg.request_timeout:g}s; retry after {d.retry_after:.2f}s",
            service=svc, retry_after=d.retry_after,
        )

    def _after_decision(self, t: Ticket, d: Decision, reserve: bool) -> None:
        t.emergency = d.emergency
        if reserve and d.admitted:
            with self._lock:
                self._in_flight[t.service] = self._in_flight.get(t.service, 0) + 1
        self.telemetry.decision(t, d.outcome, d.retry_after)

    def _shed(self, t: Ticket) -> QueueFullError:
        self.backend.count_decision(t.service, "queue_full")
        self.telemetry.decision(t, "queue_full", 0.0)
        return QueueFullError(
            f"RATE_LIMIT {t.service} queue is full (max_queue_size={t.cfg.max_queue_size}); "
            "shed for higher-priority calls", service=t.service,
            retry_after=1.0 / max(t.limits.refill_rate, 1e-9),
        )

    def admit(self, spec: CallSpec) -> Ticket:
        """Wait in the priority queue until the call is admitted, or raise why not."""
        t = self.ticket(spec)
        self.telemetry.start_call(t)
        try:
            self._admit(t, reserve=True)
        except BaseException as exc:
            self.telemetry.end_call(t, "error", type(exc).__name__, None, _ZERO)
            raise
        return t

    def readmit(self, t: Ticket) -> None:
        """Admit a retry attempt through the rate buckets (budget and slot are already held)."""
        self._admit(t, reserve=False)

    def _admit(self, t: Ticket, reserve: bool) -> None:
        req = self._request(t, reserve)
        lease = t.lease_id if reserve else None
        ttl = t.cfg.request_timeout
        q = self.queue(t.service)
        start = time.monotonic()
        if not len(q):  # fast path: nobody waiting
            d = self.backend.admit(req, lease, ttl)
            if d.admitted:
                self._after_decision(t, d, reserve)
                return
            if d.outcome != "rate_limited":
                self._after_decision(t, d, reserve)
                raise self._refusal(t, d)
        deadline = start + ttl
        w = Waiter(int(t.priority))
        if not q.enter(w):
            raise self._shed(t)
        try:
            while True:
                if w.shed:
                    raise self._shed(t)
                remaining = deadline - time.monotonic()
                if q.is_head(w):
                    d = self.backend.admit(req, lease, ttl)
                    if d.admitted:
                        t.queue_wait += time.monotonic() - start
                        self._after_decision(t, d, reserve)
                        return
                    if d.outcome != "rate_limited" or d.retry_after > remaining:
                        self._after_decision(t, d, reserve)
                        raise self._refusal(t, d)
                    w.wait(d.retry_after)
                else:
                    if remaining <= 0:
                        d = Decision(False, "rate_limited", 0.0)
                        self._after_decision(t, d, reserve)
                        raise self._refusal(t, d)
                    w.wait(remaining)
        finally:
            q.leave(w)

    async def aadmit(self, spec: CallSpec) -> Ticket:
        """:meth:`admit` for asyncio: waits without blocking the event loop."""
        t = self.ticket(spec)
        self.telemetry.start_call(t)
        try:
            await self._aadmit(t, reserve=True)
        except BaseException as exc:
            self.telemetry.end_call(t, "error", type(exc).__name__, None, _ZERO)
            raise
        return t

    async def areadmit(self, t: Ticket) -> None:
        await self._aadmit(t, reserve=False)

    async def _backend_admit(self, req: AdmitRequest, lease: str | None, ttl: float) -> Decision:
        if self.backend.blocking:
            return await asyncio.to_thread(self.backend.admit, req, lease, ttl)
        return self.backend.admit(req, lease, ttl)

    async def _aadmit(self, t: Ticket, reserve: bool) -> None:
        req = self._request(t, reserve)
        lease = t.lease_id if reserve else None
        ttl = t.cfg.request_timeout
        q = self.queue(t.service)
        start = time.monotonic()
        if not len(q):
            d = await self._backend_admit(req, lease, ttl)
            if d.admitted:
                self._after_decision(t, d, reserve)
                return
            if d.outcome != "rate_limited":
                self._after_decision(t, d, reserve)
                raise self._refusal(t, d)
        deadline = start + ttl
        w = Waiter(int(t.priority), loop=asyncio.get_running_loop())
        if not q.enter(w):
            raise self._shed(t)
        try:
            while True:
                if w.shed:
                    raise self._shed(t)
                remaining = deadline - time.monotonic()
                if q.is_head(w):
                    d = await self._backend_admit(req, lease, ttl)
                    if d.admitted:
                        t.queue_wait += time.monotonic() - start
                        self._after_decision(t, d, reserve)
                        return
                    if d.outcome != "rate_limited" or d.retry_after > remaining:
                        self._after_decision(t, d, reserve)
                        raise self._refusal(t, d)
                    await w.await_(d.retry_after)
                else:
                    if remaining <= 0:
                        d = Decision(False, "rate_limited", 0.0)
                        self._after_decision(t, d, reserve)
                        raise self._refusal(t, d)
                    await w.await_(remaining)
        finally:
            q.leave(w)

    # ---------------------------------------------------------------- retries
    def _should_retry(self, t: Ticket, exc: BaseException, last: bool) -> bool:
        """Observe a failed attempt and decide whether another one is worth it.

        Every classified failure is observed (breaker, adaptive rate); only a
        retry that will really happen (``last`` False) takes from the retry
        budget and is reported.
        """
        failure: AttemptFailure | None = getattr(exc, FAILURE_ATTR, None)
        if failure is None or isinstance(exc, GovernorError):
            return False
        t.failure = failure
        outcome: Literal["failure", "throttled", "neutral"] = (
            "failure" if failure.kind == "failure" else
            "throttled" if failure.kind == "throttled" else "neutral")
        provider = failure.provider
        if failure.kind == "throttled" and failure.retry_after is not None:
            provider = replace(provider or ProviderLimits(), retry_after=failure.retry_after)
        self.backend.observe(t.service, t.limits, Observation(outcome, provider))
        if failure.kind == "fatal" or last:
            return False
        if not self.retry_budget(t.service).try_retry(time.monotonic()):
            logger.warning("RATE_LIMIT retry budget of %s exhausted: not retrying %s",
                           t.service, failure.reason)
            return False
        self.telemetry.retry(t, failure.reason, failure.retry_after)
        return True

    def max_attempts(self, t: Ticket) -> int:
        configured = t.cfg.max_retries if t.cfg.max_retries is not None else \
            self.config.max_retries
        retries = configured if configured is not None else (
            t.spec.max_retries if t.spec.max_retries is not None else 2)
        return retries + 1

    def _retry_policy(self, t: Ticket) -> dict[str, Any]:
        """The tenacity strategies of one call's retries."""
        attempts = self.max_attempts(t)

        def retry(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome is not None else None
            return exc is not None and self._should_retry(t, exc,
                                                          state.attempt_number >= attempts)

        return {"stop": stop_after_attempt(attempts),
                "wait": wait_provider(FAILURE_ATTR, maximum=self.config.retry.max_wait),
                "retry": retry, "reraise": True}

    def run_attempts(self, t: Ticket, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` with the governor's retries; each retry is re-admitted.

        The first attempt runs bare: tenacity is built only once an attempt has
        failed with a classified error (its first step replays that error), so
        the common, successful call pays nothing for the retry machinery.
        """
        self.retry_budget(t.service).record_call(time.monotonic())
        try:
            return attempt()
        except Exception as exc:
            if getattr(exc, FAILURE_ATTR, None) is None or isinstance(exc, GovernorError):
                raise
            failed: list[BaseException] = [exc]

        def replay_then_attempt() -> T:
            if failed:
                raise failed.pop()
            return attempt()

        def before(state: RetryCallState) -> None:
            if state.attempt_number > 1:
                t.attempts = state.attempt_number
                self.readmit(t)

        return Retrying(before=before, **self._retry_policy(t))(replay_then_attempt)

    async def arun_attempts(self, t: Ticket, attempt: Callable[[], Awaitable[T]]) -> T:
        """:meth:`run_attempts` for coroutines."""
        self.retry_budget(t.service).record_call(time.monotonic())
        try:
            return await attempt()
        except Exception as exc:
            if getattr(exc, FAILURE_ATTR, None) is None or isinstance(exc, GovernorError):
                raise
            failed: list[BaseException] = [exc]

        async def replay_then_attempt() -> T:
            if failed:
                raise failed.pop()
            return await attempt()

        async def before(state: RetryCallState) -> None:
            if state.attempt_number > 1:
                t.attempts = state.attempt_number
                await self.areadmit(t)

        return await AsyncRetrying(before=before, **self._retry_policy(t))(replay_then_attempt)

    # ------------------------------------------------------------- settlement
    def settle(
        self,
        t: Ticket,
        usage: Usage | None = None,
        *,
        error: BaseException | None = None,
        outcome: Literal["success", "failure", "neutral"] | None = None,
        cost: Decimal | None = None,
    ) -> Decimal:
        """Charge the real cost, release the rest, record the outcome. Idempotent."""
        if t.settled:
            return _ZERO
        t.settled = True
        if cost is None:
            if usage is not None:
                cost = self.pricer.cost(t.service, t.spec.model, usage, t.cfg)
            elif error is None:
                stated = t.spec.cost if t.spec.cost is not None else None
                cost = stated if stated is not None else (
                    t.reserved if self.pricer.price(t.service, t.spec.model) is None
                    else _ZERO)
            else:
                cost = _ZERO
        if outcome is None and error is None:
            outcome = "success"
        obs = Observation(outcome, t.provider) if outcome is not None else None
        status = "ok" if error is None else "error"
        error_type = None if error is None else type(error).__name__
        record = CallRecord(_clean(t.service), _clean(t.model), _clean(t.job) if t.job else None,
                            cost, status, error_type, t.attempts)
        try:
            self.backend.settle(t.lease_id, t.limits, obs, record)
        finally:
            with self._lock:
                self._in_flight[t.service] = max(0, self._in_flight.get(t.service, 1) - 1)
            if t.cfg.max_concurrency:
                self.queue(t.service).wake_head()
            self.telemetry.end_call(t, status, error_type, usage, cost)
        self._maybe_publish()
        return cost

    async def asettle(self, t: Ticket, usage: Usage | None = None, **kw: Any) -> Decimal:
        """:meth:`settle` without blocking the event loop on a blocking backend."""
        if self.backend.blocking:
            return await asyncio.to_thread(self.settle, t, usage, **kw)
        return self.settle(t, usage, **kw)

    # -------------------------------------------------------- whole functions
    def call(self, spec: CallSpec, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Govern one call of an arbitrary function (the decorator's engine).

        An exception from ``fn`` counts as a failure for the breaker.
        """
        t = self.admit(spec)
        try:
            result = fn(*args, **kwargs)
        except GovernorError as exc:
            self.settle(t, error=exc, outcome="neutral")
            raise
        except BaseException as exc:
            self.settle(t, error=exc, outcome="failure")
            raise
        self.settle(t)
        return result

    async def acall(self, spec: CallSpec, fn: Callable[..., Awaitable[T]], *args: Any,
                    **kwargs: Any) -> T:
        t = await self.aadmit(spec)
        try:
            result = await fn(*args, **kwargs)
        except GovernorError as exc:
            await self.asettle(t, error=exc, outcome="neutral")
            raise
        except BaseException as exc:
            await self.asettle(t, error=exc, outcome="failure")
            raise
        await self.asettle(t)
        return result

    # ----------------------------------------------------------------- status
    def emergency(self) -> bool:
        return self.backend.emergency()

    def set_emergency(self, enabled: bool) -> None:
        self.backend.set_emergency(enabled)
        logger.warning("RATE_LIMIT emergency mode %s", "ENABLED" if enabled else "disabled")

    def budget_report(self) -> dict[str, dict[str, Decimal]]:
        """Per window: limit, spent, reserved, remaining."""
        if not self.budget_limits:
            return {}
        spends, reserved, _ = self.backend.budget_status()
        now = self.backend.now()
        out = {}
        for window, limit in self.budget_limits.items():
            spent = budget.roll(spends.get(window, budget.WindowSpend()), window, now).spent
            out[window] = {"limit": limit, "spent": spent, "reserved": reserved,
                           "remaining": limit - spent - reserved}
        return out

    def check_budget(self, estimated_cost: Decimal) -> tuple[bool, Decimal]:
        """``(within_budget, remaining)``; remaining is ``Decimal("Infinity")`` with no budget."""
        report = self.budget_report()
        if not report:
            return True, Decimal("Infinity")
        remaining = min(w["remaining"] for w in report.values())
        return Decimal(estimated_cost) <= remaining, remaining

    def local_status(self) -> dict[str, Any]:
        """What this process is doing: queue lengths and calls in flight per service."""
        with self._lock:
            in_flight = dict(self._in_flight)
        return {
            "pid": os.getpid(), "host": socket.gethostname(),
            "queues": {s: len(q) for s, q in self._queues.items()},
            "in_flight": in_flight,
        }

    def _maybe_publish(self) -> None:
        now = time.monotonic()
        if now - self._last_publish < 1.0:
            return
        self._last_publish = now
        try:
            self.backend.publish_process(self.process_id, self.local_status(), ttl=10.0)
        except Exception:  # status is best effort; never fail a call for it
            logger.debug("publishing process status failed", exc_info=True)

    def close(self) -> None:
        self.telemetry.close()
        self.backend.close()
