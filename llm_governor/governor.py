"""The governor: the pipeline one call goes through.

``admit`` (queue → emergency → breaker → budget reservation, concurrency slot
and rate buckets in one backend step) → the SDK's own attempts, each reported
here (:meth:`Governor.attempt_started`, :meth:`~Governor.attempt_succeeded`,
:meth:`~Governor.attempt_failed`) and each retry paced and re-admitted at the
SDK's retry point (:meth:`~Governor.retry`) → ``settle`` (the charging rule of
:func:`llm_governor.policies.budget.charge`, unused reservation released,
outcome fed to breaker and adaptive limits).

Admission and retries are written once, as generators of small steps (ask
the backend, wait in the queue, sleep, charge), driven by a thread runner and
an asyncio runner, the way tenacity drives its strategies. Policies decide,
the backend stores, telemetry reports; this module only sequences them.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, TypeVar

from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_none

from . import events
from .accounts import host_of, scope_key, service_of
from .admission_queue import AdmissionQueue, Waiter, stagger
from .backends import Backend, CallRecord, create_backend, schema
from .backends.base import Charged, Snapshot
from .config import GovernorConfig, RateLimitConfig
from .context import (
    Priority,
    as_priority,
    current_cost_override,
    current_labels,
    current_priority,
)
from .errors import (
    BudgetExceededError,
    CircuitBreakerOpenError,
    ConfigError,
    EmergencyModeError,
    GovernorError,
    PolicyRefusedError,
    QueueFullError,
    RateLimitExceededError,
)
from .policies import adaptive, budget
from .policies.adaptive import ProviderLimits
from .policies.admission import AdmitRequest, Decision, Limits, Observation
from .policies.budget import AttemptState
from .policies.custom import CallInfo, Policy, Refuse, Reprioritize, Substitute, digest
from .policies.retry import AttemptFailure, ProviderWait, function_failure
from .pricing import Pricer, Usage
from .reservations import OutputLearner, reservation_hint, reservation_mode
from .retry_budget import RetryBudget
from .scoping import CallScopes, ScopeKinds, scope_rows

__all__ = ["CallSpec", "Governor", "GovernorSnapshot", "Ticket", "never_sent"]

logger = logging.getLogger("llm_governor")
T = TypeVar("T")
_ZERO = Decimal(0)
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
    media_tokens: int = 0  # images, files and the like, bounded from above, in input tokens
    audio_tokens: int = 0  # input audio tokens, bounded from above
    media_unbounded: bool = False  # media of unknown size (file ids, URLs): the context window
    audio_bytes: int = 0
    audio_seconds: float | None = None
    embedding: bool = False
    priority: Priority | None = None  # None: from context
    job: str | None = None  # None: from context
    cost: Decimal | None = None  # a stated estimate replaces the computed upper bound
    max_retries: int | None = None  # the client's own setting, when known
    key: str | None = None  # the limit scope (provider account); None: the service itself
    endpoint: str | None = None  # the provider's host, for status
    sdk: str | None = None  # the instrumented SDK making the call; None: a governed function
    service_tier: str | None = None  # the tier the request asks for (priced per tier)
    cache_ttl: str | None = None  # "5m" / "1h": the request may write a prompt cache
    sdk_spans: bool = False  # the SDK client emits GenAI spans of its own for this call
    #: the request's GenAI semantic-convention attributes, for the GenAI span and metrics
    genai: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)


class Ticket:
    """One admitted call, from admission to settlement (settles exactly once).

    ``state`` says where the latest attempt got to as far as the provider's
    bill is concerned (see :data:`~llm_governor.policies.budget.AttemptState`);
    ``sunk`` is what lost attempts were already charged before a retry.
    ``sent_at`` (first send), ``held`` (time the governor held the call between
    attempts) and the chunk times of a stream time the provider's work.
    """

    __slots__ = ("attempt_started", "attempts", "call", "cfg", "chunk_gaps", "emergency",
                 "failure", "first_chunk", "held", "holding", "job", "key", "labels",
                 "last_chunk", "lease_id", "limits", "llm_tokens", "model", "observe",
                 "paused_at", "pid", "priority", "provider", "queue_wait", "requeues",
                 "reservation", "reserved", "scopes", "sent", "sent_at", "service", "settled",
                 "spec", "started", "state", "sunk", "usage_hint", "would")

    def __init__(self, spec: CallSpec, cfg: RateLimitConfig, limits: Limits,
                 reserved: Decimal, llm_tokens: int, priority: Priority, job: str | None,
                 labels: Mapping[str, str] | None = None, scopes: CallScopes | None = None,
                 observe: bool = False) -> None:
        self.spec = spec
        self.service = spec.service
        self.key = spec.key or spec.service
        self.model = spec.model or "unknown"
        self.cfg = cfg
        self.limits = limits
        self.reserved = reserved
        self.llm_tokens = llm_tokens
        self.priority = priority
        self.job = job
        self.pid = os.getpid()
        self.lease_id = new_lease_id()
        self.started = time.monotonic()
        self.queue_wait = 0.0
        self.attempts = 0
        self.attempt_started = 0.0  # monotonic time the latest attempt was sent
        self.sent = 0  # the latest admitted attempt's Decision.sent (0: unknown)
        self.requeues = 0  # throttled attempts re-sent by the governor
        self.state: AttemptState = "none"
        self.sunk = _ZERO
        self.holding = False  # the lease (budget hold, slot) is held
        self.settled = False
        self.emergency = False
        self.provider: ProviderLimits | None = None
        self.failure: AttemptFailure | None = None
        # what observers see, once policies have run; None: no observer listened at its start
        self.call: events.Call | None = None
        self.sent_at = 0.0  # monotonic time of the first send (0: never sent)
        self.held = 0.0  # seconds the governor held the call between attempts
        self.paused_at = 0.0  # monotonic time a retry pause began (0: none)
        self.first_chunk = 0.0  # streams: monotonic time of the first chunk
        self.last_chunk = 0.0  # streams: monotonic time of the latest chunk
        self.chunk_gaps: list[float] = []  # streams: seconds between consecutive chunks
        self.usage_hint: Usage | None = None
        self.labels: Mapping[str, str] = labels or {}
        self.scopes = scopes or CallScopes()
        self.observe = observe  # observe mode: never wait, refuse or change the call
        self.would: str | None = None  # observe mode: the first refusal it would have met
        # how the output part was reserved: "capped" (the call's own max tokens), "stated",
        # "learned", or "worst_case" (no cap: the model's output cap)
        self.reservation = "capped"


def _call_of(t: Ticket, keep: bool = True) -> events.Call:
    """The call's record for observers, made once (``keep`` False: a record of the
    call as it stands, not kept, while its policies may still change it)."""
    call = t.call
    if call is None:
        call = events.Call(t.service, t.model, t.priority.name.lower(), t.reserved, t.job,
                           t.labels, t.scopes.metric_attributes, t.observe, t.spec)
        if keep:
            t.call = call
    return call


def _settled(call: events.Call, t: Ticket, error: BaseException | None, usage: Usage | None,
             cost: Decimal) -> events.Settled:
    return events.Settled(call, t.settled, error, usage, cost, t.attempts, t.queue_wait,
                          t.emergency, t.held, t.would, t.sent_at, t.first_chunk, t.last_chunk,
                          tuple(t.chunk_gaps))


def new_lease_id() -> str:
    """A lease id unique across processes and runs (cheaper than a uuid4 per call)."""
    return f"{_LEASE_PREFIX}{os.getpid()}-{next(_lease_seq)}"


def limits_of(cfg: RateLimitConfig, max_block: float = 300.0) -> Limits:
    floor, ceiling = adaptive.bounds(cfg.refill_rate, cfg.min_interval, cfg.max_interval)
    return Limits(
        capacity=float(cfg.capacity), refill_rate=cfg.refill_rate, rate_floor=floor,
        rate_ceiling=ceiling, backoff_multiplier=cfg.backoff_multiplier,
        tokens_per_minute=float(cfg.llm_tokens_per_minute),
        cost_per_minute=cfg.max_cost_per_minute,
        cost_per_minute_f=float(cfg.max_cost_per_minute), max_concurrency=cfg.max_concurrency,
        failure_threshold=cfg.failure_threshold, success_threshold=cfg.success_threshold,
        recovery_timeout=float(cfg.recovery_timeout), max_block=max_block,
    )


def never_sent(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) proves a request never left the process: the
    connection was refused, or the host name did not resolve."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, (ConnectionRefusedError, socket.gaierror)):
            return True
        current, seen = current.__cause__ or current.__context__, seen + 1
    return False


class _Vetoed(Exception):
    """Raised from a decorated function's retry pacing: the governor refused the retry."""

    def __init__(self, refusal: GovernorError) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


