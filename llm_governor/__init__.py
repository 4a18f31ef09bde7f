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
from .context import Priority, cost_estimate, job, priority
from .errors import (
    BackendUnavailableError,
    BudgetExceededError,
    CircuitBreakerOpenError,
    ConfigError,
    EmergencyModeError,
    GovernorError,
    QueueFullError,
    RateLimitExceededError,
)
from .exporters.monitor import RateLimitAlert, log_alert_handler
from .governor import CallSpec, Governor

__all__ = [
    "BackendUnavailableError", "BudgetExceededError", "CallSpec", "CircuitBreakerOpenError",
    "ConfigError", "EmergencyModeError", "Governor", "GovernorConfig", "GovernorError",
    "Priority", "QueueFullError", "RateLimitAlert", "RateLimitConfig", "RateLimitExceededError",
    "__version__", "check_budget", "cost_estimate", "disable_emergency_mode",
    "enable_emergency_mode", "export_rate_limit_metrics", "get_governor",
    "get_rate_limit_health", "get_service_config", "graceful_api_call", "instrument",
    "is_emergency_mode", "job", "load_config", "log_alert_handler", "priority", "rate_limited",
    "reset_limits", "start_rate_limit_monitoring", "stop_rate_limit_monitoring", "uninstrument",
]
