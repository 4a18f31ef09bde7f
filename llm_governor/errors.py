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
    "refusal",
    "retryable",
]


class GovernorError(Exception):
    """Base class of every error llm-governor raises on purpose.

    ``scope`` names whose limit refused: ``("tenant", "acme")`` for a scope
    value's, ``None`` for the global budget or the service's own limits.
    ``should_retry`` says whether trying again can succeed soon (within
    ``retry.max_wait``): False for a spent budget whose window resets later
    and for a policy's refusal. Raised inside an SDK call, a refusal that
    should not be retried carries ``x-should-retry: false`` and no retry hint.
    """

    service: str | None = None
    retry_after: float | None = None
    scope: tuple[str, str] | None = None
    should_retry: bool = True


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
    budget it was (``("tenant", "acme")``, or ``None`` for the global budget),
    ``retry_after`` the seconds until that window resets. ``should_retry`` is
    False (out of credit) unless the governor found the window resets within
    ``retry.max_wait``. ``reservation_bound`` is True when the size of the
    call's reservation, not the spend, refused it (the message names the
    setting to change).
    """

    should_retry = False

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
        should_retry: bool = False,
        reservation_bound: bool = False,
    ) -> None:
        super().__init__(message)
        self.remaining = remaining
        self.requested = requested
        self.window = window
        self.service = service
        self.retry_after = retry_after
        self.scope = scope
        self.should_retry = should_retry
        self.reservation_bound = reservation_bound


class PolicyRefusedError(GovernorError):
    """A custom policy refused the call; ``policy`` names it, ``reason`` is what it said."""

    should_retry = False

    def __init__(self, message: str, *, policy: str, reason: str,
                 service: str | None = None) -> None:
        super().__init__(message)
        self.policy = policy
        self.reason = reason
        self.service = service


class BackendUnavailableError(GovernorError):
    """The state backend failed and ``on_backend_error = "closed"`` refuses calls."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts (and an exception group's members), each once."""
    seen: set[int] = set()
    found: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
    return found


def refusal(exc: BaseException | None) -> GovernorError | None:
    """The governor's refusal behind ``exc``, wherever it is in its cause/context chain.

    Frameworks (LangChain, pydantic-ai, instructor, the Agents SDK) re-wrap the
    SDK error they caught, so ``except GovernorError`` misses a refusal that
    reaches the app through them; ``refusal(exc)`` finds it::

        except Exception as exc:
            if (refused := llm_governor.refusal(exc)) is None:
                raise
            ...  # refused.retry_after, refused.should_retry, refused.scope

    ``None`` when no governor refusal caused ``exc``.
    """
    if exc is None:
        return None
    for e in _chain(exc):
        if isinstance(e, GovernorError):
            return e
    return None


def retryable(exc: BaseException) -> bool:
    """False when a governor refusal behind ``exc`` says trying again will not help soon
    (a spent budget, a policy's refusal); True otherwise.

    A predicate for frameworks' retry wrappers that would retry anything, e.g.
    ``chat.with_retry(retry_if_exception_type=llm_governor.retryable)``.
    """
    found = refusal(exc)
    return found is None or found.should_retry
