"""In-process state: a lock over dicts. For tests, single-process apps and as the
``local`` fallback when a shared backend is unreachable."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

from ..policies import budget
from ..policies.admission import AdmitRequest, Decision, Limits, Observation, ServiceState
from ..policies.scopes import ScopeState
from .base import (
    CallRecord,
    Charged,
    Clock,
    Lease,
    Snapshot,
    TransactionalBackend,
    Txn,
    call_names,
    lease_totals,
    nest_counters,
)

__all__ = ["MemoryBackend"]


class _MemoryTxn(Txn):
    __slots__ = ("_b", "_readonly")

    def __init__(self, backend: MemoryBackend, readonly: bool = False) -> None:
        self._b = backend
        self._readonly = readonly  # status reads change nothing, as on the other backends

    def service(self, name: str) -> ServiceState:
        state = self._b._services.get(name)
        if state is None:
            state = self._b._services[name] = ServiceState()
        return state

    def put_service(self, name: str, state: ServiceState) -> None:
        self._b._services[name] = state

    def spends(self) -> dict[str, budget.WindowSpend]:
        return self._b._spends

    def put_spends(self, spends: dict[str, budget.WindowSpend]) -> None:
        self._b._spends = spends

    def leases(self, now: float, max_ttl: float | None = None) -> list[Lease]:
        leases = self._b._leases
        if not leases:
            return []
        if max_ttl is not None and not self._readonly:
            horizon = now + max_ttl
            for k, le in list(leases.items()):
                if le.expires_at > horizon:
                    leases[k] = Lease(le.id, le.service, le.amount, horizon, le.scopes)
        return [le for le in leases.values() if le.expires_at > now]

    def expire(self, now: float) -> list[Lease]:
        leases = self._b._leases
        expired = [le for le in leases.values() if le.expires_at <= now]
        for le in expired:
            del leases[le.id]
        return expired

    def done(self, settle_id: str, now: float) -> bool:
        until = self._b._done.get(settle_id)
        return until is not None and until > now

    def mark_done(self, settle_id: str, until: float) -> None:
        done = self._b._done
        if len(done) > 4096:
            for k in [k for k, t in done.items() if t <= until - 3600.0]:
                del done[k]
        done[settle_id] = until

    def add_lease(self, lease: Lease) -> None:
        self._b._leases[lease.id] = lease

    def pop_lease(self, lease_id: str) -> Lease | None:
        return self._b._leases.pop(lease_id, None)

    def renew_lease(self, lease_id: str, expires_at: float) -> bool:
        lease = self._b._leases.get(lease_id)
        if lease is None:
            return False
        self._b._leases[lease_id] = Lease(lease.id, lease.service, lease.amount, expires_at,
                                          lease.scopes)
        return True

    def emergency(self) -> bool:
        return self._b._emergency

    def scope(self, key: str) -> ScopeState:
        return self._b._scopes.get(key) or ScopeState()

    def put_scope(self, key: str, state: ScopeState) -> None:
        self._b._scopes[key] = state

    def drop_idle_scopes(self, now: float) -> None:
        found = self._b._scopes
        idle = [k for k, st in found.items() if st.expires <= now]
        if len(idle) > len(found) // 2:  # a dict never shrinks: rebuild it to free its table
            self._b._scopes = {k: st for k, st in found.items() if st.expires > now}
            return
        for key in idle:
            del found[key]

    def scopes_of(self, kind: str | None) -> dict[str, ScopeState]:
        prefix = None if kind is None else f"{kind}="
        return {k: st for k, st in self._b._scopes.items()
                if prefix is None or k.startswith(prefix)}

    def incr(self, key: str, amount: int | Decimal) -> None:
        c = self._b._counters
        c[key] = c.get(key, 0) + amount


class _Locked:
    """A lock that yields the transaction: cheaper than a generator context manager."""

    __slots__ = ("_lock", "_txn")

    def __init__(self, lock: threading.Lock, txn: Txn) -> None:
        self._lock = lock
        self._txn = txn

    def __enter__(self) -> Txn:
        self._lock.acquire()
        return self._txn

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class MemoryBackend(TransactionalBackend):
    """State in this process only; every step under one lock."""

    name = "memory"

    def __init__(
        self, budget_limits: dict[str, Decimal] | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(budget_limits or {}, clock)
        self.url = "memory"
        self._lock = threading.Lock()
        self._txn = _MemoryTxn(self)
        self._locked = _Locked(self._lock, self._txn)
        self._reading = _Locked(self._lock, _MemoryTxn(self, readonly=True))
        self.reset()

    def reset(self) -> None:
        self._services: dict[str, ServiceState] = {}
        self._spends: dict[str, budget.WindowSpend] = {}
        self._leases: dict[str, Lease] = {}
        self._scopes: dict[str, ScopeState] = {}  # kind=value → its spend and buckets
        self._done: dict[str, float] = {}  # settle ids applied (expiry charges) → until
        self._counters: dict[str, int | Decimal] = {}
        self._emergency = False
        self._processes: dict[str, tuple[float, dict[str, Any]]] = {}

    def transaction(self) -> _Locked:
        return self._locked

    # The two steps of every call take the lock itself (a C-level context manager).
    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        with self._lock:
            return self._admit(self._txn, req, lease_id, ttl)

    def settle(self, lease_id: str | None, limits: Limits, obs: Observation | None,
               record: CallRecord) -> Charged:
        with self._lock:
            return self._settle(self._txn, lease_id, limits, obs, record)

    def read(self) -> _Locked:
        return self._reading

    def after_fork(self) -> None:
        """In a forked child: a lock another thread of the parent held stays held here."""
        self._lock = threading.Lock()
        self._locked = _Locked(self._lock, self._txn)
        self._reading = _Locked(self._lock, _MemoryTxn(self, readonly=True))

    def emergency(self) -> bool:
        return self._emergency

    def set_emergency(self, enabled: bool) -> None:
        with self._lock:
            self._emergency = bool(enabled)

    def services(self) -> list[str]:
        with self._lock:
            return list(call_names(self._services, self._counters))

    def snapshot(self, scopes: bool = True) -> Snapshot:
        now = self._clock()
        with self._lock:
            live = [(le.service, le.amount, le.scopes) for le in self._leases.values()
                    if le.expires_at > now]
            return Snapshot(
                now, self._emergency, dict(self._services),
                call_names(self._services, self._counters),
                {w: budget.roll(s, w, now) for w, s in self._spends.items()},
                counters=nest_counters(iter(list(self._counters.items()))),
                processes={k: doc for k, (exp, doc) in self._processes.items() if exp > now},
                scopes=dict(self._scopes) if scopes else {}, **lease_totals(live))

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return nest_counters(iter(list(self._counters.items())))

    def publish_process(self, process_id: str, doc: dict[str, Any], ttl: float) -> None:
        with self._lock:
            self._processes[process_id] = (self._clock() + ttl, doc)

    def processes(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        with self._lock:
            return {k: doc for k, (exp, doc) in self._processes.items() if exp > now}
