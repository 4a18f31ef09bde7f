"""The retry budget: retries allowed as a share of recent calls, per service and process.

State kept by the governor, one per service, so a storm of failures cannot
multiply traffic. Pure bookkeeping over an injected ``now``.
"""

from __future__ import annotations

__all__ = ["RetryBudget"]


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
