"""Shared helpers: run modes, timing and medians, machine description, markdown, plots.

Every section module exposes ``run(mode: Mode) -> Section``; ``__main__`` runs
them and writes BENCHMARKS.md. A :class:`Section` carries its markdown, the raw
numbers (saved as JSON under ``benchmarks/results/``), the plots it wrote
(``benchmarks/plots/``) and the targets it checked.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = [
    "PLOTS",
    "RESULTS",
    "ROOT",
    "Mode",
    "Section",
    "Target",
    "fmt_int",
    "fmt_ratio",
    "fmt_us",
    "free_port",
    "machine_info",
    "median",
    "new_figure",
    "pct",
    "percentile",
    "quiet_gc",
    "redis_server",
    "save_figure",
    "table",
    "usd",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "benchmarks" / "plots"

# The peers compared against, and the SDKs measured; their versions go in BENCHMARKS.md.
PEER_PACKAGES = ("limits", "pyrate-limiter", "throttled-py", "aiolimiter", "tenacity")
SDK_PACKAGES = ("openai", "anthropic", "httpx2", "opentelemetry-sdk", "redis", "matplotlib")


@dataclass(frozen=True)
class Mode:
    """How hard to work: ``quick`` (the whole suite under two minutes) or ``full``."""

    name: str
    repeats: int  # independent runs per figure; each figure is their median
    decision_seconds: float  # length of one throughput run
    overhead_calls: int  # SDK calls per overhead run
    goodput_seconds: float  # length of the over-demand phase
    footprint_services: int
    import_runs: int

    @classmethod
    def named(cls, name: str) -> Mode:
        if name == "quick":
            return cls("quick", repeats=5, decision_seconds=0.05, overhead_calls=60,
                       goodput_seconds=3.0, footprint_services=200,
                       import_runs=5)
        if name == "full":
            return cls("full", repeats=7, decision_seconds=0.4, overhead_calls=600,
                       goodput_seconds=20.0, footprint_services=1000,
                       import_runs=15)
        raise ValueError(f"unknown mode {name!r}: quick or full")


@dataclass
class Target:
    """A goal from the issue, and whether this run met it."""

    name: str
    met: bool
    detail: str


@dataclass
class Section:
    """One section of BENCHMARKS.md."""

    key: str
    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0
    headlines: list[str] = field(default_factory=list)  # one-line findings for the summary

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.key}.json"
        doc = {"title": self.title, "seconds": self.seconds, "headlines": self.headlines,
               "data": self.data, "targets": [vars(t) for t in self.targets]}
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        return path


# ------------------------------------------------------------------ statistics
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect first, then keep the cyclic GC out of a timed region."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ------------------------------------------------------------------ formatting
def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def fmt_us(x: float) -> str:
    return f"{x:,.1f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}×"


def usd(x: float | Decimal, places: int = 6, signed: bool = False) -> str:
    """``$0.050000``; signed: ``+$0.000000`` / ``−$0.007440``."""
    x = float(x)
    text = f"${abs(x):.{places}f}"
    if not signed:
        return text if x >= 0 else f"−{text}"
    return f"−{text}" if x < 0 else f"+{text}"


def pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]],
          align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; ``align`` per column is ``l`` or ``r`` (default: r after 1st)."""
    aligns = list(align) if align else ["l"] + ["r"] * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in aligns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ plots
def new_figure(width: float = 6.4, height: float = 3.4) -> tuple[Any, Any]:
    """A matplotlib figure and axes, Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=80)
    return fig, ax


def save_figure(fig: Any, name: str) -> str:
    """Save a small PNG under benchmarks/plots/; returns its path relative to the repo."""
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    path = PLOTS / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------ machine
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """What BENCHMARKS.md says about the machine and the software measured."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    redis_bin = shutil.which("redis-server")
    redis_version = "not installed"
    if redis_bin:
        out = subprocess.run([redis_bin, "--version"], capture_output=True, text=True,
                             check=False).stdout
        redis_version = next((p.split("=", 1)[1] for p in out.split() if p.startswith("v=")),
                             out.strip())
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "llm_governor": _version("llm-governor"),
        "peers": {name: _version(name) for name in PEER_PACKAGES},
        "sdks": {name: _version(name) for name in SDK_PACKAGES},
        "redis_server": redis_version,
    }


# ------------------------------------------------------------------ real parts
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the benchmark process dies (Linux), so no server leaks."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway ``redis-server`` on a free loopback port: yields its URL, or None."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="llmg-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.02)
        else:
            yield None
            return
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


CHUNK = 50  # decisions between clock reads


def thread_rate(decide: Callable[[], object], threads: int, seconds: float) -> float:
    """Decisions per second, all ``threads`` hammering one limiter for ``seconds``."""
    counts = [0] * threads
    start_gate = threading.Barrier(threads + 1)
    stop_at = [0.0]
    chunk = range(CHUNK)

    def worker(i: int) -> None:
        start_gate.wait()
        end = stop_at[0]
        n = 0
        clock = time.perf_counter
        while clock() < end:
            for _ in chunk:
                decide()
            n += CHUNK
        counts[i] = n

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start_gate.wait()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)
