"""Section: scopes. What budgets per tenant/user/job cost on the hot path and in memory.

Admission cost: one ``Governor.admit`` + ``settle`` of a call carrying 0, 1 or
3 scope values (``scope(tenant=…, user=…, job=…)``, each kind with a day
budget and a per-minute request limit), on the memory, SQLite and Redis
backends, one thread; microseconds per call, median of interleaved runs.
Beside it, the peer users would reach for: ``limits`` (a fixed-window hit per
key, one per scope value, memory and Redis storage). Redis round trips per
admission are counted at the socket.

Memory per 100k idle values: ``tracemalloc`` around N admissions of distinct
user values (memory backend), the SQLite file's growth, Redis ``used_memory``
growth; then what is left once their windows ended and the heartbeat swept
(memory, SQLite) or their keys expired (Redis). Beside it, ``limits``'
``MemoryStorage`` holding the same N keys.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks._common import Mode, Section, Target, fmt_ratio, median, redis_server, table

BACKENDS = ("memory", "sqlite", "redis")
SCOPE_COUNTS = (0, 1, 3)
LABELS = ({"tenant": "acme"}, {"tenant": "acme", "user": "u-17", "job": "run-9"})
KIND = {"per_day": "1000", "requests_per_minute": 1_000_000}
HUGE = {"max_tokens": 10**9, "refill_rate": 1e9, "burst_capacity": 0, "min_interval": 1e-9,
        "max_cost_per_minute": "1000000", "max_queue_size": 10_000}


def _governor(backend: str) -> Any:
    import llm_governor
    from llm_governor.governor import Governor

    return Governor(llm_governor.load_config({
        "backend": backend, "namespace": f"bench-scopes-{time.monotonic_ns()}",
        "scopes": {"tenant": KIND, "user": KIND, "job": KIND},
        "services": {"bench": HUGE}}))


@contextlib.contextmanager
def _backend_url(kind: str, redis_url: str | None, tmp: Path) -> Iterator[str]:
    if kind == "memory":
        yield "memory"
    elif kind == "sqlite":
        yield f"sqlite://{tmp / f'scopes-{time.monotonic_ns()}.db'}"
    else:
        assert redis_url is not None
        yield redis_url


def _per_call(kind: str, n_scopes: int, redis_url: str | None, tmp: Path, calls: int) -> float:
    """Microseconds per admit+settle of a call with ``n_scopes`` scope values."""
    import llm_governor
    from llm_governor.governor import CallSpec

    labels = {} if n_scopes == 0 else LABELS[0] if n_scopes == 1 else LABELS[1]
    with _backend_url(kind, redis_url, tmp) as url:
        gov = _governor(url)
        spec = CallSpec("bench", operation="call", model="bench-model", cost=Decimal("0.0004"))
        try:
            with llm_governor.scope(**labels):
                for _ in range(50):
                    gov.settle(gov.admit(spec))
                gc.collect()
                start = time.perf_counter()
                for _ in range(calls):
                    gov.settle(gov.admit(spec))
                return (time.perf_counter() - start) / calls * 1e6
        finally:
            gov.close()


def _limits_per_call(n_keys: int, storage_uri: str, calls: int) -> float:
    """``limits``: a fixed-window hit per key (the peer's per-tenant limit), per call."""
    from limits import RateLimitItemPerMinute, storage, strategies

    store = storage.storage_from_string(storage_uri)
    limiter = strategies.FixedWindowRateLimiter(store)
    item = RateLimitItemPerMinute(10**9)
    keys = [("tenant", "acme"), ("user", "u-17"), ("job", "run-9")][:max(n_keys, 1)]
    hit = limiter.hit
    for _ in range(50):
        for k in keys:
            hit(item, *k)
    start = time.perf_counter()
    for _ in range(calls):
        for k in keys:
            hit(item, *k)
    took = (time.perf_counter() - start) / calls * 1e6
    with contextlib.suppress(Exception):
        store.reset()
    return took


def _round_trips(redis_url: str) -> float:
    """Client writes per admission of a 3-scope call on Redis."""
    import llm_governor
    from benchmarks.bench_redis import _counting_writes
    from llm_governor.governor import CallSpec

    gov = _governor(redis_url)
    spec = CallSpec("bench", operation="call", model="bench-model", cost=Decimal("0.0004"))
    try:
        with llm_governor.scope(**LABELS[1]):
            tickets = [gov.admit(spec)]  # warm up: connect, load scripts
            with _counting_writes() as writes:
                tickets = [gov.admit(spec) for _ in range(100)]
            for t in tickets:
                gov.settle(t)
    finally:
        gov.close()
    return writes[0] / 100


def _idle_memory(n: int) -> dict[str, float]:
    """Bytes per idle value in the memory backend, and after their expiry + a sweep."""
    from llm_governor.backends import MemoryBackend
    from llm_governor.config import RateLimitConfig
    from llm_governor.governor import limits_of
    from llm_governor.policies.admission import AdmitRequest
    from llm_governor.policies.scopes import ScopeRequest

    now = [1_800_000_000.0]
    b = MemoryBackend({}, lambda: now[0])
    lim = limits_of(RateLimitConfig.model_validate(HUGE))
    requests = [AdmitRequest("bench", 2, 0.0, Decimal("0.0004"), lim, lim, scopes=(
        ScopeRequest(f"user=u{i}", {"day": Decimal(1)}, 60.0),)) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for r in requests:
        b.admit(r, None, 60.0)
    gc.collect()
    held = tracemalloc.take_snapshot()
    now[0] += 86_400 + 1  # their day ended
    b.sweep()
    gc.collect()
    swept = tracemalloc.take_snapshot()
    tracemalloc.stop()

    def grown(snap: Any) -> float:
        return float(sum(s.size_diff for s in snap.compare_to(before, "filename")))

    return {"bytes_per_value": grown(held) / n, "left_after_sweep": grown(swept) / n,
            "values_after_sweep": float(len(b.scope_status("user")))}


def _limits_memory(n: int) -> float:
    """Bytes per key of ``limits``' MemoryStorage after one hit on each of ``n`` keys."""
    from limits import RateLimitItemPerDay, storage, strategies

    store = storage.MemoryStorage()
    limiter = strategies.FixedWindowRateLimiter(store)
    item = RateLimitItemPerDay(10**9)
    keys = [f"u{i}" for i in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for k in keys:
        limiter.hit(item, "user", k)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = float(sum(s.size_diff for s in after.compare_to(before, "filename")))
    with contextlib.suppress(Exception):
        store.reset()
    return grown / n


def _store_growth(kind: str, n: int, url: str) -> dict[str, float]:
    """Bytes per idle value in a SQLite file or a Redis server; then after expiry."""
    from llm_governor.backends.redis import RedisBackend
    from llm_governor.backends.sqlite import SQLiteBackend
    from llm_governor.config import RateLimitConfig
    from llm_governor.governor import limits_of
    from llm_governor.policies.admission import AdmitRequest
    from llm_governor.policies.scopes import ScopeRequest

    lim = limits_of(RateLimitConfig.model_validate(HUGE))
    if kind == "sqlite":
        now = [1_800_000_000.0]
        b: Any = SQLiteBackend(Path(url), {}, lambda: now[0])
        size = lambda: float(os.path.getsize(url) + (os.path.getsize(url + "-wal")  # noqa: E731
                                                     if os.path.exists(url + "-wal") else 0))
    else:
        import redis

        client = redis.Redis.from_url(url)
        b = RedisBackend(url, {}, namespace=f"bench-idle-{time.monotonic_ns()}")
        size = lambda: float(client.info("memory")["used_memory"])  # noqa: E731
    # rate-only values (two idle minutes), so Redis can show its expiry in a benchmark
    first = AdmitRequest("bench", 2, 0.0, Decimal(0), lim, lim)
    b.admit(first, None, 60.0)
    if kind == "sqlite":
        b.sweep()
    before = size()
    for i in range(n):
        b.admit(AdmitRequest("bench", 2, 0.0, Decimal(0), lim, lim, scopes=(
            ScopeRequest(f"user=u{i}", requests_per_minute=60.0),)), None, 60.0)
    if kind == "sqlite":
        b.store._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    held = size() - before
    out = {"bytes_per_value": held / n}
    if kind == "sqlite":
        now[0] += 121
        b.sweep()
        out["values_after_expiry"] = float(len(b.scope_status("user")))
    b.close()
    return out


def run(mode: Mode) -> Section:
    t0 = time.perf_counter()
    calls = 400 if mode.name == "quick" else 2000
    idle_n = 20_000 if mode.name == "quick" else 100_000
    repeats = 3 if mode.name == "quick" else mode.repeats
    per_call: dict[str, dict[int, list[float]]] = {k: {n: [] for n in SCOPE_COUNTS}
                                                   for k in BACKENDS}
    peer: dict[str, dict[int, list[float]]] = {k: {n: [] for n in (1, 3)}
                                               for k in ("memory", "redis")}
    with tempfile.TemporaryDirectory() as tmpdir, redis_server() as redis_url:
        tmp = Path(tmpdir)
        kinds = [k for k in BACKENDS if k != "redis" or redis_url]
        for _ in range(repeats):  # interleaved: drift hits every row alike
            for kind in kinds:
                for n in SCOPE_COUNTS:
                    per_call[kind][n].append(_per_call(kind, n, redis_url, tmp, calls))
            for n in (1, 3):
                peer["memory"][n].append(_limits_per_call(n, "memory://", calls))
                if redis_url:
                    peer["redis"][n].append(_limits_per_call(n, redis_url, calls))
        trips = _round_trips(redis_url) if redis_url else float("nan")
        idle = _idle_memory(idle_n)
        limits_idle = _limits_memory(idle_n)
        sqlite_idle = _store_growth("sqlite", idle_n, str(tmp / "idle.db"))
        redis_idle = _store_growth("redis", idle_n, redis_url) if redis_url else {}
    us = {k: {n: median(v) for n, v in per.items() if v} for k, per in per_call.items()}
    peer_us = {k: {n: median(v) for n, v in per.items() if v} for k, per in peer.items()}

    rows = []
    for kind in BACKENDS:
        if not us[kind]:
            continue
        base = us[kind][0]
        peer_cell = lambda n, kind=kind: (  # noqa: E731
            f"{peer_us[kind][n]:.1f}" if kind in peer_us and peer_us[kind].get(n) else "–")
        rows.append([kind, f"{base:.1f}", f"{us[kind][1]:.1f} ({fmt_ratio(us[kind][1] / base)})",
                     f"{us[kind][3]:.1f} ({fmt_ratio(us[kind][3] / base)})",
                     peer_cell(1), peer_cell(3)])
    md = [
        f"One thread, µs per `Governor.admit` + `settle` (a call carrying 0, 1 or 3 scope "
        f"values, each kind with a day budget and a per-minute limit); median of {repeats} "
        f"interleaved runs of {calls} calls. The `limits` columns are the peer's fixed-window "
        "hit per key (1 or 3 keys), its memory and Redis storage: a rate check only, no "
        "budget, no reservation, no atomicity across the keys.", "",
        table(["backend", "0 scopes", "1 scope (× 0)", "3 scopes (× 0)", "limits, 1 key",
               "limits, 3 keys"], rows), "",
        f"Redis round trips per admission with 3 scopes: **{trips:.2f}** (the peer: one per "
        "key).", "",
        f"Idle scope values ({idle_n:,} distinct users, one call each; per 100k values):", "",
        table(["store", "per 100k values", "after their windows ended"], [
            ["memory backend (tracemalloc)", f"{idle['bytes_per_value'] * 1e5 / 1e6:.1f} MB",
             f"{max(idle['left_after_sweep'], 0) * 1e5 / 1e6:.2f} MB (swept)"],
            ["`limits` MemoryStorage, same keys", f"{limits_idle * 1e5 / 1e6:.1f} MB",
             "kept until a hit on the key"],
            ["SQLite file", f"{sqlite_idle['bytes_per_value'] * 1e5 / 1e6:.1f} MB",
             f"{sqlite_idle.get('values_after_expiry', 0):.0f} values (swept)"],
            ["Redis used_memory", (f"{redis_idle['bytes_per_value'] * 1e5 / 1e6:.1f} MB"
                                   if redis_idle else "–"), "keys expire by TTL"],
        ]),
    ]
    targets = []
    if redis_url:
        targets.append(Target("Redis: still one round trip to admit with 3 scopes",
                              trips == 1.0, f"{trips:.2f} round trips per admission"))
    targets.append(Target("Idle scope values are dropped once their windows end",
                          idle["left_after_sweep"] * idle_n < 64 * 1024
                          and sqlite_idle.get("values_after_expiry", 1) == 0,
                          f"{max(idle['left_after_sweep'], 0) * idle_n / 1024:.0f} KiB left "
                          f"in memory, {sqlite_idle.get('values_after_expiry', 0):.0f} rows "
                          "in SQLite"))
    headlines = [
        f"Scopes: 3 scope values add {fmt_ratio(us['memory'][3] / us['memory'][0])} to a "
        f"memory-backend admission ({us['memory'][3]:.1f} µs), "
        + (f"{fmt_ratio(us['redis'][3] / us['redis'][0])} on Redis, still {trips:.0f} round "
           "trip; " if us.get("redis") else "")
        + f"an idle value costs {idle['bytes_per_value']:.0f} B in memory until its window "
        "ends."]
    data = {"us_per_call": us, "limits_us_per_call": peer_us, "redis_round_trips": trips,
            "idle_memory": idle, "limits_idle_bytes_per_key": limits_idle,
            "sqlite_idle": sqlite_idle, "redis_idle": redis_idle, "calls": calls,
            "idle_values": idle_n, "repeats": repeats}
    return Section("scopes", "Scopes: budgets per tenant, user and job", "\n".join(md), data,
                   targets, time.perf_counter() - t0, headlines)