class _FunctionRun:
    """The attempts of one decorated function's call, shared by :meth:`Governor.call` and
    :meth:`Governor.acall`: classification, tenacity's strategies, the veto."""

    __slots__ = ("gov", "last", "retryable", "t")

    def __init__(self, gov: Governor, t: Ticket) -> None:
        self.gov, self.t = gov, t
        self.last: BaseException | None = None
        self.retryable = False

    def retries(self) -> int:
        """Retries the configuration allows this call (0: none)."""
        return self.gov.max_retries(self.t) or 0

    def strategies(self, attempts: int) -> dict[str, Any]:
        """tenacity's stop after ``attempts`` and its retry (the wait is the governor's, at
        its retry step)."""
        return {"stop": stop_after_attempt(attempts), "wait": wait_none(), "reraise": True,
                "retry": retry_if_exception(lambda exc: self.retryable)}

    def started(self) -> None:
        self.gov.attempt_started(self.t)

    def failed(self, exc: BaseException) -> None:
        self.last, self.retryable = exc, False
        if isinstance(exc, GovernorError):
            self.t.state = "none"  # a refusal inside the function: nothing was sent
        elif isinstance(exc, Exception):  # a cancellation is neither retried nor observed
            failure, self.retryable = function_failure(exc, never_sent(exc))
            self.gov.attempt_failed(self.t, failure, answered=False, judge_timeout=False)

    def paced(self, refusal: GovernorError | None) -> None:
        if refusal is not None:
            raise _Vetoed(refusal)

    def error(self, exc: BaseException) -> BaseException:
        """What the call raises: for a vetoed retry, the last attempt's own error with a
        note saying why it was not retried."""
        if not isinstance(exc, _Vetoed) or self.last is None:
            return exc
        self.last.add_note(f"llm-governor did not retry: {exc.refusal}")
        return self.last

    def outcome(self) -> Literal["neutral"] | None:
        """The final outcome to fold in: each failed attempt was observed already."""
        return "neutral" if self.t.state in ("none", "sending") else None


def _age(t: Ticket) -> float:
    """Seconds since the call's latest attempt was sent (0: no attempt was reported)."""
    return time.monotonic() - t.attempt_started if t.attempt_started else 0.0


def _scope_pair(key: str | None) -> tuple[str, str] | None:
    """``"tenant=acme"`` → ``("tenant", "acme")``."""
    if not key:
        return None
    kind, _, value = key.partition("=")
    return kind, value


def load_policies(names: Sequence[str]) -> list[Policy]:
    """Import the policies the config names (``"package.module:attribute"``)."""
    found: list[Policy] = []
    for name in names:
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise ConfigError(f"policies: {name!r} must name a callable as 'module:attribute'")
        try:
            target: Any = importlib.import_module(module)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"policies: cannot import {name!r} ({exc})") from None
        if not callable(target):
            raise ConfigError(f"policies: {name!r} is a {type(target).__name__}, not a callable")
        found.append(target)
    return found


def _policy_name(policy: Policy) -> str:
    return str(getattr(policy, "__name__", None) or type(policy).__name__)


# ----------------------------------------------------------------- steps
# What the admission and retry sequences ask their runner to do.
@dataclass(frozen=True, slots=True)
class _Admit:
    ticket: Ticket
    req: AdmitRequest
    lease: str | None
    ttl: float


@dataclass(frozen=True, slots=True)
class _NewWaiter:
    priority: int


@dataclass(frozen=True, slots=True)
class _Wait:
    waiter: Waiter
    seconds: float


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class _Charge:
    """Charge a lost attempt at its reservation and release its hold, before a retry."""

    lease: str
    limits: Limits
    record: CallRecord


@dataclass(frozen=True, slots=True)
class _Count:
    """Count a decision the backend's admission step did not count itself."""

    service: str
    decision: str


_Step = _Admit | _NewWaiter | _Wait | _Sleep | _Charge | _Count
Steps = Generator[_Step, Any, T]

# Governors alive in this process, re-armed in a forked child.
_governors: weakref.WeakSet[Governor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _LEASE_PREFIX, _lease_seq
    # A child's lease (and settle) ids must never repeat another process's: with only
    # the pid to tell siblings apart, a reused pid would repeat a recent sibling's ids,
    # and a backend that remembers applied settlements would drop the new one as done.
    _LEASE_PREFIX = f"{uuid.uuid4().hex[:12]}-"
    _lease_seq = itertools.count()
    for gov in list(_governors):
        gov._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True)
class GovernorSnapshot:
    """A governor's view at one instant, what health, alerts, exports, the CLI and the
    gauges are computed from: the backend's shared :class:`~.backends.base.Snapshot`
    plus what only the governor knows (its configuration, the limits in force per
    service, its own queues, what it enforces when it is an application's).

    Build one with :meth:`Governor.snapshot`, or fabricate one in a test.
    """

    state: Snapshot
    config: GovernorConfig
    process_id: str = ""
    budget_limits: Mapping[str, Decimal] = field(default_factory=dict)
    scope_kinds: ScopeKinds | None = None
    limits: Mapping[str, tuple[RateLimitConfig, Limits]] = field(default_factory=dict)
    queues: Mapping[str, int] = field(default_factory=dict)
    enforcement: dict[str, Any] | None = None  # None: an observer, which enforces nothing
    backend: str = ""  # where the state lives (default: the configured backend URL)

    @property
    def now(self) -> float:
        return self.state.now

    def service_limits(self, service: str) -> tuple[RateLimitConfig, Limits]:
        """Config and limits in force of ``service`` (a limit scope key or a service)."""
        found = self.limits.get(service)
        if found is None:
            cfg = self.config.service(service_of(service), None)
            found = (cfg, limits_of(cfg, self.config.retry.max_block))
        return found

    def budget_report(self, limits: Mapping[str, Decimal] | None = None
                      ) -> dict[str, dict[str, Decimal]]:
        """As :meth:`Governor.budget_report`."""
        limits = self.budget_limits if limits is None else limits
        return budget.report(self.state.spends, self.state.reserved, limits, self.now)

    def scope_report(self, kind: str | None = None, value: str | None = None,
                     top: int | None = None) -> dict[str, dict[str, Any]]:
        """As :meth:`Governor.scope_report` (from a snapshot taken with its scopes)."""
        kinds = self.scope_kinds or ScopeKinds(self.config)
        return scope_rows(self.state.scope_status(kind, value), kinds, self.now, top)

    def kinds(self) -> list[str]:
        return (self.scope_kinds or ScopeKinds(self.config)).kinds()


