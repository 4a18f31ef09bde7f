"""``llm-governor demo``: the same workload through bare SDKs and governed, side by side.

Offline: a loopback :class:`~llm_governor.testing.FakeProvider` with a tight
limit (60 requests per "minute", the minute scaled down to a couple of
seconds) serves concurrent mixed openai/anthropic traffic, some of it
streaming. First the unmodified SDKs with their own retries, then the very
same code after ``llm_governor.instrument()``. The table shows what reached
the provider, what reached user code, what it cost and how long it took.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..api import instrument, set_governor, uninstrument
from ..instrumentation import GovernorInstrumentor
from ..testing import FakeProvider

__all__ = ["RunStats", "format_table", "main", "run_demo"]

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-latest"
PROMPT = [{"role": "user", "content": "Summarise why rate limits matter, briefly."}]


@dataclass(frozen=True)
class RunStats:
    """One run of the workload, as the provider and the user code saw it."""

    label: str
    calls: int
    provider_429s: int
    failures: int
    cost: Decimal
    budget_left: Decimal | None
    seconds: float


def _workload(clients: dict[str, Any], calls: int, workers: int,
              stream_every: int) -> tuple[int, float]:
    """Run ``calls`` calls on ``workers`` threads; return (failures in user code, seconds)."""
    jobs: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(calls):
        jobs.put(i)
    failures: list[BaseException] = []

    def one(i: int) -> None:
        stream = stream_every > 0 and i % stream_every == 0
        if i % 2 == 0:
            chat = clients["openai"].chat.completions
            if stream:
                for _ in chat.create(model=OPENAI_MODEL, messages=PROMPT, max_tokens=16,
                                     stream=True):
                    pass
            else:
                chat.create(model=OPENAI_MODEL, messages=PROMPT, max_tokens=16)
        else:
            messages = clients["anthropic"].messages
            if stream:
                with messages.stream(model=ANTHROPIC_MODEL, messages=PROMPT,
                                     max_tokens=16) as s:
                    s.get_final_message()
            else:
                messages.create(model=ANTHROPIC_MODEL, messages=PROMPT, max_tokens=16)

    def worker() -> None:
        while True:
            try:
                i = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                one(i)
            except Exception as exc:  # what the application would have to handle
                failures.append(exc)

    threads = [threading.Thread(target=worker, name=f"demo-{n}") for n in range(workers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(failures), time.monotonic() - start


def _clients(fake: FakeProvider) -> dict[str, Any]:
    import anthropic
    import openai

    return {"openai": openai.OpenAI(api_key="sk-demo", base_url=fake.openai_base_url),
            "anthropic": anthropic.Anthropic(api_key="sk-ant-demo",
                                             base_url=fake.anthropic_base_url)}


def governed_config(rpm: int, window: float, budget: str) -> dict[str, Any]:
    """The governor told the provider's limit, with a little headroom for jitter."""
    rate = rpm / window * 0.92
    service = {"refill_rate": rate, "max_tokens": 1, "burst_capacity": 0,
               "min_interval": 0.01, "max_cost_per_minute": "10",
               "request_timeout": 120, "max_queue_size": 10_000}
    return {"backend": "memory", "budget": {"per_day": budget},
            "services": {"openai": service, "anthropic": service}}


def run_demo(*, calls: int = 300, workers: int = 16, rpm: int = 60, window: float = 2.0,
             budget: str = "0.50", stream_every: int = 3, latency: float = 0.02,
             progress: Callable[[str], None] | None = None) -> tuple[RunStats, RunStats]:
    """Run the workload bare, then governed; the process must not be instrumented yet."""
    if GovernorInstrumentor.patched_sdks():
        raise RuntimeError("run the demo in a process that is not instrumented yet")
    say = progress or (lambda _: None)
    results = []
    for label in ("bare SDKs", "llm-governor"):
        say(f"running {calls} calls on {workers} threads: {label}…")
        with FakeProvider(rpm=rpm, window=window, latency=latency) as fake:
            clients = _clients(fake)
            gov = None
            previous = None
            if label == "llm-governor":
                previous = set_governor(None)
                gov = instrument(config=governed_config(rpm, window, budget))
            try:
                failures, seconds = _workload(clients, calls, workers, stream_every)
            finally:
                if gov is not None:
                    uninstrument()
                    set_governor(previous)
            left = None if gov is None else gov.budget_report()["day"]["remaining"]
            if gov is not None:
                gov.close()
            results.append(RunStats(label, calls, fake.ledger.count_by_status().get(429, 0),
                                    failures, fake.ledger.total_billed(), left, seconds))
    return results[0], results[1]


def format_table(*runs: RunStats) -> str:
    """The side-by-side comparison, as plain text."""
    rows: list[tuple[str, Callable[[RunStats], str]]] = [
        ("calls made", lambda r: str(r.calls)),
        ("provider 429s", lambda r: str(r.provider_429s)),
        ("failures in user code", lambda r: str(r.failures)),
        ("cost (provider's bill)", lambda r: f"${r.cost:.6f}"),
        ("budget left", lambda r: "no budget" if r.budget_left is None
         else f"${r.budget_left:.6f}"),
        ("time taken", lambda r: f"{r.seconds:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    cols = [max(len(r.label), *(len(fmt(r)) for _, fmt in rows)) for r in runs]
    lines = [" " * width + "".join(f"  {r.label:>{c}}" for r, c in zip(runs, cols, strict=True))]
    for name, fmt in rows:
        lines.append(f"{name:<{width}}" + "".join(
            f"  {fmt(r):>{c}}" for r, c in zip(runs, cols, strict=True)))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llm-governor demo``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="llm-governor demo", description=__doc__.split(
        "\n\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per run (default 300)")
    parser.add_argument("--workers", type=int, default=16, help="threads (default 16)")
    parser.add_argument("--rpm", type=int, default=60, help="provider limit per window")
    parser.add_argument("--window", type=float, default=2.0,
                        help="seconds the provider's 'minute' lasts (default 2)")
    parser.add_argument("--budget", default="0.50", help="daily budget in USD (default 0.50)")
    args = parser.parse_args(argv)
    try:
        import anthropic  # noqa: F401
        import openai  # noqa: F401
    except ImportError:
        print("the demo needs both SDKs: pip install 'llm-governor[openai,anthropic]'")
        return 1
    bare, governed = run_demo(calls=args.calls, workers=args.workers, rpm=args.rpm,
                              window=args.window, budget=args.budget, progress=print)
    print(f"\nprovider limit: {args.rpm} requests per {args.window:g} s per provider, "
          f"{args.workers} threads, mixed openai/anthropic, every third call streaming\n")
    print(format_table(bare, governed))
    return 0
