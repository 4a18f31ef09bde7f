"""Section 3: goodput under over-demand, against a provider that enforces its limit.

The bundled :class:`~llm_governor.testing.FakeProvider` (a real HTTP server on
loopback) enforces ``RPM`` requests per sliding ``window`` (a "minute" scaled
down) and answers the excess with 429 + ``retry-after``. Calls arrive open
loop at 4× that limit for a fixed duration, each an ``AsyncOpenAI``
``chat.completions.create``; at the end of the duration whatever has not
finished is cancelled (counted as *unfinished*). Compared:

* **bare SDK**: the client's built-in retries (``max_retries`` default 2, which
  honour ``retry-after``);
* **SDK + tenacity**: the OpenAI cookbook's decorator
  (``wait_random_exponential(min=1, max=60)``, ``stop_after_attempt(6)``, retry on
  ``RateLimitError``), its waits scaled by the same factor as the window;
* **llm-governor**: ``instrument()`` with the openai service's GCRA set to the
  provider's limit: ``max_tokens=2`` (no burst) and ``refill_rate=(RPM-2)/window``,
  since a GCRA bucket admits at most ``capacity + rate·d`` in any interval ``d``,
  i.e. exactly ``RPM`` per window. The application code is the bare code, unchanged.

Goodput is the number of successful calls completed within the duration,
divided by what the provider's limit allows in that time (``RPM · duration /
window``). 429s are counted by the provider (its ledger), failures are
exceptions that reached the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._common import (
    Mode,
    Section,
    Target,
    median,
    new_figure,
    pct,
    percentile,
    save_figure,
    table,
)

DEMAND = 4.0
MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]
VARIANTS = ("bare SDK", "SDK + tenacity", "llm-governor")


@dataclass(frozen=True)
class Scenario:
    rpm: int  # requests per window at the provider
    window: float  # seconds: the provider's "minute"
    duration: float  # seconds of over-demand
    latency: float = 0.02  # provider's service time per admitted request

    @property
    def limit_per_s(self) -> float:
        return self.rpm / self.window

    @property
    def allowed(self) -> float:
        """Calls the provider's limit allows during the duration."""
        return self.rpm * self.duration / self.window

    @property
    def scale(self) -> float:
        """Time scale of the scenario against a real 60-second minute."""
        return self.window / 60.0


def scenario(mode: Mode) -> Scenario:
    if mode.name == "full":
        return Scenario(rpm=120, window=5.0, duration=mode.goodput_seconds)
    # quick: 5 runs × 3 variants must fit in under a minute: two windows of over-demand.
    # The duration is a whole number of windows (a sliding window lets exactly RPM through
    # per window from a cold start), and RPM stays large enough that the bucket of 2 and
    # the event loop's wake-up lag are a small share of it.
    return Scenario(rpm=60, window=mode.goodput_seconds / 2, duration=mode.goodput_seconds)


def governor_config(sc: Scenario) -> dict[str, Any]:
    return {
        "backend": "memory",
        "environment": "production",
        "services": {"openai": {
            "max_tokens": 2, "burst_capacity": 0, "refill_rate": (sc.rpm - 2) / sc.window,
            "min_interval": 1e-3, "max_cost_per_minute": "1000",
            "max_queue_size": 100_000, "request_timeout": 600,
        }},
    }


@dataclass
class Outcome:
    ok: int = 0
    failed: int = 0
    unfinished: int = 0
    latencies: list[float] | None = None
    done_at: list[float] | None = None  # seconds since start, successes only


async def _drive(sc: Scenario, call: Callable[[], Awaitable[Any]]) -> Outcome:
    """Open-loop arrivals at DEMAND × the limit for the duration, then cancel the rest."""
    rate = DEMAND * sc.limit_per_s
    n = int(rate * sc.duration)
    out = Outcome(latencies=[], done_at=[])
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + sc.duration

    async def one() -> None:
        start = loop.time()
        try:
            await call()
        except asyncio.CancelledError:
            out.unfinished += 1
            raise
        except Exception as exc:
            out.failed += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        now = loop.time()
        if now <= end:
            out.ok += 1
            assert out.latencies is not None and out.done_at is not None
            out.latencies.append(now - start)
            out.done_at.append(now - t0)
        else:
            out.unfinished += 1

    tasks = []
    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.sleep(max(0.0, end - loop.time()))
    for t in tasks:
        t.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


