"""Section 2: overhead. Governed vs bare SDK calls over an in-process transport.

``openai`` ``chat.completions.create`` and ``anthropic`` ``messages.create``
talk to an ``httpx2.MockTransport`` that returns a canned, valid response, so
what is timed is the SDK's own work plus ours. Governed means
``llm_governor.instrument(config)`` with limits so high that nothing ever
waits; bare means ``uninstrument()``d (the same client objects, built before
either). Per backend (memory, SQLite, Redis when a ``redis-server`` can be
started) and without / with OTel SDK providers (a ``MeterProvider`` with an
``InMemoryMetricReader``, a ``TracerProvider`` with a processor that exports
nothing). A run times each call; its figure is the median call, and the
reported figure is the median of the runs. Bare and governed runs alternate.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import pstats
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Mode,
    Section,
    Target,
    fmt_ratio,
    fmt_us,
    median,
    new_figure,
    redis_server,
    save_figure,
    table,
)

TARGET_US = 25.0
OVERHEAD_NOTES = """**Fixes made, and why the 25 µs target is still missed.** The first \
attempt runs outside tenacity (tenacity is built only after a classified failure: -65 µs), \
leases are scanned only when a budget or concurrency cap needs them and in one pass, a \
memory decision costs about 4 µs, the call's `CallSpec` is built and scoped through its \
slots instead of the frozen dataclass's `__init__` and `dataclasses.replace` (about -5 \
µs), and telemetry builds nothing while no provider records. Timed step by step on this \
machine (medians per openai call, no profiler), the governed call still spends about 30 µs \
describing the call (half of it sizing the JSON body to bound the prompt, \
`_media.media_bound`), 15 µs scoping it to its provider account and annotating it for \
telemetry, 35 µs in `Governor.admit` (ticket, estimate, queue fast path, the backend's \
decision, events) and 30 µs in `settle` (usage read and priced, the charging rule, the \
backend's settlement with its counters, events), plus the lifecycle's steps and the \
attempt hooks around the SDK's own call. None of these alone is 25 µs of waste: each is \
work the contract asks for (a bounded estimate before the call, an atomic reservation, a \
settlement by real usage, counters that status reads). Reaching 25 µs would need the \
estimate without its own walk and serialisation of the body and admission and settlement \
at a few µs each, i.e. the governor's per-call bookkeeping (ticket, steps, events, call \
record) cut to a fraction. Against a real provider's latency (hundreds of milliseconds) \
the overhead stays under 1%."""
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-latest"
MESSAGES: Any = [{"role": "user", "content": "Say hi in one word."}]

_CHAT = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
    "model": OPENAI_MODEL,
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "Hi", "refusal": None}}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 1, "total_tokens": 15},
}
_MESSAGE = {
    "id": "msg_bench", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
    "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {"input_tokens": 14, "output_tokens": 1},
}
_HEAVY = {"max_tokens": 10**9, "refill_rate": 1e9, "burst_capacity": 0, "min_interval": 1e-9,
          "max_cost_per_minute": "1000000000", "max_queue_size": 10_000}


def governed_config(backend: str) -> dict[str, Any]:
    """Limits so high nothing waits: only the governor's bookkeeping is timed."""
    return {"backend": backend, "environment": "production",
            "services": {"openai": dict(_HEAVY), "anthropic": dict(_HEAVY)}}


@dataclass
class Clients:
    call: dict[str, Callable[[], Any]]


