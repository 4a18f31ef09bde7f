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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from ..accounts import service_of
from ..policies import admission, budget, scopes
from ..policies._fast import maker
from ..policies.admission import AdmitRequest, Decision, Limits, Observation, ServiceState
from ..policies.scopes import ScopeState
from . import schema

__all__ = ["MONEY_COUNTERS", "Backend", "CallRecord", "CallStore", "Charged", "Lease",
           "Snapshot", "StatusStore", "TransactionalBackend", "Txn"]

_ZERO = Decimal(0)
Clock = Callable[[], float]
# Shared empty mappings for the hot path: read, never written.
_NO_SPENDS: dict[str, budget.WindowSpend] = {}
_NO_HOLDS: dict[str, Decimal] = {}


Charged = tuple[tuple[str, str, Decimal, Decimal], ...]
"""What a settlement charged: ``(scope value or "" for the global budget, window,
spent before, spent after)`` per window, for budget threshold alerts."""


@dataclass(frozen=True, slots=True)
class Lease:
    """An admitted call's hold on budget and (optionally) a concurrency slot.

    ``service`` is its limit scope key; ``scopes`` the scope values
    (``kind=value``) whose budgets it also holds.
    """

    id: str
    service: str
    amount: Decimal
    expires_at: float
    scopes: tuple[str, ...] = ()


_lease = maker(Lease)  # Lease(...) with every field given, for the admission's hot path


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
    scopes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (kind=value, its budget windows)

    @property
    def scope(self) -> str:
        return self.key or self.service


@dataclass(frozen=True)
class Snapshot:
    """The whole shared state of a namespace, read in one step.

    What status, health, alerts, exports and gauges read: one Lua call on
    Redis, one read transaction on SQLite, one lock hold in memory, so a
    view is consistent and costs one round trip however many services it
    shows. Spends are rolled to ``now``; what live leases hold is summed
    (``reserved``, ``in_flight`` per limit scope, ``held`` per scope value).
    ``scopes`` holds the scope values (``kind=value``) only when asked for.
    """

    now: float
    emergency: bool = False
    states: Mapping[str, ServiceState] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # limit scopes with stored state or call counters
    spends: Mapping[str, budget.WindowSpend] = field(default_factory=dict)
    reserved: Decimal = _ZERO
    leases: int = 0
    in_flight: Mapping[str, int] = field(default_factory=dict)
    held: Mapping[str, Decimal] = field(default_factory=dict)
    counters: Mapping[str, Any] = field(default_factory=dict)
    processes: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    scopes: Mapping[str, ScopeState] = field(default_factory=dict)
    degraded: bool = False

    def state(self, service: str) -> ServiceState:
        return self.states.get(service) or ServiceState()

    def budget_status(self) -> tuple[dict[str, budget.WindowSpend], Decimal, int]:
        """As :meth:`Backend.budget_status`."""
        return dict(self.spends), self.reserved, self.leases

    def scope_status(self, kind: str | None = None, value: str | None = None
                     ) -> dict[str, tuple[ScopeState, Decimal]]:
        """As :meth:`Backend.scope_status`, from this snapshot (taken with its scopes)."""
        if kind is not None and value is not None:
            key = f"{kind}={value}"
            return {key: (self.scopes.get(key) or ScopeState(), self.held.get(key, _ZERO))}
        prefix = "" if kind is None else f"{kind}="
        return {key: (state, self.held.get(key, _ZERO)) for key, state in self.scopes.items()
                if key.startswith(prefix)}


def lease_totals(leases: Iterable[tuple[str, Decimal, Iterable[str]]]
                 ) -> dict[str, Any]:
    """:class:`Snapshot`'s lease fields from ``(limit scope, amount, scope values)`` of the
    live leases."""
    reserved, count = _ZERO, 0
    in_flight: dict[str, int] = {}
    held: dict[str, Decimal] = {}
    for service, amount, keys in leases:
        reserved += amount
        count += 1
        in_flight[service] = in_flight.get(service, 0) + 1
        for key in keys:
            held[key] = held.get(key, _ZERO) + amount
    return {"reserved": reserved, "leases": count, "in_flight": in_flight, "held": held}


