"""Per-call context carried in contextvars: priority, job and cost override.

Context managers rather than arguments, because instrumented SDK calls have no
place for extra arguments: ``with priority(Priority.HIGH): client.chat...``.
They work across threads started inside them only if the context is copied
(as ``asyncio`` tasks and ``contextvars.copy_context().run`` do).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from enum import IntEnum

__all__ = ["Priority", "cost_estimate", "current_cost_override", "current_job",
           "current_priority", "job", "priority"]


class Priority(IntEnum):
    """Admission priority; a lower value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "llm_governor_priority", default=Priority.NORMAL
)
_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("llm_governor_job", default=None)
_cost: contextvars.ContextVar[Decimal | None] = contextvars.ContextVar(
    "llm_governor_cost", default=None
)


def _as_priority(value: Priority | int | str) -> Priority:
    if isinstance(value, str):
        try:
            return Priority[value.upper()]
        except KeyError:
            allowed = ", ".join(p.name for p in Priority)
            raise ValueError(f"priority {value!r} is not one of {allowed}") from None
    try:
        return Priority(value)
    except ValueError:
        allowed = ", ".join(f"{p.name}={p.value}" for p in Priority)
        raise ValueError(f"priority {value!r} is not one of {allowed}") from None


@contextmanager
def priority(p: Priority | int | str) -> Iterator[Priority]:
    """Run the calls inside the block at priority ``p``."""
    token = _priority.set(_as_priority(p))
    try:
        yield _priority.get()
    finally:
        _priority.reset(token)


@contextmanager
def job(job_id: str) -> Iterator[str]:
    """Attribute the cost of calls inside the block to ``job_id`` (exports, status)."""
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job id must be a non-empty string, got {job_id!r}")
    token = _job.set(job_id)
    try:
        yield job_id
    finally:
        _job.reset(token)


@contextmanager
def cost_estimate(cost: Decimal | str | int) -> Iterator[Decimal]:
    """State the cost of the calls inside the block, replacing the computed upper bound.

    The ``cost_estimate=`` of the call, as a block: useful for services with no
    price data. The stated amount is reserved against budgets and, when the response
    carries no usage, also settled as the call's cost.
    """
    value = cost if isinstance(cost, Decimal) else Decimal(str(cost))
    if not value.is_finite() or value < 0:
        raise ValueError(f"cost estimate must be a non-negative amount, got {cost!r}")
    token = _cost.set(value)
    try:
        yield value
    finally:
        _cost.reset(token)


def current_priority() -> Priority:
    return _priority.get()


def current_job() -> str | None:
    return _job.get()


def current_cost_override() -> Decimal | None:
    return _cost.get()
