"""Section 6: the Redis backend beside `limits` and throttled-py on the same server.

One throwaway ``redis-server`` on loopback serves every subject in the same
run. A *decision* asks the shared limiter whether one request may go now,
with limits so high that every request is admitted:

* llm-governor ``RedisBackend.admit``: the whole governed decision in one Lua
  script (emergency flag, breaker, a day budget check, the request, LLM-token
  and dollar GCRA buckets, adaptive rates, counters); and a governed call,
  ``admit`` with a lease plus ``settle`` (two scripts).
* limits ``RedisStorage``: ``FixedWindowRateLimiter`` (its fastest strategy: one
  increment-and-expire script) and ``MovingWindowRateLimiter`` (its exact one).
* throttled-py ``RedisStore``: GCRA (the same algorithm as ours) and token bucket.

Round trips are counted on the client (writes on redis-py connections) and
checked against the server (``INFO commandstats``). Standalone:
``python -m benchmarks.bench_redis`` prints the table and writes
``benchmarks/results/redis.json``.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from benchmarks._common import (
    Mode,
    Section,
    Target,
    fmt_int,
    fmt_ratio,
    median,
    redis_server,
    table,
    thread_rate,
)

Decide = Callable[[], object]
HUGE = 10**9
THREADS = 8
MODES = ("1 thread", f"{THREADS} threads")


@dataclass(frozen=True)
class Subject:
    name: str
    ours: bool
    make: Callable[[str], contextlib.AbstractContextManager[Decide]]
    admitted: Callable[[object], bool]
    note: str


# ------------------------------------------------------------------ llm-governor
def _limits() -> Any:
    from llm_governor.config import RateLimitConfig
    from llm_governor.governor import limits_of

    return limits_of(RateLimitConfig(
        max_tokens=HUGE, refill_rate=float(HUGE), burst_capacity=0,
        max_cost_per_minute=Decimal(HUGE), min_interval=1e-9, llm_tokens_per_minute=10**15))


def _backend(url: str) -> Any:
    from llm_governor.backends.redis import RedisBackend

    return RedisBackend(url, {"day": Decimal(HUGE)}, namespace=f"bench-{time.monotonic_ns()}")


@contextlib.contextmanager
def _governor_admit(url: str) -> Iterator[Decide]:
    from llm_governor.policies.admission import AdmitRequest

    b = _backend(url)
    lim = _limits()
    req = AdmitRequest("bench", 2, 700.0, Decimal("0.0004"), lim, lim)
    admit = b.admit
    try:
        yield lambda: admit(req, None, 60.0)
    finally:
        b.close()


@contextlib.contextmanager
def _governor_call(url: str) -> Iterator[Decide]:
    from llm_governor.backends import CallRecord
    from llm_governor.policies.admission import AdmitRequest, Observation

    b = _backend(url)
    lim = _limits()
    req = AdmitRequest("bench", 2, 700.0, Decimal("0.0004"), lim, lim)
    record = CallRecord("bench", "bench-model", None, Decimal("0.0003"), "ok")
    ok = Observation("success")
    admit, settle = b.admit, b.settle
    ids = iter(range(10**12))

    def call() -> object:
        lease = f"l{next(ids)}"
        d = admit(req, lease, 60.0)
        settle(lease, lim, ok, record)
        return d
    try:
        yield call
    finally:
        b.close()


# ------------------------------------------------------------------ peers
def _limits_peer(strategy: str) -> Callable[[str], contextlib.AbstractContextManager[Decide]]:
    @contextlib.contextmanager
    def make(url: str) -> Iterator[Decide]:
        from limits import RateLimitItemPerSecond, storage, strategies

        lim = getattr(strategies, strategy)(storage.RedisStorage(url))
        item = RateLimitItemPerSecond(HUGE)
        key = f"bench-{time.monotonic_ns()}"
        hit = lim.hit
        yield lambda: hit(item, key)
    return make


def _throttled_peer(using: str) -> Callable[[str], contextlib.AbstractContextManager[Decide]]:
    @contextlib.contextmanager
    def make(url: str) -> Iterator[Decide]:
        from throttled import RedisStore, Throttled, rate_limiter

        th = Throttled(key=f"bench-{time.monotonic_ns()}", using=using,
                       store=RedisStore(server=url),
                       quota=rate_limiter.per_sec(HUGE, burst=HUGE))
        limit = th.limit
        yield limit
    return make


def subjects() -> list[Subject]:
    gov_ok: Callable[[object], bool] = lambda r: bool(getattr(r, "admitted", False))  # noqa: E731
    peer_ok: Callable[[object], bool] = lambda r: r is True  # noqa: E731
    th_ok: Callable[[object], bool] = lambda r: not getattr(r, "limited", True)  # noqa: E731
    return [
        Subject("llm-governor RedisBackend.admit", True, _governor_admit, gov_ok,
                "breaker, budget check, request + LLM-token + dollar GCRA, counters: 1 script"),
        Subject("llm-governor RedisBackend admit+settle", True, _governor_call, gov_ok,
                "a governed call: admit with a lease, then settle (2 scripts)"),
        Subject("limits FixedWindowRateLimiter", False, _limits_peer("FixedWindowRateLimiter"),
                peer_ok, "RedisStorage; its fastest strategy (INCR + EXPIRE script)"),
        Subject("limits MovingWindowRateLimiter", False, _limits_peer("MovingWindowRateLimiter"),
                peer_ok, "RedisStorage; exact sliding log (Lua)"),
        Subject("throttled-py GCRA", False, _throttled_peer("gcra"), th_ok, "RedisStore"),
        Subject("throttled-py token bucket", False, _throttled_peer("token_bucket"), th_ok,
                "RedisStore"),
    ]


# ------------------------------------------------------------------ measuring
@contextlib.contextmanager
def _counting_writes() -> Iterator[list[int]]:
    """Count writes on every redis-py connection: one per round trip (a pipeline is one)."""
    import redis.connection

    count = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def _round_trips(url: str, calls: int = 200) -> dict[str, Any]:
    """Round trips (client writes) and server commands per step, for every subject."""
    import redis

    from llm_governor.backends import CallRecord
    from llm_governor.policies.admission import AdmitRequest, Observation

    server = redis.Redis.from_url(url, decode_responses=True)
    out: dict[str, Any] = {}

    def measure(fn: Decide) -> dict[str, float]:
        fn()  # connect and warm up outside the count
        server.config_resetstat()
        with _counting_writes() as writes:
            for _ in range(calls):
                fn()
        stats = server.info("commandstats")
        top = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()
               if k.removeprefix("cmdstat_") in ("evalsha", "eval", "fcall")}
        return {"round_trips": writes[0] / calls,
                **{f"{k}_per_call": v / calls for k, v in top.items()}}

    b = _backend(url)
    lim = _limits()
    req = AdmitRequest("bench", 2, 700.0, Decimal("0.0004"), lim, lim)
    record = CallRecord("bench", "bench-model", None, Decimal("0.0003"), "ok")
    ids = iter(range(10**9))
    last: list[str] = []

    def admit() -> object:
        last.append(f"rt{next(ids)}")
        return b.admit(req, last[-1], 60.0)

    def settle() -> object:
        b.settle(last.pop(), lim, Observation("success"), record)
        return None

    out["llm-governor admit"] = measure(admit)
    out["llm-governor settle"] = measure(settle)
    b.close()
    out["llm-governor Governor.admit+settle"] = measure(_whole_governor(url))
    for s in subjects()[2:]:
        with s.make(url) as decide:
            out[s.name] = measure(decide)
    server.close()
    return out


def _whole_governor(url: str) -> Decide:
    import llm_governor
    from llm_governor.governor import CallSpec, Governor

    gov = Governor(llm_governor.load_config({
        "backend": url, "namespace": f"bench-gov-{time.monotonic_ns()}",
        "services": {"bench": {"max_tokens": HUGE, "refill_rate": float(HUGE),
                               "burst_capacity": 0, "max_cost_per_minute": str(HUGE),
                               "min_interval": 1e-9}}}))
    spec = CallSpec("bench", model="bench-model", cost=Decimal("0.0004"))

    def call() -> object:
        t = gov.admit(spec)
        gov.settle(t)
        return t
    return call


# ------------------------------------------------------------------ the section
def run(mode: Mode) -> Section:
    t_start = time.perf_counter()
    seconds = 0.8 if mode.name == "full" else 0.3
    repeats = 5
    subs = subjects()
    samples: dict[str, dict[str, list[float]]] = {s.name: {m: [] for m in MODES} for s in subs}
    with redis_server() as url:
        if url is None:
            return Section("redis", "Redis backend", "Skipped: `redis-server` is not installed.")
        for _ in range(repeats):  # interleaved, so drift hits every subject alike
            gc.collect()
            for s in subs:
                for m in MODES:
                    with s.make(url) as decide:
                        first = decide()
                        if not s.admitted(first):
                            raise AssertionError(f"{s.name} refused a decision: {first!r}")
                        samples[s.name][m].append(
                            thread_rate(decide, 1 if m == "1 thread" else THREADS, seconds))
        trips = _round_trips(url)
    rates = {name: {m: median(v) for m, v in per.items()} for name, per in samples.items()}
    ours = rates[subs[0].name]
    admit_rt = trips["llm-governor admit"]["round_trips"]
    settle_rt = trips["llm-governor settle"]["round_trips"]
    targets = [Target("Redis: one round trip to admit, one to settle",
                      admit_rt == 1.0 and settle_rt == 1.0,
                      f"admit {admit_rt:.2f}, settle {settle_rt:.2f} round trips per call")]
    peers = [s for s in subs if not s.ours]
    best = max(peers, key=lambda p: rates[p.name]["1 thread"])
    headlines = [
        f"Redis: RedisBackend.admit {fmt_int(ours['1 thread'])}/s on one thread "
        f"({fmt_ratio(ours['1 thread'] / rates[best.name]['1 thread'])} {best.name}), "
        f"{fmt_int(ours[MODES[1]])}/s on {THREADS}; {admit_rt:.0f} round trip to admit, "
        f"{settle_rt:.0f} to settle."]
    md = _markdown(subs, rates, trips, repeats, seconds)
    data = {"rates": rates, "samples": samples, "round_trips": trips, "threads": THREADS,
            "run_seconds": seconds, "repeats": repeats}
    return Section("redis", "Redis backend", md, data, targets,
                   time.perf_counter() - t_start, headlines)


def _markdown(subs: list[Subject], rates: dict[str, dict[str, float]],
              trips: dict[str, Any], repeats: int, seconds: float) -> str:
    ours = [s for s in subs if s.ours]
    rows = [[s.name, fmt_int(rates[s.name][MODES[0]]), fmt_int(rates[s.name][MODES[1]]),
             f"{trips.get(s.name, {}).get('round_trips', float('nan')):.2f}", s.note]
            for s in subs]
    rows[0][3] = f"{trips['llm-governor admit']['round_trips']:.2f}"
    rows[1][3] = (f"{trips['llm-governor admit']['round_trips']:.2f} + "
                  f"{trips['llm-governor settle']['round_trips']:.2f}")
    ratio_rows = [[p.name, *(" / ".join(f"{rates[o.name][m] / rates[p.name][m]:.2f}"
                                        for m in MODES) for o in ours)]
                  for p in subs if not p.ours]
    gov = trips["llm-governor Governor.admit+settle"]
    return "\n".join([
        f"Decisions per second against one local `redis-server` (loopback TCP; median of "
        f"{repeats} interleaved runs of {seconds:g} s), limits so high that every decision "
        f"admits, {THREADS} threads sharing one limit. Round trips are client writes per "
        "decision (a write waits for its reply before the next).",
        "",
        table(["limiter", "1 thread", f"{THREADS} threads", "round trips", "what it does"],
              rows, ["l", "r", "r", "r", "l"]),
        "",
        f"Ratios, llm-governor ÷ peer (1 thread / {THREADS} threads; above 1.00× we are "
        "faster). Our decision does more per round trip than any peer's: three buckets, a "
        "budget check, breaker and counters.",
        "",
        table(["peer", *(o.name.removeprefix("llm-governor ") for o in ours)], ratio_rows,
              ["l", "r", "r"]),
        "",
        f"A whole governed call through `Governor.admit` + `settle` costs "
        f"{gov['round_trips']:.2f} round trips ({gov.get('evalsha_per_call', 0):.2f} scripts "
        "on the server; the rest is the once-a-second process heartbeat).",
    ])


if __name__ == "__main__":
    section = run(Mode.named(sys.argv[1] if len(sys.argv) > 1 else "quick"))
    section.save()
    print(section.markdown)
    print(*section.headlines, sep="\n")
