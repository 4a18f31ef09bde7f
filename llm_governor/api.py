"""The module-level API: one active governor per process.

``instrument()`` builds it (and patches the SDKs); every other function uses
it, creating a default one on first use so the decorator and budget helpers
work without any SDK.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar, cast, overload

from .backends import Backend
from .config import GovernorConfig, RateLimitConfig, config_warnings, load_config
from .context import Priority, current_cost_override
from .errors import GovernorError
from .exporters.monitor import RateLimitAlert, RateLimitMonitor, health
from .governor import CallSpec, Governor
from .policies.custom import Policy
from .pricing import preload as preload_prices

__all__ = [
    "check_budget", "disable_emergency_mode", "enable_emergency_mode",
    "export_rate_limit_metrics", "get_governor", "get_rate_limit_health", "get_service_config",
    "graceful_api_call", "instrument", "is_emergency_mode", "rate_limited", "reset_limits",
    "start_rate_limit_monitoring", "stop_rate_limit_monitoring", "uninstrument",
]

logger = logging.getLogger("llm_governor")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_lock = threading.RLock()
_governor: Governor | None = None
_monitor: RateLimitMonitor | None = None
_instrumentor: Any = None


def instrument(
    config: GovernorConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    environment: str | None = None,
    backend: str | Backend | None = None,
    meter_provider: Any = None,
    tracer_provider: Any = None,
    policies: Sequence[Policy] | None = None,
) -> Governor:
    """Govern every call made through the installed vendor SDKs. Idempotent.

    ``config`` is None (``$LLM_GOVERNOR_CONFIG`` or the environment's preset),
    a TOML path, a mapping or a :class:`GovernorConfig`. ``backend`` is a URL
    or a ready :class:`Backend`. ``policies`` are custom policies run before
    admission, after those the config names. A second call returns the
    active governor unchanged unless a config, backend or policies are given,
    which replace it.
    """
    global _governor, _instrumentor
    with _lock:
        if _governor is not None and _instrumentor is not None and config is None \
                and backend is None and environment is None and policies is None:
            return _governor
        cfg = load_config(config, environment=environment,
                          backend=backend if isinstance(backend, str) else None)
        for warning in config_warnings(cfg):
            if "did you mean" in warning:  # most likely a typo that governs nothing
                logger.warning("RATE_LIMIT configuration: %s", warning)
        old = _governor
        _governor = Governor(cfg, backend=backend if isinstance(backend, Backend) else None,
                             meter_provider=meter_provider, tracer_provider=tracer_provider,
                             policies=policies or ())
        if old is not None and old.backend is not _governor.backend:
            old.close()
        _governor.announce()  # other processes (llm-governor status) see what it enforces
        preload_prices()  # at start-up, not in the first call of every process
        if _instrumentor is None:
            from .instrumentation import GovernorInstrumentor

            _instrumentor = GovernorInstrumentor()
            _instrumentor.instrument(governor_getter=get_governor)
        logger.info("RATE_LIMIT llm-governor active: environment=%s backend=%s",
                    cfg.environment, cfg.redacted_backend())
        return _governor


def uninstrument() -> None:
    """Restore every patched SDK method; calls go straight to the SDK again."""
    global _instrumentor
    with _lock:
        if _instrumentor is not None:
            _instrumentor.uninstrument()
            _instrumentor = None


def get_governor() -> Governor:
    """The active governor; a default one (no SDK patched) on first use."""
    global _governor
    gov = _governor
    if gov is None:
        with _lock:
            if _governor is None:
                _governor = Governor(load_config())
            gov = _governor
    return gov


def set_governor(gov: Governor | None) -> Governor | None:
    """Replace the active governor (tests, embedding); returns the previous one."""
    global _governor
    with _lock:
        old, _governor = _governor, gov
        return old


@overload
def rate_limited(service: F) -> F: ...
@overload
def rate_limited(
    service: str, priority: Priority | int = ..., cost: Decimal | str | None = ...,
    *, model: str | None = ...,
) -> Callable[[F], F]: ...


def rate_limited(
    service: Any,
    priority: Priority | int = Priority.NORMAL,
    cost: Decimal | str | None = None,
    *,
    model: str | None = None,
) -> Any:
    """Govern a sync or async function as calls to ``service``.

    ``@rate_limited("my_service", Priority.HIGH, Decimal("0.01"))``: each call
    is admitted at that priority, reserves ``cost`` (else the service's
    ``cost_per_request``) against budgets and the cost-rate limit, and an
    exception it raises counts as a failure for the circuit breaker.
    """
    if callable(service):
        return rate_limited(service.__name__)(service)
    if not isinstance(service, str) or not service:
        raise ValueError(f"rate_limited needs a service name, got {service!r}")
    prio = Priority(priority)
    stated = None if cost is None else Decimal(str(cost))
    if stated is not None and (not stated.is_finite() or stated < 0):
        raise ValueError(f"cost must be a non-negative amount, got {cost!r}")

    def decorate(fn: F) -> F:
        operation = fn.__name__
        # NORMAL is the default: the call then takes its priority from the context
        fixed = prio if prio is not Priority.NORMAL else None
        last: list[CallSpec | None] = [None]  # the last call's spec: calls differ by cost only

        def spec() -> CallSpec:
            s = stated if stated is not None else current_cost_override()
            if s is None:
                s = get_governor().service_config(service, model).cost_per_request
            # A CallSpec is immutable, so calls stating the very same cost object (the
            # decorator's, the service's cost_per_request, a cost_estimate block) share one.
            found = last[0]
            if found is not None and found.cost is s:
                return found
            found = last[0] = CallSpec(service, operation=operation, model=model,
                                       priority=fixed, cost=s)
            return found

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await get_governor().acall(spec(), fn, *args, **kwargs)
            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return get_governor().call(spec(), fn, *args, **kwargs)
        return cast(F, wrapper)

    return decorate


def graceful_api_call(
    service_func: Callable[..., Any],
    fallback_func: Callable[..., Any] | None,
    service_name: str,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Call ``service_func`` governed as ``service_name``; on any failure use the fallback.

    Rejections (rate limit, open circuit, budget) and errors of the service
    both fall back to ``fallback_func(*args, **kwargs)``; without a fallback
    the error propagates. Async functions give a coroutine to await.
    """
    gov = get_governor()
    stated = current_cost_override()
    spec = CallSpec(service_name, operation=getattr(service_func, "__name__", "call"),
                    cost=stated if stated is not None else
                    gov.service_config(service_name).cost_per_request)

    def _log(exc: BaseException) -> None:
        kind = "rejected" if isinstance(exc, GovernorError) else "failed"
        logger.warning("RATE_LIMIT %s call %s (%s: %s); using fallback", service_name, kind,
                       type(exc).__name__, exc)

    if inspect.iscoroutinefunction(service_func):
        async def run() -> Any:
            try:
                return await gov.acall(spec, service_func, *args, **kwargs)
            except Exception as exc:
                if fallback_func is None:
                    raise
                _log(exc)
                result = fallback_func(*args, **kwargs)
                return await result if inspect.isawaitable(result) else result
        return run()
    try:
        return gov.call(spec, service_func, *args, **kwargs)
    except Exception as exc:
        if fallback_func is None:
            raise
        _log(exc)
        return fallback_func(*args, **kwargs)


def check_budget(estimated_cost: Decimal | str | int | float,
                 **labels: str) -> tuple[bool, Decimal]:
    """``(within_budget, remaining)`` for a call of ``estimated_cost`` USD, now.

    With labels (``check_budget("0.10", tenant="acme")``) the answer also
    holds for those scopes' budgets: ``remaining`` is the tightest window's.
    """
    return get_governor().check_budget(Decimal(str(estimated_cost)), labels)


def get_service_config(service: str) -> RateLimitConfig:
    """The environment-appropriate limits of ``service``."""
    return get_governor().service_config(service)


def get_rate_limit_health() -> dict[str, Any]:
    """``{"overall_status", "health_score", "services": {…}, …}`` (formula in the docs)."""
    return health(get_governor())


def export_rate_limit_metrics() -> str:
    """A JSON document of every service's state, counters, costs and budgets."""
    from .exporters.export import export_json

    return export_json(get_governor())


def start_rate_limit_monitoring(
    alert_callback: Callable[[RateLimitAlert], Any] | None = None, interval: float = 5.0
) -> RateLimitMonitor:
    """Evaluate alerts every ``interval`` s in a daemon thread; ``log_alert_handler`` default."""
    global _monitor
    with _lock:
        if _monitor is not None:
            _monitor.stop()
        _monitor = RateLimitMonitor(get_governor(), alert_callback, interval)
        _monitor.start()
        return _monitor


def stop_rate_limit_monitoring() -> None:
    global _monitor
    with _lock:
        if _monitor is not None:
            _monitor.stop()
            _monitor = None


def reset_limits(service: str | None = None) -> list[str]:
    """Forget learned provider limits, blocks, circuit and bucket state of ``service``
    (every service when None), in every process on the backend; budgets stay.

    Returns the limit scopes reset. The CLI's ``llm-governor reset [SERVICE]``.
    """
    return get_governor().reset_limits(service)


def enable_emergency_mode() -> None:
    """Drop every service to the emergency limits, in every process on the backend."""
    get_governor().set_emergency(True)


def disable_emergency_mode() -> None:
    get_governor().set_emergency(False)


def is_emergency_mode() -> bool:
    return get_governor().emergency()


