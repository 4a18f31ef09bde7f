"""Shared state in Redis: one limit, one budget and one circuit across hosts.

Each step is one Lua script run with ``EVALSHA`` (one round trip): ``admit``
(emergency flag, breaker, budget reservation, concurrency slot, the three
GCRA buckets, adaptive rates, spend pacing, the lease and the decision
counter), ``settle`` and ``observe``. The scripts in ``redis_scripts/`` are a
port of :mod:`llm_governor.policies`; ``tests/backends/test_differential.py``
holds them to identical decisions. Time is the server's ``TIME``, read inside
the scripts, so client clocks never matter.

Keys: every key of a namespace carries the one hash tag ``{llmg:<namespace>}``.
An admission touches the service's state *and* the namespace-wide budget and
lease table, and a Redis Cluster script may only touch keys of one slot, so
the tag is per namespace, not per service (one namespace lives on one shard).

Money: integer nano-dollars (1e-9 USD) inside Redis, exact in Lua's doubles up
to about 9 million USD per window. Amounts with at most 9 decimal places are
exact; finer ones are rounded up (reservations and charges) and budget limits
down, so the rounding never lets spend exceed a budget.

Outages (``on_error``): ``local`` admits on a per-process
:class:`MemoryBackend` holding ``degraded_budget_share`` of each budget
window (per window, across outages); ``closed`` refuses admissions with
:class:`BackendUnavailableError`; ``open`` admits every call. In all three
``degraded`` is True, settles and status use the local state, and a
background probe pings Redis every ``probe_interval`` seconds; when it
answers, what was counted and spent locally is added to Redis and shared
limits resume. Leases held in Redis across an outage expire by their TTL;
settling a lease from the other side of a switch finds nothing to release
and only charges the cost. Every call is bounded by the socket timeouts
(no retries), and skips Redis entirely while degraded.

Tests may pass ``clock``: the scripts then take "now" from an argument
instead of ``TIME`` (the differential test needs both sides on one clock).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import RedisError
from redis.retry import Retry

from ..config import redact_url
from ..errors import BackendUnavailableError, ConfigError
from ..policies import adaptive, budget, rate
from ..policies.adaptive import AdaptiveState
from ..policies.admission import AdmitRequest, Decision, Limits, Observation, ServiceState
from ..policies.breaker import BreakerName, BreakerState
from .base import MONEY_COUNTERS, Backend, CallRecord, Clock, nest_counters
from .memory import MemoryBackend

__all__ = ["RedisBackend", "from_nanos", "to_nanos"]

logger = logging.getLogger("llm_governor")
T = TypeVar("T")

_NANO = Decimal(10**9)
_MODES = ("local", "closed", "open")


def to_nanos(amount: Decimal, rounding: str = ROUND_CEILING) -> int:
    """USD → integer nano-dollars, rounded up unless told otherwise."""
    return int((amount * _NANO).to_integral_value(rounding))


def from_nanos(nanos: int) -> Decimal:
    """Integer nano-dollars → USD."""
    return Decimal(nanos) / _NANO


def _f(x: float) -> str:
    return repr(float(x))


def _opt(x: float | None) -> str:
    return "-" if x is None else repr(float(x))


@functools.lru_cache(maxsize=512)
def _limits_arg(lim: Limits) -> str:
    """The numbers the scripts use, as one argument (fewer arguments pack faster)."""
    return " ".join((_f(lim.capacity), _f(lim.rate_floor), _f(lim.rate_ceiling),
                     _f(lim.backoff_multiplier), _f(lim.tokens_per_minute),
                     _f(lim.cost_per_minute_f), str(lim.max_concurrency),
                     str(lim.failure_threshold), str(lim.success_threshold),
                     _f(lim.recovery_timeout)))


_NO_PROVIDER = " ".join("-" * 7)


def _observation_args(obs: Observation, lim: Limits) -> tuple[str, str, str]:
    p = obs.provider
    provider = _NO_PROVIDER if p is None else " ".join((
        _opt(p.limit_requests), _opt(p.remaining_requests), _opt(p.reset_requests),
        _opt(p.limit_tokens), _opt(p.remaining_tokens), _opt(p.reset_tokens),
        _opt(p.retry_after)))
    return obs.outcome, provider, _limits_arg(lim)


def _load_state(raw: str | None) -> ServiceState:
    """Decode the space-separated record the scripts store (field order as in ``_codec``)."""
    if not raw:
        return ServiceState()
    v = raw.split(" ")
    return ServiceState(
        float(v[0]), float(v[1]), float(v[2]),
        BreakerState(cast(BreakerName, v[3]), int(v[4]), int(v[5]), float(v[6])),
        AdaptiveState(float(v[7]), int(v[8]), float(v[9]), float(v[10]), float(v[11]),
                      float(v[12])),
        float(v[13]), int(v[14]), int(v[15]), int(v[16]), int(v[17]),
    )


def _live_leases(raw: dict[str, str], now: float) -> list[tuple[str, int]]:
    """``(service, nanos)`` of each lease (stored as "expires nanos service") live at ``now``."""
    live = []
    for value in raw.values():
        expires, nanos, service = value.split(" ", 2)
        if float(expires) > now:
            live.append((service, int(nanos)))
    return live


@functools.cache
def _script_source(name: str) -> str:
    pkg = resources.files(__package__ or "llm_governor.backends") / "redis_scripts"
    prelude = (pkg / "common.lua").read_text("utf-8")
    for key, value in (("$EPS", rate._EPS), ("$SUCCESS_RUN", adaptive.SUCCESS_RUN)):
        prelude = prelude.replace(key, repr(value))
    return prelude + "\n" + (pkg / f"{name}.lua").read_text("utf-8")


class _LocalBackend(MemoryBackend):
    """This process's stand-in while Redis is away; remembers what it already handed back."""

    _pushed: tuple[dict[str, int | Decimal], dict[str, budget.WindowSpend]]

    def __init__(self, budget_limits: dict[str, Decimal], admit_all: bool) -> None:
        super().__init__(budget_limits)
        self.admit_all = admit_all  # on_error = "open": count, never refuse

    def reset(self) -> None:
        super().reset()
        self._pushed = ({}, {})

    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        if not self.admit_all:
            return super().admit(req, lease_id, ttl)
        self.count_decision(req.service, "admitted")
        return Decision(True, "admitted")

    def unpushed(self) -> tuple[list[str], tuple[dict[str, int | Decimal],
                                                dict[str, budget.WindowSpend]]]:
        """Merge-script arguments for what was counted and spent since the last push."""
        with self._lock:
            counters, spends = dict(self._counters), dict(self._spends)
        old_counters, old_spends = self._pushed
        args: list[str] = []
        for key, value in counters.items():
            delta = value - old_counters.get(key, 0)
            if delta:
                amount = to_nanos(Decimal(delta)) if key.startswith(MONEY_COUNTERS) else delta
                args += (key, str(amount))
        n = len(args) // 2
        windows: list[str] = []
        for window, spend in spends.items():
            old = old_spends.get(window)
            delta = spend.spent - old.spent if old and old.start == spend.start else spend.spent
            if delta:
                windows += (window, _f(spend.start), str(to_nanos(delta)))
        return [str(n), *args, str(len(windows) // 3), *windows], (counters, spends)

    def pushed(self, snapshot: tuple[dict[str, int | Decimal],
                                     dict[str, budget.WindowSpend]]) -> None:
        """Record a successful push; calls in flight now settle in Redis, so drop their leases."""
        self._pushed = snapshot
        with self._lock:
            self._leases.clear()


class RedisBackend(Backend):
    """State in Redis, shared by every process and host using the same namespace."""

    name = "redis"
    blocking = True
    uses_server_clock = True

    def __init__(
        self,
        url: str,
        budget_limits: dict[str, Decimal] | None = None,
        *,
        namespace: str = "default",
        on_error: str = "local",
        degraded_budget_share: float = 0.25,
        clock: Clock | None = None,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        probe_interval: float = 1.0,
    ) -> None:
        """``clock`` replaces the server's ``TIME`` and exists for tests only.

        Timeouts bound every call (no retries); options in the URL's query
        string (``?socket_timeout=2``) win over them.
        """
        if on_error not in _MODES:
            raise ConfigError(f"on_backend_error = {on_error!r}: allowed: {', '.join(_MODES)}")
        self.url = redact_url(url)
        self.namespace = namespace
        self.on_error = on_error
        self.budget_limits = dict(budget_limits or {})
        self.degraded = False
        self._clock = clock
        self.uses_server_clock = clock is None
        password = urlsplit(url).password
        self._secrets = [s for s in {password, unquote(password or "")} if s]
        try:
            self._client = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigError(f"backend {self.url!r}: {self._scrub(str(exc))}") from None
        tag = "{llmg:" + namespace + "}"
        self._k_svc, self._k_leases, self._k_spend, self._k_ctr, self._k_emergency, \
            self._k_procs, self._k_done = (f"{tag}:{k}" for k in (
                "svc", "leases", "spend", "ctr", "emergency", "procs", "done"))
        self._windows = " ".join(
            f"{w} {to_nanos(limit, ROUND_FLOOR)} {budget.WINDOW_SECONDS[w]}"
            for w, limit in self.budget_limits.items())
        self._scripts: dict[str, Script] = {
            name: self._client.register_script(_script_source(name))
            for name in ("admit", "settle", "observe", "publish", "merge", "renew")
        }
        share = Decimal(str(degraded_budget_share))
        self._local = _LocalBackend(
            {w: limit * share for w, limit in self.budget_limits.items()}
            if on_error == "local" else self.budget_limits,
            admit_all=on_error == "open",
        )
        self._last_emergency = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._probe: threading.Thread | None = None
        self._probe_pid = 0
        self._probe_interval = probe_interval
        self._reason = ""
        try:
            pipe = self._client.pipeline(transaction=False)
            for name in self._scripts:
                pipe.script_load(_script_source(name))
            pipe.execute()
        except RedisError as exc:
            self._lost(exc)

    # ------------------------------------------------------------- outages
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _lost(self, exc: RedisError) -> None:
        """Switch to the fallback: one warning, then probe until Redis answers."""
        with self._lock:
            if self.degraded:
                return
            self._reason = self._scrub(f"{type(exc).__name__}: {exc}")
            self._local.set_emergency(self._last_emergency)
            self.degraded = True
        then = {
            "local": "continuing with per-process limits and a share of each budget",
            "closed": "refusing calls (on_backend_error = closed)",
            "open": "admitting every call without limits (on_backend_error = open)",
        }[self.on_error]
        logger.warning("RATE_LIMIT llm-governor cannot reach its Redis backend %s (%s); %s "
                       "until it returns", self.url, self._reason, then)
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
                                           name="llm-governor-redis-probe")
            self._probe.start()

    def _probe_loop(self) -> None:
        while self.degraded and not self._closed.wait(self._probe_interval):
            try:
                self._client.ping()
                args, snapshot = self._local.unpushed()
                self._scripts["merge"](keys=[self._k_ctr, self._k_spend], args=args)
            except RedisError:
                continue
            self._local.pushed(snapshot)
            self.degraded = False
            logger.warning("RATE_LIMIT llm-governor Redis backend %s is back; shared limits "
                           "resumed", self.url)

    def _do(self, remote: Callable[[], T], local: Callable[[Backend], T],
            refuse: bool = False) -> T:
        """``remote()`` against Redis; on failure (or while degraded) ``local(fallback)``.

        ``refuse`` marks the steps ``closed`` refuses (admission, the emergency
        toggle); the rest (settling calls already made, status) use the local
        state in every mode, and what they count reaches Redis when it returns.
        """
        if not self.degraded:
            try:
                return remote()
            except RedisError as exc:
                self._lost(exc)
        else:
            self._ensure_probe()
        if refuse and self.on_error == "closed":
            raise BackendUnavailableError(
                f"llm-governor state backend {self.url} is unavailable ({self._reason}); "
                "on_backend_error = closed refuses calls until it returns")
        return local(self._local)

    # --------------------------------------------------------- the contract
    def _now_arg(self) -> str:
        return "" if self._clock is None else _f(self._clock())

    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        return self._do(lambda: self._admit(req, lease_id, ttl),
                        lambda b: b.admit(req, lease_id, ttl), refuse=True)

    def _admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        r = self._scripts["admit"](
            keys=[self._k_svc, self._k_leases, self._k_spend, self._k_ctr, self._k_emergency],
            args=[self._now_arg(), req.service, lease_id or "", _f(ttl),
                  "1" if req.reserve else "0", "1" if req.refuse_in_emergency else "0",
                  _f(rate.share(req.priority)), _f(req.llm_tokens), str(to_nanos(req.cost)),
                  _f(req.cost_f), self._windows, _limits_arg(req.limits),
                  _limits_arg(req.emergency_limits)],
        )
        self._last_emergency = emergency = bool(r[5])
        return Decision(bool(r[0]), r[1], float(r[2]), from_nanos(int(r[3])) if r[3] else None,
                        r[4] or None, emergency)

    def observe(self, service: str, limits: Limits, obs: Observation) -> None:
        self._do(lambda: self._scripts["observe"](
            keys=[self._k_svc],
            args=[self._now_arg(), service, *_observation_args(obs, limits)],
        ), lambda b: b.observe(service, limits, obs))

    def settle(
        self, lease_id: str | None, limits: Limits, obs: Observation | None, record: CallRecord
    ) -> None:
        self._do(lambda: self._scripts["settle"](
            keys=[self._k_svc, self._k_leases, self._k_spend, self._k_ctr, self._k_done],
            args=[self._now_arg(), lease_id or "", record.service, record.model,
                  record.job or "", record.status, str(record.attempts),
                  str(to_nanos(record.cost)), self._windows, "1" if record.final else "0",
                  str(to_nanos(record.overrun)), record.settle_id or "",
                  *(_observation_args(obs, limits) if obs is not None else ("",))],
        ), lambda b: b.settle(lease_id, limits, obs, record))

    def renew(self, lease_ids: list[str], ttl: float) -> int:
        if not lease_ids:
            return 0
        return int(self._do(lambda: self._scripts["renew"](
            keys=[self._k_leases], args=[self._now_arg(), _f(ttl), *lease_ids]),
            lambda b: b.renew(lease_ids, ttl)))

    def count_decision(self, service: str, decision: str) -> None:
        self._do(lambda: self._client.hincrby(self._k_ctr, f"requests|{service}|{decision}", 1),
                 lambda b: b.count_decision(service, decision))

    def emergency(self) -> bool:
        return self._do(lambda: self._client.get(self._k_emergency) == "1",
                        lambda b: b.emergency())

    def set_emergency(self, enabled: bool) -> None:
        self._do(lambda: self._client.set(self._k_emergency, "1" if enabled else "0"),
                 lambda b: b.set_emergency(enabled), refuse=True)

    def service_state(self, service: str) -> ServiceState:
        return self._do(lambda: _load_state(self._client.hget(self._k_svc, service)),
                        lambda b: b.service_state(service))

    def services(self) -> list[str]:
        def remote() -> list[str]:
            pipe = self._client.pipeline(transaction=False)
            pipe.hkeys(self._k_svc)
            pipe.hkeys(self._k_ctr)
            states, counters = pipe.execute()
            names = set(states)
            names.update(k.split("|")[1] for k in counters
                         if k.startswith(("requests|", "calls|")))
            return sorted(names)

        return self._do(remote, lambda b: b.services())

    def _read(self, *keys: str) -> tuple[float, list[dict[str, str]]]:
        """``(now, [HGETALL key, …])`` in one round trip."""
        pipe = self._client.pipeline(transaction=True)
        for key in keys:
            pipe.hgetall(key)
        if self._clock is None:
            pipe.time()
        out = pipe.execute()
        if self._clock is None:
            sec, usec = out.pop()
            return sec + usec / 1_000_000, out
        return self._clock(), out

    def budget_status(self) -> tuple[dict[str, budget.WindowSpend], Decimal, int]:
        def remote() -> tuple[dict[str, budget.WindowSpend], Decimal, int]:
            now, (spend_raw, lease_raw) = self._read(self._k_spend, self._k_leases)
            spends = {}
            for window, value in spend_raw.items():
                start, spent = value.split(" ")
                spends[window] = budget.roll(
                    budget.WindowSpend(float(start), from_nanos(int(spent))), window, now)
            leases = _live_leases(lease_raw, now)
            return spends, from_nanos(sum(n for _, n in leases)), len(leases)

        return self._do(remote, lambda b: b.budget_status())

    def in_flight(self, service: str) -> int:
        def remote() -> int:
            now, (raw,) = self._read(self._k_leases)
            return sum(1 for s, _ in _live_leases(raw, now) if s == service)

        return self._do(remote, lambda b: b.in_flight(service))

    def counters(self) -> dict[str, Any]:
        def remote() -> dict[str, Any]:
            raw: dict[str, str] = self._client.hgetall(self._k_ctr)
            return nest_counters(
                (k, from_nanos(int(v)) if k.startswith(MONEY_COUNTERS) else int(v))
                for k, v in raw.items())

        return self._do(remote, lambda b: b.counters())

    def publish_process(self, process_id: str, doc: dict[str, Any], ttl: float) -> None:
        self._do(lambda: self._scripts["publish"](
            keys=[self._k_procs], args=[self._now_arg(), process_id, _f(ttl), json.dumps(doc)],
        ), lambda b: b.publish_process(process_id, doc, ttl))

    def processes(self) -> dict[str, dict[str, Any]]:
        def remote() -> dict[str, dict[str, Any]]:
            now, (raw,) = self._read(self._k_procs)
            out = {}
            for process_id, value in raw.items():
                expires, doc = value.split(" ", 1)
                if float(expires) > now:
                    out[process_id] = json.loads(doc)
            return out

        return self._do(remote, lambda b: b.processes())

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()

        def remote() -> float:
            sec, usec = self._client.time()
            return float(sec + usec / 1_000_000)

        return self._do(remote, lambda b: b.now())

    def reset(self) -> None:
        self._local.reset()
        self._do(lambda: self._client.delete(
            self._k_svc, self._k_leases, self._k_spend, self._k_ctr, self._k_emergency,
            self._k_procs, self._k_done), lambda b: None)

    def close(self) -> None:
        self._closed.set()
        self._client.close()
