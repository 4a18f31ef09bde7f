"""Section 5: footprint. Memory per configured service, and the import time of llm_governor.

Memory: ``tracemalloc`` around (a) loading a configuration that names N
services and (b) one governed call on each of them (memory backend), after a
warm-up call on another service so lazily built module state is not counted.
Divided by N.

Import: ``python -c "import llm_governor"`` minus ``python -c "pass"`` (wall
time of fresh interpreters, median of runs), ``-X importtime``'s own figure for
the package, its heaviest imports, and a check that no vendor SDK was imported.
"""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import time
import tracemalloc
from decimal import Decimal
from typing import Any

from benchmarks._common import Mode, Section, Target, median, table

SDK_MODULES = ("openai", "anthropic", "google.genai", "deepgram", "httpx2", "httpx")


def _services(n: int) -> dict[str, Any]:
    return {f"svc{i:05d}": {"max_tokens": 10, "refill_rate": 5.0,
                            "max_cost_per_minute": "5.00"} for i in range(n)}


def _memory_once(n: int) -> dict[str, float]:
    """Bytes per service: configuration, and state after one governed call each."""
    import llm_governor
    from llm_governor.governor import CallSpec, Governor

    base = {"backend": "memory"}
    llm_governor.load_config({**base, "services": _services(2)})  # warm the validators
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    cfg = llm_governor.load_config({**base, "services": _services(n)})
    after_config = tracemalloc.take_snapshot()
    tracemalloc.stop()

    gov = Governor(cfg)
    try:
        warm = CallSpec("warm", cost=Decimal("0.001"))
        gov.settle(gov.admit(warm))
        specs = [CallSpec(name, cost=Decimal("0.001")) for name in cfg.services
                 if name.startswith("svc")]
        gc.collect()
        tracemalloc.start()
        before_use = tracemalloc.take_snapshot()
        for spec in specs:
            gov.settle(gov.admit(spec))
        gc.collect()
        after_use = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        gov.close()

    def delta(a: tracemalloc.Snapshot, b: tracemalloc.Snapshot) -> int:
        return sum(s.size_diff for s in b.compare_to(a, "filename"))

    return {"config_bytes": delta(before, after_config) / n,
            "state_bytes": delta(before_use, after_use) / n}


def _wall(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


_IMPORTTIME = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def _importtime() -> tuple[float, list[tuple[str, float]], list[str]]:
    """``-X importtime``: llm_governor's cumulative µs, self µs per package under it, SDKs seen."""
    code = ("import llm_governor, sys; "
            f"print(','.join(m for m in {SDK_MODULES!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, check=True)
    parsed = []
    for line in proc.stderr.splitlines():
        m = _IMPORTTIME.match(line)
        if m:
            parsed.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    # A module is printed after its imports: llm_governor's subtree is the run of
    # nested lines just before its own depth-0 line.
    end = next(i for i, p in enumerate(parsed) if p[3] == "llm_governor" and p[2] == 0)
    start = end
    while start > 0 and parsed[start - 1][2] > 0:
        start -= 1
    own: dict[str, float] = {}
    for self_us, _cum, _depth, name in parsed[start:end + 1]:
        top = name if name.startswith("llm_governor") else name.split(".")[0]
        own[top] = own.get(top, 0.0) + self_us
    heavy = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:10]
    sdks = [s for s in proc.stdout.strip().split(",") if s]
    return float(parsed[end][1]), heavy, sdks


def run(mode: Mode) -> Section:
    t_start = time.perf_counter()
    n = mode.footprint_services
    mem = [_memory_once(n) for _ in range(max(3, mode.repeats // 2))]
    config_b = median([m["config_bytes"] for m in mem])
    state_b = median([m["state_bytes"] for m in mem])

    bare, gov = [], []
    for _ in range(mode.import_runs):  # interleaved
        bare.append(_wall("pass"))
        gov.append(_wall("import llm_governor"))
    import_ms = 1000.0 * (median(gov) - median(bare))
    samples = [_importtime() for _ in range(max(3, mode.import_runs // 2))]
    importtime_ms = median([s[0] for s in samples]) / 1000.0
    heavy = samples[0][1]
    sdks = sorted({m for s in samples for m in s[2]})

    rows = [
        ["configuration (validated `RateLimitConfig`)", f"{config_b / 1024:.1f} KiB"],
        ["state after one governed call (memory backend: bucket state, counters, "
         "resolved limits, queue)", f"{state_b / 1024:.1f} KiB"],
        ["**total per service**", f"**{(config_b + state_b) / 1024:.1f} KiB**"],
    ]
    imp_rows = [
        ["`python -c \"import llm_governor\"` − `python -c \"pass\"` (wall, median of "
         f"{mode.import_runs})", f"{import_ms:.0f} ms"],
        ["`-X importtime` cumulative for `llm_governor` (median)", f"{importtime_ms:.0f} ms"],
        ["vendor SDK modules imported", ", ".join(sdks) if sdks else "none"],
    ]
    heavy_rows = [[f"`{name}`", f"{us / 1000:.1f} ms"] for name, us in heavy]
    md = "\n".join([
        f"Memory per configured service: tracemalloc delta for {n:,} services, divided by "
        f"{n:,} (median of {len(mem)} runs).",
        "",
        table(["what", "per service"], rows),
        "",
        "Import time without any SDK (fresh interpreters):",
        "",
        table(["measure", "value"], imp_rows),
        "",
        "Where the import time goes: `-X importtime` self time under `import llm_governor`, "
        "per llm_governor module and per third-party top-level package (one run; a "
        "module's self time includes building its pydantic models):",
        "",
        table(["package", "self time"], heavy_rows),
    ])
    targets = [Target("importing llm_governor imports no vendor SDK", not sdks,
                      ", ".join(sdks) or "none imported")]
    data = {"services": n, "config_bytes_per_service": config_b,
            "state_bytes_per_service": state_b, "memory_runs": mem,
            "import_ms": import_ms, "importtime_ms": importtime_ms,
            "bare_python_s": bare, "import_llm_governor_s": gov,
            "heaviest_imports_us": heavy, "sdk_modules_imported": sdks}
    headlines = [f"Footprint: {(config_b + state_b) / 1024:.1f} KiB per configured service; "
                 f"`import llm_governor` takes {import_ms:.0f} ms and imports no SDK."]
    return Section("footprint", "Footprint", md, data, targets, time.perf_counter() - t_start,
                   headlines)
