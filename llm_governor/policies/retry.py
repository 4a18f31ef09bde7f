"""Retry pacing: what a failed attempt means, how long to wait, and a retry budget.

The SDK's own retry loop decides *whether* to retry (its status rules, server
hints, body replay guards, token refresh, ``max_retries``); the governor
decides *when*. At the SDK's retry point it waits at least what the SDK would,
and at least :class:`ProviderWait` (what the provider asked for, else
tenacity's exponential backoff with full jitter), then re-admits the attempt.
The retry budget (:mod:`llm_governor.retry_budget`, per-process state) caps
retries at a share of recent calls, so a storm of failures cannot multiply
traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from tenacity import RetryCallState, wait_random_exponential

from .adaptive import ProviderLimits

__all__ = ["AttemptFailure", "ProviderWait", "function_failure"]

FailureKind = Literal["throttled", "failure", "fatal"]


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """A failed attempt, classified by the instrumentation.

    ``throttled``: a 429 (slows the adaptive rate); ``failure``: 5xx, timeout
    or connection error (counts for the circuit breaker); ``fatal``: anything
    else (4xx, ``insufficient_quota``, parse errors), which counts for neither.
    ``lost``: the request may have reached the provider, which may bill it,
    and no usage came back (read timeout, connection lost after sending).
    """

    kind: FailureKind
    retry_after: float | None = None
    provider: ProviderLimits | None = None
    reason: str = "error"
    lost: bool = False


# Class names (anywhere in an exception's MRO) of transport errors raised before a request
# left the process, by the HTTP clients decorated functions usually use (httpx, aiohttp).
_UNSENT_NAMES = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "ClientConnectorError",
                           "ConnectionRefusedError", "gaierror"})
_TIMEOUT_NAMES = frozenset({"TimeoutError", "TimeoutException", "ReadTimeout",
                            "ServerTimeoutError"})
_TRANSPORT_NAMES = frozenset({"ConnectionError", "TransportError", "ClientConnectionError",
                              "ClientOSError"})


def _status_of(exc: BaseException) -> int | None:
    """An HTTP status an exception carries (``status_code``, ``status``, or its response's)."""
    for holder in (exc, getattr(exc, "response", None)):
        for name in ("status_code", "status"):
            value = getattr(holder, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
                return value
    return None


def _retry_after_of(exc: BaseException) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        raw = headers.get("retry-after") if headers is not None else None
        value = float(raw) if raw is not None else None
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value is not None and 0 <= value < float("inf") else None


def function_failure(exc: BaseException, unsent: bool) -> tuple[AttemptFailure, bool]:
    """What a decorated function's exception means, and whether a retry may help.

    Any exception counts as a failure for the breaker (``@rate_limited``'s
    documented meaning), except a 429, which is ``throttled``. Retried: timeouts,
    connection errors, 408, 429 and 5xx (by class name or an HTTP status the
    exception carries, so httpx, requests and aiohttp errors need no import).
    ``unsent``: the error proves the request never left the process.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = _status_of(exc)
    if status == 429:
        return AttemptFailure("throttled", _retry_after_of(exc), reason="throttled",
                              lost=False), True
    if status is not None:
        return AttemptFailure("failure", reason=f"http_{status}", lost=False), \
            status == 408 or status >= 500
    if names & _TIMEOUT_NAMES:
        return AttemptFailure("failure", reason="timeout", lost=not unsent), True
    if names & (_TRANSPORT_NAMES | _UNSENT_NAMES):
        return AttemptFailure("failure", reason="connection", lost=not unsent), True
    return AttemptFailure("failure", reason=type(exc).__name__, lost=not unsent), False


class ProviderWait:
    """The governor's own back-off: the provider's ``retry-after``, else tenacity's
    exponential backoff with full jitter, never above ``maximum``."""

    def __init__(self, initial: float = 0.5, maximum: float = 60.0) -> None:
        self.maximum = maximum
        self._backoff = wait_random_exponential(multiplier=initial, max=maximum)

    def __call__(self, failure: AttemptFailure | None, attempt_number: int) -> float:
        if failure is not None and failure.retry_after is not None and failure.retry_after >= 0:
            return min(failure.retry_after, self.maximum)
        state = RetryCallState(cast(Any, None), None, (), {})
        state.attempt_number = max(1, attempt_number)
        return float(self._backoff(state))
