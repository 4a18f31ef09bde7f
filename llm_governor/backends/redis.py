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

Outages (``on_error``) are handled by :class:`~.failover.FailoverBackend`,
which :class:`RedisBackend` is: :class:`RedisStore` speaks the protocol and
raises ``RedisError``; every call is bounded by the socket timeouts (no
retries), and skips Redis entirely while degraded. Settlements are
idempotent per settle id (a sorted set of recent ids), so one whose script
timed out on the client but ran on the server, and that is then replayed
from the outage journal, counts once.

Tests may pass ``clock``: the scripts then take "now" from an argument
instead of ``TIME`` (the differential test needs both sides on one clock).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from importlib import resources
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import RedisError
from redis.retry import Retry

from ..errors import ConfigError
from ..policies import adaptive, budget, rate, scopes, share
from ..policies.admission import AdmitRequest, Decision, Limits, Observation, ServiceState
from ..policies.scopes import ScopeRequest, ScopeState
from ..redaction import Scrubber, redact_url
from . import records, schema
from .base import CallRecord, Charged, Clock, Snapshot, call_names, lease_totals, nest_counters
from .failover import MODES, FailoverBackend, SharedStore

__all__ = ["RedisBackend", "RedisStore", "from_nanos", "to_nanos"]

_NANO = Decimal(10**9)
_SCRIPTS = resources.files(__package__ or "llm_governor.backends") / "redis_scripts"


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
                     _f(lim.recovery_timeout), _f(lim.max_block)))


_NO_PROVIDER = " ".join("-" * 7)


def _observation_args(obs: Observation, lim: Limits) -> tuple[str, str, str, str, str]:
    p = obs.provider
    provider = _NO_PROVIDER if p is None else " ".join((
        _opt(p.limit_requests), _opt(p.remaining_requests), _opt(p.reset_requests),
        _opt(p.limit_tokens), _opt(p.remaining_tokens), _opt(p.reset_tokens),
        _opt(p.retry_after)))
    return obs.outcome, provider, _limits_arg(lim), repr(float(obs.age)), str(obs.sent)


_load_state = records.load_text
"""Decode the space-separated record the scripts store (layout: ``records.SERVICE_STATE``)."""


def _live_leases(raw: dict[str, str], now: float) -> list[tuple[str, int, list[str]]]:
    """``(service, nanos, scopes)`` of each lease live at ``now``.

    Stored as "expires nanos service", then a tab and the scope values whose
    budgets it holds, if any.
    """
    live = []
    for value in raw.values():
        expires, nanos, rest = value.split(" ", 2)
        if float(expires) > now:
            service, _, held = rest.partition("\t")
            live.append((service, int(nanos), held.split()))
    return live


def _pairs(flat: list[str]) -> Iterator[tuple[str, str]]:
    """``[k1, v1, k2, v2, …]`` (a script's HGETALL) as pairs."""
    return zip(flat[::2], flat[1::2], strict=True)


def _scope_arg(sr: ScopeRequest) -> str:
    """One scope of a call as the admit script reads it (see read_scope in common.lua)."""
    parts = [sr.key, "1" if sr.observe else "0", _f(sr.requests_per_minute),
             _f(sr.tokens_per_minute)]
    for window, limit in sr.budgets.items():
        parts += (window, str(to_nanos(limit, ROUND_FLOOR)))
    return " ".join(parts)


def _load_scope(raw: str) -> ScopeState:
    """Decode a scope record ("req_tat tok_tat expires" then "window start nanos" each)."""
    v = raw.split(" ")
    spends = {v[i]: budget.WindowSpend(float(v[i + 1]), from_nanos(int(float(v[i + 2]))))
              for i in range(3, len(v) - 2, 3)}
    return ScopeState(spends, float(v[0]), float(v[1]), float(v[2]))


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob (``{`` and ``}`` are literal already)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@functools.cache
def _prelude() -> str:
    """``common.lua`` with its ``$NAME`` placeholders filled from the Python constants
    and the service-state codec generated from ``records.SERVICE_STATE``."""
    prelude = (_SCRIPTS / "common.lua").read_text("utf-8")
    prelude = prelude.replace("$STATE_CODEC", records.lua_source())
    for key, value in (("$EPS", rate._EPS), ("$SUCCESS_RUN", adaptive.SUCCESS_RUN),
                       ("$LEARNED_TTL", adaptive.LEARNED_TTL), ("$SCOPE_IDLE", scopes.IDLE),
                       ("$HEADROOM_CALLS", rate.HEADROOM_CALLS),
                       ("$COLD_BURST", adaptive.COLD_BURST), ("$PACE", adaptive.PACE),
                       ("$OTHERS_GAIN", adaptive.OTHERS_GAIN),
                       ("$OTHERS_PACE", adaptive.OTHERS_PACE), ("$SHARE_TICK", share.TICK),
                       ("$OTHERS_FLOOR", adaptive.OTHERS_FLOOR),
                       ("$OTHERS_NOISE", adaptive.OTHERS_NOISE), ("$SHARE_STEPS", share.STEPS),
                       ("$SHARE_KEEP", share.KEEP), ("$SHARE_EMPTY", share.EMPTY)):
        prelude = prelude.replace(key, repr(value))
    return prelude


