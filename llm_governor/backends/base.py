"""The backend contract, and the shared logic of the backends that run Python policies.

A backend is where limiter state lives and what makes each step atomic. The
governor asks three things per call: ``admit`` (one round trip: breaker,
budget reservation, concurrency slot and every rate bucket, all or nothing),
``observe`` for an attempt that will be retried, and ``settle`` (one round
trip: release the lease, charge the real cost, fold in the last attempt's
outcome, count). Everything else (status, counters, emergency flag, process
heartbeats) serves the CLI, health and exports.

:class:`TransactionalBackend` implements the contract once over a tiny
transaction interface; memory (a lock over dicts) and SQLite (``BEGIN
IMMEDIATE`` over tables) only say how to load and store records.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..accounts import service_of
from ..policies import admission, budget
from ..policies.admission import AdmitRequest, Decision, Limits, Observation, ServiceState

__all__ = ["MONEY_COUNTERS", "Backend", "CallRecord", "Lease", "TransactionalBackend", "Txn"]

_ZERO = Decimal(0)
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Lease:
    """An admitted call's hold on budget and (optionally) a concurrency slot."""

    id: str
    service: str
    amount: Decimal
    expires_at: float


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What a settled call (or a lost attempt charged before a retry) adds to the counters.

    ``final`` False marks a lost attempt: its cost is charged and the lease
    released, but it counts under ``lost``, not as a call. ``overrun`` is the
    part of ``cost`` above the reservation (already inside ``cost``).
    ``settle_id`` makes the step idempotent on backends that can replay it.
    """

    service: str
    model: str
    job: str | None
    cost: Decimal
    status: str  # "ok" | "error" | "cancelled"
    error_type: str | None = None
    attempts: int = 1
    final: bool = True
    overrun: Decimal = _ZERO
    settle_id: str | None = None
    key: str = ""  # the limit scope whose state the outcome folds into (default: service)

    @property
    def scope(self) -> str:
        return self.key or self.service


class Backend(abc.ABC):
    """Where state lives. Implementations: memory, SQLite, Redis."""

    name: str = "backend"
    url: str = ""

    blocking: bool = False  # True when a step may wait on I/O (async callers use a thread)

    @abc.abstractmethod
    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        """Decide ``req`` atomically; when admitted, hold a lease ``lease_id`` for ``ttl`` s."""

    @abc.abstractmethod
    def observe(self, service: str, limits: Limits, obs: Observation) -> None:
        """Fold an intermediate attempt's outcome into the service state."""

    @abc.abstractmethod
    def settle(
        self, lease_id: str | None, limits: Limits, obs: Observation | None, record: CallRecord
    ) -> None:
        """Release the lease, charge ``record.cost``, fold ``obs`` in, count the call."""

    def sweep(self) -> None:  # noqa: B027 - optional
        """Charge the leases that expired (the heartbeat runs it while budgets are set)."""

    @abc.abstractmethod
    def forget(self, keys: list[str]) -> None:
        """Reset the state of these limit scopes (buckets, breaker, learned limits, blocks).

        Budgets, leases and counters are untouched.
        """

    @abc.abstractmethod
    def reset_budget(self, windows: Sequence[str] | None = None,
                     scope: tuple[str, str] | None = None) -> dict[str, Decimal]:
        """Forget the spend of ``windows`` (every window when None), in one atomic step.

        Returns the spend forgotten, per window that had any record. ``scope``
        (kind, value) names a scoped budget instead of the global one; a backend
        that stores none returns ``{}`` for it. Reservations of calls in flight,
        counters and costs are untouched: only what the budget check reads
        starts from zero.
        """

    @abc.abstractmethod
    def renew(self, lease_ids: list[str], ttl: float) -> int:
        """Extend the leases that still exist to ``now + ttl``; returns how many did."""

    @abc.abstractmethod
    def count_decision(self, service: str, decision: str) -> None:
        """Count a decision ``admit`` does not count itself.

        ``admit`` counts admissions and the refusals it decides (budget, circuit,
        emergency) but not a ``rate_limited`` outcome, which only asks the caller
        to wait: the governor counts ``queued`` once per admission that waits, and
        ``rate_limited`` or ``queue_full`` when it refuses the call.
        """

    @abc.abstractmethod
    def emergency(self) -> bool: ...

    @abc.abstractmethod
    def set_emergency(self, enabled: bool) -> None: ...

    @abc.abstractmethod
    def service_state(self, service: str) -> ServiceState: ...

    @abc.abstractmethod
    def services(self) -> list[str]:
        """Services that have stored state."""

    @abc.abstractmethod
    def budget_status(self) -> tuple[dict[str, budget.WindowSpend], Decimal, int]:
        """``(spend per window, reserved by live leases, live lease count)``."""

    @abc.abstractmethod
    def in_flight(self, service: str) -> int: ...

    @abc.abstractmethod
    def counters(self) -> dict[str, Any]:
        """All counters: ``{"requests": {service: {decision: n}}, "calls": …, "cost": …}``."""

    @abc.abstractmethod
    def publish_process(self, process_id: str, doc: dict[str, Any], ttl: float) -> None:
        """Publish this process's live status (queues, in-flight) for ``ttl`` seconds."""

    @abc.abstractmethod
    def processes(self) -> dict[str, dict[str, Any]]:
        """Live process documents published by every process on this backend."""

    def now(self) -> float:
        """The backend's clock (Redis: the server's ``TIME``)."""
        return time.time()

    def reset(self) -> None:  # noqa: B027 - optional
        """Forget all state (tests, ``llm-governor reset``)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections and files."""


