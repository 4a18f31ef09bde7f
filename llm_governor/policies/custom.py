"""Custom policies: user callables consulted before admission, and two built-ins.

A policy is any callable taking a :class:`CallInfo` (a read-only description
of the call about to be admitted) and returning ``None`` (pass) or a verdict:

* :class:`Refuse` ``(reason)``: the call fails with
  :class:`~llm_governor.errors.PolicyRefusedError` (also the SDK's own error);
* :class:`Reprioritize` ``(priority)``: the call waits at another priority;
* :class:`Substitute` ``(model=…)``: the call is made with another model
  (re-estimated, and the SDK call's own ``model`` argument is changed).

Policies run in order, each seeing the call as the previous ones left it. A
policy that raises is logged once and skipped: it never breaks a call. In
observe mode verdicts are counted (``would_policy_refused``…) but not applied.

``instrument(policies=[...])`` or ``policies = ["package.module:name"]`` in the
config install them. What a :class:`CallInfo` reads from the backend (budget
left) is read only when a policy asks for it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType

from ..context import Priority

__all__ = ["CallInfo", "Policy", "Refuse", "Reprioritize", "Substitute", "Verdict",
           "downgrade_when_budget_low", "loop_guard"]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the call; ``reason`` ends up in the error message."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reprioritize:
    """Admit the call at ``priority`` instead."""

    priority: Priority | int | str


@dataclass(frozen=True, slots=True)
class Substitute:
    """Make the call with ``model`` instead (where the SDK call names a model)."""

    model: str


Verdict = Refuse | Reprioritize | Substitute


class CallInfo:
    """What a policy may know about a call, read-only.

    ``budget_left`` and ``budget_fraction_left`` are those of the tightest
    budget window among the global budget and the call's scopes (``None``
    with no budget); ``fingerprint`` is a digest of the request's body.
    Both are computed on first access only.
    """

    __slots__ = ("_budget", "_fingerprint", "_found_budget", "_found_fingerprint",
                 "estimated_cost", "estimated_tokens", "labels", "model", "operation",
                 "priority", "service")

    def __init__(self, *, service: str, model: str | None, operation: str, priority: Priority,
                 labels: Mapping[str, str], estimated_cost: Decimal, estimated_tokens: int,
                 budget: Callable[[], tuple[Decimal | None, float | None]],
                 fingerprint: Callable[[], str]) -> None:
        fields = {"service": service, "model": model, "operation": operation,
                  "priority": priority, "labels": MappingProxyType(dict(labels)),
                  "estimated_cost": estimated_cost, "estimated_tokens": estimated_tokens,
                  "_budget": budget, "_fingerprint": fingerprint, "_found_budget": None,
                  "_found_fingerprint": None}
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    service: str
    model: str | None
    operation: str
    priority: Priority
    labels: Mapping[str, str]
    estimated_cost: Decimal
    estimated_tokens: int
    _budget: Callable[[], tuple[Decimal | None, float | None]]
    _fingerprint: Callable[[], str]
    _found_budget: tuple[Decimal | None, float | None] | None
    _found_fingerprint: str | None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CallInfo is read-only: cannot set {name!r}")

    def _budget_now(self) -> tuple[Decimal | None, float | None]:
        if self._found_budget is None:
            object.__setattr__(self, "_found_budget", self._budget())
        assert self._found_budget is not None
        return self._found_budget

    @property
    def budget_left(self) -> Decimal | None:
        """USD left in the tightest window (after calls in flight); ``None``: no budget."""
        return self._budget_now()[0]

    @property
    def budget_fraction_left(self) -> float | None:
        """The smallest fraction of a window's limit left (0.0 to 1.0); ``None``: no budget."""
        return self._budget_now()[1]

    @property
    def fingerprint(self) -> str:
        """A digest of the request body (model, messages, options): equal bodies, equal prints."""
        if self._found_fingerprint is None:
            object.__setattr__(self, "_found_fingerprint", self._fingerprint())
        assert self._found_fingerprint is not None
        return self._found_fingerprint

    def __repr__(self) -> str:
        return (f"CallInfo(service={self.service!r}, model={self.model!r}, "
                f"operation={self.operation!r}, priority={self.priority.name}, "
                f"labels={dict(self.labels)!r}, estimated_cost={self.estimated_cost})")


