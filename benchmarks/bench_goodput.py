"""Section 3: goodput under over-demand, against a provider that enforces its limit.

Two parts. The first (below) is an open loop at 4× the limit, configured at
the provider's limit. The second runs the scenarios of
:mod:`benchmarks._goodput`, which document their workload: a closed loop at
4× the limit that binds, sync and async clients, one process or three sharing
a SQLite file, with (a) a configuration below the provider's limit, (b) one
2× above it, (c) none at all, (d) a foreign client taking half the quota;
one table per scenario, its targets checked.

The open loop, in detail:

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

from benchmarks import _goodput
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
    # quick: 3 runs × 3 variants in about half a minute: two windows of over-demand.
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
    # quick: 3 runs of the open loop, to leave time for the scenarios
    repeats = min(mode.repeats, 3) if mode.name == "quick" else mode.repeats
    for _ in range(repeats):
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
               f"{gov['max_provider_429']:.0f} in the worst of {repeats} runs"),
    ]
    plot = _plot(sc, runs)
    md = _markdown(repeats, sc, summary, plot)
    bare, ten = summary["bare SDK"], summary["SDK + tenacity"]
    headlines = [
        f"Goodput at {DEMAND:g}× over-demand: llm-governor {pct(gov['goodput'])} of the "
        f"provider's limit with {gov['provider_429']:.0f} provider 429s and "
        f"{gov['failed']:.0f} failures; bare SDK {pct(bare['goodput'])} with "
        f"{bare['provider_429']:.0f} 429s and {bare['failed']:.0f} failures; SDK + tenacity "
        f"{pct(ten['goodput'])} with {ten['provider_429']:.0f} 429s and "
        f"{ten['failed']:.0f} failures."]
    data: dict[str, Any] = {
        "scenario": vars(sc), "demand": DEMAND, "summary": summary,
        "runs": {v: [{k: x for k, x in r.items() if k not in ("done_at", "t429")}
                     for r in rs] for v, rs in runs.items()}}
    md_scenarios, scenario_targets, scenario_headlines, data["scenarios"] = _scenarios(mode)
    md += "\n\n" + md_scenarios
    targets += scenario_targets
    headlines += scenario_headlines
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


def _markdown(repeats: int, sc: Scenario, summary: dict[str, dict[str, float]],
              plot: str) -> str:
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
        f"{sc.allowed:.0f} of them. Medians of {repeats} runs per variant (interleaved). "
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


# ------------------------------------------------------------------ the scenarios
# (variant, client, processes) rows of each scenario's table
ROWS: tuple[tuple[str, _goodput.Client, int], ...] = (
    ("bare SDK", "async", 1), ("SDK + tenacity", "async", 1),
    (_goodput.GOVERNOR, "async", 1), (_goodput.GOVERNOR, "sync", 1),
    (_goodput.GOVERNOR, "sync", 3))
THREE_PROCESSES = ("b", "c")  # the scenarios whose limits the processes must learn together


def _row_name(variant: str, client: str, processes: int) -> str:
    if processes > 1:
        return f"{variant}, {processes} processes on one SQLite file (threads)"
    return f"{variant} ({'asyncio' if client == 'async' else 'threads'})"


def _size(mode: Mode) -> tuple[int, float, float]:
    """(rpm, window, duration) of the scenarios: 40 requests/s, four or five windows."""
    return (40, 1.0, 4.0) if mode.name == "quick" else (120, 3.0, 15.0)


def _scenarios(mode: Mode) -> tuple[str, list[Target], list[str], dict[str, Any]]:
    rpm, window, duration = _size(mode)
    parts = [
        "### Scenarios: the governor against the provider's own headers",
        "",
        f"The workload of `benchmarks/_goodput.py`: the fake provider allows {rpm} requests "
        f"per {window:g} s sliding window ({rpm / window:g}/s), answers in 100 ms and sends "
        "accurate `x-ratelimit-*` headers; callers in a closed loop (a worker pool) ask for "
        f"{_goodput.DEMAND:g}× what the limit that binds allows, for {duration:g} s "
        f"({duration / window:g} windows, from a cold start). Goodput: calls the provider "
        "served in that time (its ledger) against what the limit that binds allows; the "
        "SDK variants are held to the provider's limit only, the governor also to its "
        "configuration. Latency: invocation to return of each successful call (its wait "
        "plus the 100 ms service). One run per row.",
    ]
    targets: list[Target] = []
    headlines: list[str] = []
    data: dict[str, Any] = {"size": {"rpm": rpm, "window": window, "duration": duration}}
    for key, base in _goodput.SCENARIOS.items():
        sc = _goodput.scaled(base, rpm, window, duration)
        rows = []
        for variant, client, processes in ROWS:
            if processes > 1 and key not in THREE_PROCESSES:
                continue
            r = _goodput.run(sc, variant, client, processes).summary()
            r["name"] = _row_name(variant, client, processes)
            rows.append(r)
        data[key] = rows
        md, ts, headline = _scenario_table(sc, rows)
        parts += ["", md]
        targets += ts
        headlines.append(headline)
    parts += ["", _SCENARIO_NOTES]
    return "\n".join(parts), targets, headlines, data


def _scenario_table(sc: _goodput.Scenario, rows: list[dict[str, Any]]
                    ) -> tuple[str, list[Target], str]:
    foreign = sc.foreign_share > 0
    headers = ["variant", "limit that binds", "goodput", "served / allowed", "provider 429s",
               "429s per 100 successes", "errors in user code", "p50 ms", "p95 ms",
               "p95 ms after the 1st window"]
    if foreign:
        headers.append("foreign client served / 429s")
    lines = []
    for r in rows:
        errors = ", ".join(f"{n} {k}" for k, n in r["error_types"].items()) or "0"
        if r["unfinished"]:
            errors += f" (+{r['unfinished']} unfinished)"
        line = [r["name"], r["binds"], pct(r["goodput"]), f"{r['served']} / {r['allowed']:.0f}",
                str(r["provider_429"]), f"{r['per_100']:.1f}", errors,
                f"{1000 * r['p50_s']:.0f}", f"{1000 * r['p95_s']:.0f}",
                f"{1000 * r['p95_steady_s']:.0f}"]
        if foreign:
            line.append(f"{r['foreign_served']} / {r['foreign_429']}")
        lines.append(line)
    gov = [r for r in rows if r["variant"] == _goodput.GOVERNOR]
    ten = next(r for r in rows if r["variant"] == "SDK + tenacity")
    worst_goodput = min(gov, key=lambda r: r["goodput"])
    worst_429 = max(gov, key=lambda r: r["per_100"])
    worst_p95 = max(gov, key=lambda r: r["p95_s"])
    errors = sum(r["errors"] + r["unfinished"] for r in gov)
    label = f"({sc.key}) llm-governor"
    targets = [
        Target(f"{label}: no error reaches user code", errors == 0,
               f"{errors} over {len(gov)} runs"),
        Target(f"{label}: ≤ 2 provider 429s per 100 successes", worst_429["per_100"] <= 2.0,
               f"{worst_429['per_100']:.1f} at worst ({worst_429['name']})"),
        Target(f"{label}: goodput ≥ 97% of the limit that binds",
               worst_goodput["goodput"] >= 0.97,
               f"{pct(worst_goodput['goodput'])} at worst ({worst_goodput['name']})"),
    ]
    if sc.config == "below":
        targets.append(Target(
            f"{label}: p95 latency no worse than SDK + tenacity", False,
            f"not comparable: the configuration halves the governed calls' rate "
            f"({1000 * worst_p95['p95_s']:.0f} ms), the SDK's are held to the provider's "
            f"only ({1000 * ten['p95_s']:.0f} ms)"))
    else:
        steady = max(r["p95_steady_s"] for r in gov)
        targets.append(Target(
            f"{label}: p95 latency no worse than SDK + tenacity",
            worst_p95["p95_s"] <= ten["p95_s"],
            f"{1000 * worst_p95['p95_s']:.0f} ms at worst ({worst_p95['name']}) vs "
            f"{1000 * ten['p95_s']:.0f} ms; after the first window {1000 * steady:.0f} vs "
            f"{1000 * ten['p95_steady_s']:.0f} ms"))
    md = "\n".join([f"**({sc.key}) {sc.title}** — {len(gov)} governed runs, "
                    f"{sc.workers} callers.", "",
                    table(headers, lines, ["l", "l"] + ["r"] * (len(headers) - 2))])
    headline = (f"Scenario ({sc.key}), {sc.title}: llm-governor {pct(worst_goodput['goodput'])}"
                f" of the limit that binds at worst, {worst_429['per_100']:.1f} provider 429s "
                f"per 100 successes at worst, {errors} errors; SDK + tenacity "
                f"{ten['per_100']:.1f} 429s per 100 successes.")
    return md, targets, headline


_SCENARIO_NOTES = """\
What the numbers say, and why some targets are missed:

- **Open loop vs closed loop.** In the open-loop table above, three quarters of the calls
  cannot be served by anyone before the cut-off; the latency of those that were is a
  survivor's: the SDK variants' successes are the retries that happened to land, while the
  governor serves in arrival order (FIFO), so its successful calls have waited longest.
  The closed loops measure every call, and with equal throughput the mean wait is equal
  for every variant (Little's law): the percentiles compare how the wait is shared.
- **p95 from a cold start.** A sliding window filled from cold in one burst frees nothing
  until its first call is a window old, and every caller waits through that pause (the
  SDK variants' too: their p95 is about that pause). The governor spreads what the
  provider's first answer says is left over its reset instead, so the window fills and
  frees evenly and no caller waits a window: its p95 is about one queue turn plus the
  spread's pace. The last column leaves the first window out.
- **Goodput near the line.** 97 % of 160 is 155.2: a run with 155 served misses it, and
  repeated runs land at 154-157. From ledger traces: the first window is served whole in
  one process (39-40 of 40 in three); each later one 38-39. The governor paces 1 % under
  the provider's rate (which is what keeps its 429s near zero: at the full rate a call
  reached the provider just before the slot it replaced freed, once a window), and a call
  that leaves late is not made up, since the level follows what the provider counted when
  the last answered call arrived.
- **(d) a foreign client.** The foreign client (raw HTTP, the same key, half the quota,
  retrying 429s after `retry-after` like a bare SDK) sends on a fixed grid, so each of its
  slots frees just as it sends the next call. The governor tells its own calls from the
  foreign client's in the provider's count (its own admissions over the provider's window,
  `policies/share.py`) and keeps its own calls in any window to the part the foreign
  client leaves: it waits until the oldest of them there expires, and paces at 1.2× that
  part only to smooth. It draws no 429s or nearly (12.0-14.3 per 100 before it told the
  clients apart) and serves 97.5-98.8 % of that part; paced at 0.99 of the part, it
  served 91-95 %, since a slot lost to a late answer was never made up (18-19 of 20 a
  window in the virtual-time simulation of `tests/policies/test_admission.py`). The
  foreign client meets more 429s than it did then (11-19 a run, against 2-4): with both
  clients at their part the window is full at every turn, and a foreign call sent a few
  milliseconds before its own call of a window ago has left is refused, then served on
  its retry (79 of 80). Bare SDKs on the same account drew 66-80 for it.
"""