def call_names(states: Iterable[str], counter_keys: Iterable[str]) -> tuple[str, ...]:
    """The limit scopes a backend knows: stored state, or counters of calls made."""
    names = set(states)
    names.update(schema.split(k)[1] for k in counter_keys if schema.kind(k) in schema.CALL_KINDS)
    return tuple(sorted(names))


class CallStore(abc.ABC):
    """The hot path: what every governed call needs from where state lives.

    One atomic step to admit and one to settle (memory: a lock; SQLite: one
    transaction; Redis: one Lua script), the heartbeat's lease renewals and
    sweeps, and the process's published status (at most once a second). A
    governed call uses nothing else (``tests/backends/test_base.py`` holds it).
    """

    blocking: bool = False  # True when a step may wait on I/O (async callers use a thread)
    shared: bool = False  # True when other processes decide on the same state

    @abc.abstractmethod
    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        """Decide ``req`` atomically; when admitted, hold a lease ``lease_id`` for ``ttl`` s."""

    @abc.abstractmethod
    def observe(self, service: str, limits: Limits, obs: Observation) -> None:
        """Fold an intermediate attempt's outcome into the service state."""

    @abc.abstractmethod
    def settle(
        self, lease_id: str | None, limits: Limits, obs: Observation | None, record: CallRecord
    ) -> Charged:
        """Release the lease, charge ``record.cost``, fold ``obs`` in, count the call.

        Returns what each budget window's spend went from and to (empty when
        nothing was charged, or the settlement was applied already).
        """

    def sweep(self) -> None:  # noqa: B027 - optional
        """Charge the leases that expired (the heartbeat runs it while budgets are set)."""

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
    def count(self, key: str) -> None:
        """Add one to the counter ``key`` (built with :func:`.schema.key`: an alert fired, say)."""

    @abc.abstractmethod
    def publish_process(self, process_id: str, doc: dict[str, Any], ttl: float) -> None:
        """Publish this process's live status (queues, in-flight) for ``ttl`` seconds."""

    def now(self) -> float:
        """The backend's clock (Redis: the server's ``TIME``)."""
        return time.time()


class StatusStore(abc.ABC):
    """The read model and the operator's levers: what status, health, the monitor,
    exporters and the CLI read (:meth:`snapshot`, one consistent read) and the
    commands they run (emergency mode, resets). Never on a call's path."""

    @abc.abstractmethod
    def now(self) -> float:
        """The store's clock (instants in :meth:`snapshot` are on it)."""

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
    def scope_status(self, kind: str | None = None,
                     value: str | None = None) -> dict[str, tuple[ScopeState, Decimal]]:
        """Per scope value (``kind=value``; of ``kind``, or all): its stored state and what
        leases hold of it. With ``value``, just that one (fresh if never seen)."""

    @abc.abstractmethod
    def counters(self) -> dict[str, Any]:
        """All counters: ``{"requests": {service: {decision: n}}, "calls": …, "cost": …}``."""

    @abc.abstractmethod
    def processes(self) -> dict[str, dict[str, Any]]:
        """Live process documents published by every process on this backend."""

    def snapshot(self, scopes: bool = True) -> Snapshot:
        """Everything at once (:class:`Snapshot`); ``scopes`` False skips the scope values,
        which a namespace with a million users makes the largest part.

        This default reads piece by piece; the shipped backends override it
        with one atomic read.
        """
        now = self.now()
        spends, reserved, count = self.budget_status()
        names = tuple(self.services())
        found = self.scope_status() if scopes else {}
        return Snapshot(
            now, self.emergency(), {n: self.service_state(n) for n in names}, names, spends,
            reserved, count, {n: self.in_flight(n) for n in names},
            {k: held for k, (_, held) in found.items()}, self.counters(), self.processes(),
            {k: st for k, (st, _) in found.items()})


class Backend(CallStore, StatusStore):
    """Where state lives: the hot path and the status store of one namespace.
    Implementations: memory, SQLite, Redis (the shared two behind a failover wrapper)."""

    name: str = "backend"
    url: str = ""

    def reset(self) -> None:
        """Forget all state (tests, ``llm-governor reset``)."""

    def close(self) -> None:
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
    def scope(self, key: str) -> ScopeState:
        """The state of one scope value (``kind=value``); a fresh one if none is stored."""

    @abc.abstractmethod
    def put_scope(self, key: str, state: ScopeState) -> None: ...

    @abc.abstractmethod
    def drop_idle_scopes(self, now: float) -> None:
        """Forget the scope states that expired (their windows ended, nothing holds them)."""

    @abc.abstractmethod
    def scopes_of(self, kind: str | None) -> dict[str, ScopeState]:
        """Stored scope states (of one kind, or all)."""

    @abc.abstractmethod
    def incr(self, key: str, amount: int | Decimal) -> None:
        """Add to the counter ``key`` (``|``-separated parts)."""


