"""Goodput scenarios, run by ``bench_goodput`` and ``tests/instrumentation/test_goodput``.

One run = one :class:`Scenario` × one variant × sync or async clients × one or
several processes. The bundled :class:`~llm_governor.testing.FakeProvider`
enforces ``rpm`` requests per sliding ``window`` (a real-world minute scaled
down), answers the excess with 429 + exact ``retry-after-ms`` and sends
accurate ``x-ratelimit-*`` headers on every response.

Workload: a closed loop, like a batch job's worker pool or a web server's
worker threads: ``workers`` callers each make ``chat.completions.create`` calls
back to back for ``duration`` seconds, as many as make the demand ``DEMAND``
(4) times what the binding limit allows (``workers = DEMAND × binding rate ×
provider latency``). Then no new call starts; calls already started finish
(async ones still unfinished ``grace`` seconds later are cancelled and
counted as *unfinished*). A closed loop makes the wait comparable between
variants: every call is eventually served or fails, nothing is left out by a
cut-off, and with equal throughput the mean latency is the same for every
variant (Little's law: ``workers = throughput × latency``), so what the
percentiles compare is how fairly each variant shares the wait.

Variants: **bare SDK** (the client's own 2 retries, which honour
``retry-after``), **SDK + tenacity** (the OpenAI cookbook's decorator,
``wait_random_exponential(min=1, max=60)`` × the time scale,
``stop_after_attempt(6)``, retry on ``RateLimitError``) and **llm-governor**
(the bare code, ``instrument()``-ed), in one process on the memory backend or
in ``processes`` processes sharing one SQLite file.

Scenarios (``config``):

* ``below``: the configuration allows half the provider's rate: the
  configuration binds, and it alone should shape traffic (no 429 at all);
* ``above``: the configuration allows twice the provider's rate (and twice its
  burst): the provider's headers must bring the governor down;
* ``none``: ``instrument({"backend": …})`` and nothing else: permissive
  defaults, limits learned from the provider;
* ``exact`` with ``foreign_share``: configured at the provider's limit, but a
  foreign, un-governed client (raw HTTP posts with the same API key, counted
  by the same provider bucket) takes ``foreign_share`` of the quota.

Measured: **goodput**, the calls the provider served during the ``duration``
(its ledger, by arrival time, from the first call it saw) divided by what the
limit that binds allows in that time (the provider's ``rpm × duration /
window`` minus what the foreign client was served; for the governor in
``below``, the configuration's ``capacity + rate × duration``); **provider
429s** served to the measured calls (not the foreign client's); **errors**
that reached user code; the latency of each successful call from invocation
to return (its wait plus the provider's ``latency``), p50 and p95.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

DEMAND = 4.0
MODEL = "gpt-4o-mini"
FOREIGN_MODEL = "gpt-4.1-nano"  # tells the foreign client's requests apart in the ledger
API_KEY = "sk-goodput-shared-account"
MESSAGES: Any = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]
VARIANTS = ("bare SDK", "SDK + tenacity", "llm-governor")
GOVERNOR = "llm-governor"
Config = Literal["below", "above", "none", "exact"]
Client = Literal["sync", "async"]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    config: Config
    rpm: int = 60  # requests per window at the provider
    window: float = 1.5  # seconds: the provider's "minute"
    duration: float = 3.0  # seconds of over-demand (a whole number of windows)
    latency: float = 0.1  # provider's service time per admitted request
    foreign_share: float = 0.0  # of the provider's limit, taken by a foreign client

    @property
    def provider_rate(self) -> float:
        return self.rpm / self.window

    @property
    def scale(self) -> float:
        """Time scale of the scenario against a real 60-second minute."""
        return self.window / 60.0

    @property
    def config_rate(self) -> float:
        """Requests/s the governor's configuration allows (inf: none configured)."""
        return {"below": 0.5 * self.provider_rate, "above": 2.0 * self.provider_rate,
                "exact": (self.rpm - 2) / self.window, "none": math.inf}[self.config]

    @property
    def binding_rate(self) -> float:
        """The rate that binds: the configuration's when below, else the provider's
        minus the foreign share."""
        if self.config == "below":
            return self.config_rate
        return self.provider_rate * (1.0 - self.foreign_share)

    @property
    def workers(self) -> int:
        """Callers (threads or tasks, over all processes): DEMAND × what the limit allows."""
        return max(2, math.ceil(DEMAND * self.binding_rate * self.latency))

    def governor_config(self, backend: str) -> dict[str, Any]:
        """What the application passes to ``instrument()``."""
        if self.config == "none":
            return {"backend": backend}
        if self.config == "below":
            svc: dict[str, Any] = {"max_tokens": 2, "burst_capacity": 0,
                                   "refill_rate": self.config_rate}
        elif self.config == "above":
            svc = {"max_tokens": 2 * self.rpm, "burst_capacity": 0,
                   "refill_rate": self.config_rate}
        else:
            svc = {"max_tokens": 2, "burst_capacity": 0, "refill_rate": self.config_rate}
        svc.update({"min_interval": 1e-3, "max_cost_per_minute": "1000",
                    "max_queue_size": 10_000, "request_timeout": 120})
        return {"backend": backend, "services": {"openai": svc}}

    def binds(self, variant: str) -> str:
        """The limit that binds ``variant``'s calls."""
        if self.config == "below" and variant == GOVERNOR:
            return "configuration"
        return "provider − foreign" if self.foreign_share else "provider"

    def allowed(self, variant: str, foreign_served: int) -> float:
        """Calls the limit that binds ``variant`` allows during the duration: a GCRA
        bucket's ``capacity + rate × duration``, a sliding window's ``rpm`` per window
        (from a cold start, over whole windows) minus what the foreign client got."""
        if self.binds(variant) == "configuration":
            return 2 + self.config_rate * self.duration
        return self.rpm * self.duration / self.window - foreign_served