@contextmanager
def mock_clients() -> Iterator[Clients]:
    """openai and anthropic clients on one in-process mock transport."""
    import anthropic
    import httpx2
    import openai

    chat = json.dumps(_CHAT).encode()
    message = json.dumps(_MESSAGE).encode()
    headers = {"content-type": "application/json"}

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = chat if request.url.path.endswith("/chat/completions") else message
        return httpx2.Response(200, content=body, headers=headers)

    with ExitStack() as stack:
        ohttp = stack.enter_context(httpx2.Client(transport=httpx2.MockTransport(handler)))
        ahttp = stack.enter_context(httpx2.Client(transport=httpx2.MockTransport(handler)))
        oc = openai.OpenAI(api_key="sk-bench", base_url="http://mock.invalid/v1",
                           http_client=ohttp)
        ac = anthropic.Anthropic(api_key="sk-ant-bench", base_url="http://mock.invalid",
                                 http_client=ahttp)

        def openai_call() -> Any:
            return oc.chat.completions.create(model=OPENAI_MODEL, messages=MESSAGES,
                                              max_tokens=16)

        def anthropic_call() -> Any:
            return ac.messages.create(model=ANTHROPIC_MODEL, messages=MESSAGES, max_tokens=16)

        yield Clients({"openai": openai_call, "anthropic": anthropic_call})


def otel_providers() -> tuple[Any, Any]:
    """A MeterProvider with an in-memory reader; a TracerProvider whose processor exports
    nothing (spans are still built, attributed and ended)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    tracer = TracerProvider()
    tracer.add_span_processor(SpanProcessor())  # the base class: every hook a no-op
    return MeterProvider(metric_readers=[InMemoryMetricReader()]), tracer


def _per_call_us(fn: Callable[[], Any], calls: int) -> float:
    """Median µs of ``calls`` timed calls, after a warm-up."""
    for _ in range(20):
        fn()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return median(samples) / 1000.0


@dataclass(frozen=True)
class Setup:
    backend: str  # label
    url: str
    otel: bool


def _setups(tmp: Path, redis_url: str | None) -> list[Setup]:
    out = []
    urls = [("memory", "memory"), ("sqlite", f"sqlite://{tmp / 'overhead.db'}")]
    if redis_url:
        urls.append(("redis", redis_url))
    for label, url in urls:
        for otel in (False, True):
            out.append(Setup(label, url, otel))
    return out


def _redis_usable(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        import llm_governor.backends.redis  # noqa: F401
    except ImportError:
        return None
    return url


def _own_times(call: Callable[[], Any], calls: int) -> dict[str, tuple[float, float]]:
    """cProfile ``calls`` calls: function → (calls per call, own µs per call)."""
    for _ in range(50):
        call()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        call()
    prof.disable()
    raw: dict[Any, Any] = pstats.Stats(prof, stream=io.StringIO()).stats  # type: ignore[attr-defined,unused-ignore]
    out = {}
    for (filename, line, func), (_cc, ncalls, tottime, _cum, _callers) in raw.items():
        short = filename.split("site-packages/")[-1].split("/work/main/")[-1]
        out[f"{short}:{line}({func})"] = (ncalls / calls, 1e6 * tottime / calls)
    return out


def _profile(clients: Clients, calls: int = 400,
             top: int = 15) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Differential profile of openai calls, governed minus bare own time: the top
    functions, and the totals per source file."""
    import llm_governor

    call = clients.call["openai"]
    bare = _own_times(call, calls)
    llm_governor.instrument(governed_config("memory"))
    try:
        governed = _own_times(call, calls)
    finally:
        llm_governor.uninstrument()
    rows: list[dict[str, Any]] = []
    for fn, (n, own) in governed.items():
        n0, own0 = bare.get(fn, (0.0, 0.0))
        rows.append({"function": fn, "extra_calls": n - n0, "added_us": own - own0})
    total = sum(r["added_us"] for r in rows if r["added_us"] > 0) or 1.0
    files: dict[str, float] = {}
    for r in rows:
        r["share"] = r["added_us"] / total
        name = r["function"].rsplit(":", 1)[0] if not r["function"].startswith("~") \
            else "builtins"
        files[name] = files.get(name, 0.0) + r["added_us"]
    rows.sort(key=lambda r: r["added_us"], reverse=True)
    by_file = [{"file": f, "added_us": us, "share": us / total}
               for f, us in sorted(files.items(), key=lambda kv: kv[1], reverse=True)]
    return rows[:top], by_file[:10]