def _one_run(sc: Scenario, variant: str) -> dict[str, Any]:
    import openai
    from tenacity import (
        retry,
        retry_if_exception_type,
        stop_after_attempt,
        wait_random_exponential,
    )

    import llm_governor
    from llm_governor.testing import FakeProvider

    with FakeProvider(rpm=sc.rpm, window=sc.window, latency=sc.latency) as fake:
        if variant == "llm-governor":
            llm_governor.instrument(governor_config(sc))
        try:
            async def main() -> Outcome:
                client = openai.AsyncOpenAI(api_key="sk-bench", base_url=fake.openai_base_url)

                async def bare() -> Any:
                    return await client.chat.completions.create(
                        model=MODEL, messages=MESSAGES, max_tokens=20)

                s = sc.scale

                @retry(wait=wait_random_exponential(multiplier=s, min=1 * s, max=60 * s),
                       stop=stop_after_attempt(6),
                       retry=retry_if_exception_type(openai.RateLimitError))
                async def with_tenacity() -> Any:
                    return await bare()

                try:
                    return await _drive(sc, with_tenacity if variant == "SDK + tenacity"
                                        else bare)
                finally:
                    await client.close()

            out = asyncio.run(main())
        finally:
            if variant == "llm-governor":
                llm_governor.uninstrument()
        statuses = fake.ledger.count_by_status()
        entries = fake.ledger.entries
        peak = fake.max_in_window()
    assert out.latencies is not None and out.done_at is not None
    t_first = min((e.time for e in entries), default=0.0)
    return {
        "ok": out.ok, "failed": out.failed, "unfinished": out.unfinished,
        "goodput": out.ok / sc.allowed,
        "provider_429": statuses.get(429, 0), "provider_200": statuses.get(200, 0),
        "provider_requests": sum(statuses.values()), "peak_in_window": peak,
        "p50_s": percentile(out.latencies, 50), "p95_s": percentile(out.latencies, 95),
        "done_at": sorted(out.done_at),
        "t429": sorted(e.time - t_first for e in entries if e.status == 429),
    }


def run(mode: Mode) -> Section:
    t_start = time.perf_counter()
    sc = scenario(mode)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(mode.repeats):
        for v in VARIANTS:  # interleaved, so drift hits every variant alike
            runs[v].append(_one_run(sc, v))
    summary = {}
    for v, rs in runs.items():
        summary[v] = {k: median([r[k] for r in rs]) for k in
                      ("goodput", "ok", "failed", "unfinished", "provider_429", "provider_200",
                       "provider_requests", "peak_in_window", "p50_s", "p95_s")}
        summary[v]["max_provider_429"] = max(r["provider_429"] for r in rs)
        summary[v]["min_goodput"] = min(r["goodput"] for r in rs)
    gov = summary["llm-governor"]
    targets = [
        Target("llm-governor goodput ≥ 95% of the provider's limit", gov["goodput"] >= 0.95,
               f"{pct(gov['goodput'])} (worst run {pct(gov['min_goodput'])})"),
        Target("llm-governor: zero provider 429s", gov["max_provider_429"] == 0,
               f"{gov['max_provider_429']:.0f} in the worst of {mode.repeats} runs"),
    ]
    plot = _plot(sc, runs)
    md = _markdown(mode, sc, summary, plot)
    bare, ten = summary["bare SDK"], summary["SDK + tenacity"]
    headlines = [
        f"Goodput at {DEMAND:g}× over-demand: llm-governor {pct(gov['goodput'])} of the "
        f"provider's limit with {gov['provider_429']:.0f} provider 429s and "
        f"{gov['failed']:.0f} failures; bare SDK {pct(bare['goodput'])} with "
        f"{bare['provider_429']:.0f} 429s and {bare['failed']:.0f} failures; SDK + tenacity "
        f"{pct(ten['goodput'])} with {ten['provider_429']:.0f} 429s and "
        f"{ten['failed']:.0f} failures."]
    data = {"scenario": vars(sc), "demand": DEMAND, "summary": summary,
            "runs": {v: [{k: x for k, x in r.items() if k not in ("done_at", "t429")}
                         for r in rs] for v, rs in runs.items()}}
    return Section("goodput", "Goodput under over-demand", md, data, targets,
                   time.perf_counter() - t_start, headlines)


