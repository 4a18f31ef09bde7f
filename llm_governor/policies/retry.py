"""Retry strategies for tenacity: a retry-after aware wait and a retry budget.

The governor owns retries (the SDK's own loop is switched off), so one loop
decides: it waits what the provider asked (``retry-after-ms`` /
``retry-after`` / Gemini's ``retryDelay``) or else exponential backoff with
jitter, and it stops retrying when retries would exceed ``budget_ratio`` of
recent calls: a storm of failures cannot multiply traffic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tenacity.wait import wait_base

from .adaptive import ProviderLimits

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["AttemptFailure", "RetryBudget", "wait_provider"]

FailureKind = Literal["throttled", "failure", "fatal"]


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """An SDK error classified by the instrumentation.

    ``throttled``: a 429 worth retrying after ``retry_after``; ``failure``: 5xx,
    timeout or connection error (counts for the breaker, retried); ``fatal``:
    anything a retry cannot fix (4xx, ``insufficient_quota``, parse errors).
    """

    kind: FailureKind
    retry_after: float | None = None
    provider: ProviderLimits | None = None
    reason: str = "error"


class wait_provider(wait_base):
    """Wait what the provider asked for, else exponential backoff with full jitter."""

    def __init__(self, classify_attr: str = "llm_governor_failure", initial: float = 0.5,
                 maximum: float = 60.0) -> None:
        self.attr = classify_attr
        self.initial = initial
        self.maximum = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        failure: AttemptFailure | None = getattr(exc, self.attr, None)
        if failure is not None and failure.retry_after is not None and failure.retry_after >= 0:
            return min(failure.retry_after, self.maximum)
        ceiling = min(self.maximum, self.initial * 2 ** (retry_state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)


class RetryBudget:
    """Retries allowed: ``ratio`` per call made plus ``min_per_minute``, over a sliding minute.

    Pure bookkeeping with an injected ``now``; one per service per process.
    """

    def __init__(self, ratio: float, min_per_minute: int) -> None:
        self.ratio = ratio
        self.min_per_minute = min_per_minute
        self._calls: list[float] = []
        self._retries: list[float] = []

    @staticmethod
    def _trim(events: list[float], now: float) -> None:
        cutoff = now - 60.0
        i = 0
        while i < len(events) and events[i] <= cutoff:
            i += 1
        del events[:i]

    def record_call(self, now: float) -> None:
        self._calls.append(now)
        if len(self._calls) > 4096:
            self._trim(self._calls, now)

    def try_retry(self, now: float) -> bool:
        """Take one retry from the budget if there is one left."""
        self._trim(self._calls, now)
        self._trim(self._retries, now)
        allowed = self.min_per_minute + self.ratio * len(self._calls)
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True