def run(mode: Mode) -> Section:
    import llm_governor

    t_start = time.perf_counter()
    sdks = ("openai", "anthropic")
    bare: dict[str, list[float]] = {s: [] for s in sdks}
    gov: dict[tuple[str, str, bool], list[float]] = {}
    profile: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    broken: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="llmg-bench-") as d, \
            redis_server() as raw_redis, mock_clients() as clients:
        redis_url = _redis_usable(raw_redis)
        setups = _setups(Path(d), redis_url)
        providers = otel_providers()
        llm_governor.uninstrument()
        for _ in range(mode.repeats):
            gc.collect()
            for sdk in sdks:
                bare[sdk].append(_per_call_us(clients.call[sdk], mode.overhead_calls))
            for s in setups:
                if s.backend in broken:
                    continue
                mp, tp = providers if s.otel else (None, None)
                try:
                    llm_governor.instrument(governed_config(s.url), meter_provider=mp,
                                            tracer_provider=tp)
                    for sdk in sdks:
                        gov.setdefault((sdk, s.backend, s.otel), []).append(
                            _per_call_us(clients.call[sdk], mode.overhead_calls))
                except Exception as exc:  # a backend that fails loses its rows, not the section
                    if s.backend == "memory":
                        raise
                    broken[s.backend] = f"{type(exc).__name__}: {exc}"
                    for key in [k for k in gov if k[1] == s.backend]:
                        del gov[key]
                finally:
                    llm_governor.uninstrument()
        for sdk in sdks:  # the instrumented calls really were governed
            llm_governor.instrument(governed_config("memory"))
            try:
                clients.call[sdk]()
                counted = llm_governor.get_governor().backend.counters()
            finally:
                llm_governor.uninstrument()
            if not counted.get("calls", {}).get(sdk):
                raise AssertionError(f"instrument() did not govern {sdk} calls: {counted}")
        bare_med = {s: median(v) for s, v in bare.items()}
        if median([median(v) for k, v in gov.items() if k[1] == "memory" and not k[2]]) \
                - median(list(bare_med.values())) > TARGET_US:
            profile = _profile(clients)
    results: list[dict[str, Any]] = []
    for (sdk, backend, otel), samples in gov.items():
        b = bare_med[sdk]
        # each governed run against the bare run of its own repeat (the machine drifts
        # between repeats more than the overhead measured)
        added = median([x - y for x, y in zip(samples, bare[sdk], strict=True)])
        results.append({"sdk": sdk, "backend": backend, "otel": otel, "bare_us": b,
                        "governed_us": b + added, "added_us": added, "ratio": (b + added) / b})
    targets = []
    for r in results:
        if r["backend"] == "memory" and not r["otel"]:
            with_otel = next(x for x in results if x["sdk"] == r["sdk"]
                             and x["backend"] == "memory" and x["otel"])
            targets.append(Target(
                f"{r['sdk']} overhead on the memory backend ≤ {TARGET_US:g} µs",
                r["added_us"] <= TARGET_US,
                f"+{fmt_us(r['added_us'])} µs ({fmt_ratio(r['ratio'])}); "
                f"with OTel SDK providers +{fmt_us(with_otel['added_us'])} µs"))
    plot = _plot(results)
    headlines = []
    for sdk in sdks:
        mem = {r["otel"]: r for r in results if r["sdk"] == sdk and r["backend"] == "memory"}
        if False in mem and True in mem:
            headlines.append(
                f"Overhead: governed {sdk} calls add {fmt_us(mem[False]['added_us'])} µs on the "
                f"memory backend ({fmt_ratio(mem[False]['ratio'])} the bare call), "
                f"{fmt_us(mem[True]['added_us'])} µs with OTel SDK providers.")
    md = _markdown(mode, results, bare_med, redis_url is not None, broken, profile, plot)
    data = {"results": results, "bare_samples_us": bare,
            "governed_samples_us": {f"{k[0]}|{k[1]}|{'otel' if k[2] else 'no-otel'}": v
                                    for k, v in gov.items()},
            "calls_per_run": mode.overhead_calls, "broken_backends": broken,
            "profile": {"functions": profile[0], "files": profile[1]}}
    return Section("overhead", "Overhead per SDK call", md, data, targets,
                   time.perf_counter() - t_start, headlines)


