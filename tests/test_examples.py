"""Every example runs offline and does what its docstring says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
EXPECTED = {
    "decorator_budget.py": ["flaky service: answered after 3 attempts",
                            "10 calls fit the $0.10 budget", "processed item-x locally"],
    "priorities_jobs.py": ["'user-request'", "'video_123': '0.002'"],
    "monitoring.py": ["circuit_breaker_open", "emergency mode: True"],
    "redis_fleet.py": ["paid calls across 4 processes: 10; spent $0.10 of $0.10"],
    "otel_prometheus.py": ['decision="admitted"', "llm_governor_cost_USD_total",
                           'window="day"'],
    "per_tenant_budgets.py": ["globex/eve: answered by gpt-4o-mini",
                              "initech/ivy: refused, the day budget of tenant initech is spent",
                              "budget threshold: 50% of the day budget of tenant=globex",
                              "  acme: $0.0025800 of $0.01 today"],
    "audit_log.py": ['"tenant": "acme", "model": "gpt-4o-mini", "cost_usd": "0.00001305", '
                     '"attempts": 2', '"tenant": "initech"', '"outcome": "BudgetExceededError"',
                     "'retried after rate_limit': 1"],
    "observe_first.py": ["observe: 16 answered, 0 refused",
                         "'would_budget_exceeded': 12",
                         "enforce: 4 answered, 12 refused"],
}


# what an example needs beyond the package (skipped without it, failed under CI=true)
NEEDS = {"redis_fleet.py": "redis-server"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path, tmp_path: Path) -> None:
    binary = NEEDS.get(path.name)
    if binary is not None and not os.environ.get("REDIS_URL"):
        require(shutil.which(binary) is not None, f"{binary} is not installed")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    env.pop("LLM_GOVERNOR_CONFIG", None)
    proc = subprocess.run([sys.executable, "-W", "error::ResourceWarning", str(path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a socket or file left for the garbage collector shows as an ignored exception
    assert "ResourceWarning" not in proc.stderr and "Exception ignored" not in proc.stderr, \
        proc.stderr[-3000:]
    for needle in EXPECTED.get(path.name, []):
        assert needle in proc.stdout + proc.stderr, (needle, proc.stdout[-2000:])
