"""Outage handling for any shared store (a SQLite file, Redis), in one place.

A shared store can fail at run time: a full disk, a read-only or replaced
file, a database locked for too long, a Redis server that is gone or hangs.
Its error never reaches user code. :class:`FailoverBackend` wraps the store
and, on its first error, follows ``on_backend_error`` exactly as an outage at
start-up does, with one warning:

* ``local``: admit on a per-process :class:`~.memory.MemoryBackend` holding
  ``degraded_budget_share`` of each budget window (per window, across outages),
  the global budget's and each scope's;
* ``closed``: refuse admissions with :class:`BackendUnavailableError`;
* ``open``: admit every call (counted, never refused).

In all three ``degraded`` is True; settlements, observations and status use
the local state. A background probe asks the store every ``probe_interval``
seconds; when it answers, the settlements made meanwhile are replayed into it
(idempotent per settle id on stores that can replay a step: a Redis script
that timed out on the client but ran on the server counts once, and its
lease is released), the decisions counted meanwhile are added, and shared
limits resume. Leases held in the store across an outage expire by their TTL.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, TypeVar

from ..errors import BackendUnavailableError, ConfigError
from ..policies import budget
from ..policies.admission import AdmitRequest, Decision, Limits, Observation, ServiceState
from ..policies.scopes import ScopeState
from . import schema
from .base import Backend, CallRecord, Charged, Snapshot
from .memory import MemoryBackend

__all__ = ["FailoverBackend", "SharedStore"]

logger = logging.getLogger("llm_governor")
T = TypeVar("T")

MODES = ("local", "closed", "open")
_JOURNAL_LIMIT = 100_000  # settlements kept for replay while degraded


class SharedStore(Backend):
    """A backend whose steps may fail with ``errors`` (I/O), wrapped by :class:`FailoverBackend`."""

    #: the exceptions that mean "the store is unavailable" (anything else is a bug)
    errors: tuple[type[BaseException], ...] = ()
    shared = True

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise one of ``errors`` unless the store can take a write now."""

    @abc.abstractmethod
    def add_counters(self, deltas: dict[str, int]) -> None:
        """Add event counts (decisions made while the store was away)."""

    def scrub(self, text: str) -> str:
        """``text`` with any secret of the store's URL removed."""
        return text


class _LocalBackend(MemoryBackend):
    """This process's stand-in while the store is away; remembers what it owes the store."""

    def __init__(self, budget_limits: dict[str, Decimal], admit_all: bool,
                 share: Decimal = Decimal(1)) -> None:
        super().__init__(budget_limits)
        self.admit_all = admit_all  # on_error = "open": count, never refuse
        self.share = share  # of each scope's budgets, as of the global one
        self.journal: list[tuple[str | None, Limits, CallRecord]] = []
        self.pushed_counters: dict[str, int | Decimal] = {}

    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        if not self.admit_all:
            if req.scopes and self.share != 1:
                req = replace(req, scopes=tuple(
                    replace(sr, budgets={w: v * self.share for w, v in sr.budgets.items()})
                    for sr in req.scopes))
            return super().admit(req, lease_id, ttl)
        self.count_decision(req.service, "admitted")
        return Decision(True, "admitted")

    def settle(self, lease_id: str | None, limits: Limits, obs: Observation | None,
               record: CallRecord) -> Charged:
        charged = super().settle(lease_id, limits, obs, record)
        with self._lock:
            if len(self.journal) < _JOURNAL_LIMIT:
                self.journal.append((lease_id, limits, record))
            elif len(self.journal) == _JOURNAL_LIMIT:
                logger.error("RATE_LIMIT more than %d calls settled during a backend outage: "
                             "later ones are not replayed into the shared store", _JOURNAL_LIMIT)
        return charged

    def owed(self) -> tuple[list[tuple[str | None, Limits, CallRecord]], dict[str, int]]:
        """Settlements to replay and decision counts to add, since the last hand-over."""
        with self._lock:
            journal, self.journal = self.journal, []
            counters = dict(self._counters)
        deltas = {}
        for key, value in counters.items():
            if schema.kind(key) == "requests" and isinstance(value, int):
                delta = value - int(self.pushed_counters.get(key, 0))
                if delta:
                    deltas[key] = delta
        return journal, deltas

    def handed_over(self, journal: list[tuple[str | None, Limits, CallRecord]],
                    deltas: dict[str, int]) -> None:
        """The store has them; calls in flight now settle there, so their leases go."""
        with self._lock:
            for key, delta in deltas.items():
                self.pushed_counters[key] = int(self.pushed_counters.get(key, 0)) + delta
            self._leases.clear()

    def give_back(self, journal: list[tuple[str | None, Limits, CallRecord]]) -> None:
        """A replay failed half-way: keep what was not handed over for the next one."""
        with self._lock:
            self.journal[:0] = journal


