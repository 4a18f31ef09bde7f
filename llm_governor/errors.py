"""Exception hierarchy.

Every rejection the governor makes is a :class:`GovernorError`, so one
``except GovernorError`` catches them all. Raised from inside a vendor SDK call
the instrumentation additionally makes them instances of that SDK's own error
(see ``instrumentation/_errors.py``), so existing handlers keep working.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "BackendUnavailableError",
    "BudgetExceededError",
    "CircuitBreakerOpenError",
    "ConfigError",
    "EmergencyModeError",
    "GovernorError",
    "PolicyRefusedError",
    "QueueFullError",
    "RateLimitExceededError",
]


class GovernorError(Exception):
    """Base class of every error llm-governor raises on purpose.

    ``scope`` names whose limit refused: ``("tenant", "acme")`` for a scope
    value's, ``None`` for the global budget or the service's own limits.
    """

    service: str | None = None
    retry_after: float | None = None
    scope: tuple[str, str] | None = None


class ConfigError(GovernorError, ValueError):
    """Invalid configuration: the message names the key, the value and what is allowed."""


class RateLimitExceededError(GovernorError):
    """The call could not be admitted before its deadline.

    ``retry_after`` is the number of seconds after which the same call would be
    admitted if nothing else happened in between (``None`` when unknown).
    """

    def __init__(
        self, message: str, *, service: str | None = None, retry_after: float | None = None,
        scope: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.retry_after = retry_after
        self.scope = scope


class QueueFullError(RateLimitExceededError):
    """The service's admission queue is full, or this call was shed for a higher priority."""


class EmergencyModeError(RateLimitExceededError):
    """Emergency mode is on and configured to refuse calls."""


class CircuitBreakerOpenError(GovernorError):
    """The service failed repeatedly; calls fail fast until ``retry_after`` elapses."""

    def __init__(
        self, message: str, *, service: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.service = service
        self.retry_after = retry_after


class BudgetExceededError(GovernorError):
    """The budget cannot cover this call's cost estimate.

    ``remaining`` is what the tightest budget window has left (after in-flight
    reservations), ``requested`` the estimate that did not fit, ``window`` the
    window that refused (``minute``/``hour``/``day``/``month``), ``scope`` whose
    budget it was (``("tenant", "acme")``, or ``None`` for the global budget).
    """

    def __init__(
        self,
        message: str = "Insufficient budget",
        *,
        remaining: Decimal | None = None,
        requested: Decimal | None = None,
        window: str | None = None,
        service: str | None = None,
        retry_after: float | None = None,
        scope: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.remaining = remaining
        self.requested = requested
        self.window = window
        self.service = service
        self.retry_after = retry_after
        self.scope = scope


class PolicyRefusedError(GovernorError):
    """A custom policy refused the call; ``policy`` names it, ``reason`` is what it said."""

    def __init__(self, message: str, *, policy: str, reason: str,
                 service: str | None = None) -> None:
        super().__init__(message)
        self.policy = policy
        self.reason = reason
        self.service = service


class BackendUnavailableError(GovernorError):
    """The state backend failed and ``on_backend_error = "closed"`` refuses calls."""
