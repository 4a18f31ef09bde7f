"""Several worker processes, one limit and one budget, through Redis.

Starts a throwaway ``redis-server`` on a free loopback port (point
``REDIS_URL`` at your own server instead), then four processes spend from one
shared $0.10 budget at $0.01 a call: exactly ten calls are paid in total,
however the processes race.

Run: python examples/redis_fleet.py        (needs redis-server on PATH, or REDIS_URL)
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
from decimal import Decimal

import llm_governor

CONFIG = {"budget": {"per_day": "0.10"}, "namespace": "example-fleet",
          "services": {"reports": {"max_tokens": 50, "refill_rate": 50.0, "min_interval": 0.01}}}


def worker(url: str, name: str) -> int:
    llm_governor.instrument({**CONFIG, "backend": url})

    @llm_governor.rate_limited("reports", cost=Decimal("0.01"))
    def summarise() -> None:
        time.sleep(0.01)

    paid = 0
    for _ in range(10):
        try:
            summarise()
            paid += 1
        except llm_governor.BudgetExceededError:
            pass
    print(f"{name}: {paid} paid calls")
    return paid


def start_server() -> tuple[str, subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH: install it or set REDIS_URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", proc


if __name__ == "__main__":
    url, server = os.environ.get("REDIS_URL"), None
    if url is None:
        url, server = start_server()
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            paid = sum(pool.starmap(worker, [(url, f"worker-{i}") for i in range(4)]))
        gov = llm_governor.instrument({**CONFIG, "backend": url})
        spent = gov.budget_report()["day"]["spent"]
        print(f"paid calls across 4 processes: {paid}; spent ${spent:.2f} of $0.10")
        gov.backend.reset()
    finally:
        if server is not None:
            server.terminate()
            server.wait()
