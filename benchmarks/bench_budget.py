"""Section 4: budget accuracy. 200 threads race for one small budget through the real SDK.

``instrument()`` with ``budget.per_day`` (rate limits out of the way), the
fake provider billing every served request into its ledger with the same
price data. 200 threads are released at once; each calls
``chat.completions.create`` until the governor refuses it with
``BudgetExceededError`` (as a user's loop would stop). Every call reserves its
upper bound (prompt bytes bound input tokens, ``max_tokens`` bounds output) and
settles the real usage.

Reported: overshoot (ledger billed − budget, must never be positive), the
governor's recorded spend against the ledger, and what the reservations cost
in use of the budget: money *reserved but not yet billed* sampled over time
(blocked while unspent), the budget still unspent when the first call was
refused, and at the end.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

from benchmarks._common import (
    Mode,
    Section,
    Target,
    median,
    new_figure,
    save_figure,
    table,
    usd,
)

BUDGET = Decimal("0.05")
THREADS = 200
MODEL = "gpt-4o"
PROMPT = "Review this paragraph for tone and clarity. " * 45  # ≈ 2 KB
MAX_TOKENS = 400
OUTPUT_TOKENS = 100  # what the fake provider answers (a call uses a quarter of its cap)
LATENCY = 0.05
MAX_CALLS_PER_THREAD = 50


def governor_config() -> dict[str, Any]:
    heavy = {"max_tokens": 10**9, "refill_rate": 1e9, "burst_capacity": 0, "min_interval": 1e-9,
             "max_cost_per_minute": "1000000", "max_queue_size": 10_000}
    return {"backend": "memory", "environment": "production",
            "budget": {"per_day": str(BUDGET)}, "services": {"openai": heavy}}


def _one_run() -> dict[str, Any]:
    import openai

    import llm_governor
    from llm_governor.testing import FakeProvider

    with FakeProvider(latency=LATENCY, output_tokens=OUTPUT_TOKENS) as fake:
        gov = llm_governor.instrument(governor_config())
        client = openai.OpenAI(api_key="sk-bench", base_url=fake.openai_base_url)
        gate = threading.Barrier(THREADS + 1)
        lock = threading.Lock()
        counts = {"ok": 0, "refused": 0, "failed": 0}
        first_refusal: list[float] = []
        samples: list[tuple[float, float, float, float]] = []  # t, spent, reserved, billed
        done = threading.Event()
        t0 = time.monotonic()

        def worker() -> None:
            gate.wait()
            for _ in range(MAX_CALLS_PER_THREAD):
                try:
                    client.chat.completions.create(
                        model=MODEL, max_tokens=MAX_TOKENS,
                        messages=[{"role": "user", "content": PROMPT}])
                except llm_governor.BudgetExceededError:
                    with lock:
                        counts["refused"] += 1
                        if not first_refusal:
                            first_refusal.append(time.monotonic())
                    return
                except Exception:
                    with lock:
                        counts["failed"] += 1
                    return
                with lock:
                    counts["ok"] += 1

        def sampler() -> None:
            while not done.is_set():
                day = gov.budget_report()["day"]
                samples.append((time.monotonic() - t0, float(day["spent"]),
                                float(day["reserved"]), float(fake.ledger.total_billed())))
                done.wait(0.005)

        try:
            pool = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
            for t in pool:
                t.start()
            watch = threading.Thread(target=sampler, daemon=True)
            watch.start()
            t0 = time.monotonic()
            gate.wait()
            for t in pool:
                t.join()
            done.set()
            watch.join()
            report = gov.budget_report()["day"]
            billed = fake.ledger.total_billed()
            served = fake.ledger.served_count()
        finally:
            client.close()
            llm_governor.uninstrument()
    spent_at_refusal = None
    if first_refusal:
        at = first_refusal[0] - t0
        before = [s for s in samples if s[0] <= at]
        spent_at_refusal = before[-1][3] if before else 0.0
    return {
        "ok": counts["ok"], "refused": counts["refused"], "failed": counts["failed"],
        "served": served, "billed": billed, "governor_spent": report["spent"],
        "overshoot": billed - BUDGET, "spend_diff": report["spent"] - billed,
        "final_reserved": report["reserved"],
        "peak_reserved": max((s[2] for s in samples), default=0.0),
        "unspent_at_first_refusal": (float(BUDGET) - spent_at_refusal
                                     if spent_at_refusal is not None else None),
        "unspent_at_end": BUDGET - billed,
        "seconds": samples[-1][0] if samples else 0.0,
        "samples": samples,
    }


def run(mode: Mode) -> Section:
    t_start = time.perf_counter()
    runs = [_one_run() for _ in range(mode.repeats)]
    worst_overshoot = max(r["overshoot"] for r in runs)
    worst_diff = max(abs(r["spend_diff"]) for r in runs)
    med = {k: median([float(r[k]) for r in runs if r[k] is not None]) for k in
           ("ok", "refused", "failed", "served", "billed", "governor_spent", "overshoot",
            "spend_diff", "peak_reserved", "unspent_at_first_refusal", "unspent_at_end",
            "seconds")}
    targets = [
        Target("budget overshoot ≤ $0 (ledger billed − budget)", worst_overshoot <= 0,
               f"worst of {len(runs)} runs: {usd(worst_overshoot, signed=True)} (billed "
               f"{usd(max(r['billed'] for r in runs))} of ${BUDGET})"),
        Target("governor-recorded spend equals the provider's ledger", worst_diff == 0,
               f"largest difference {usd(worst_diff, 9)}"),
    ]
    plot = _plot(runs[0]["samples"])
    md = _markdown(mode, runs, med, plot)
    headlines = [
        f"Budget: {THREADS} threads racing for ${BUDGET}: worst overshoot "
        f"{usd(worst_overshoot, signed=True)} (never above the budget), governor spend vs "
        f"ledger off by at most {usd(worst_diff)}; reservations held back up to "
        f"{usd(med['peak_reserved'], 4)} while calls ran and {usd(med['unspent_at_end'], 4)} "
        "stayed unspent at the end."]
    data = {"budget": str(BUDGET), "threads": THREADS, "model": MODEL, "max_tokens": MAX_TOKENS,
            "output_tokens": OUTPUT_TOKENS, "median": med,
            "runs": [{k: (str(v) if isinstance(v, Decimal) else v) for k, v in r.items()
                      if k != "samples"} for r in runs],
            "samples_first_run": runs[0]["samples"]}
    return Section("budget", "Budget accuracy", md, data, targets, time.perf_counter() - t_start,
                   headlines)


def _plot(samples: list[tuple[float, float, float, float]]) -> str:
    fig, ax = new_figure(6.4, 3.0)
    ts = [s[0] for s in samples]
    ax.plot(ts, [s[3] for s in samples], label="billed (provider ledger)", color="#4c72b0")
    ax.plot(ts, [s[1] for s in samples], "--", label="spent (governor)", color="#55a868")
    ax.fill_between(ts, [s[1] for s in samples], [s[1] + s[2] for s in samples],
                    color="#dd8452", alpha=0.4, label="reserved, not yet billed")
    ax.axhline(float(BUDGET), color="black", linewidth=1, label=f"budget ${BUDGET}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("USD")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, "budget")


def _markdown(mode: Mode, runs: list[dict[str, Any]], med: dict[str, float], plot: str) -> str:
    first = runs[0]
    reserve_each = "≈ see data"
    with_calls = [r for r in runs if r["served"]]
    if with_calls:
        per_call = float(with_calls[0]["billed"]) / with_calls[0]["served"]
        reserve_each = usd(per_call, 5)
    rows = [
        ["calls served (provider)", f"{med['served']:.0f}"],
        ["calls refused with `BudgetExceededError`", f"{med['refused']:.0f}"],
        ["other failures", f"{med['failed']:.0f}"],
        ["billed by the provider", usd(med["billed"])],
        ["**overshoot** (billed − budget; worst run)",
         f"**{usd(max(r['overshoot'] for r in runs), signed=True)}**"],
        ["governor-recorded spend − ledger (largest difference)",
         usd(max(abs(r["spend_diff"]) for r in runs), 9)],
        ["peak reserved but not yet billed (blocked while unspent)", usd(med["peak_reserved"])],
        ["budget unspent when the first call was refused", usd(med["unspent_at_first_refusal"])],
        ["budget unspent at the end", usd(med["unspent_at_end"])],
        ["wall time of a run", f"{med['seconds']:.2f} s"],
    ]
    return "\n".join([
        f"A ${BUDGET}/day budget; {THREADS} threads released at once, each calling openai "
        f"`chat.completions.create` (`{MODEL}`, {len(PROMPT) / 1024:.1f} KiB prompt, "
        f"`max_tokens={MAX_TOKENS}`) against the fake provider ({1000 * LATENCY:.0f} ms per "
        f"response, {OUTPUT_TOKENS} output tokens) until refused. Each call reserves its upper "
        f"bound and is billed about {reserve_each}. Medians of {len(runs)} runs unless marked "
        "worst/largest.",
        "",
        table(["measure", "value"], rows),
        "",
        f"![budget over time]({plot})",
        "",
        "The plot is the first run: what the provider billed, what the governor recorded, "
        "and on top of it the money reserved for calls in flight but not yet billed. A call "
        "is refused when spent + reserved + its own upper bound would pass the budget, so "
        f"the budget is never overshot; the price is that up to "
        f"{usd(first['peak_reserved'], 4)} is held back while calls run, and calls are refused "
        "while that much is still unspent. Refused threads stop (a hard budget ends the "
        "job), so the unspent remainder at the end is what the upper bounds of the last "
        "calls in flight kept back.",
    ])