class Txn(abc.ABC):
    """The records one atomic step may read and write."""

    @abc.abstractmethod
    def service(self, name: str) -> ServiceState: ...

    @abc.abstractmethod
    def put_service(self, name: str, state: ServiceState) -> None: ...

    @abc.abstractmethod
    def spends(self) -> dict[str, budget.WindowSpend]: ...

    @abc.abstractmethod
    def put_spends(self, spends: dict[str, budget.WindowSpend]) -> None: ...

    @abc.abstractmethod
    def leases(self, now: float, max_ttl: float | None = None) -> list[Lease]:
        """Live leases (with ``max_ttl``, an expiry further away than that, from a clock
        stepped back, is brought back to it)."""

    @abc.abstractmethod
    def expire(self, now: float) -> list[Lease]:
        """Remove and return the leases that expired (their process stopped renewing)."""

    @abc.abstractmethod
    def done(self, settle_id: str, now: float) -> bool:
        """Whether this settlement (or a lease's expiry charge) was applied, and is still
        remembered at ``now``."""

    @abc.abstractmethod
    def mark_done(self, settle_id: str, until: float) -> None:
        """Remember an applied settlement or expiry charge until ``until``."""

    @abc.abstractmethod
    def add_lease(self, lease: Lease) -> None: ...

    @abc.abstractmethod
    def pop_lease(self, lease_id: str) -> Lease | None: ...

    @abc.abstractmethod
    def renew_lease(self, lease_id: str, expires_at: float) -> bool:
        """Move an existing lease's expiry; False when it is gone."""

    @abc.abstractmethod
    def emergency(self) -> bool: ...

    @abc.abstractmethod
    def incr(self, key: str, amount: int | Decimal) -> None:
        """Add to the counter ``key`` (``|``-separated parts)."""