SCENARIOS: dict[str, Scenario] = {
    "a": Scenario("a", "configuration below the provider's limit (the configuration binds)",
                  "below"),
    "b": Scenario("b", "configuration 2× above the provider's limit (the headers bring it down)",
                  "above"),
    "c": Scenario("c", "no configuration at all (permissive defaults that learn)", "none"),
    "d": Scenario("d", "a foreign, un-governed client takes half the provider's quota",
                  "exact", foreign_share=0.5),
}


def scaled(sc: Scenario, rpm: int, window: float, duration: float) -> Scenario:
    """``sc`` at another size (the tests run shorter windows, the full benchmark longer)."""
    return replace(sc, rpm=rpm, window=window, duration=duration)


# ---------------------------------------------------------------- one process's callers
@dataclass
class Calls:
    """What the callers of one process saw."""

    ok: int = 0
    unfinished: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # wall clock, per latency

    def merge(self, other: Calls) -> None:
        self.ok += other.ok
        self.unfinished += other.unfinished
        for k, v in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.latencies += other.latencies
        self.started += other.started


def _tenacity(sc: Scenario, fn: Callable[[], Any], is_async: bool) -> Callable[[], Any]:
    import openai
    from tenacity import (
        retry,
        retry_if_exception_type,
        stop_after_attempt,
        wait_random_exponential,
    )

    s = sc.scale
    deco = retry(wait=wait_random_exponential(multiplier=s, min=1 * s, max=60 * s),
                 stop=stop_after_attempt(6), retry=retry_if_exception_type(openai.RateLimitError))
    if is_async:
        async def call_async() -> Any:
            return await fn()
        return deco(call_async)
    return deco(fn)


def run_callers(sc: Scenario, variant: str, client: Client, base_url: str, workers: int,
                go: Callable[[], float], grace: float) -> Calls:
    """``workers`` callers in this process, calling for ``sc.duration`` seconds from the
    wall-clock instant ``go()`` returns once the clients are ready (whether the SDK is
    instrumented is the caller's business)."""
    import openai

    out = Calls()

    def record_error(exc: BaseException) -> None:
        name = type(exc).__name__
        out.errors[name] = out.errors.get(name, 0) + 1

    if client == "sync":
        sync_client = openai.OpenAI(api_key=API_KEY, base_url=base_url)

        def bare() -> Any:
            return sync_client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                       max_tokens=20)

        call = _tenacity(sc, bare, False) if variant == "SDK + tenacity" else bare
        _ = sync_client.chat.completions  # imported on first use: not in the first call
        lock = threading.Lock()
        end_wall = go() + sc.duration

        def worker() -> None:
            while time.time() < end_wall:
                started, t0 = time.time(), time.monotonic()
                try:
                    call()
                except Exception as exc:
                    with lock:
                        record_error(exc)
                    continue
                took = time.monotonic() - t0
                with lock:
                    out.ok += 1
                    out.latencies.append(took)
                    out.started.append(started)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, end_wall - time.time()) + grace)
        out.unfinished = sum(t.is_alive() for t in threads)
        if not out.unfinished:
            sync_client.close()
        return out

    async def main() -> None:
        async_client = openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url)

        async def bare() -> Any:
            return await async_client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                              max_tokens=20)

        call = _tenacity(sc, bare, True) if variant == "SDK + tenacity" else bare
        _ = async_client.chat.completions  # imported on first use: not in the first call
        end_wall = await asyncio.to_thread(go) + sc.duration

        async def worker() -> None:
            while time.time() < end_wall:
                started, t0 = time.time(), time.monotonic()
                try:
                    await call()
                except asyncio.CancelledError:
                    out.unfinished += 1
                    raise
                except Exception as exc:
                    record_error(exc)
                    continue
                out.ok += 1
                out.latencies.append(time.monotonic() - t0)
                out.started.append(started)

        tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, end_wall - time.time()) + grace)
        for t in pending:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await async_client.close()

    asyncio.run(main())
    return out


