"""The shipped pytest plugin, in a pytest run of its own: each test gets a governor on the
memory backend, configurable, that never touches the state file, and leaves the SDKs as
it found them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TESTS = textwrap.dedent("""
    from decimal import Decimal

    import openai  # noqa: F401  (the SDKs are patched when they are imported)
    import pytest

    import llm_governor
    from llm_governor.instrumentation import GovernorInstrumentor


    @pytest.fixture
    def governor_config():
        return {"budget": {"per_day": "0.03"}}


    @llm_governor.rate_limited("reports", cost=Decimal("0.01"))
    def report():
        return "ok"


    def test_its_own_budget_in_memory(governor):
        assert governor.backend.name == "memory"
        assert llm_governor.get_governor() is governor
        assert GovernorInstrumentor.patched_sdks()
        assert [report() for _ in range(3)] == ["ok"] * 3
        with pytest.raises(llm_governor.BudgetExceededError):
            report()


    def test_the_next_test_starts_afresh(governor):
        assert governor.budget_report()["day"]["spent"] == 0
        assert report() == "ok"


    def test_nothing_is_left_patched():
        assert not GovernorInstrumentor.patched_sdks()
""")


def test_the_governor_fixture(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GOVERNOR_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    # installed, the package registers the plugin (entry point pytest11): no -p needed
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "test_app.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "3 passed" in r.stdout
    assert not (tmp_path / "state").exists(), "the fixture must not touch the state file"