class TransactionalBackend(Backend):
    """The contract implemented once over :meth:`transaction`."""

    def __init__(self, budget_limits: dict[str, Decimal], clock: Clock | None = None) -> None:
        self.budget_limits = dict(budget_limits)
        self._clock = clock or time.time
        self._decision_keys: dict[tuple[str, str], str] = {}  # counter keys, built once

    def now(self) -> float:
        return self._clock()

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Txn]: ...

    def read(self) -> AbstractContextManager[Txn]:
        """A consistent snapshot for status reads; a backend may make it cheaper than a write."""
        return self.transaction()

    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        with self.transaction() as tx:
            now = self._clock()
            emergency = tx.emergency()
            lim = req.emergency_limits if emergency else req.limits
            if req.reserve and (self.budget_limits or lim.max_concurrency):
                self._charge_expired(tx, now)
                leases = tx.leases(now, ttl)
                reserved = sum((le.amount for le in leases), _ZERO)
                in_flight = sum(1 for le in leases if le.service == req.key)
            else:
                reserved, in_flight = _ZERO, 0
            state = tx.service(req.key)
            spends = tx.spends() if self.budget_limits else {}
            decision, new_state = admission.decide(
                state, spends, self.budget_limits, reserved, in_flight, req, now,
                emergency=emergency,
            )
            if new_state is not state:
                tx.put_service(req.key, new_state)
            if decision.admitted and lease_id is not None:
                tx.add_lease(Lease(lease_id, req.key, req.cost, now + ttl))
            if decision.outcome != "rate_limited":  # a wait, not a refusal: see count_decision
                key = self._decision_keys.get((req.service, decision.outcome))
                if key is None:
                    key = self._decision_keys[(req.service, decision.outcome)] = \
                        f"requests|{req.service}|{decision.outcome}"
                tx.incr(key, 1)
            return decision

    def observe(self, service: str, limits: Limits, obs: Observation) -> None:
        with self.transaction() as tx:
            now = self._clock()
            state = tx.service(service)
            new_state = admission.observe(state, limits, obs, now,
                                          _in_flight(tx, now, service, obs))
            if new_state is not state:
                tx.put_service(service, new_state)

    def _charge_expired(self, tx: Txn, now: float) -> None:
        """Charge each expired lease its reservation: its process died (or stopped for
        longer than the lease) mid-call, and the provider may have billed the call."""
        expired = tx.expire(now)
        if not expired:
            return
        spends = tx.spends() if self.budget_limits else {}
        for le in expired:
            if self.budget_limits:
                spends = budget.settle(spends, self.budget_limits, le.amount, now)
            service = service_of(le.service)
            tx.incr(f"expired|{service}", 1)
            if le.amount:
                tx.incr(f"cost|{service}|{EXPIRED_MODEL}", le.amount)
            tx.mark_done(le.id, now + DONE_TTL)
        if self.budget_limits:
            tx.put_spends(spends)

    def sweep(self) -> None:
        with self.transaction() as tx:
            self._charge_expired(tx, self._clock())

    def settle(
        self, lease_id: str | None, limits: Limits, obs: Observation | None, record: CallRecord
    ) -> None:
        with self.transaction() as tx:
            now = self._clock()
            if lease_id is not None and tx.pop_lease(lease_id) is None \
                    and tx.done(lease_id, now):
                return  # its lease expired and was charged already: count it once
            if record.settle_id is not None and record.settle_id != lease_id \
                    and tx.done(record.settle_id, now):
                return
            if record.cost and self.budget_limits:
                tx.put_spends(budget.settle(tx.spends(), self.budget_limits, record.cost, now))
            if obs is not None:
                state = tx.service(record.scope)
                new_state = admission.observe(state, limits, obs, now,
                                              _in_flight(tx, now, record.scope, obs))
                if new_state is not state:
                    tx.put_service(record.scope, new_state)
            if record.final:
                tx.incr(f"calls|{record.service}|{record.model}|{record.status}", 1)
                if record.attempts > 1:
                    tx.incr(f"retries|{record.service}", record.attempts - 1)
            else:
                tx.incr(f"lost|{record.service}", 1)
            if record.cost:
                tx.incr(f"cost|{record.service}|{record.model}", record.cost)
                if record.job:
                    tx.incr(f"job|{record.job}", record.cost)
            if record.overrun:
                tx.incr(f"overrun|{record.service}|{record.model}", record.overrun)

    def forget(self, keys: list[str]) -> None:
        with self.transaction() as tx:
            for key in keys:
                tx.put_service(key, ServiceState())

    def reset_budget(self, windows: Sequence[str] | None = None,
                     scope: tuple[str, str] | None = None) -> dict[str, Decimal]:
        if scope is not None:
            return {}
        with self.transaction() as tx:
            now = self._clock()
            spends = dict(tx.spends())
            gone = {w: budget.roll(spends.pop(w), w, now).spent for w in list(spends)
                    if windows is None or w in windows}
            if gone:
                tx.put_spends(spends)
            return gone

    def renew(self, lease_ids: list[str], ttl: float) -> int:
        if not lease_ids:
            return 0
        with self.transaction() as tx:
            expires = self._clock() + ttl
            return sum(1 for lease_id in lease_ids if tx.renew_lease(lease_id, expires))

    def count_decision(self, service: str, decision: str) -> None:
        with self.transaction() as tx:
            tx.incr(f"requests|{service}|{decision}", 1)

    def budget_status(self) -> tuple[dict[str, budget.WindowSpend], Decimal, int]:
        with self.read() as tx:
            now = self._clock()
            leases = tx.leases(now)
            spends = {w: budget.roll(s, w, now) for w, s in tx.spends().items()}
            return spends, sum((le.amount for le in leases), _ZERO), len(leases)

    def in_flight(self, service: str) -> int:
        with self.read() as tx:
            return sum(1 for le in tx.leases(self._clock()) if le.service == service)

    def service_state(self, service: str) -> ServiceState:
        with self.read() as tx:
            return tx.service(service)


def _in_flight(tx: Txn, now: float, service: str, obs: Observation) -> int:
    """Calls of ``service`` in flight, when provider headers need them (else 0, no scan)."""
    if obs.provider is None:
        return 0
    return sum(1 for le in tx.leases(now) if le.service == service)


EXPIRED_MODEL = "(expired)"  # the cost counter's model for leases charged at expiry
DONE_TTL = 3600.0  # seconds an applied settlement or expiry is remembered

MONEY_COUNTERS = ("cost|", "job|", "overrun|")
"""Counter key prefixes that hold USD amounts (the rest count events)."""


def nest_counters(flat: Iterator[tuple[str, int | Decimal]]) -> dict[str, Any]:
    """``{"requests|openai|admitted": 3}`` → ``{"requests": {"openai": {"admitted": 3}}}``."""
    out: dict[str, Any] = {}
    for key, value in flat:
        parts = key.split("|")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