class TransactionalBackend(Backend):
    """The contract implemented once over :meth:`transaction`."""

    def __init__(self, budget_limits: dict[str, Decimal], clock: Clock | None = None) -> None:
        self.budget_limits = dict(budget_limits)
        self._clock = clock or time.time
        self._keys: dict[tuple[str, ...], str] = {}  # counter keys, built once (see _key)

    def now(self) -> float:
        return self._clock()

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Txn]: ...

    def read(self) -> AbstractContextManager[Txn]:
        """A consistent snapshot for status reads; a backend may make it cheaper than a write."""
        return self.transaction()

    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        with self.transaction() as tx:
            return self._admit(tx, req, lease_id, ttl)

    def _admit(self, tx: Txn, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        """:meth:`admit` inside the caller's transaction ``tx``."""
        now = self._clock()
        emergency = tx.emergency()
        lim = req.emergency_limits if emergency else req.limits
        sreqs = req.scopes
        held = bool(sreqs) and req.reserve and any(sr.budgets for sr in sreqs)
        scope_reserved: dict[str, Decimal] = {} if held else _NO_HOLDS
        reserved, in_flight = _ZERO, 0
        if req.reserve and (self.budget_limits or lim.max_concurrency or held):
            self._charge_expired(tx, now)
            key = req.key
            # one pass over the live leases: what they reserve, how many are this scope's
            # (the same additions, in the same order, as a sum() per total)
            for le in tx.leases(now, ttl):
                reserved += le.amount
                if le.service == key:
                    in_flight += 1
                if held:
                    for sk in le.scopes:
                        scope_reserved[sk] = scope_reserved.get(sk, _ZERO) + le.amount
        decision = self._decide(tx, req, lease_id, ttl, now, emergency, reserved, in_flight,
                                scope_reserved) if sreqs else \
            self._decide_unscoped(tx, req, lease_id, ttl, now, emergency, reserved, in_flight)
        # one count per admission: observed limits count the first refusal they would
        # have made (as would_…); an enforced scope's refusal is real
        if decision.observed is not None:
            outcome = f"would_{decision.observed}"
        elif decision.admitted or not req.observe or decision.scope:
            outcome = decision.outcome
        else:
            outcome = f"would_{decision.outcome}"
        if outcome != "rate_limited":  # a wait, not a refusal: see count_decision
            tx.incr(self._key("requests", req.service, outcome), 1)
        return decision

    def _key(self, *parts: str) -> str:
        """:func:`.schema.key` of ``parts``, built once per distinct parts (the hot path
        counts the same few keys over and over). Bounded: job ids are unbounded."""
        key = self._keys.get(parts)
        if key is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            key = self._keys[parts] = schema.key(*parts)
        return key

    def _decide_unscoped(self, tx: Txn, req: AdmitRequest, lease_id: str | None, ttl: float,
                         now: float, emergency: bool, reserved: Decimal,
                         in_flight: int) -> Decision:
        """:meth:`_decide` of a call without scope values (most calls): the same steps and
        the same result, without the scopes' bookkeeping (tests/backends hold the two
        paths to identical decisions and state)."""
        state = tx.service(req.key)
        decision, new_state = admission.decide(
            state, tx.spends() if self.budget_limits else _NO_SPENDS, self.budget_limits,
            reserved, in_flight, req, now, emergency=emergency)
        if new_state is not state:
            tx.put_service(req.key, new_state)
        if lease_id is not None and decision.admitted:
            tx.add_lease(_lease(lease_id, req.key, req.cost, now + ttl, ()))
        return decision

    def _decide(self, tx: Txn, req: AdmitRequest, lease_id: str | None, ttl: float, now: float,
                emergency: bool, reserved: Decimal, in_flight: int,
                scope_reserved: dict[str, Decimal]) -> Decision:
        """Scope budgets, then the service's limits, then the scopes' buckets: all or nothing."""
        found = {sr.key: tx.scope(sr.key) for sr in req.scopes} if req.scopes else {}
        observed: admission.Outcome | None = None  # the first refusal of an observed scope
        if req.reserve:
            for sr in req.scopes:
                refusal = scopes.check(sr, found[sr.key], scope_reserved.get(sr.key, _ZERO),
                                       req.cost, now)
                if refusal is None:
                    continue
                if sr.observe:
                    observed = observed or refusal.outcome
                    continue
                return replace(refusal, emergency=emergency)
        state = tx.service(req.key)
        spends = tx.spends() if self.budget_limits else {}
        decision, new_state = admission.decide(
            state, spends, self.budget_limits, reserved, in_flight, req, now,
            emergency=emergency,
        )
        if decision.admitted and req.scopes:
            wait, waited_for = -1.0, None
            taken: dict[str, ScopeState] = {}
            for sr in req.scopes:
                w, new_scope = scopes.take(sr, found[sr.key], req.llm_tokens, now)
                if w >= 0 and sr.observe:
                    observed = observed or "rate_limited"
                elif w > wait:
                    wait, waited_for = w, sr.key
                if new_scope is not found[sr.key]:
                    taken[sr.key] = new_scope
            if wait >= 0:  # a scope's bucket holds the call: the service's take is undone
                for key, new_scope in taken.items():
                    tx.put_scope(key, new_scope)  # only clock corrections, on a refusal
                return Decision(False, "rate_limited", wait, emergency=emergency, bound="scope",
                                scope=waited_for)
            for sr in req.scopes:
                current = scopes.hold(sr, taken.get(sr.key, found[sr.key]), now)
                if current is not found[sr.key]:
                    tx.put_scope(sr.key, current)
        if new_state is not state:
            tx.put_service(req.key, new_state)
        if decision.admitted and lease_id is not None:
            tx.add_lease(Lease(lease_id, req.key, req.cost, now + ttl,
                               tuple(sr.key for sr in req.scopes if sr.budgets)))
        if observed is not None and (decision.admitted or req.observe):
            decision = replace(decision, observed=observed)
        return decision

    def observe(self, service: str, limits: Limits, obs: Observation) -> None:
        with self.transaction() as tx:
            now = self._clock()
            state = tx.service(service)
            new_state = admission.observe(state, limits, obs, now,
                                          _in_flight(tx, now, service, obs, state))
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
            for key in le.scopes:
                state = tx.scope(key)
                tx.put_scope(key, scopes.settle(state, tuple(state.spends), le.amount, now))
            service = service_of(le.service)
            tx.incr(schema.key("expired", service), 1)
            if le.amount:
                tx.incr(schema.key("cost", service, EXPIRED_MODEL), le.amount)
            tx.mark_done(le.id, now + DONE_TTL)
        if self.budget_limits:
            tx.put_spends(spends)

    def sweep(self) -> None:
        with self.transaction() as tx:
            now = self._clock()
            self._charge_expired(tx, now)
            tx.drop_idle_scopes(now)

    def settle(
        self, lease_id: str | None, limits: Limits, obs: Observation | None, record: CallRecord
    ) -> Charged:
        with self.transaction() as tx:
            return self._settle(tx, lease_id, limits, obs, record)

    def _settle(self, tx: Txn, lease_id: str | None, limits: Limits, obs: Observation | None,
                record: CallRecord) -> Charged:
        """:meth:`settle` inside the caller's transaction ``tx``."""
        now = self._clock()
        if lease_id is not None and tx.pop_lease(lease_id) is None \
                and tx.done(lease_id, now):
            return ()  # its lease expired and was charged already: count it once
        if record.settle_id is not None and record.settle_id != lease_id \
                and tx.done(record.settle_id, now):
            return ()
        charged: list[tuple[str, str, Decimal, Decimal]] = []
        cost = record.cost
        if cost:
            if self.budget_limits:
                before = tx.spends()
                after = budget.settle(before, self.budget_limits, cost, now)
                tx.put_spends(after)
                charged += _changes("", before, after, self.budget_limits, now)
            for key, windows in record.scopes:
                held = tx.scope(key)
                new = scopes.settle(held, windows, cost, now)
                tx.put_scope(key, new)
                charged += _changes(key, held.spends, new.spends, windows, now)
        if obs is not None:
            scope = record.key or record.service
            state = tx.service(scope)
            new_state = admission.observe(state, limits, obs, now,
                                          _in_flight(tx, now, scope, obs, state))
            if new_state is not state:
                tx.put_service(scope, new_state)
        service, model = record.service, record.model
        if record.final:
            tx.incr(self._key("calls", service, model, record.status), 1)
            if record.attempts > 1:
                tx.incr(self._key("retries", service), record.attempts - 1)
        else:
            tx.incr(self._key("lost", service), 1)
        if cost:
            tx.incr(self._key("cost", service, model), cost)
            if record.job:
                tx.incr(self._key("job", record.job), cost)
        if record.overrun:
            tx.incr(self._key("overrun", service, model), record.overrun)
        return tuple(charged) if charged else ()

    def forget(self, keys: list[str]) -> None:
        with self.transaction() as tx:
            for key in keys:
                tx.put_service(key, ServiceState())

    def reset_budget(self, windows: Sequence[str] | None = None,
                     scope: tuple[str, str] | None = None) -> dict[str, Decimal]:
        with self.transaction() as tx:
            now = self._clock()
            if scope is not None:
                key = f"{scope[0]}={scope[1]}"
                state = tx.scope(key)
                kept = {w: sp for w, sp in state.spends.items()
                        if windows is not None and w not in windows}
                if len(kept) < len(state.spends):
                    tx.put_scope(key, replace(state, spends=kept))
                return budget.spent_now(
                    {w: sp for w, sp in state.spends.items() if w not in kept}, now)
            spends = dict(tx.spends())
            gone = {w: spends.pop(w) for w in list(spends) if windows is None or w in windows}
            if gone:
                tx.put_spends(spends)
            return budget.spent_now(gone, now)

    def renew(self, lease_ids: list[str], ttl: float) -> int:
        if not lease_ids:
            return 0
        with self.transaction() as tx:
            expires = self._clock() + ttl
            return sum(1 for lease_id in lease_ids if tx.renew_lease(lease_id, expires))

    def count_decision(self, service: str, decision: str) -> None:
        self.count(schema.key("requests", service, decision))

    def count(self, key: str) -> None:
        with self.transaction() as tx:
            tx.incr(key, 1)

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

    def scope_status(self, kind: str | None = None,
                     value: str | None = None) -> dict[str, tuple[ScopeState, Decimal]]:
        with self.read() as tx:
            now = self._clock()
            held: dict[str, Decimal] = {}
            for le in tx.leases(now):
                for key in le.scopes:
                    held[key] = held.get(key, _ZERO) + le.amount
            if kind is not None and value is not None:
                found = {f"{kind}={value}": tx.scope(f"{kind}={value}")}
            else:
                found = tx.scopes_of(kind)
            return {key: (state, held.get(key, _ZERO)) for key, state in found.items()}


def _changes(key: str, before: dict[str, budget.WindowSpend],
             after: dict[str, budget.WindowSpend], windows: Iterable[str],
             now: float) -> list[tuple[str, str, Decimal, Decimal]]:
    """``(key, window, spent before, spent after)`` of each window a settlement charged."""
    return [(key, w, budget.roll(before.get(w, budget.WindowSpend()), w, now).spent,
             after[w].spent) for w in windows]


def _in_flight(tx: Txn, now: float, service: str, obs: Observation,
               state: ServiceState) -> int:
    """Calls of ``service`` in flight, when provider headers need them and the attempt's
    admission count cannot say what the provider has not counted (else 0, no scan)."""
    if obs.provider is None or 0 < obs.sent <= state.sent:
        return 0
    return sum(1 for le in tx.leases(now) if le.service == service)


EXPIRED_MODEL = "(expired)"  # the cost counter's model for leases charged at expiry
DONE_TTL = 3600.0  # seconds an applied settlement or expiry is remembered

MONEY_COUNTERS = tuple(k + schema.SEP for k in schema.MONEY_KINDS)
"""Counter key prefixes that hold USD amounts (the rest count events)."""


def nest_counters(flat: Iterator[tuple[str, int | Decimal]]) -> dict[str, Any]:
    """``{"requests|openai|admitted": 3}`` → ``{"requests": {"openai": {"admitted": 3}}}``."""
    out: dict[str, Any] = {}
    for key, value in flat:
        parts = schema.split(key)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
