"""``llm-governor demo`` as a user runs it: every promise appears in its output, in under
30 seconds, with no ResourceWarning; its flags are checked before anything runs; Ctrl-C
stops it at once and a second Ctrl-C prints no traceback; its exit codes are the
documented ones; it ends with a status command that works on the state it left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from llm_governor.cli import demo

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLM_GOVERNOR_", "MONTAGE_ENV"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    env["TMPDIR"] = str(tmp_path)
    return env


def _row(out: str, label: str) -> list[str]:
    """The values of a table row: what follows the label, split on 2+ spaces."""
    for line in out.splitlines():
        if line.strip().startswith(label):
            return re.split(r"\s{2,}", line.strip()[len(label):].strip())
    raise AssertionError(f"no row {label!r} in:\n{out}")


def test_the_demo_shows_every_promise(tmp_path: Path) -> None:
    env = _env(tmp_path)
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-W", "error::ResourceWarning", "-m", "llm_governor",
                        "demo"], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    took = time.monotonic() - started
    out = r.stdout
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "ResourceWarning" not in r.stderr, r.stderr
    assert "Exception ignored" not in r.stderr, r.stderr
    done = float(re.search(r"Done in ([\d.]+) s", out).group(1))  # type: ignore[union-attr]
    assert done < 30, (done, took)

    # 1. rate limiting: what the provider received, its 429s, what user code saw
    bare_sent, governed_sent = map(int, _row(out, "requests the provider received"))
    bare_429, governed_429 = map(int, _row(out, "429 Too Many Requests"))
    _, governed_failed = map(int, _row(out, "calls that failed in your code"))
    assert bare_429 > 0 and governed_429 == 0 and governed_failed == 0
    assert bare_sent > governed_sent == 120
    assert "provider's bill" in out
    # 2. a hard budget reached: refusals named as such, spent vs budget
    (refused,) = _row(out, "refused: BudgetExceededError")
    assert int(refused) > 0
    (spent,) = _row(out, "spent of the budget")
    amount, budget = (Decimal(x) for x in re.findall(r"\$([\d.]+)", spent))
    assert 0 < amount <= budget == Decimal("0.002")
    # 3. retries absorbed
    assert _row(out, "500s from the provider") == ["6"]
    assert "retries: the SDK decided to retry" in out
    # 4. the breaker opening and recovering
    assert int(_row(out, "calls refused at once by the open circuit")[0]) > 0
    assert "into the outage" in _row(out, "circuit opened")[0]
    assert "after it ended" in _row(out, "calls succeed again")[0]
    # 5. a HIGH call overtaking LOW ones
    assert int(_row(out, "LOW calls it overtook")[0]) > 0
    # 6. emergency mode switched from the CLI while calls run
    assert int(_row(out, "calls refused while it was on")[0]) > 0
    assert "returned after" in _row(out, "llm-governor emergency --enable")[0]
    assert _row(out, "calls admitted again")[0] != "-"
    # every row explained
    for act in range(1, 7):
        assert f"\n{act}. " in out

    status = out.strip().splitlines()[-1].split()
    assert status[:3] == ["llm-governor", "status", "--backend"], out[-500:]
    state = subprocess.run([sys.executable, "-m", "llm_governor", *status[1:], "--json"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert state.returncode in (0, 1, 2), state.stderr
    assert '"budget_exceeded"' in state.stdout and '"emergency"' in state.stdout


def test_flags_are_checked_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    for args, flag in ((["--workers", "0"], "--workers"), (["--calls", "x"], "--calls"),
                       (["--budget", "12,5"], "--budget"), (["--window", "0"], "--window"),
                       (["--act", "nope"], "--act"), (["--bogus"], "--bogus")):
        started = time.monotonic()
        assert demo.main(args) == 2, args
        assert time.monotonic() - started < 1
        err = capsys.readouterr().err
        assert flag in err and "usage: llm-governor demo" in err, err


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: llm-governor demo" in out and "exit codes" in out
    for markup in ("``", ":class:", ":func:", "::"):
        assert markup not in out


def test_without_the_sdks_it_exits_3(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['anthropic'] = None\n"
            "from llm_governor.cli import main\nsys.exit(main(['demo']))")
    r = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 3 and "needs both SDKs" in r.stderr, r


def test_ctrl_c_stops_it_at_once_and_twice_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "llm_governor", "demo"], env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # interrupt it in the middle of the first act
            if line.startswith("llm-governor demo:"):
                break
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert took < 3, took
    assert "Traceback" not in err and "interrupted" in err, err