Policy = Callable[[CallInfo], Verdict | None]


def digest(*parts: object) -> str:
    """A stable digest of request parts (bytes hashed as they are, the rest by ``repr``)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            h.update(bytes(part))
        else:
            h.update(_stable_repr(part).encode("utf-8", "backslashreplace"))
        h.update(b"\x00")
    return h.hexdigest()


def _stable_repr(value: object) -> str:
    """``repr`` with mappings in key order, so equal requests print alike."""
    if isinstance(value, Mapping):
        items = sorted(((str(k), _stable_repr(v)) for k, v in value.items()))
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_stable_repr(v) for v in value) + "]"
    return repr(value)


def downgrade_when_budget_low(mapping: Mapping[str, str], below: float = 0.2) -> Policy:
    """Use a cheaper model once less than ``below`` of the tightest budget window is left.

    ``downgrade_when_budget_low({"gpt-4o": "gpt-4o-mini"}, below=0.2)``: a
    ``gpt-4o`` call made when under 20% of a budget (global, or a scope of the
    call) is left goes to ``gpt-4o-mini``. Models not in ``mapping`` pass.
    """
    if not 0 < below <= 1:
        raise ValueError(f"below={below!r}: a fraction of the budget, 0 < below <= 1")
    cheaper = dict(mapping)
    for expensive, substitute in cheaper.items():
        if not isinstance(substitute, str) or not substitute or substitute == expensive:
            raise ValueError(f"downgrade {expensive!r} → {substitute!r}: the substitute must "
                             "be another model name")

    def policy(call: CallInfo) -> Verdict | None:
        target = cheaper.get(call.model or "")
        if target is None:
            return None
        left = call.budget_fraction_left
        if left is None or left >= below:
            return None
        return Substitute(target)

    policy.__name__ = policy.__qualname__ = "downgrade_when_budget_low"
    return policy


class loop_guard:
    """Refuse an identical request beyond ``max_identical`` within ``per_seconds``.

    An agent stuck in a loop re-sends the same request (same model, same
    messages) again and again, each re-reading its whole context. Requests
    are identical when service, scope labels and body digest are equal. The
    count is per process (a loop runs in one), in at most ``max_tracked``
    distinct requests (the least recent are forgotten).
    """

    def __init__(self, max_identical: int = 20, per_seconds: float = 60.0, *,
                 max_tracked: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(max_identical, int) or max_identical < 1:
            raise ValueError(f"max_identical={max_identical!r}: a whole number of calls >= 1")
        if not per_seconds > 0:
            raise ValueError(f"per_seconds={per_seconds!r}: a window in seconds > 0")
        self.max_identical = max_identical
        self.per_seconds = float(per_seconds)
        self.max_tracked = max_tracked
        self._clock = clock
        self._seen: OrderedDict[tuple[str, tuple[tuple[str, str], ...], str], deque[float]] = \
            OrderedDict()
        self._lock = threading.Lock()
        self.__name__ = "loop_guard"

    def __call__(self, call: CallInfo) -> Verdict | None:
        key = (call.service, tuple(sorted(call.labels.items())), call.fingerprint)
        now = self._clock()
        with self._lock:
            times = self._seen.pop(key, None) or deque()
            self._seen[key] = times
            while times and times[0] <= now - self.per_seconds:
                times.popleft()
            if len(times) >= self.max_identical:
                return Refuse(f"loop_guard: {len(times) + 1} identical requests within "
                              f"{self.per_seconds:g}s (max_identical={self.max_identical})")
            times.append(now)
            while len(self._seen) > self.max_tracked:
                self._seen.popitem(last=False)
        return None
