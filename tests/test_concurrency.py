"""Real threads, tasks and processes on one limit: no over-admission, near-full throughput.

Real time, short windows. Bounds are the algorithm's guarantee (capacity +
rate·d in any window), throughput is checked against a 10% tolerance.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import llm_governor
from llm_governor import Priority
from llm_governor.governor import Governor
from tests._workers import governed_loop

RATE, CAPACITY = 40.0, 4
SERVICE = {"max_tokens": CAPACITY, "burst_capacity": 0, "refill_rate": RATE,
           "max_cost_per_minute": "1000", "max_queue_size": 500, "request_timeout": 30,
           "min_interval": 0.001}


def assert_within_limit(stamps: list[float], capacity: float, rate: float) -> None:
    stamps = sorted(stamps)
    for i, start in enumerate(stamps):
        j = i
        while j < len(stamps):
            d = stamps[j] - start
            # 5 ms of slack: the timestamps are taken just after admission
            assert j - i + 1 <= capacity + rate * (d + 0.005), (i, j, d)
            j += 1


def assert_throughput(stamps: list[float], seconds: float, rate: float) -> None:
    stamps = sorted(stamps)
    steady = [s for s in stamps if s >= stamps[0] + 0.2]
    span = steady[-1] - steady[0]
    achieved = (len(steady) - 1) / span
    assert achieved >= 0.9 * rate, f"{achieved:.1f}/s of {rate}/s"
    assert achieved <= 1.1 * rate, f"{achieved:.1f}/s of {rate}/s"


def test_sixteen_threads_share_one_limit(governor_factory: Callable[..., Governor]) -> None:
    governor_factory({"services": {"svc": SERVICE}})
    stamps: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + 2.0

    @llm_governor.rate_limited("svc", Priority.CRITICAL)
    def call() -> None:
        with lock:
            stamps.append(time.monotonic())

    def worker() -> None:
        while time.monotonic() < stop:
            call()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert_within_limit(stamps, CAPACITY, RATE)
    assert_throughput(stamps, 2.0, RATE)


async def test_two_hundred_tasks_share_one_limit(
    governor_factory: Callable[..., Governor],
) -> None:
    governor_factory({"services": {"svc": SERVICE}})
    stamps: list[float] = []
    loop = asyncio.get_running_loop()
    stop = loop.time() + 2.0

    @llm_governor.rate_limited("svc", Priority.CRITICAL)
    async def call() -> None:
        stamps.append(loop.time())

    async def worker() -> None:
        while loop.time() < stop:
            await call()

    await asyncio.gather(*(worker() for _ in range(200)))
    assert_within_limit(stamps, CAPACITY, RATE)
    assert_throughput(stamps, 2.0, RATE)


def test_four_processes_share_one_sqlite_limit_and_budget(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    ctx = multiprocessing.get_context("spawn")
    rate = 20.0
    config = {"backend": f"sqlite://{db}", "services": {"svc": {**SERVICE, "refill_rate": rate}}}
    start_at = time.time() + 2.0  # after every process has imported and connected
    with ctx.Pool(4) as pool:
        results = pool.starmap(governed_loop, [(config, "svc", 2.0, "0", start_at)] * 4)
    stamps = [s for r in results for s in r["admitted"]]
    assert all(r["admitted"] for r in results), "every process got a share"
    assert_within_limit(stamps, CAPACITY, rate)
    assert len(stamps) >= 0.9 * rate * 2.0

    budget_db = tmp_path / "budget.db"
    budget_config = {"backend": f"sqlite://{budget_db}", "budget": {"per_day": "0.10"},
                     "services": {"svc": {**SERVICE, "refill_rate": 1000.0}}}
    start_at = time.time() + 2.0
    with ctx.Pool(4) as pool:
        results = pool.starmap(governed_loop, [(budget_config, "svc", 1.0, "0.01",
                                                start_at)] * 4)
    paid = sum(len(r["admitted"]) for r in results)
    assert paid == 10
    assert all(set(r["refusals"]) <= {"BudgetExceededError"} for r in results)
    gov = Governor(llm_governor.load_config(budget_config))
    assert gov.budget_report()["day"]["spent"] == Decimal("0.10")
    gov.close()