def process_main(sc: Scenario, variant: str, client: Client, base_url: str, workers: int,
                 go: Callable[[], float], grace: float, config: dict[str, Any] | None) -> Calls:
    """One process of a run: instrument (when ``config`` is given), call, uninstrument."""
    import llm_governor

    # no environment chosen, whatever this process's environment says
    saved = {n: os.environ.pop(n) for n in ("LLM_GOVERNOR_ENV", "MONTAGE_ENV",
                                            "LLM_GOVERNOR_CONFIG") if n in os.environ}
    gov = None
    try:
        if config is not None:
            gov = llm_governor.instrument(config)
        else:
            llm_governor.uninstrument()  # the bare SDK, whatever ran before
        return run_callers(sc, variant, client, base_url, workers, go, grace)
    finally:
        os.environ.update(saved)
        if gov is not None:
            llm_governor.uninstrument()
            gov.close()


def _child(sc: Scenario, variant: str, client: Client, base_url: str, workers: int,
           ready: Any, delay: float, grace: float, config: dict[str, Any] | None,
           results: Any) -> None:
    """A spawned process of a run: ready, wait for every other, go ``delay`` later."""
    def go() -> float:
        ready.wait()
        start = time.time() + delay
        time.sleep(max(0.0, start - time.time()))
        return start

    try:
        # A fresh interpreter builds the SDK's pydantic models lazily, on first use; threads
        # racing to use one first can see it half built (PydanticUserError, bare or not).
        # Build them here, once, before the callers start.
        import openai
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        for model in (openai._models.FinalRequestOptions, ChatCompletion, ChatCompletionChunk):
            model.model_rebuild()
        results.put(process_main(sc, variant, client, base_url, workers, go, grace, config))
    except BaseException as exc:  # the parent reports it
        results.put(exc)
        raise


# ---------------------------------------------------------------- the foreign client
def _foreign(url: str, rate: float, start: float, end: float, stop: threading.Event) -> None:
    """Raw HTTP posts with the same API key at ``rate``/s between monotonic ``start`` and
    ``end``, each retried after a 429 as a bare SDK retries it (twice, after the
    provider's ``retry-after-ms``): no SDK class, so no governor either."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx2

    body = {"model": FOREIGN_MODEL, "messages": MESSAGES, "max_tokens": 20}
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def one(http: httpx2.Client) -> None:
        for _ in range(3):
            with contextlib.suppress(Exception):
                r = http.post(url, json=body, headers=headers)
                if r.status_code != 429:
                    return
                wait = float(r.headers.get("retry-after-ms", "1000")) / 1000.0
                if stop.wait(min(wait, 60.0)):
                    return

    with httpx2.Client(timeout=10.0, limits=httpx2.Limits(max_connections=32)) as http, \
            ThreadPoolExecutor(16, thread_name_prefix="foreign") as pool:
        n = 0
        while not stop.is_set():
            due = start + n / rate
            if due >= end:
                return
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            n += 1
            pool.submit(one, http)


# ---------------------------------------------------------------- processes
def _spawned(sc: Scenario, variant: str, client: Client, base_url: str, workers: int,
             processes: int, delay: float, grace: float, config: dict[str, Any] | None,
             start_foreign: Callable[[float], None]) -> Calls:
    """The callers split over ``processes`` spawned processes, started together once every
    one has imported the SDK and instrumented it."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    shares = [workers // processes + (i < workers % processes) for i in range(processes)]
    procs = [ctx.Process(target=_child, daemon=True, args=(
        sc, variant, client, base_url, n, ready, delay, grace, config, results))
        for n in shares]
    for p in procs:
        p.start()
    calls = Calls()
    try:
        ready.wait(timeout=120.0)
        start_foreign(time.monotonic() + delay)
        for _ in procs:
            part = results.get(timeout=sc.duration + delay + grace + 60.0)
            if isinstance(part, BaseException):
                raise RuntimeError("a caller process failed") from part
            calls.merge(part)
    finally:
        for p in procs:
            p.join(10.0)
            if p.is_alive():
                p.kill()
    return calls