def _script_source(name: str) -> str:
    return _prelude() + "\n" + (_SCRIPTS / f"{name}.lua").read_text("utf-8")


class RedisStore(SharedStore):
    """The Redis protocol of the contract; raises ``RedisError`` when Redis is unavailable."""

    name = "redis"
    blocking = True
    errors = (RedisError,)

    def __init__(
        self,
        url: str,
        budget_limits: dict[str, Decimal] | None = None,
        *,
        namespace: str = "default",
        clock: Clock | None = None,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
    ) -> None:
        self.url = redact_url(url)
        self.namespace = namespace
        self.budget_limits = dict(budget_limits or {})
        self._clock = clock
        self.uses_server_clock = clock is None
        self._scrubber = Scrubber(url)
        try:
            self._client = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigError(f"backend {self.url!r}: {self.scrub(str(exc))}") from None
        tag = "{llmg:" + namespace + "}"
        self._k_svc, self._k_leases, self._k_spend, self._k_ctr, self._k_emergency, \
            self._k_procs, self._k_done = (f"{tag}:{k}" for k in (
                "svc", "leases", "spend", "ctr", "emergency", "procs", "done"))
        self._k_scope = f"{tag}:scope:"  # + "kind=value": one string per scope value
        self._windows = " ".join(
            f"{w} {to_nanos(limit, ROUND_FLOOR)} {budget.WINDOW_SECONDS[w]}"
            for w, limit in self.budget_limits.items())
        self._scripts: dict[str, Script] = {
            name: self._client.register_script(_script_source(name))
            for name in ("admit", "settle", "observe", "publish", "merge", "renew", "sweep",
                         "snapshot")
        }
        self._loaded = False

    def scrub(self, text: str) -> str:
        return self._scrubber.scrub(text)

    def _load_scripts(self) -> None:
        """Load the scripts once per server start (EVALSHA then never needs the source)."""
        pipe = self._client.pipeline(transaction=False)
        for name in self._scripts:
            pipe.script_load(_script_source(name))
        pipe.execute()
        self._loaded = True

    def ping(self) -> None:
        self._client.ping()
        self._load_scripts()

    def add_counters(self, deltas: dict[str, int]) -> None:
        args: list[str] = [str(len(deltas))]
        for key, value in deltas.items():
            args += (key, str(value))
        self._scripts["merge"](keys=[self._k_ctr, self._k_spend], args=[*args, "0"])

    # --------------------------------------------------------- the contract
    def _now_arg(self) -> str:
        return "" if self._clock is None else _f(self._clock())

    def admit(self, req: AdmitRequest, lease_id: str | None, ttl: float) -> Decision:
        r = self._scripts["admit"](
            keys=[self._k_svc, self._k_leases, self._k_spend, self._k_ctr, self._k_emergency,
                  self._k_done, *(self._k_scope + sr.key for sr in req.scopes)],
            args=[self._now_arg(), req.key, lease_id or "", _f(ttl),
                  "1" if req.reserve else "0", "1" if req.refuse_in_emergency else "0",
                  _f(rate.share(req.priority)), _f(req.llm_tokens), str(to_nanos(req.cost)),
                  _f(req.cost_f), self._windows, _limits_arg(req.limits),
                  _limits_arg(req.emergency_limits), req.service, "1" if req.observe else "0",
                  *(_scope_arg(sr) for sr in req.scopes)],
        )
        emergency = bool(r[5])
        return Decision(bool(r[0]), r[1], float(r[2]), from_nanos(int(r[3])) if r[3] else None,
                        r[4] or None, emergency, r[6] or None, r[7] or None, r[8] or None,
                        int(r[9]))

    def observe(self, service: str, limits: Limits, obs: Observation) -> None:
        self._scripts["observe"](
            keys=[self._k_svc, self._k_leases],
            args=[self._now_arg(), service, *_observation_args(obs, limits)])

    def settle(
        self, lease_id: str | None, limits: Limits, obs: Observation | None, record: CallRecord
    ) -> Charged:
        r = self._scripts["settle"](
            keys=[self._k_svc, self._k_leases, self._k_spend, self._k_ctr, self._k_done,
                  *(self._k_scope + key for key, _ in record.scopes)],
            args=[self._now_arg(), lease_id or "", record.service, record.model,
                  record.job or "", record.status, str(record.attempts),
                  str(to_nanos(record.cost)), self._windows, "1" if record.final else "0",
                  str(to_nanos(record.overrun)), record.settle_id or "", record.scope,
                  ";".join(",".join(windows) for _, windows in record.scopes),
                  *(_observation_args(obs, limits) if obs is not None else ("",))])
        return tuple((r[i], r[i + 1], from_nanos(int(r[i + 2])), from_nanos(int(r[i + 3])))
                     for i in range(0, len(r), 4))

    def forget(self, keys: list[str]) -> None:
        if keys:
            self._client.hdel(self._k_svc, *keys)

    def reset_budget(self, windows: Sequence[str] | None = None,
                     scope: tuple[str, str] | None = None) -> dict[str, Decimal]:
        if scope is not None:
            return self._reset_scope_budget(windows, f"{scope[0]}={scope[1]}")
        # WATCH the spend hash: read it, then drop the chosen windows in one MULTI
        # (retried if a settlement changed it meanwhile), so no spend is lost between.
        with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._k_spend)
                    raw = cast(dict[str, str], pipe.hgetall(self._k_spend))  # immediate
                    now = self.now()
                    chosen = [w for w in raw if windows is None or w in windows]
                    pipe.multi()
                    if chosen:
                        pipe.hdel(self._k_spend, *chosen)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        gone = {}
        for w in chosen:
            start, spent = raw[w].split(" ")
            gone[w] = budget.WindowSpend(float(start), from_nanos(int(spent)))
        return budget.spent_now(gone, now)

    def _reset_scope_budget(self, windows: Sequence[str] | None, key: str
                            ) -> dict[str, Decimal]:
        """The scope value's record without the chosen windows' spend, its expiry kept."""
        name = self._k_scope + key
        with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(name)
                    raw = cast("str | None", pipe.get(name))  # immediate
                    now = self.now()
                    if not raw:
                        pipe.unwatch()
                        return {}
                    v = raw.split(" ")  # as _load_scope reads it
                    head, tail = v[:3], v[3:]
                    triples = [tail[i:i + 3] for i in range(0, len(tail) - 2, 3)]
                    chosen = [t for t in triples if windows is None or t[0] in windows]
                    if not chosen:
                        pipe.unwatch()
                        return {}
                    kept = [t for t in triples if t not in chosen]
                    pipe.multi()
                    pipe.set(name, " ".join([*head, *(x for t in kept for x in t)]),
                             keepttl=True)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        return budget.spent_now({w: budget.WindowSpend(float(start), from_nanos(int(float(n))))
                       for w, start, n in chosen}, now)

    def sweep(self) -> None:
        self._scripts["sweep"](keys=[self._k_leases, self._k_spend, self._k_ctr, self._k_done],
                               args=[self._now_arg(), self._windows])

    def renew(self, lease_ids: list[str], ttl: float) -> int:
        if not lease_ids:
            return 0
        return int(self._scripts["renew"](keys=[self._k_leases],
                                          args=[self._now_arg(), _f(ttl), *lease_ids]))

    def count_decision(self, service: str, decision: str) -> None:
        self.count(schema.key("requests", service, decision))

    def count(self, key: str) -> None:
        self._client.hincrby(self._k_ctr, key, 1)

    def emergency(self) -> bool:
        return bool(self._client.get(self._k_emergency) == "1")

    def set_emergency(self, enabled: bool) -> None:
        self._client.set(self._k_emergency, "1" if enabled else "0")

    def service_state(self, service: str) -> ServiceState:
        return _load_state(self._client.hget(self._k_svc, service))

    def services(self) -> list[str]:
        def remote() -> list[str]:
            pipe = self._client.pipeline(transaction=False)
            pipe.hkeys(self._k_svc)
            pipe.hkeys(self._k_ctr)
            states, counters = pipe.execute()
            return list(call_names(states, counters))

        return remote()

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
            return spends, from_nanos(sum(n for _, n, _ in leases)), len(leases)

        return remote()

    def in_flight(self, service: str) -> int:
        def remote() -> int:
            now, (raw,) = self._read(self._k_leases)
            return sum(1 for s, _, _ in _live_leases(raw, now) if s == service)

        return remote()

    def scope_status(self, kind: str | None = None,
                     value: str | None = None) -> dict[str, tuple[ScopeState, Decimal]]:
        def remote() -> dict[str, tuple[ScopeState, Decimal]]:
            now, (lease_raw,) = self._read(self._k_leases)
            held: dict[str, int] = {}
            for _, nanos, keys in _live_leases(lease_raw, now):
                for key in keys:
                    held[key] = held.get(key, 0) + nanos
            if kind is not None and value is not None:
                key = f"{kind}={value}"
                raw = self._client.get(self._k_scope + key)
                return {key: (_load_scope(raw) if raw else ScopeState(),
                              from_nanos(held.get(key, 0)))}
            prefix = self._k_scope if kind is None else f"{self._k_scope}{kind}="
            names = list(self._client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
            out: dict[str, tuple[ScopeState, Decimal]] = {}
            for start in range(0, len(names), 1000):
                chunk = names[start:start + 1000]
                for name, raw in zip(chunk, self._client.mget(chunk), strict=True):
                    if raw:
                        key = name[len(self._k_scope):]
                        out[key] = (_load_scope(raw), from_nanos(held.get(key, 0)))
            return out

        return remote()

    def counters(self) -> dict[str, Any]:
        def remote() -> dict[str, Any]:
            raw: dict[str, str] = self._client.hgetall(self._k_ctr)
            return nest_counters(
                (k, from_nanos(int(v)) if schema.is_money(k) else int(v))
                for k, v in raw.items())

        return remote()

    def snapshot(self, scopes: bool = True) -> Snapshot:
        """One script call: the namespace's hashes, the flag and, if asked, its scope keys."""
        now_raw, svc, lease_raw, spend_raw, ctr_raw, flag, procs_raw, found = \
            self._scripts["snapshot"](
                keys=[self._k_svc, self._k_leases, self._k_spend, self._k_ctr,
                      self._k_emergency, self._k_procs],
                args=[self._now_arg(), _glob_escape(self._k_scope) + "*" if scopes else ""])
        now = float(now_raw)
        states = {name: _load_state(raw) for name, raw in _pairs(svc)}
        counters = [(k, from_nanos(int(v)) if schema.is_money(k) else int(v))
                    for k, v in _pairs(ctr_raw)]
        spends = {}
        for window, value in _pairs(spend_raw):
            start, spent = value.split(" ")
            spends[window] = budget.roll(
                budget.WindowSpend(float(start), from_nanos(int(spent))), window, now)
        processes = {}
        for process_id, value in _pairs(procs_raw):
            expires, doc = value.split(" ", 1)
            if float(expires) > now:
                processes[process_id] = json.loads(doc)
        live = [(s, from_nanos(n), keys)
                for s, n, keys in _live_leases(dict(_pairs(lease_raw)), now)]
        return Snapshot(
            now, flag == "1", states, call_names(states, (k for k, _ in counters)), spends,
            counters=nest_counters(iter(counters)), processes=processes,
            scopes={k[len(self._k_scope):]: _load_scope(v) for k, v in _pairs(found)},
            **lease_totals(live))

    def publish_process(self, process_id: str, doc: dict[str, Any], ttl: float) -> None:
        self._scripts["publish"](
            keys=[self._k_procs], args=[self._now_arg(), process_id, _f(ttl), json.dumps(doc)])

    def processes(self) -> dict[str, dict[str, Any]]:
        def remote() -> dict[str, dict[str, Any]]:
            now, (raw,) = self._read(self._k_procs)
            out = {}
            for process_id, value in raw.items():
                expires, doc = value.split(" ", 1)
                if float(expires) > now:
                    out[process_id] = json.loads(doc)
            return out

        return remote()

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()

        def remote() -> float:
            sec, usec = self._client.time()
            return float(sec + usec / 1_000_000)

        return remote()

    def reset(self) -> None:
        self._client.delete(self._k_svc, self._k_leases, self._k_spend, self._k_ctr,
                            self._k_emergency, self._k_procs, self._k_done)
        batch: list[str] = []
        for name in self._client.scan_iter(match=_glob_escape(self._k_scope) + "*", count=1000):
            batch.append(name)
            if len(batch) == 1000:
                self._client.delete(*batch)
                batch.clear()
        if batch:
            self._client.delete(*batch)

    def close(self) -> None:
        self._client.close()


class RedisBackend(FailoverBackend):
    """State in Redis, shared by every process and host using the same namespace.

    A :class:`RedisStore` inside a :class:`~.failover.FailoverBackend`: an
    outage follows ``on_error`` and recovers by itself.
    """

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
        if on_error not in MODES:  # before connecting to anything
            raise ConfigError(f"on_backend_error = {on_error!r}: allowed: {', '.join(MODES)}")
        store = RedisStore(url, budget_limits, namespace=namespace, clock=clock,
                           socket_timeout=socket_timeout, connect_timeout=connect_timeout)
        super().__init__(store, budget_limits, on_error=on_error,
                         degraded_budget_share=degraded_budget_share,
                         probe_interval=probe_interval)
        self.namespace = namespace
        self.uses_server_clock = store.uses_server_clock
        try:
            store._load_scripts()
        except RedisError as exc:
            self._lost(exc)
