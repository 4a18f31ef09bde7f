"""Priorities, jobs and stated cost estimates, across threads.

A CRITICAL call overtakes LOW ones already waiting in the queue; costs are
attributed per job in the export.

Run: python examples/priorities_jobs.py
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import llm_governor
from llm_governor import Priority, cost_estimate, job, priority

llm_governor.instrument({
    "backend": "memory",
    "services": {"transcribe": {"max_tokens": 1, "burst_capacity": 0, "refill_rate": 10.0}},
})
order: list[str] = []


@llm_governor.rate_limited("transcribe")
def transcribe(name: str) -> None:
    order.append(name)


def run(name: str, prio: Priority, job_id: str) -> None:
    with priority(prio), job(job_id), cost_estimate(Decimal("0.002")):
        transcribe(name)


threads = [threading.Thread(target=run, args=(f"background-{i}", Priority.LOW, "nightly"))
           for i in range(5)]
for t in threads:
    t.start()
time.sleep(0.05)
urgent = threading.Thread(target=run, args=("user-request", Priority.CRITICAL, "video_123"))
urgent.start()
for t in [*threads, urgent]:
    t.join()

print("admission order:", order)
costs = json.loads(llm_governor.export_rate_limit_metrics())["costs"]["by_job"]
print("cost by job:", costs)
