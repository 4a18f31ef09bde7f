"""Per-call context carried in contextvars: priority, scope labels and cost override.

Context managers rather than arguments, because instrumented SDK calls have no
place for extra arguments: ``with priority(Priority.HIGH): client.chat...``.
They work across threads started inside them only if the context is copied
(as ``asyncio`` tasks and ``contextvars.copy_context().run`` do).

``scope(tenant="acme", user="u42")`` labels every call inside it; configured
scope kinds (``[scopes.tenant]``) then give those calls budgets and limits of
their own. ``job(x)`` is ``scope(job=x)``.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from enum import IntEnum
from types import MappingProxyType, TracebackType

__all__ = ["SCOPE_KIND", "SCOPE_VALUE", "Priority", "as_priority", "cost_estimate",
           "current_cost_override", "current_job", "current_labels", "current_priority", "job",
           "priority", "scope"]

SCOPE_KIND = r"^[A-Za-z_][A-Za-z0-9_]{0,31}$"
"""A scope kind: a short identifier (it is a keyword argument and a config table name)."""
SCOPE_VALUE = r"^[^\s|]{1,128}$"
"""A scope value: up to 128 characters, no whitespace and no ``|`` (the backends' separators)."""
_KIND, _VALUE = re.compile(SCOPE_KIND), re.compile(SCOPE_VALUE)
_NO_LABELS: Mapping[str, str] = MappingProxyType({})


class Priority(IntEnum):
    """Admission priority; a lower value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "llm_governor_priority", default=Priority.NORMAL
)
_labels: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "llm_governor_scope", default=_NO_LABELS)
_cost: contextvars.ContextVar[Decimal | None] = contextvars.ContextVar(
    "llm_governor_cost", default=None
)


def as_priority(value: Priority | int | str) -> Priority:
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
    token = _priority.set(as_priority(p))
    try:
        yield _priority.get()
    finally:
        _priority.reset(token)


def _check_label(kind: str, value: object) -> str:
    if not _KIND.match(kind):
        raise ValueError(f"scope kind {kind!r} must be an identifier of 1-32 letters, digits "
                         "or '_'")
    if not isinstance(value, str) or not _VALUE.match(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ValueError(f"scope {kind}={shown}: a value must be a string of 1-128 characters "
                         "without whitespace or '|' (hash longer ids)")
    return value


class scope:
    """Label the calls inside the block: ``with scope(tenant="acme", user="u42"):``.

    Sync and async (``with`` or ``async with``), nestable: inner labels win.
    Calls of a configured scope kind (``[scopes.tenant]``) get its budgets and
    limits; other kinds only label. A value must be a short string without
    separators, checked here, at the ``scope()`` call.
    """

    __slots__ = ("_labels", "_tokens")

    def __init__(self, **labels: str) -> None:
        self._labels = {kind: _check_label(kind, value) for kind, value in labels.items()}
        self._tokens: list[contextvars.Token[Mapping[str, str]]] = []

    def __enter__(self) -> dict[str, str]:
        merged = {**_labels.get(), **self._labels}
        self._tokens.append(_labels.set(merged))
        return merged

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _labels.reset(self._tokens.pop())

    async def __aenter__(self) -> dict[str, str]:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


class _Job(scope):
    """``scope(job=…)`` that yields the job id, as ``job()`` always has."""

    __slots__ = ("_id",)

    def __init__(self, job_id: str) -> None:
        super().__init__(job=job_id)
        self._id = job_id

    def __enter__(self) -> str:  # type: ignore[override]
        super().__enter__()
        return self._id

    async def __aenter__(self) -> str:  # type: ignore[override]
        return self.__enter__()


def job(job_id: str) -> scope:
    """Attribute the calls inside the block to ``job_id``: ``scope(job=job_id)``.

    ``with job("video_123") as job_id:`` yields the id.
    """
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job id must be a non-empty string, got {job_id!r}")
    return _Job(job_id)


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
    return _labels.get().get("job")


def current_labels() -> Mapping[str, str]:
    """The scope labels in force (kind → value)."""
    return _labels.get()


def current_cost_override() -> Decimal | None:
    return _cost.get()
