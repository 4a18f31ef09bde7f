"""Circuit breaker state machine.

closed → open after ``failure_threshold`` consecutive failures; open →
half-open once ``recovery_timeout`` has passed; half-open → closed after
``success_threshold`` successes; any failure in half-open re-opens. Half-open
lets at most ``success_threshold`` probes run at a time (the rest fail fast);
a probe that has not reported within ``recovery_timeout`` no longer counts.
Only failures that say the provider is unwell count (5xx, timeouts,
connection errors): the instrumentation classifies, this module counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerState", "allow", "record", "state_code"]

CLOSED: Literal["closed"] = "closed"
OPEN: Literal["open"] = "open"
HALF_OPEN: Literal["half_open"] = "half_open"
BreakerName = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: BreakerName = CLOSED
    failures: int = 0
    successes: int = 0
    opened_at: float = 0.0
    probes: int = 0  # half-open calls admitted and not reported yet
    probe_at: float = 0.0  # when the last one was admitted


def state_code(state: str) -> int:
    """The gauge value: 0 closed, 1 half-open, 2 open."""
    return {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}[state]


def allow(
    s: BreakerState, now: float, recovery_timeout: float, success_threshold: int = 1,
) -> tuple[bool, BreakerState, float]:
    """May a call pass? Returns ``(allowed, new_state, retry_after)``.

    An instant in the future (a clock stepped back) counts as now, so the
    circuit stays open for at most ``recovery_timeout``.
    """
    if s.state == CLOSED:
        return True, s, 0.0
    if s.state == OPEN:
        reopen_at = min(s.opened_at, now) + recovery_timeout
        if now < reopen_at:
            return False, s, reopen_at - now
        s = BreakerState(HALF_OPEN, 0, 0, s.opened_at)
    probe_at = min(s.probe_at, now)
    probes = s.probes if now - probe_at < recovery_timeout else 0
    if probes >= success_threshold:
        return False, s, probe_at + recovery_timeout - now
    return True, replace(s, probes=probes + 1, probe_at=now), 0.0


def record(
    s: BreakerState,
    success: bool,
    now: float,
    failure_threshold: int,
    success_threshold: int,
) -> BreakerState:
    """The state after one call outcome."""
    if success:
        if s.state == HALF_OPEN:
            if s.successes + 1 >= success_threshold:
                return BreakerState()
            return replace(s, successes=s.successes + 1, probes=max(0, s.probes - 1))
        if s.state == OPEN:
            return s  # a straggler admitted before the circuit opened
        return s if s.failures == 0 else BreakerState()
    if s.state == HALF_OPEN:
        return BreakerState(OPEN, failure_threshold, 0, now)
    if s.state == OPEN:
        return s
    failures = s.failures + 1
    if failures >= failure_threshold:
        return BreakerState(OPEN, failures, 0, now)
    return replace(s, failures=failures)