# ---------------------------------------------------------------- one run
@dataclass
class Result:
    scenario: str
    variant: str
    client: Client
    processes: int
    workers: int
    binds: str  # the limit that binds this variant's calls
    allowed: float
    served: int  # governed calls the provider served during the duration
    provider_429: int  # 429s served to governed calls (whole run)
    provider_200: int  # governed calls served (whole run)
    foreign_served: int
    foreign_429: int
    peak_in_window: int  # every client's requests, the busiest window
    calls: Calls

    @property
    def goodput(self) -> float:
        return self.served / self.allowed if self.allowed > 0 else 0.0

    @property
    def per_100(self) -> float:
        """Provider 429s per 100 successes (of governed calls)."""
        return 100.0 * self.provider_429 / max(1, self.provider_200)

    @property
    def errors(self) -> int:
        return sum(self.calls.errors.values())

    window: float = 0.0

    def percentile(self, q: float, steady: bool = False) -> float:
        """The ``q``-th percentile of the successful calls' latency; ``steady``: of those
        started a window or more after the first (the cold start's pause left out)."""
        values = sorted(self.calls.latencies)
        if steady and self.calls.started:
            after = min(self.calls.started) + self.window
            values = sorted(lat for lat, at in zip(self.calls.latencies, self.calls.started,
                                                    strict=True) if at >= after)
        if not values:
            return float("nan")
        k = (len(values) - 1) * q / 100.0
        lo = int(k)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (k - lo)

    def summary(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "variant": self.variant, "client": self.client,
                "processes": self.processes, "workers": self.workers, "binds": self.binds,
                "allowed": self.allowed, "served": self.served, "goodput": self.goodput,
                "provider_429": self.provider_429, "provider_200": self.provider_200,
                "per_100": self.per_100, "errors": self.errors,
                "error_types": dict(self.calls.errors), "ok": self.calls.ok,
                "unfinished": self.calls.unfinished, "foreign_served": self.foreign_served,
                "foreign_429": self.foreign_429, "peak_in_window": self.peak_in_window,
                "p50_s": self.percentile(50), "p95_s": self.percentile(95),
                "p95_steady_s": self.percentile(95, steady=True)}


def run(sc: Scenario, variant: str = GOVERNOR, client: Client = "async", processes: int = 1,
        grace: float | None = None, workdir: str | Path | None = None) -> Result:
    """One run of ``sc``. With ``processes`` > 1 the governed callers run in that many
    spawned processes sharing one SQLite file (the governor's default backend kind)."""
    from llm_governor.testing import FakeProvider

    grace = 2.0 * sc.window + 1.0 if grace is None else grace
    workers = sc.workers
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(FakeProvider(rpm=sc.rpm, window=sc.window,
                                                latency=sc.latency))
        tmp = Path(workdir) if workdir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="llmg-goodput-")))
        backend = "memory" if processes == 1 else f"sqlite:///{tmp / 'governor.db'}"
        config = sc.governor_config(backend) if variant == GOVERNOR else None
        # the foreign client starts a window ahead, so it is in full swing from the start
        delay = (sc.window if sc.foreign_share else 0.0) + 0.2
        foreign_stop = threading.Event()
        foreign: threading.Thread | None = None

        def start_foreign(go_mono: float) -> None:
            nonlocal foreign
            if not sc.foreign_share:
                return
            foreign = threading.Thread(target=_foreign, daemon=True, args=(
                f"{fake.openai_base_url}/chat/completions", sc.foreign_share * sc.provider_rate,
                go_mono - sc.window, go_mono + sc.duration, foreign_stop))
            foreign.start()

        calls = Calls()
        try:
            if processes == 1:
                def go() -> float:
                    start = time.time() + delay
                    start_foreign(time.monotonic() + delay)
                    time.sleep(max(0.0, start - time.time()))
                    return start

                calls = process_main(sc, variant, client, fake.openai_base_url, workers, go,
                                     grace, config)
            else:
                calls = _spawned(sc, variant, client, fake.openai_base_url, workers, processes,
                                 delay, grace, config, start_foreign)
        finally:
            foreign_stop.set()
            if foreign is not None:
                foreign.join(10.0)
        entries = list(fake.ledger.entries)
        peak = fake.max_in_window()
    ours = [e for e in entries if e.model == MODEL]
    # The window starts when the first governed call reaches the provider: how fast the
    # harness's callers wake up is no variant's doing.
    t0 = min((e.time for e in ours), default=0.0)
    end = t0 + sc.duration
    theirs = [e for e in entries if e.model == FOREIGN_MODEL]
    served = sum(1 for e in ours if e.status == 200 and t0 <= e.time <= end)
    foreign_in_run = sum(1 for e in theirs if e.status == 200 and t0 <= e.time <= end)
    return Result(
        scenario=sc.key, variant=variant, client=client, processes=processes, workers=workers,
        binds=sc.binds(variant), allowed=sc.allowed(variant, foreign_in_run), served=served,
        provider_429=sum(1 for e in ours if e.status == 429),
        provider_200=sum(1 for e in ours if e.status == 200),
        foreign_served=foreign_in_run,
        foreign_429=sum(1 for e in theirs if e.status == 429),
        peak_in_window=peak, calls=calls, window=sc.window)