class FailoverBackend(Backend):
    """A :class:`SharedStore` whose outages degrade to ``on_error`` and recover by themselves."""

    def __init__(self, store: SharedStore, budget_limits: dict[str, Decimal] | None = None, *,
                 on_error: str = "local", degraded_budget_share: float = 0.25,
                 probe_interval: float = 1.0) -> None:
        if on_error not in MODES:
            raise ConfigError(f"on_backend_error = {on_error!r}: allowed: {', '.join(MODES)}")
        self.store = store
        self.name = store.name
        self.url = store.url
        self.blocking = True
        self.shared = True
        self.on_error = on_error
        self.budget_limits = dict(budget_limits or {})
        self.degraded = False
        share = Decimal(str(degraded_budget_share))
        self._local = _LocalBackend(
            {w: limit * share for w, limit in self.budget_limits.items()}
            if on_error == "local" else self.budget_limits,
            admit_all=on_error == "open",
            share=share if on_error == "local" else Decimal(1),
        )
        self._last_emergency = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._probe: threading.Thread | None = None
        self._probe_pid = 0
        self._probe_interval = probe_interval
        self._reason = ""

    # ------------------------------------------------------------- outages
    def _lost(self, exc: BaseException) -> None:
        """Switch to the fallback: one warning, then probe until the store answers."""
        with self._lock:
            if self.degraded:
                return
            self._reason = self.store.scrub(f"{type(exc).__name__}: {exc}")
            self._local.set_emergency(self._last_emergency)
            self.degraded = True
        then = {
            "local": "continuing with per-process limits and a share of each budget",
            "closed": "refusing calls (on_backend_error = closed)",
            "open": "admitting every call without limits (on_backend_error = open)",
        }[self.on_error]
        logger.warning("RATE_LIMIT llm-governor cannot use its %s backend %s (%s); %s "
                       "until it returns", self.name, self.url, self._reason, then)
        self._ensure_probe()

    def _ensure_probe(self) -> None:
        pid = os.getpid()
        if self._probe is not None and self._probe_pid == pid and self._probe.is_alive():
            return
        with self._lock:
            if self._probe is not None and self._probe_pid == pid and self._probe.is_alive():
                return
            self._probe_pid = pid
            self._probe = threading.Thread(target=self._probe_loop, daemon=True,
                                           name=f"llm-governor-{self.name}-probe")
            self._probe.start()

    def _probe_loop(self) -> None:
        while self.degraded and not self._closed.wait(self._probe_interval):
            if self.recover():
                logger.warning("RATE_LIMIT llm-governor %s backend %s is back; shared limits "
                               "resumed", self.name, self.url)

    def recover(self) -> bool:
        """Try the store; when it answers, hand over what was done meanwhile and resume."""
        journal, deltas = self._local.owed()
        done = 0
        try:
            self.store.ping()
            for lease_id, limits, record in journal:
                self.store.settle(lease_id, limits, None, record)
                done += 1
            if deltas:
                self.store.add_counters(deltas)
        except self.store.errors:
            self._local.give_back(journal[done:])
            return False
        self._local.handed_over(journal, deltas)
        self.degraded = False
        return True

    def _do(self, remote: Callable[[SharedStore], T], local: Callable[[Backend], T],
            refuse: bool = False) -> T:
        """``remote(store)``; on a store error (or while degraded) ``local(fallback)``.

        ``refuse`` marks the steps ``closed`` refuses (admission, the emergency
        toggle); the rest (settling calls already made, status) use the local
        state in every mode, and what they did reaches the store when it returns.
        """
        if not self.degraded:
            try:
                return remote(self.store)
            except self.store.errors as exc:
                self._lost(exc)
        else:
            self._ensure_probe()
        if refuse and self.on_error == "closed":
            raise BackendUnavailableError(
                f"llm-governor state backend {self.url} is unavailable ({self._reason}); "
                "on_backend_error = closed refuses calls until it returns")
        return local(self._local)

    # --------------------------------------------------------- the contract
    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        decision = self._do(lambda s: s.admit(req, lease_id, ttl),
                            lambda b: b.admit(req, lease_id, ttl), refuse=True)
        self._last_emergency = decision.emergency
        return decision

    def observe(self, service: str, limits: Limits, obs: Observation) -> None:
        self._do(lambda s: s.observe(service, limits, obs),
                 lambda b: b.observe(service, limits, obs))

    def settle(self, lease_id: str | None, limits: Limits, obs: Observation | None,
               record: CallRecord) -> Charged:
        return self._do(lambda s: s.settle(lease_id, limits, obs, record),
                 lambda b: b.settle(lease_id, limits, obs, record))

    def renew(self, lease_ids: list[str], ttl: float) -> int:
        return self._do(lambda s: s.renew(lease_ids, ttl), lambda b: b.renew(lease_ids, ttl))

    def sweep(self) -> None:
        self._do(lambda s: s.sweep(), lambda b: b.sweep())

    def forget(self, keys: list[str]) -> None:
        self._local.forget(keys)
        self._do(lambda s: s.forget(keys), lambda b: None, refuse=True)

    def reset_budget(self, windows: Sequence[str] | None = None,
                     scope: tuple[str, str] | None = None) -> dict[str, Decimal]:
        local = self._local.reset_budget(windows, scope)
        return self._do(lambda s: s.reset_budget(windows, scope), lambda b: local,
                        refuse=True)

    def count_decision(self, service: str, decision: str) -> None:
        self._do(lambda s: s.count_decision(service, decision),
                 lambda b: b.count_decision(service, decision))

    def count(self, key: str) -> None:
        self._do(lambda s: s.count(key), lambda b: b.count(key))

    def emergency(self) -> bool:
        return self._do(lambda s: s.emergency(), lambda b: b.emergency())

    def set_emergency(self, enabled: bool) -> None:
        self._do(lambda s: s.set_emergency(enabled), lambda b: b.set_emergency(enabled),
                 refuse=True)

    def service_state(self, service: str) -> ServiceState:
        return self._do(lambda s: s.service_state(service), lambda b: b.service_state(service))

    def services(self) -> list[str]:
        return self._do(lambda s: s.services(), lambda b: b.services())

    def budget_status(self) -> tuple[dict[str, budget.WindowSpend], Decimal, int]:
        return self._do(lambda s: s.budget_status(), lambda b: b.budget_status())

    def scope_status(self, kind: str | None = None,
                     value: str | None = None) -> dict[str, tuple[ScopeState, Decimal]]:
        return self._do(lambda s: s.scope_status(kind, value),
                        lambda b: b.scope_status(kind, value))

    def in_flight(self, service: str) -> int:
        return self._do(lambda s: s.in_flight(service), lambda b: b.in_flight(service))

    def counters(self) -> dict[str, Any]:
        return self._do(lambda s: s.counters(), lambda b: b.counters())

    def snapshot(self, scopes: bool = True) -> Snapshot:
        found = self._do(lambda s: s.snapshot(scopes), lambda b: b.snapshot(scopes))
        return replace(found, degraded=True) if self.degraded else found

    def publish_process(self, process_id: str, doc: dict[str, Any], ttl: float) -> None:
        self._do(lambda s: s.publish_process(process_id, doc, ttl),
                 lambda b: b.publish_process(process_id, doc, ttl))

    def processes(self) -> dict[str, dict[str, Any]]:
        return self._do(lambda s: s.processes(), lambda b: b.processes())

    def now(self) -> float:
        return self._do(lambda s: s.now(), lambda b: b.now())

    def reset(self) -> None:
        self._local.reset()
        self._do(lambda s: s.reset(), lambda b: None)

    def after_fork(self) -> None:
        """In a forked child: the parent's probe thread and locks are not ours."""
        self._lock = threading.Lock()
        self._probe = None
        after_fork = getattr(self.store, "after_fork", None)
        if after_fork is not None:
            after_fork()

    def close(self) -> None:
        self._closed.set()
        self.store.close()
