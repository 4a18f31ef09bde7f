"""llm-governor: rate limits, hard budgets, circuit breaking and retries for the
official AI SDKs, with one line: ``llm_governor.instrument()``."""

from __future__ import annotations

from ._version import __version__
from .api import (
    check_budget,
    disable_emergency_mode,
    enable_emergency_mode,
    export_rate_limit_metrics,
    get_governor,
    get_rate_limit_health,
    get_service_config,
    graceful_api_call,
    instrument,
    is_emergency_mode,
    rate_limited,
    reset_limits,
    start_rate_limit_monitoring,
    stop_rate_limit_monitoring,
    uninstrument,
)
from .config import GovernorConfig, RateLimitConfig, load_config
from .context import Priority, cost_estimate, job, priority, scope
from .errors import (
    BackendUnavailableError,
    BudgetExceededError,
    CircuitBreakerOpenError,
    ConfigError,
    EmergencyModeError,
    GovernorError,
    PolicyRefusedError,
    QueueFullError,
    RateLimitExceededError,
    refusal,
    retryable,
)
from .exporters.monitor import RateLimitAlert, log_alert_handler
from .governor import CallSpec, Governor
from .policies.custom import (
    CallInfo,
    Refuse,
    Reprioritize,
    Substitute,
    downgrade_when_budget_low,
    loop_guard,
)

__all__ = [
    "BackendUnavailableError", "BudgetExceededError", "CallInfo", "CallSpec",
    "CircuitBreakerOpenError", "ConfigError", "EmergencyModeError", "Governor", "GovernorConfig",
    "GovernorError", "PolicyRefusedError", "Priority", "QueueFullError", "RateLimitAlert",
    "RateLimitConfig", "RateLimitExceededError", "Refuse", "Reprioritize", "Substitute",
    "__version__", "check_budget", "cost_estimate", "disable_emergency_mode",
    "downgrade_when_budget_low", "enable_emergency_mode", "export_rate_limit_metrics",
    "get_governor", "get_rate_limit_health", "get_service_config", "graceful_api_call",
    "instrument", "is_emergency_mode", "job", "load_config", "log_alert_handler", "loop_guard",
    "priority", "rate_limited", "refusal", "reset_limits", "retryable", "scope",
    "start_rate_limit_monitoring", "stop_rate_limit_monitoring", "uninstrument",
]