class Governor:
    """Owns config, backend, pricing, queues and telemetry; governs calls."""

    def __init__(
        self,
        config: GovernorConfig,
        *,
        backend: Backend | None = None,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        policies: Sequence[Policy] = (),
        publish: bool = True,
    ) -> None:
        """``publish`` False makes an observer (the CLI): it never announces itself or
        what it enforces on the backend."""
        from .exporters.otel import Telemetry

        self.config = config
        self.publishes = publish
        self.budget_limits = config.budget.windows()
        self.scope_kinds = ScopeKinds(config)
        self.policies: list[Policy] = [*load_policies(config.policies), *policies]
        self._policy_failed: set[int] = set()  # id of each policy whose failure was logged
        self._thresholds = sorted({Decimal(str(x)) for x in config.alerts.budget_thresholds})
        self.backend = backend or create_backend(
            config.backend, self.budget_limits, namespace=config.namespace,
            on_error=config.on_backend_error, degraded_budget_share=config.degraded_budget_share,
        )
        self.pricer = Pricer(config.prices, {name: cfg.base_url for name, cfg in
                                             config.services.items() if cfg.base_url})
        self.learner = OutputLearner(config.learned)
        self.lease_ttl = float(config.lease_ttl)
        self._queues: dict[str, AdmissionQueue] = {}
        self._limits: dict[tuple[str, str | None], tuple[RateLimitConfig, Limits, Limits]] = {}
        self._service_urls = sorted(
            ((cfg.base_url.rstrip("/").lower(), name) for name, cfg in config.services.items()
             if cfg.base_url), key=lambda item: -len(item[0]))  # the longest prefix wins
        self._accounts: dict[tuple[str, str, str | None], tuple[str, str, str]] = {}
        self._retry_budgets: dict[str, RetryBudget] = {}
        self._wait = ProviderWait(maximum=config.retry.max_wait)
        self._closed = threading.Event()
        self._init_process_state()
        self.telemetry_errors = 0
        self.telemetry = Telemetry(self, meter_provider, tracer_provider)
        self.observers: tuple[events.Observer, ...] = (self.telemetry,)
        _governors.add(self)

    def _init_process_state(self) -> None:
        """Everything that belongs to one process (a forked child makes its own)."""
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._latency: dict[str, float] = {}  # limit scope → typical attempt latency (EWMA)
        self._binding: set[tuple[str, str]] = set()  # (scope, limit) already explained
        self._live: dict[str, Ticket] = {}  # lease id → ticket whose hold is renewed
        self._heart: threading.Thread | None = None
        self._last_publish = 0.0
        self._learned: dict[str, tuple[ProviderLimits, float]] = {}  # scope → headers, when
        self._summary: tuple[frozenset[str], dict[str, Any]] | None = None

    def _after_fork(self) -> None:
        """In a forked child: the parent's calls, waiters and threads are not ours."""
        closed = self._closed.is_set()
        self._closed = threading.Event()
        if closed:
            self._closed.set()
        self._init_process_state()
        self._queues = {}
        after_fork = getattr(self.backend, "after_fork", None)
        if after_fork is not None:
            after_fork()

    # ----------------------------------------------------------------- config
    def service_config(self, service: str, model: str | None = None) -> RateLimitConfig:
        return self._resolve(service, model)[0]

    def _resolve(self, service: str, model: str | None) -> tuple[RateLimitConfig, Limits, Limits]:
        """Config and limits of ``service`` (or of a scope key's service) and ``model``."""
        key = (service, model)
        found = self._limits.get(key)
        if found is None:
            service = service_of(service)
            cfg = self.config.service(service, model)
            block = self.config.retry.max_block
            found = (cfg, limits_of(cfg, block),
                     limits_of(self.config.emergency_service(service), block))
            self._limits[key] = found
        return found

    def queue(self, key: str) -> AdmissionQueue:
        """The in-process admission queue of a limit scope (a service or an account)."""
        q = self._queues.get(key)
        if q is None:
            with self._lock:
                q = self._queues.setdefault(
                    key, AdmissionQueue(self.config.service(service_of(key)).max_queue_size))
        return q

    # ---------------------------------------------------------------- accounts
    def account_fields(self, service: str, base_url: str | None,
                       credential: str | None) -> dict[str, Any]:
        """The :class:`CallSpec` fields that scope a call of ``service`` to the provider
        account it goes to (none without a base URL).

        The service becomes the configured one whose ``base_url`` the call's
        endpoint starts with (an OpenAI-compatible host named in the config),
        and the limit scope key names (service, host, credential).
        """
        if base_url is None:
            return {}
        found = self._accounts.get((service, base_url, credential))
        if found is None:
            named = self._service_at(base_url) or service
            host = host_of(base_url)
            found = (named, scope_key(named, host, credential), host)
            if len(self._accounts) > 1024:
                self._accounts.clear()
            self._accounts[(service, base_url, credential)] = found
        return {"service": found[0], "key": found[1], "endpoint": found[2]}

    def _service_at(self, base_url: str) -> str | None:
        url = base_url.rstrip("/").lower()
        for prefix, name in self._service_urls:
            if url == prefix or url.startswith(prefix + "/"):
                return name
        return None

    def scopes(self, service: str) -> list[str]:
        """The limit scopes (accounts) of ``service`` that have state in the backend."""
        return [k for k in self.backend.services()
                if service_of(k) == service and k != service] or [service]

    def reset_limits(self, service: str | None = None) -> list[str]:
        """Forget learned provider limits, blocks, breaker and bucket state; budgets stay.

        ``service`` None resets every service. Returns the scopes reset.
        """
        keys = [k for k in self.backend.services()
                if service is None or service_of(k) == service]
        self.backend.forget(keys)
        logger.warning("RATE_LIMIT limits state reset for %s", ", ".join(keys) or "nothing")
        return keys

    def retry_budget(self, service: str) -> RetryBudget:
        rb = self._retry_budgets.get(service)
        if rb is None:
            rb = self._retry_budgets.setdefault(service, RetryBudget(
                self.config.retry.budget_ratio, self.config.retry.budget_min_per_minute))
        return rb

    def max_retries(self, t: Ticket) -> int | None:
        """Retries the configuration imposes on this call (``None``: the client's own)."""
        if t.observe:
            return None
        configured = t.cfg.max_retries
        return configured if configured is not None else self.config.max_retries

    # -------------------------------------------------------------- observers
    def add_observer(self, observer: events.Observer) -> None:
        """Tell ``observer`` every event from now on (see :mod:`llm_governor.events`)."""
        self.observers = (*self.observers, observer)

    def remove_observer(self, observer: events.Observer) -> None:
        self.observers = tuple(o for o in self.observers if o is not observer)

    def _emit(self, method: str, event: Any) -> None:
        """Tell every observer; one that fails never fails a call (logged once)."""
        for observer in self.observers:
            try:
                getattr(observer, method)(event)
            except Exception:
                self.telemetry_errors += 1
                if self.telemetry_errors == 1:
                    logger.warning("RATE_LIMIT telemetry failed; calls go on without it "
                                   "(counted in Governor.telemetry_errors)", exc_info=True)

    def _retried(self, t: Ticket, reason: str, wait: float | None) -> None:
        logger.info("RATE_LIMIT retrying %s call after %s (attempt %d)", t.service, reason,
                    t.attempts)
        if t.call is not None:
            self._emit("on_retry", events.Retried(t.call, t.attempts, reason, wait))

    @property
    def listening(self) -> bool:
        """Whether any observer listens now (else no event record is built at all, and
        adapters skip describing the call for telemetry)."""
        for observer in self.observers:  # noqa: SIM110 - a loop: no generator per event
            if observer.listening:
                return True
        return False

    def _decided(self, t: Ticket, outcome: str, retry_after: float) -> None:
        if outcome == "circuit_open":
            logger.warning("RATE_LIMIT Circuit breaker open for %s: call refused", t.service)
        if t.call is not None:
            self._emit("on_admit", events.Decided(t.call, outcome, retry_after, t.queue_wait))

    # -------------------------------------------------------------- admission
    def ticket(self, spec: CallSpec) -> Ticket:
        """Estimate the call and prepare its ticket (no state touched yet)."""
        cfg, limits, _ = self._resolve(spec.service, spec.model)
        stated = spec.cost if spec.cost is not None else current_cost_override()
        labels = current_labels()
        out_cap, reservation = spec.max_output_tokens, "capped"
        if stated is not None:
            reservation = "stated"
        elif out_cap is None and not spec.embedding:
            reservation = "worst_case"
            if reservation_mode(self.config, cfg, labels) == "learned":
                out_cap = self.learner.bound(spec.service, spec.model)
                reservation = "worst_case" if out_cap is None else "learned"
        cost, tokens = self.pricer.estimate(
            spec.service, spec.model, cfg, prompt_bytes=spec.prompt_bytes,
            media_tokens=spec.media_tokens, audio_tokens=spec.audio_tokens,
            media_unbounded=spec.media_unbounded, max_output_tokens=out_cap,
            audio_bytes=spec.audio_bytes,
            audio_seconds=spec.audio_seconds, embedding=spec.embedding,
            service_tier=spec.service_tier, cache_ttl=spec.cache_ttl,
        ) if stated is None else (stated, spec.prompt_bytes + spec.media_tokens
                                  + spec.audio_tokens + (spec.max_output_tokens or 0))
        prio = spec.priority if spec.priority is not None else current_priority()
        observe = (cfg.mode or self.config.mode) == "observe"
        t = Ticket(spec, cfg, limits, cost, tokens, prio, spec.job or labels.get("job"),
                   labels, self.scope_kinds.of(labels), observe)
        t.reservation = reservation
        return t

    def _request(self, t: Ticket, reserve: bool = True) -> AdmitRequest:
        _, limits, emergency = self._resolve(t.spec.service, t.spec.model)
        return AdmitRequest(
            t.service, int(t.priority), float(t.llm_tokens), t.reserved, limits, emergency,
            reserve=reserve, refuse_in_emergency=self.config.emergency_action == "refuse",
            key=t.key, scopes=t.scopes.requests, observe=t.observe,
        )

    def _refusal(self, t: Ticket, d: Decision) -> GovernorError:
        svc = t.service
        scope = _scope_pair(d.scope)
        whose = f" of {d.scope}" if d.scope else ""
        if d.outcome == "budget_exceeded":
            hint = reservation_hint(self, t, d.remaining)
            return BudgetExceededError(
                f"RATE_LIMIT budget exceeded: the {d.window} budget{whose} has ${d.remaining} "
                f"left, this {svc} call needs up to ${t.reserved}{hint}",
                remaining=d.remaining, requested=t.reserved, window=d.window, service=svc,
                retry_after=d.retry_after, scope=scope, reservation_bound=bool(hint),
                should_retry=d.retry_after is not None
                and d.retry_after <= self.config.retry.max_wait,
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
            f"{t.cfg.request_timeout:g}s{' (held by the limits' + whose + ')' if scope else ''}"
            f"; retry after {d.retry_after:.2f}s",
            service=svc, retry_after=d.retry_after, scope=scope,
        )

    def _after_decision(self, t: Ticket, d: Decision, reserve: bool) -> None:
        t.emergency = d.emergency
        if d.admitted:
            t.sent = d.sent
        if reserve and d.admitted:
            t.holding = True
            with self._lock:
                self._in_flight[t.key] = self._in_flight.get(t.key, 0) + 1
            self._live[t.lease_id] = t
            if self._heart is None:
                self._start_heartbeat()
        outcome: str = d.outcome
        if d.observed is not None:  # admitted; an observed scope would have refused
            t.would = t.would or d.observed
            outcome = f"would_{d.observed}"
        self._decided(t, outcome, d.retry_after)

    def _explain(self, t: Ticket, d: Decision) -> None:
        """Say once per scope and limit why calls wait or are refused, and how to change it."""
        what: str = d.bound or d.outcome
        if d.scope:  # once per scope kind and limit, not per value (a million users)
            what = f"{d.outcome}:{d.scope.partition('=')[0]}"
        if (t.key, what) in self._binding or d.outcome not in ("rate_limited", "budget_exceeded"):
            return
        self._binding.add((t.key, what))
        svc, cfg = t.service, t.cfg
        given = self.config.service_overrides.get(svc, {})

        def source(*keys: str) -> str:
            if any(k in given for k in keys):
                return "your configuration"
            return f"the {self.config.preset} preset"

        if d.scope:
            kind, _, value = d.scope.partition("=")
            if d.outcome == "budget_exceeded":
                text = (f"are refused: the {d.window} budget of their scope {d.scope} is spent "
                        f"until its window resets (scopes.{kind}.per_{d.window}, or "
                        f"scopes.{kind}.overrides.{value}); other {kind}s go on")
            else:
                text = (f"wait for the request or LLM-token limit of their scope {d.scope} "
                        f"(scopes.{kind}.requests_per_minute / llm_tokens_per_minute, or "
                        f"scopes.{kind}.overrides.{value}); other {kind}s go on")
        elif d.outcome == "budget_exceeded":
            text = (f"are refused: the {d.window} budget (budget.per_{d.window}) is spent "
                    "until its window resets, or raise it in the configuration")
        elif what == "provider":
            text = ("wait for the provider, which asked for it (retry-after, nothing left "
                    "before its reset, or no more than the part of its window other clients "
                    "of the account leave); blocks last at most "
                    f"retry.max_block={self.config.retry.max_block:g}s")
        elif what == "requests":
            text = (f"wait for its request limit: {cfg.capacity} per burst at "
                    f"{cfg.refill_rate:g}/s, or lower if the provider reports less "
                    f"({source('max_tokens', 'refill_rate')}; "
                    f"change services.{svc}.refill_rate / max_tokens)")
        elif what == "llm_tokens":
            text = (f"wait for its LLM-token limit ({cfg.llm_tokens_per_minute} per minute, or the "
                    "provider's reported one; "
                    f"{source('llm_tokens_per_minute')}: services.{svc}.llm_tokens_per_minute)")
        elif what == "cost":
            text = (f"wait for its cost limit of ${cfg.max_cost_per_minute} per minute "
                    f"({source('max_cost_per_minute')}: services.{svc}.max_cost_per_minute)")
        else:
            text = (f"wait for its concurrency limit of {cfg.max_concurrency} calls in flight "
                    f"({source('max_concurrency')}: services.{svc}.max_concurrency)")
        logger.warning("RATE_LIMIT %s calls (%s) %s", svc, t.key, text)

    # ---------------------------------------------------------------- policies
    def _consult(self, t: Ticket, substitute: Callable[[str], CallSpec | None] | None,
                 body: Callable[[], Sequence[object]] | None) -> Ticket:
        """Run the custom policies on the call about to be admitted (see ``policies.custom``)."""
        if not self.policies:
            return t
        for policy in self.policies:
            info = self._call_info(t, body)
            try:
                verdict = policy(info)
            except Exception:
                if id(policy) not in self._policy_failed:
                    self._policy_failed.add(id(policy))
                    logger.warning("RATE_LIMIT policy %s failed; it is skipped for this call "
                                   "(logged once)", _policy_name(policy), exc_info=True)
                continue
            if verdict is None:
                continue
            name = _policy_name(policy)
            if isinstance(verdict, Refuse):
                outcome = "policy_refused"
                if t.observe:
                    t.would = t.would or outcome
                    outcome = f"would_{outcome}"
                self.backend.count_decision(t.service, outcome)
                if self.listening:
                    self._emit("on_admit", events.Decided(
                        _call_of(t, keep=False), outcome, 0.0, t.queue_wait))
                if t.observe:
                    continue
                raise PolicyRefusedError(
                    f"RATE_LIMIT policy {name} refused this {t.service} call: {verdict.reason}",
                    policy=name, reason=verdict.reason, service=t.service)
            if t.observe:  # counted, not applied
                self.backend.count_decision(t.service, f"would_{type(verdict).__name__.lower()}")
                continue
            if isinstance(verdict, Reprioritize):
                t.priority = as_priority(verdict.priority)
            elif isinstance(verdict, Substitute):
                spec = substitute(verdict.model) if substitute is not None else None
                if spec is None:
                    logger.debug("policy %s asked for model %s; this call cannot change it",
                                 name, verdict.model)
                    continue
                logger.info("RATE_LIMIT policy %s: %s call made with %s instead of %s", name,
                            t.service, verdict.model, t.model)
                prio = t.priority
                t = self.ticket(spec)
                t.priority = prio
            else:
                logger.warning("RATE_LIMIT policy %s returned %r: expected None, Refuse, "
                               "Reprioritize or Substitute; ignored", name, verdict)
        return t

    def _call_info(self, t: Ticket, body: Callable[[], Sequence[object]] | None) -> CallInfo:
        spec = t.spec
        return CallInfo(
            service=t.service, model=spec.model, operation=spec.operation, priority=t.priority,
            labels=t.labels, estimated_cost=t.reserved, estimated_tokens=t.llm_tokens,
            budget=lambda: self.budget_left(t.labels),
            fingerprint=lambda: digest(t.service, spec.model, spec.operation,
                                       *(body() if body is not None else ())),
        )

    def _shed(self, t: Ticket) -> Steps[QueueFullError]:
        yield _Count(t.service, "queue_full")
        self._decided(t, "queue_full", 0.0)
        return QueueFullError(
            f"RATE_LIMIT {t.service} queue is full (max_queue_size={t.cfg.max_queue_size}); "
            "shed for higher-priority calls", service=t.service,
            retry_after=1.0 / max(t.limits.refill_rate, 1e-9),
        )

    def _admission(self, t: Ticket, reserve: bool) -> Steps[None]:
        """Wait in the priority queue until admitted (raises the refusal otherwise).

        ``reserve`` False re-admits a retry through the rate buckets only (its
        budget hold and slot are still held).

        Counting: the backend counts each admission and each refusal it decides
        (budget, circuit, emergency); a wait it asks for is not a refusal, so an
        admission that has to wait is counted here once, as ``queued``, and
        ``rate_limited`` only when the call is refused after all (its wait would
        pass ``request_timeout``): what the caller saw as an error.
        """
        req = self._request(t, reserve)
        lease = t.lease_id if reserve else None
        ttl = self.lease_ttl
        if not reserve and t.limits.max_concurrency and not t.observe:
            yield from self._holder_admission(t, req)
            return
        q = self.queue(t.key)
        start = time.monotonic()
        if t.observe or not len(q):  # fast path: nobody waiting (observed: nobody waits)
            d: Decision = yield _Admit(t, req, lease, ttl)
            if d.admitted:
                self._after_decision(t, d, reserve)
                return
            if self._observed(t, d):
                return
            self._explain(t, d)
            if d.outcome != "rate_limited":
                self._after_decision(t, d, reserve)
                raise self._refusal(t, d)
        deadline = start + t.cfg.request_timeout
        w: Waiter = yield _NewWaiter(int(t.priority))
        if not q.enter(w):
            raise (yield from self._shed(t))
        waited = False
        try:
            while True:
                if w.shed:
                    raise (yield from self._shed(t))
                remaining = deadline - time.monotonic()
                if q.is_head(w):
                    d = yield _Admit(t, req, lease, ttl)
                    if d.admitted:
                        t.queue_wait += time.monotonic() - start
                        self._after_decision(t, d, reserve)
                        return
                    if self._observed(t, d):
                        return
                    self._explain(t, d)
                    if d.outcome != "rate_limited" or d.retry_after > remaining:
                        self._after_decision(t, d, reserve)
                        if d.outcome == "rate_limited":
                            yield _Count(t.service, "rate_limited")
                        raise self._refusal(t, d)
                    wait = d.retry_after
                    if self.backend.shared:  # other processes' heads ask for the same token
                        wait += stagger(time.monotonic() - start, wait)
                else:
                    if remaining <= 0:
                        d = Decision(False, "rate_limited", 0.0)
                        self._after_decision(t, d, reserve)
                        yield _Count(t.service, "rate_limited")
                        raise self._refusal(t, d)
                    wait = remaining
                if not waited:
                    waited = True
                    yield _Count(t.service, "queued")
                    self._decided(t, "queued", wait)
                yield _Wait(w, wait)
        finally:
            q.leave(w)

    def _holder_admission(self, t: Ticket, req: AdmitRequest) -> Steps[None]:
        """Re-admit a retry that still holds its concurrency slot, outside the queue.

        Callers in the queue may be waiting for that very slot: a retry queued
        behind them would wait for itself until ``request_timeout``. There are
        at most ``max_concurrency`` such retries, and they still wait for the
        rate buckets (the backend's ``retry_after``).
        """
        deadline = time.monotonic() + t.cfg.request_timeout
        counted = False
        while True:
            d: Decision = yield _Admit(t, req, None, self.lease_ttl)
            if d.admitted:
                self._after_decision(t, d, False)
                return
            self._explain(t, d)
            if d.outcome != "rate_limited" or time.monotonic() + d.retry_after > deadline:
                self._after_decision(t, d, False)
                if d.outcome == "rate_limited":
                    yield _Count(t.service, "rate_limited")
                raise self._refusal(t, d)
            if not counted:
                counted = True
                yield _Count(t.service, "queued")
                self._decided(t, "queued", d.retry_after)
            yield _Sleep(d.retry_after)

    def _observed(self, t: Ticket, d: Decision) -> bool:
        """Observe mode: a refusal by observed limits is counted and the call goes on
        (True). An enforced scope's refusal (``d.scope``) is enforced (False)."""
        if not t.observe or d.scope:
            return False
        t.emergency = d.emergency
        would = d.observed or d.outcome
        t.would = t.would or would
        self._decided(t, f"would_{would}", d.retry_after)
        return True

    def admit(self, spec: CallSpec,
              substitute: Callable[[str], CallSpec | None] | None = None,
              body: Callable[[], Sequence[object]] | None = None) -> Ticket:
        """Wait in the priority queue until the call is admitted, or raise why not.

        Custom policies see the call first; ``substitute(model)`` makes the
        call with another model when one asks (the adapter's hook; without
        it a substitution is skipped); ``body()`` gives the request's parts,
        digested when a policy reads the call's fingerprint.
        """
        return self._run(self._admit_steps(spec, substitute, body))

    async def aadmit(self, spec: CallSpec,
                     substitute: Callable[[str], CallSpec | None] | None = None,
                     body: Callable[[], Sequence[object]] | None = None) -> Ticket:
        """:meth:`admit` for asyncio: waits without blocking the event loop.

        A cancellation anywhere in it releases what it took, including a
        backend admission that completes in its worker thread after the
        caller was cancelled.
        """
        return await self._arun(self._admit_steps(spec, substitute, body))

    def _admit_steps(self, spec: CallSpec, substitute: Callable[[str], CallSpec | None] | None,
                     body: Callable[[], Sequence[object]] | None) -> Steps[Ticket]:
        t = self._consult(self.ticket(spec), substitute, body)
        if self.listening:  # observed from start to end, or not at all
            self._emit("on_start", events.Started(_call_of(t)))
        try:
            yield from self._admission(t, reserve=True)
        except BaseException as exc:
            if t.call is not None:
                self._emit("on_settle", _settled(t.call, t, exc, None, _ZERO))
            raise
        self.retry_budget(t.service).record_call(time.monotonic())
        return t

    # ------------------------------------------------------------------ runners
    def _run(self, steps: Steps[T]) -> T:
        """Drive a step sequence in this thread."""
        send: Callable[[Any], _Step] = steps.send
        value: Any = None
        while True:
            try:
                step = send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value = self._step(step)
                send = steps.send
            except BaseException as exc:  # the sequence's finally blocks must run
                value = exc
                send = steps.throw

    def _step(self, step: _Step) -> Any:
        if isinstance(step, _Admit):
            return self.backend.admit(step.req, step.lease, step.ttl)
        if isinstance(step, _Wait):
            step.waiter.wait(step.seconds)
        elif isinstance(step, _NewWaiter):
            return Waiter(step.priority)
        elif isinstance(step, _Sleep):
            time.sleep(step.seconds)
        elif isinstance(step, _Count):
            self.backend.count_decision(step.service, step.decision)
        else:
            self._threshold_alerts(self.backend.settle(step.lease, step.limits, None,
                                                       step.record))
        return None

    async def _arun(self, steps: Steps[T]) -> T:
        """Drive a step sequence on the running event loop."""
        send: Callable[[Any], _Step] = steps.send
        value: Any = None
        while True:
            try:
                step = send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value = await self._astep(step)
                send = steps.send
            except BaseException as exc:
                value = exc
                send = steps.throw

    async def _astep(self, step: _Step) -> Any:
        if isinstance(step, _Admit):
            if not self.backend.blocking:
                return self.backend.admit(step.req, step.lease, step.ttl)
            fut = asyncio.ensure_future(
                asyncio.to_thread(self.backend.admit, step.req, step.lease, step.ttl))
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                if step.lease is not None:  # the thread may still admit: release it then
                    fut.add_done_callback(lambda f: self._release_late(f, step))
                raise
        if isinstance(step, _Wait):
            await step.waiter.await_(step.seconds)
        elif isinstance(step, _NewWaiter):
            return Waiter(step.priority, loop=asyncio.get_running_loop())
        elif isinstance(step, _Sleep):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, _Count):
            await self._ablocking(self.backend.count_decision, step.service, step.decision)
        else:
            self._threshold_alerts(await self._ablocking(self.backend.settle, step.lease,
                                                         step.limits, None, step.record))
        return None

    async def _ablocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` off the event loop on a blocking backend; runs to the end even if
        the caller is cancelled meanwhile (a settlement must never be half-done)."""
        if not self.backend.blocking:
            return fn(*args)
        return await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(fn, *args)))

    def _release_late(self, fut: asyncio.Future[Decision], step: _Admit) -> None:
        """A cancelled caller's admission completed anyway: give its hold back."""
        if fut.cancelled() or fut.exception() is not None or not fut.result().admitted:
            return
        t, lease = step.ticket, step.lease
        assert lease is not None
        record = CallRecord(t.service, t.model, t.job or None,
                            _ZERO, "cancelled", "CancelledError", settle_id=lease, key=t.key)
        threading.Thread(target=self._quietly, args=(self.backend.settle, lease, step.req.limits,
                                                     None, record),
                         name="llm-governor-release", daemon=True).start()

    @staticmethod
    def _quietly(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            logger.warning("RATE_LIMIT releasing a cancelled admission failed", exc_info=True)

    # ---------------------------------------------------------------- attempts
    def attempt_started(self, t: Ticket) -> None:
        """An attempt is about to leave the process: from here it may be billed."""
        now = time.monotonic()
        t.attempts += 1
        t.state = "sending"
        t.failure = None
        t.attempt_started = now
        if t.paused_at:
            t.held += now - t.paused_at
            t.paused_at = 0.0
        if not t.sent_at:
            t.sent_at = now
            if t.call is not None:
                self._emit("on_send", events.Sent(t.call, now))

    def attempt_succeeded(self, t: Ticket, provider: ProviderLimits | None = None) -> None:
        """The provider answered with success; its rate-limit headers are folded in at settle."""
        t.state = "received"
        took = time.monotonic() - t.attempt_started
        typical = self._latency.get(t.key)
        self._latency[t.key] = took if typical is None else 0.8 * typical + 0.2 * took
        if provider is not None:
            t.provider = provider
            if provider.limit_requests is not None or provider.limit_tokens is not None:
                if len(self._learned) >= 256 and t.key not in self._learned:
                    self._learned.clear()
                self._learned[t.key] = (provider, time.time())
            if self.listening:
                self._emit("on_provider_limits",
                           events.ProviderLimitsSeen(t.service, t.key, provider))

    def attempt_failed(self, t: Ticket, failure: AttemptFailure, *, answered: bool,
                       judge_timeout: bool = True) -> None:
        """An attempt failed: an error status (``answered``) or an exception.

        Failures feed the breaker, 429s the adaptive rate, at once (other
        processes see them before this call settles). ``judge_timeout``: a
        timeout quicker than the service's typical latency is the caller's own
        impatience, not the provider's failure (an SDK call's ``timeout=``);
        a decorated function's errors all count, as documented.
        """
        obs = self._failed(t, failure, answered, judge_timeout)
        if obs is not None:
            self._observe_quietly(t.key, t.limits, obs)

    def attempt_failed_in_hook(self, t: Ticket, failure: AttemptFailure, *,
                               answered: bool) -> None:
        """:meth:`attempt_failed` from an SDK's synchronous hook that may run on an event
        loop (Deepgram's retry predicate): the ticket learns at once, and on a blocking
        backend the observation is written off the loop, which never waits on I/O."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or not self.backend.blocking:
            self.attempt_failed(t, failure, answered=answered)
            return
        obs = self._failed(t, failure, answered, True)
        if obs is not None:  # lands within a round trip, long before the SDK's retry wait ends
            loop.run_in_executor(None, self._observe_quietly, t.key, t.limits, obs)

    def _failed(self, t: Ticket, failure: AttemptFailure, answered: bool,
                judge_timeout: bool) -> Observation | None:
        """The ticket's part of :meth:`attempt_failed`; the observation for the backend
        (None: the failure says nothing of the provider)."""
        if judge_timeout and not answered and failure.kind == "failure" \
                and failure.reason == "timeout":
            waited = time.monotonic() - t.attempt_started
            if waited < max(self._latency.get(t.key, 0.0), t.cfg.timeout_failure_floor):
                # the caller's own short timeout says nothing of the provider's health
                failure = replace(failure, kind="fatal", reason="client_timeout")
        t.failure = failure
        t.state = "rejected" if answered else ("lost" if failure.lost else "unsent")
        if failure.kind == "fatal" and failure.provider is None:
            return None
        outcome: Literal["failure", "throttled", "neutral"] = (
            "failure" if failure.kind == "failure" else
            "throttled" if failure.kind == "throttled" else "neutral")
        provider = failure.provider
        if failure.kind == "throttled" and failure.retry_after is not None:
            provider = replace(provider or ProviderLimits(), retry_after=failure.retry_after)
        return Observation(outcome, provider, _age(t), t.sent)

    def _observe_quietly(self, key: str, limits: Limits, obs: Observation) -> None:
        try:
            self.backend.observe(key, limits, obs)
        except Exception:  # never fail the SDK's own error path for a lost observation
            logger.debug("observing a failed attempt failed", exc_info=True)

    async def aattempt_failed(self, t: Ticket, failure: AttemptFailure, *, answered: bool,
                              judge_timeout: bool = True) -> None:
        """:meth:`attempt_failed` without blocking the event loop on a blocking backend."""
        if not self.backend.blocking:
            self.attempt_failed(t, failure, answered=answered, judge_timeout=judge_timeout)
            return
        await self._ablocking(lambda: self.attempt_failed(
            t, failure, answered=answered, judge_timeout=judge_timeout))

    # ---------------------------------------------------------------- retries
    def _retry_steps(self, t: Ticket, sdk_wait: float | None,
                     already_waited: float) -> Steps[GovernorError | None]:
        """The governor's part of one retry the SDK decided to make.

        Waits at least what the SDK would (``sdk_wait``, of which
        ``already_waited`` the SDK slept itself) and what the provider asked;
        charges a lost attempt at its reservation (the
        provider may have billed it) and then needs a fresh reservation; re-
        admits the attempt through the rate buckets, the breaker and the
        queue. Returns the refusal that vetoes the retry, or ``None``.
        """
        failure = t.failure
        t.paused_at = time.monotonic()
        if t.observe:  # the SDK's own pacing, counted through admission, never vetoed
            wait = (sdk_wait or 0.0) - already_waited
            if wait > 0:
                yield _Sleep(wait)
            yield from self._lost_attempt(t)
            yield from self._admission(t, reserve=t.state == "charged")
            return None
        if not self.retry_budget(t.service).try_retry(time.monotonic()):
            reason = failure.reason if failure else "error"
            logger.warning("RATE_LIMIT retry budget of %s exhausted: not retrying %s",
                           t.service, reason)
            return RateLimitExceededError(
                f"RATE_LIMIT retry budget of {t.service} exhausted (retry.budget_ratio="
                f"{self.config.retry.budget_ratio:g})", service=t.service)
        wait = max(sdk_wait or 0.0, self._wait(failure, t.attempts)) - already_waited
        self._retried(t, failure.reason if failure else "error", wait)
        if wait > 0:
            yield _Sleep(wait)
        reserve = t.state in budget.BILLABLE
        yield from self._lost_attempt(t)
        try:
            yield from self._admission(t, reserve=reserve)
        except GovernorError as refusal:
            return refusal
        return None

    def _lost_attempt(self, t: Ticket) -> Steps[None]:
        """An attempt the provider may have billed: charge its reservation before a retry."""
        if t.state not in budget.BILLABLE:
            return
        record = CallRecord(t.service, t.model, t.job or None, t.reserved, "lost",
                            final=False, settle_id=f"{t.lease_id}#{t.attempts}", key=t.key,
                            scopes=t.scopes.charges)
        self._release(t)
        yield _Charge(t.lease_id, t.limits, record)
        t.sunk += t.reserved
        t.state = "charged"
        t.lease_id = new_lease_id()  # the next hold is a new lease, settled on its own

    def retry(self, t: Ticket, sdk_wait: float | None = None, *,
              already_waited: float = 0.0) -> GovernorError | None:
        """Pace and re-admit a retry the SDK decided on; a refusal vetoes it."""
        return self._run(self._retry_steps(t, sdk_wait, already_waited))

    async def aretry(self, t: Ticket, sdk_wait: float | None = None, *,
                     already_waited: float = 0.0) -> GovernorError | None:
        """:meth:`retry` for asyncio."""
        return await self._arun(self._retry_steps(t, sdk_wait, already_waited))

    def _requeue_steps(self, t: Ticket) -> Steps[bool]:
        """A throttled attempt is "not yet": wait, re-queue, and say whether to re-send it.

        Only a 429 the SDK would retry (it has retries left) is re-sent, in
        place of that retry. The provider did not process it (nothing to
        charge); the wait is what
        it asked, else a back-off; the call keeps its priority in the queue.
        False once ``request_timeout`` (from the call's start) would pass: the
        429 then goes to the SDK, which decides as it would bare.
        """
        failure = t.failure
        if not self.config.retry.absorb_throttled or failure is None \
                or failure.kind != "throttled" or t.observe:
            return False
        retries = t.spec.max_retries
        if retries is None or t.attempts - t.requeues > retries:
            return False  # the SDK itself would not retry it: it is the SDK's error to raise
        t.requeues += 1
        t.paused_at = time.monotonic()
        wait = self._wait(failure, t.requeues)
        deadline = t.started + t.cfg.request_timeout
        if time.monotonic() + wait >= deadline:
            return False
        self._retried(t, failure.reason, wait)
        if wait > 0:
            yield _Sleep(wait)
        try:
            yield from self._admission(t, reserve=False)
        except GovernorError:
            return False
        return time.monotonic() < deadline

    def requeue(self, t: Ticket) -> bool:
        """After a 429: True when the attempt is re-admitted and should be re-sent."""
        return self._run(self._requeue_steps(t))

    async def arequeue(self, t: Ticket) -> bool:
        """:meth:`requeue` for asyncio."""
        return await self._arun(self._requeue_steps(t))

    # ------------------------------------------------------------- settlement
    def _release(self, t: Ticket) -> None:
        """Forget the hold locally (the backend step that releases it follows)."""
        self._live.pop(t.lease_id, None)
        if t.holding:
            t.holding = False
            with self._lock:
                self._in_flight[t.key] = max(0, self._in_flight.get(t.key, 1) - 1)
            if t.cfg.max_concurrency:
                self.queue(t.key).wake_head()

    def settle(
        self,
        t: Ticket,
        usage: Usage | None = None,
        *,
        error: BaseException | None = None,
        outcome: Literal["success", "failure", "neutral"] | None = None,
        cost: Decimal | None = None,
    ) -> Decimal:
        """Charge the call by the charging rule, release the rest, record the outcome.

        Idempotent; a call inherited from a parent process is never settled
        in a forked child. Returns the call's total charge (lost attempts
        included).
        """
        if t.settled or t.pid != os.getpid():
            return _ZERO
        t.settled = True
        if usage is not None and self.learner.teaches(t, usage):
            self.learner.record(t.service, t.spec.model, usage.output_tokens)
        if cost is None:
            usage_cost = None if usage is None else \
                self.pricer.cost(t.service, t.spec.model, usage, t.cfg)
            # a success no attempt hook reported still reached the provider
            state: AttemptState = "received" if error is None and t.state == "none" else t.state
            cost = budget.charge(state, usage_cost, t.reserved)
        overrun = cost - t.reserved if cost > t.reserved else _ZERO
        if overrun:
            logger.warning(
                "RATE_LIMIT %s call to %s cost $%s, $%s above its reservation of $%s: the "
                "difference is charged and the next calls wait until the budget has room",
                t.service, t.model, cost, overrun, t.reserved)
            if t.call is not None:
                self._emit("on_overrun", events.Overrun(t.call, overrun))
        if outcome is None and error is None:
            outcome = "success"
        obs = Observation(outcome, t.provider, _age(t), t.sent) if outcome is not None \
            else None
        status = "ok" if error is None else "error"
        error_type = None if error is None else type(error).__name__  # the JSON export's
        record = CallRecord(t.service, t.model, t.job or None,
                            cost, status, error_type, max(1, t.attempts), overrun=overrun,
                            settle_id=t.lease_id, key=t.key, scopes=t.scopes.charges)
        lease = t.lease_id if t.holding else None
        self._release(t)
        try:
            self._threshold_alerts(self.backend.settle(lease, t.limits, obs, record))
        except Exception:
            logger.exception("RATE_LIMIT settling a %s call failed", t.service)
        total = t.sunk + cost
        if t.call is not None:
            self._emit("on_settle", _settled(t.call, t, error, usage, total))
        self._maybe_publish()
        return total

    async def asettle(self, t: Ticket, usage: Usage | None = None, **kw: Any) -> Decimal:
        """:meth:`settle` without blocking the event loop; completes even if cancelled."""
        if not self.backend.blocking:
            return self.settle(t, usage, **kw)
        return await self._ablocking(lambda: self.settle(t, usage, **kw))

    # -------------------------------------------------------- whole functions
    def call(self, spec: CallSpec, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Govern one call of an arbitrary function (the decorator's engine).

        Each attempt may be billed: if the function raises, its reservation is
        charged (the charging rule), unless the error proves nothing left the
        process (:func:`never_sent`); the error counts as a failure for the
        breaker (a governor refusal inside it does not). A tenacity loop retries
        timeouts, connection errors, 408, 429 and 5xx up to the configured
        ``max_retries`` (none by default); the governor paces and re-admits each
        retry and may veto it, and then the last attempt's own error surfaces
        with a note saying why (:meth:`retry`).
        """
        run = _FunctionRun(self, self.admit(spec))

        def attempt() -> T:
            run.started()
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                run.failed(exc)
                raise

        def pace(seconds: float) -> None:
            run.paced(self.retry(run.t, seconds))

        try:
            try:
                result = attempt()
            except BaseException:
                # The first attempt runs bare (most calls make only that one); a failure
                # with retries left goes on as tenacity would have: pace (its sleep of the
                # none wait), then the remaining attempts in a tenacity loop.
                retries = run.retries()
                if not run.retryable or not retries:
                    raise
                pace(0.0)
                result = Retrying(sleep=pace, **run.strategies(retries))(attempt)
        except BaseException as exc:
            error = run.error(exc)
            self.settle(run.t, error=error, outcome=run.outcome())
        else:
            self.settle(run.t)
            return result
        raise error

    async def acall(self, spec: CallSpec, fn: Callable[..., Awaitable[T]], *args: Any,
                    **kwargs: Any) -> T:
        """:meth:`call` for coroutine functions."""
        run = _FunctionRun(self, await self.aadmit(spec))

        async def attempt() -> T:
            run.started()
            try:
                return await fn(*args, **kwargs)
            except BaseException as exc:
                run.failed(exc)
                raise

        async def pace(seconds: float) -> None:
            run.paced(await self.aretry(run.t, seconds))

        try:
            try:
                result: T = await attempt()
            except BaseException:
                retries = run.retries()  # as in call(): tenacity only for the retries
                if not run.retryable or not retries:
                    raise
                await pace(0.0)
                result = await AsyncRetrying(sleep=pace, **run.strategies(retries))(attempt)
        except BaseException as exc:
            error = run.error(exc)
            await self.asettle(run.t, error=error, outcome=run.outcome())
        else:
            await self.asettle(run.t)
            return result
        raise error

    # -------------------------------------------------------------- heartbeat
    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._heart is not None or self._closed.is_set():
                return
            self._heart = threading.Thread(target=self._beat, name="llm-governor-heartbeat",
                                           daemon=True)
            self._heart.start()

    def _beat(self) -> None:
        """Renew the holds of this process's calls, publish its status; until closed."""
        pid = os.getpid()
        interval = self.lease_ttl / 3.0
        while not self._closed.wait(interval) and os.getpid() == pid:
            lease_ids = [lease for lease, t in list(self._live.items()) if t.holding]
            try:
                self.backend.renew(lease_ids, self.lease_ttl)
                if self.budget_limits or self.scope_kinds:
                    self.backend.sweep()  # charge the calls of processes that died meanwhile
            except Exception:
                logger.debug("renewing leases failed", exc_info=True)
            self._maybe_publish(force=True)

    # ----------------------------------------------------------------- status
    def emergency(self) -> bool:
        return self.backend.emergency()

    def set_emergency(self, enabled: bool) -> None:
        self.backend.set_emergency(enabled)
        logger.warning("RATE_LIMIT emergency mode %s", "ENABLED" if enabled else "disabled")

    def budget_report(self, limits: dict[str, Decimal] | None = None
                      ) -> dict[str, dict[str, Decimal]]:
        """Per window: limit, spent, reserved, remaining (of ``limits``, default this
        governor's budgets)."""
        limits = self.budget_limits if limits is None else limits
        if not limits:
            return {}
        spends, reserved, _ = self.backend.budget_status()
        return budget.report(spends, reserved, limits, self.backend.now())

    def scope_report(self, kind: str | None = None, value: str | None = None,
                     top: int | None = None) -> dict[str, dict[str, Any]]:
        """Per scope value (``kind=value``), most spent first: mode and, per window, limit
        (``None`` when the window only tracks spend), spent, reserved and remaining."""
        return scope_rows(self.backend.scope_status(kind, value), self.scope_kinds,
                          self.backend.now(), top)

    def snapshot(self, scopes: bool = True, state: Snapshot | None = None
                 ) -> GovernorSnapshot:
        """This governor's view now: the backend's :meth:`~.Backend.snapshot` (one read, or
        ``state`` already read) with the limits in force and this process's queues."""
        if state is None:
            state = self.backend.snapshot(scopes)
        names = sorted(set(self.config.services) | set(state.names))
        limits = {}
        for name in names:
            cfg, normal, emergency = self._resolve(name, None)
            limits[name] = (cfg, emergency if state.emergency else normal)
        return GovernorSnapshot(
            state, self.config, self.process_id, dict(self.budget_limits), self.scope_kinds,
            limits, {key: len(q) for key, q in list(self._queues.items())},
            self.enforcement() if self.publishes else None, self.backend.url)

    def budget_left(self, labels: Mapping[str, str] | None = None) -> tuple[Decimal | None,
                                                                           float | None]:
        """What the tightest budget window a call labelled ``labels`` is under has left:
        ``(USD after calls in flight, fraction of its limit)``; ``(None, None)``: no budget."""
        rows = [(w["remaining"], w["limit"]) for w in self.budget_report().values()]
        for key, _ in self.scope_kinds.of(labels or {}).charges:
            kind, _, value = key.partition("=")
            for row in self.scope_report(kind, value).get(key, {}).get("windows", {}).values():
                if row["limit"] is not None:
                    rows.append((row["remaining"], row["limit"]))
        if not rows:
            return None, None
        left = min(r for r, _ in rows)
        fraction = min(float(r / lim) for r, lim in rows)
        return left, max(0.0, fraction)

    def check_budget(self, estimated_cost: Decimal,
                     labels: Mapping[str, str] | None = None) -> tuple[bool, Decimal]:
        """``(within_budget, remaining)`` for a call labelled ``labels`` (the global budget and
        its scopes'); remaining is ``Decimal("Infinity")`` with no budget."""
        left, _ = self.budget_left(labels)
        if left is None:
            return True, Decimal("Infinity")
        return Decimal(estimated_cost) <= left, left

    # ---------------------------------------------------------------- alerts
    def _threshold_alerts(self, charged: Charged) -> None:
        """A ``budget_threshold`` alert for each threshold a settlement's spend crossed.

        The settlement is atomic, so exactly one call crosses each threshold of
        each window instance: the alert fires once, in the process that made it.
        """
        if not charged or not self._thresholds:
            return
        for key, window, before, after in charged:
            limit = self.scope_kinds.budgets(key).get(window) if key else \
                self.budget_limits.get(window)
            if not limit:
                continue
            for threshold in self._thresholds:
                mark = limit * threshold
                if before < mark <= after:
                    self._budget_threshold(key, window, threshold, after, limit)

    def _budget_threshold(self, key: str, window: str, threshold: Decimal, spent: Decimal,
                          limit: Decimal) -> None:
        whose = key or "all"
        logger.warning("RATE_LIMIT budget threshold: %s%% of the %s budget%s is spent "
                       "($%s of $%s)", f"{float(threshold) * 100:g}", window,
                       f" of {key}" if key else "", spent, limit)
        try:
            self.backend.count(schema.key("alerts", "budget_threshold", whose, window, threshold))
        except Exception:
            logger.debug("counting a budget threshold alert failed", exc_info=True)
        if self.listening:
            self._emit("on_threshold", events.ThresholdCrossed(key, window, threshold))

    def enforcement(self) -> dict[str, Any]:
        """What this process enforces (:meth:`GovernorConfig.summary` of its
        configuration and the services it met), plus the provider limits its
        calls learned from response headers, per limit scope."""
        names = frozenset(service_of(key) for key, _ in list(self._limits))
        cached = self._summary
        if cached is None or cached[0] != names:
            cached = self._summary = (names, self.config.summary(names))
        if not self._learned:
            return cached[1]
        learned = {}
        for key, (p, at) in list(self._learned.items()):
            seen: dict[str, float] = {"at": round(at, 3)}
            if p.limit_requests is not None:
                seen["requests"] = p.limit_requests
            if p.limit_tokens is not None:
                seen["tokens"] = p.limit_tokens
            learned[key] = seen
        return {**cached[1], "learned": learned}

    def local_status(self) -> dict[str, Any]:
        """What this process is doing (queue lengths and calls in flight per service) and
        what it enforces (:meth:`enforcement`)."""
        with self._lock:
            in_flight = dict(self._in_flight)
        return {
            "pid": os.getpid(), "host": socket.gethostname(),
            "queues": {s: len(q) for s, q in self._queues.items()},
            "in_flight": in_flight,
            "telemetry_errors": self.telemetry_errors,
            "enforces": self.enforcement(),
        }

    def announce(self) -> None:
        """Publish this process's status now and keep it published by the heartbeat while
        the governor lives, calls or not (``instrument()`` does it)."""
        self._maybe_publish(force=True)
        self._start_heartbeat()

    def publish(self) -> None:
        """Publish this process's status unless it was published in the last second
        (the monitor keeps a process listed while it makes no calls)."""
        self._maybe_publish()

    def _maybe_publish(self, force: bool = False) -> None:
        if not self.publishes:
            return
        now = time.monotonic()
        if not force and now - self._last_publish < 1.0:
            return
        self._last_publish = now
        try:
            self.backend.publish_process(self.process_id, self.local_status(),
                                         ttl=max(10.0, self.lease_ttl))
        except Exception:  # status is best effort; never fail a call for it
            logger.debug("publishing process status failed", exc_info=True)

    def close(self) -> None:
        self._closed.set()
        if self.publishes and self._last_publish:  # no longer live: leave the list now
            try:
                self.backend.publish_process(self.process_id, {"pid": os.getpid()}, ttl=0.0)
            except Exception:
                logger.debug("withdrawing the process status failed", exc_info=True)
        for observer in self.observers:
            try:
                observer.close()
            except Exception:
                logger.debug("closing an observer failed", exc_info=True)
        self.backend.close()