def _plot(sc: Scenario, runs: dict[str, list[dict[str, Any]]]) -> str:
    fig, _ = new_figure(7.5, 3.0)
    fig.clear()
    ax1, ax2 = fig.subplots(1, 2)
    colors = {"bare SDK": "#c44e52", "SDK + tenacity": "#dd8452", "llm-governor": "#55a868"}
    for v, rs in runs.items():
        r = rs[0]
        xs = r["done_at"]
        ax1.step(xs, range(1, len(xs) + 1), where="post", label=v, color=colors[v])
        ts = r["t429"]
        ax2.step(ts, range(1, len(ts) + 1), where="post", label=v, color=colors[v])
    limit_x = [0.0, sc.duration]
    ax1.plot(limit_x, [0.0, sc.allowed], "k--", linewidth=1, label="provider limit")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("successful calls")
    ax1.legend(fontsize=6)
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("429s served by the provider")
    ax2.legend(fontsize=6, title="llm-governor: none", title_fontsize=6)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return save_figure(fig, "goodput")


def _markdown(mode: Mode, sc: Scenario, summary: dict[str, dict[str, float]], plot: str) -> str:
    rows = []
    for v in VARIANTS:
        s = summary[v]
        rows.append([v, pct(s["goodput"]), f"{s['ok']:.0f}", f"{s['provider_429']:.0f}",
                     f"{s['failed']:.0f}", f"{s['unfinished']:.0f}",
                     f"{1000 * s['p50_s']:.0f}", f"{1000 * s['p95_s']:.0f}",
                     f"{s['peak_in_window']:.0f} / {sc.rpm}"])
    n = int(DEMAND * sc.limit_per_s * sc.duration)
    g, b = summary["llm-governor"], summary["bare SDK"]
    ratio_429 = "" if g["provider_429"] == 0 else \
        f" ({b['provider_429'] / g['provider_429']:.1f}× fewer)"
    return "\n".join([
        f"The provider allows {sc.rpm} requests per {sc.window:g} s sliding window "
        f"({sc.limit_per_s:g}/s; the real-world RPM limit with time scaled by "
        f"{1 / sc.scale:g}×) and answers in {1000 * sc.latency:.0f} ms; {n} calls arrive "
        f"open loop at {DEMAND:g}× that rate over {sc.duration:g} s, so the limit allows "
        f"{sc.allowed:.0f} of them. Medians of {mode.repeats} runs per variant (interleaved). "
        "Latency is arrival to success, successful calls only.",
        "",
        table(["variant", "goodput", "successes", "provider 429s", "failed in user code",
               "unfinished at end", "p50 ms", "p95 ms", "peak in a window / limit"], rows,
              ["l", "r", "r", "r", "r", "r", "r", "r", "r"]),
        "",
        f"llm-governor vs bare SDK in the same runs: goodput {pct(g['goodput'])} vs "
        f"{pct(b['goodput'])}, provider 429s {g['provider_429']:.0f} vs "
        f"{b['provider_429']:.0f}{ratio_429}, failures in user code {g['failed']:.0f} vs "
        f"{b['failed']:.0f}; the tenacity variant's provider 429s "
        f"{summary['SDK + tenacity']['provider_429']:.0f}.",
        "",
        f"![goodput]({plot})",
        "",
        "Left: successes over time (first run of each variant) against the limit's line; "
        "right: 429s the provider served. Unfinished calls are the over-demand still "
        "waiting (in the governor's queue, or in a client's retry back-off) when the run "
        "ends; with 4× demand about three quarters of the calls cannot be served in time "
        "by anyone.",
    ])
