"""The demo's workload, small: bare SDKs meet 429s, the governed run meets none."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llm_governor import demo


def test_demo_governed_run_has_no_429s_and_no_failures() -> None:
    bare, governed = demo.run_demo(calls=80, workers=8, rpm=20, window=1.0, budget="0.10")
    assert bare.provider_429s > 0
    assert (governed.provider_429s, governed.failures) == (0, 0)
    assert governed.calls == bare.calls == 80
    assert governed.budget_left is not None
    assert governed.budget_left == Decimal("0.10") - governed.cost
    table = demo.format_table(bare, governed)
    assert "provider 429s" in table and "llm-governor" in table


def test_main_prints_the_table(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    canned = (demo.RunStats("bare SDKs", 10, 4, 1, Decimal("0.001"), None, 1.0),
              demo.RunStats("llm-governor", 10, 0, 0, Decimal("0.002"), Decimal("0.498"), 2.0))
    seen: dict[str, object] = {}

    def fake_run(**kwargs: object) -> tuple[demo.RunStats, demo.RunStats]:
        seen.update(kwargs)
        return canned

    monkeypatch.setattr(demo, "run_demo", fake_run)
    assert demo.main(["--calls", "10", "--rpm", "30"]) == 0
    out = capsys.readouterr().out
    assert seen["calls"] == 10 and seen["rpm"] == 30
    assert "no budget" in out and "$0.498000" in out and "failures in user code" in out