def _plot(results: list[dict[str, Any]]) -> str:
    ordered = sorted(results, key=lambda r: (["memory", "sqlite", "redis"].index(r["backend"]),
                                             r["otel"], r["sdk"]))
    fig, ax = new_figure(6.4, 0.8 + 0.22 * len(ordered))
    colors = {"memory": "#55a868", "sqlite": "#4c72b0", "redis": "#c44e52"}
    ys = range(len(ordered))
    ax.barh(ys, [r["added_us"] for r in ordered], color=[colors[r["backend"]] for r in ordered],
            hatch=None)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r['sdk']} · {r['backend']}{' · OTel SDK' if r['otel'] else ''}"
                        for r in ordered], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(TARGET_US, color="black", linestyle="--", linewidth=1,
               label=f"target {TARGET_US:g} µs (memory)")
    ax.set_xlabel("µs added per call (median)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, "overhead")


def _markdown(mode: Mode, results: list[dict[str, Any]], bare: dict[str, float],
              have_redis: bool, broken: dict[str, str],
              profile: tuple[list[dict[str, Any]], list[dict[str, Any]]], plot: str) -> str:
    rows = [[r["sdk"], r["backend"], "yes" if r["otel"] else "no", fmt_us(r["bare_us"]),
             fmt_us(r["governed_us"]), f"+{fmt_us(r['added_us'])}", fmt_ratio(r["ratio"])]
            for r in sorted(results, key=lambda r: (r["sdk"], r["backend"], r["otel"]))]
    out = [
        f"Median µs per call: each run times {mode.overhead_calls} calls one by one and takes "
        f"the median call. Bare and governed runs alternate on the same client objects "
        f"(in-process `httpx2.MockTransport`, canned valid response), {mode.repeats} rounds; "
        "*added* is the median over the rounds of each governed run minus the bare run of its "
        "own round (the machine drifts between rounds by more than what is measured), *bare* "
        "the median bare run, *governed* their sum. `openai` is `chat.completions.create`, "
        "`anthropic` is `messages.create`.",
        "",
        table(["SDK", "backend", "OTel SDK", "bare µs", "governed µs", "added µs", "ratio"],
              rows, ["l", "l", "l", "r", "r", "r", "r"]),
        "",
        f"![overhead]({plot})",
        "",
    ]
    if not have_redis:
        out += ["Redis rows are missing: no `redis-server` binary or no Redis backend in this "
                "checkout.", ""]
    for backend, error in broken.items():
        out += [f"{backend} rows are missing: the governed calls failed with `{error}`.", ""]
    functions, files = profile
    if functions:
        prof_rows = [[f"`{r['function']}`", f"{r['extra_calls']:+.1f}",
                      f"{r['added_us']:+.2f}", f"{100 * r['share']:.1f}%"] for r in functions]
        file_rows = [[f"`{r['file']}`", f"{r['added_us']:+.2f}", f"{100 * r['share']:.1f}%"]
                     for r in files]
        out += ["### Where the added time goes (cProfile)", "",
                "A differential profile: 400 bare and 400 governed `openai` calls (memory "
                "backend, no OTel SDK) under cProfile; per function, own time per call governed "
                "minus bare, largest first. The profiler inflates small functions: read the "
                "shares of the total added own time, not the absolute µs.", "",
                table(["source file", "added own µs", "share of added"], file_rows,
                      ["l", "r", "r"]), "",
                table(["function", "extra calls/call", "added own µs", "share of added"],
                      prof_rows, ["l", "r", "r", "r"]), "", OVERHEAD_NOTES, ""]
    return "\n".join(out)
