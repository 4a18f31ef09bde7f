"""The ``llm-governor`` CLI, run as a real subprocess (``python -m llm_governor``) on a
temporary SQLite backend: every command, exit codes, validation messages, the
emergency switch seen by another running process, and ``status``/``monitor``
showing what several worker processes are doing."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

import llm_governor
from llm_governor import cli
from llm_governor.backends.sqlite import SQLiteBackend
from llm_governor.config import sqlite_path
from llm_governor.governor import Governor

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("status", "monitor", "emergency", "export", "validate", "rules", "dashboard", "serve",
            "demo")
FAST_SVC = textwrap.dedent("""
    [services.worker]
    max_tokens = 1000
    refill_rate = 1000.0
    burst_capacity = 0
    max_cost_per_minute = "1000"
    cost_per_request = "0.001"
""")


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no user config, state under tmp_path, the repo importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLM_GOVERNOR_CONFIG", "LLM_GOVERNOR_BACKEND", "LLM_GOVERNOR_ENV",
                        "MONTAGE_ENV")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    env.update(extra)
    return env


def start_cli(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "llm_governor", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


def run_many(commands: Sequence[Sequence[str]], env: dict[str, str],
             timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """Run CLI invocations concurrently (each one is a ~0.5 s interpreter start)."""
    procs = [(list(args), start_cli(args, env)) for args in commands]
    done = []
    for args, p in procs:
        out, err = p.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(args, p.returncode, out, err))
    return done


def run_cli(*args: str, env: dict[str, str],
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_many([args], env, timeout)[0]


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A state file an application already created (read-only commands want one)."""
    path = tmp_path / "state" / "governor.db"
    SQLiteBackend(path).close()
    return f"sqlite:///{path}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


# --------------------------------------------------------------------- help, usage
def in_process(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``llm_governor.cli.main(args)`` in this process: the same code, no interpreter start."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_has_help(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    top, status = run_many([["--help"], ["status", "--help"]], env)
    assert top.returncode == 0 and status.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
    assert "exit codes" in top.stdout
    assert "usage: llm-governor status" in status.stdout
    for command in COMMANDS:
        code, out, err = in_process([command, "--help"], capsys)
        assert code == 0, (command, err)
        assert "usage" in out.lower(), command
        if command != "demo":
            assert f"llm-governor {command}" in out
            assert "--config" in out and "--backend" in out


def test_usage_errors_exit_2(env: dict[str, str], db: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    (r,) = run_many([["frobnicate"]], env)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    for args in ([], ["emergency", "--backend", db],
                 ["emergency", "--enable", "--disable", "--backend", db],
                 ["monitor", "--interval", "0", "--backend", db],
                 ["status", "--bogus", "--backend", db]):
        code, out, err = in_process(args, capsys)
        assert code == 2, (args, out, err)
        assert err.strip(), args


def test_global_options_before_or_after_the_command(env: dict[str, str], db: str,
                                                    tmp_path: Path) -> None:
    before = run_cli("--backend", db, "emergency", "--enable", env=env)
    assert before.returncode == 0, before.stdout + before.stderr
    after = run_cli("emergency", "--status", "--backend", db, env=env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "emergency mode ON" in after.stdout
    assert (tmp_path / "state" / "governor.db").exists()
    assert not (tmp_path / "xdg-state").exists(), "the default state file must not be touched"


# --------------------------------------------------------------------- validate
VALID = textwrap.dedent("""
    environment = "production"
    backend = "sqlite:///tmp/never-opened-by-validate.db"
    [budget]
    per_day = "20.00"
    [services.openai]
    max_tokens = 3
    [prices]
    "my-model" = { per_request = "0.002" }
""")

BAD_CONFIGS = {
    "unknown key": ("[services.openai]\nmax_tokenz = 3\n",
                    ["services.openai.max_tokenz", "unknown key", "did you mean 'max_tokens'?",
                     "allowed: max_tokens, refill_rate"]),
    "unknown top-level key": ("budgets = 3\n", ["budgets", "unknown key"]),
    "negative rate": ("[services.openai]\nrefill_rate = -1.5\n",
                      ["services.openai.refill_rate", "-1.5", "greater than 0"]),
    "zero capacity": ("[services.anthropic]\nmax_tokens = 0\n",
                      ["services.anthropic.max_tokens", "= 0", "greater than or equal to 1"]),
    "malformed money": ('[budget]\nper_day = "12,50"\n',
                        ["budget.per_day", "12,50", "decimal amount"]),
    "negative money": ('[services.openai]\nmax_cost_per_minute = "-1"\n',
                       ["services.openai.max_cost_per_minute", "greater than 0"]),
    "unknown environment": ('environment = "prod"\n',
                            ["environment", "'prod'", "production", "staging"]),
    "bad backend URL": ('backend = "postgres://app:pgsecret@db/x"\n',
                        ["backend", "postgres://", "sqlite:///", "redis://"]),
    "bad model override": ('[services.openai.models."gpt-4o"]\nrefill_rate = 0\n',
                           ["models.gpt-4o.refill_rate", "greater than 0"]),
    "bad TOML": ("[services.openai\nmax_tokens = 3\n", ["not valid TOML", "line 1"]),
}


def test_validate_accepts_a_valid_file_and_the_presets(env: dict[str, str],
                                                       tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text(VALID)
    by_arg, by_global, presets = run_many(
        [["validate", str(cfg)], ["--config", str(cfg), "validate"], ["validate"]], env)
    for r in (by_arg, by_global):
        assert r.returncode == 0, r.stderr
        assert f"OK: {cfg}" in r.stdout
        assert "production" in r.stdout and "per_day $20.0000" in r.stdout
    assert presets.returncode == 0, presets.stderr
    assert "presets" in presets.stdout and "development" in presets.stdout
    assert not Path("/tmp/never-opened-by-validate.db").exists()


def test_validate_rejects_each_bad_config_naming_the_key(
        env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LLM_GOVERNOR_CONFIG", "LLM_GOVERNOR_BACKEND", "LLM_GOVERNOR_ENV", "MONTAGE_ENV"):
        monkeypatch.delenv(var, raising=False)
    paths = {}
    for i, (case, (text, _)) in enumerate(BAD_CONFIGS.items()):
        paths[case] = tmp_path / f"bad{i}.toml"
        paths[case].write_text(text)
    # two cases as real subprocesses, every case through the same main() in-process
    sub = run_many([["validate", str(paths["unknown key"])],
                    ["validate", str(paths["bad TOML"])],
                    ["validate", str(tmp_path / "missing.toml")]], env)
    for r in sub:
        assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r
    assert "services.openai.max_tokenz" in sub[0].stderr and "unknown key" in sub[0].stderr
    assert "not valid TOML" in sub[1].stderr and "does not exist" in sub[2].stderr
    for case, (_, expected) in BAD_CONFIGS.items():
        code, out, err = in_process(["validate", str(paths[case])], capsys)
        assert code == 2, (case, out, err)
        assert out == "", case
        for fragment in expected:
            assert fragment in err, (case, fragment, err)
        assert str(paths[case]) in err, case
        assert "pgsecret" not in err
        assert "Traceback" not in err


def test_validate_reports_everything_at_once_and_warns_on_unknown_services(
        env: dict[str, str], tmp_path: Path) -> None:
    bad, odd = tmp_path / "bad.toml", tmp_path / "odd.toml"
    bad.write_text('budgets = 3\n[services.openai]\nrefill_rate = -1\n'
                   '[services.anthropic]\nmin_interval = 1.0\nmax_interval = 0.5\n')
    odd.write_text('[services.opneai]\nmax_tokens = 2\n'
                   '[services.groq]\nbase_url = "https://api.groq.com/openai/v1"\n')
    failed, warned = run_many([["validate", str(bad)], ["validate", str(odd)]], env)
    assert failed.returncode == 2
    for fragment in ("budgets = 3: unknown key; did you mean 'budget'?",
                     "services.openai.refill_rate = -1",
                     "max_interval (0.5) must be >= min_interval (1.0)"):
        assert fragment in failed.stderr, failed.stderr
    assert warned.returncode == 0, warned.stderr
    assert "warning: services.opneai:" in warned.stdout and "did you mean 'openai'?" in \
        warned.stdout
    assert "groq" not in warned.stdout.split("warning:", 1)[1]


def test_validate_reads_llm_governor_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[services.openai]\nmax_tokens = -3\n")
    r = run_cli("validate", env=cli_env(tmp_path, LLM_GOVERNOR_CONFIG=str(bad)))
    assert r.returncode == 2 and "services.openai.max_tokens" in r.stderr


def test_commands_refuse_a_bad_config_with_exit_2(env: dict[str, str], tmp_path: Path,
                                                  db: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('environment = "prod"\n')
    for r in run_many([["status", "--config", str(bad), "--backend", db],
                       ["export", "--config", str(bad), "--backend", db]], env):
        assert r.returncode == 2 and "environment" in r.stderr, r.stderr


# --------------------------------------------------------------------- rules, dashboard, demo
def test_rules_and_dashboard_print_parseable_documents(env: dict[str, str]) -> None:
    rules, tests, scrape, dash = run_many([["rules"], ["rules", "--file", "alerts_test.yml"],
                                           ["rules", "--file", "prometheus-scrape.yml"],
                                           ["dashboard"]], env)
    assert rules.returncode == 0
    doc = yaml.safe_load(rules.stdout)
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"]}
    assert "LLMGovernorCircuitOpen" in alerts and "LLMGovernorBudgetThreshold" in alerts
    assert len(alerts) == 7
    assert yaml.safe_load(tests.stdout)["rule_files"] == ["alerts.yml"]
    assert yaml.safe_load(scrape.stdout)["scrape_configs"]
    assert dash.returncode == 0
    board = json.loads(dash.stdout)
    assert board["uid"] and board["panels"]


def test_demo_delegates_or_reports_missing(env: dict[str, str]) -> None:
    if not (ROOT / "llm_governor" / "cli" / "demo.py").exists():
        helped, ran = run_many([["demo", "--help"], ["demo"]], env)
        assert helped.returncode == 0 and "usage" in helped.stdout.lower()
        assert ran.returncode == 3 and "demo is not available" in ran.stderr
        return
    helped, bad = run_many([["demo", "--help"], ["demo", "--no-such-option"]], env)
    assert helped.returncode == 0 and "usage: llm-governor demo" in helped.stdout
    assert bad.returncode == 2 and "--no-such-option" in bad.stderr


def test_demo_gets_its_options_and_the_global_choices(
        monkeypatch: pytest.MonkeyPatch, db: str) -> None:
    """Everything after ``demo`` goes to ``llm_governor.cli.demo.main``; the global backend
    reaches it through the environment (it builds its own governor)."""
    import types

    seen: dict[str, Any] = {}

    def fake_main(argv: list[str]) -> int:
        seen["argv"] = argv
        seen["backend"] = os.environ.get("LLM_GOVERNOR_BACKEND")
        return 7

    fake = types.SimpleNamespace(main=fake_main)
    monkeypatch.setitem(sys.modules, "llm_governor.cli.demo", fake)
    monkeypatch.setattr(cli, "demo", fake, raising=False)
    # recorded, so the value main() sets is undone after the test
    monkeypatch.setenv("LLM_GOVERNOR_BACKEND", "memory")
    assert cli.main(["--backend", db, "demo", "--calls", "3", "--workers", "1"]) == 7
    assert seen == {"argv": ["--calls", "3", "--workers", "1"], "backend": db}


# --------------------------------------------------------------------- status, export
def _spend(db: str, config: dict[str, Any], calls: int, cost: str, fail: int = 0,
           job: str | None = None) -> None:
    """Make governed calls in this process on the CLI's backend."""
    gov = Governor(llm_governor.load_config({**config, "backend": db}))
    spec = llm_governor.CallSpec("worker", model="m1", cost=Decimal(cost))

    def ok() -> None:
        return None

    def boom() -> None:
        raise ConnectionError("provider down")

    try:
        for i in range(calls + fail):
            fn = boom if i >= calls else ok
            try:
                if job:
                    with llm_governor.job(job):
                        gov.call(spec, fn)
                else:
                    gov.call(spec, fn)
            except ConnectionError:
                pass
    finally:
        gov.close()


WORKER_CFG: dict[str, Any] = {"services": {"worker": {
    "max_tokens": 1000, "refill_rate": 1000.0, "burst_capacity": 0, "max_cost_per_minute": "1000",
    "failure_threshold": 3, "recovery_timeout": 600}}}


def test_status_exit_codes_follow_health(env: dict[str, str], tmp_path: Path, db: str) -> None:
    healthy = run_cli("status", "--backend", db, env=env)
    assert healthy.returncode == 0, healthy.stderr
    assert "HEALTHY" in healthy.stdout and "Services" in healthy.stdout

    _spend(db, WORKER_CFG, calls=2, cost="0.01", fail=3)  # 3 failures open the breaker
    degraded = run_cli("status", "--json", "--backend", db, env=env)
    assert degraded.returncode in (1, 2), degraded.stderr
    doc = json.loads(degraded.stdout)
    assert doc["services"]["worker"]["circuit_state"] == "open"
    assert doc["overall_status"] in ("degraded", "critical")
    assert degraded.returncode == {"degraded": 1, "critical": 2}[doc["overall_status"]]

    cfg = tmp_path / "budget.toml"
    cfg.write_text('[budget]\nper_day = "0.05"\n' + FAST_SVC)
    db2 = f"sqlite:///{tmp_path / 'b.db'}"
    _spend(db2, {"budget": {"per_day": "0.05"}, **WORKER_CFG}, calls=5, cost="0.01")
    critical = run_cli("status", "--config", str(cfg), "--backend", db2, env=env)
    assert critical.returncode == 2, critical.stdout + critical.stderr
    assert "CRITICAL" in critical.stdout
    assert "day" in critical.stdout and "$0.0500" in critical.stdout


def test_status_and_export_show_costs_budgets_and_jobs(env: dict[str, str], tmp_path: Path,
                                                       db: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[budget]\nper_day = "10.00"\n' + FAST_SVC)
    _spend(db, {"budget": {"per_day": "10.00"}, **WORKER_CFG}, calls=3, cost="0.25",
           job="nightly")
    out_file = tmp_path / "out" / "metrics.json"
    out_file.parent.mkdir()
    status, export, stdout_export = run_many(
        [["status", "--config", str(cfg), "--backend", db],
         ["export", "--output", str(out_file), "--config", str(cfg), "--backend", db],
         ["export", "-o", "-", "--config", str(cfg), "--backend", db]], env)
    assert status.returncode == 0, status.stderr
    for fragment in ("worker", "m1", "$0.7500", "nightly", "$9.2500", "Budgets"):
        assert fragment in status.stdout, fragment
    assert export.returncode == 0, export.stderr
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    doc = json.loads(out_file.read_text())
    assert doc["costs"]["by_job"] == {"nightly": "0.75"}
    assert doc["costs"]["by_service_model"]["worker"]["m1"] == "0.75"
    assert doc["budgets"]["day"]["remaining"] == "9.25"
    assert doc["services"]["worker"]["calls"]["m1"]["ok"] == 3
    assert json.loads(stdout_export.stdout)["costs"]["total"] == "0.75"


def test_export_to_an_unwritable_place_exits_3(env: dict[str, str], db: str,
                                               tmp_path: Path) -> None:
    r = run_cli("export", "--output", str(tmp_path / "no" / "such" / "dir.json"), "--backend",
                db, env=env)
    assert r.returncode == 3 and "cannot write" in r.stderr


def test_unusable_sqlite_state_file_exits_3(env: dict[str, str], tmp_path: Path) -> None:
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("")  # even root cannot create a directory here
    url = f"sqlite:///{not_a_dir / 'g.db'}"
    read, write = run_many([["status", "--backend", url], ["emergency", "--enable",
                                                           "--backend", url]], env)
    assert read.returncode == 3 and f"no llm-governor state file at {not_a_dir}" in read.stderr
    assert write.returncode == 3 and "cannot open the SQLite state file" in write.stderr
    junk = tmp_path / "junk.db"
    junk.write_text("not a database " * 100)
    r = run_cli("status", "--backend", f"sqlite:///{junk}", env=env)
    assert r.returncode == 3 and str(junk) in r.stderr, r.stderr


def test_read_only_commands_create_nothing(env: dict[str, str], tmp_path: Path,
                                           db: str) -> None:
    """status, monitor, export and emergency --status on a path with no state file: exit 3
    naming the path, and neither the file nor its directory appears. On an existing file
    nobody holds open they leave no SQLite side files either."""
    missing = tmp_path / "no" / "such" / "dir" / "governor.db"
    url = f"sqlite:///{missing}"
    for r in run_many([["status", "--backend", url], ["status", "--json", "--backend", url],
                       ["monitor", "--iterations", "1", "--backend", url],
                       ["export", "--backend", url], ["emergency", "--status", "--backend", url]],
                      env):
        assert r.returncode == 3, (r.args, r.stdout, r.stderr)
        assert str(missing) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "no").exists()
    # the default state file too: nothing under XDG_STATE_HOME
    r = run_cli("status", env=env)
    assert r.returncode == 3 and "xdg-state" in r.stderr
    assert not (tmp_path / "xdg-state").exists()

    state_dir = Path(db.removeprefix("sqlite://")).parent
    before = sorted(p.name for p in state_dir.iterdir())
    for r in run_many([["status", "--backend", db], ["export", "--backend", db],
                       ["monitor", "--iterations", "1", "--backend", db],
                       ["emergency", "--status", "--backend", db]], env):
        assert r.returncode == 0, (r.args, r.stderr)
    assert sorted(p.name for p in state_dir.iterdir()) == before


# --------------------------------------------------------------------- several processes
WORKER = textwrap.dedent("""
    import sys, time
    from decimal import Decimal
    import llm_governor

    service, seconds, ready = sys.argv[1], float(sys.argv[2]), sys.argv[3]

    @llm_governor.rate_limited(service, cost=Decimal("0.001"), model="m-" + service)
    def work():
        time.sleep(0.05)

    first = True
    end = time.time() + seconds
    with llm_governor.job("batch-" + service):
        while time.time() < end:
            try:
                work()
            except llm_governor.GovernorError:
                time.sleep(0.05)
                continue
            if first:
                open(ready, "w").close()
                first = False
""")


@pytest.fixture
def workers(tmp_path: Path,
            db: str) -> Iterator[tuple[dict[str, str], list[subprocess.Popen[str]]]]:
    """Two worker processes making governed calls on the CLI's SQLite file."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cfg = tmp_path / "workers.toml"
    cfg.write_text(FAST_SVC + FAST_SVC.replace("worker", "worker2"))
    wenv = cli_env(tmp_path, LLM_GOVERNOR_BACKEND=db, LLM_GOVERNOR_CONFIG=str(cfg))
    procs = [subprocess.Popen([sys.executable, str(script), svc, "60", str(tmp_path / svc)],
                              env=wenv, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
             for svc in ("worker", "worker2")]
    try:
        deadline = time.monotonic() + 30
        backend = SQLiteBackend(Path(db.removeprefix("sqlite://")))
        try:
            # running, and published on the backend (a process publishes when a call is
            # admitted without waiting, at most once a second)
            while not ({p.pid for p in procs}
                       <= {d.get("pid") for d in backend.processes().values()}):
                for p in procs:
                    assert p.poll() is None, p.communicate()
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.05)
        finally:
            backend.close()
        yield cli_env(tmp_path, LLM_GOVERNOR_CONFIG=str(cfg)), procs
    finally:
        for p in procs:
            p.kill()
            p.communicate()


def test_status_lists_every_live_process(
        workers: tuple[dict[str, str], list[subprocess.Popen[str]]], db: str) -> None:
    env, procs = workers
    as_json, as_text = run_many([["status", "--json", "--backend", db],
                                 ["status", "--backend", db]], env)
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    pids = {p["pid"] for p in doc["processes"].values()}
    assert {p.pid for p in procs} <= pids, doc["processes"]
    for svc in ("worker", "worker2"):
        assert doc["services"][svc]["requests"]["admitted"] >= 1
        assert Decimal(doc["costs"]["by_service"][svc]) > 0
        assert f"batch-{svc}" in doc["costs"]["by_job"]
    assert as_text.returncode == 0, as_text.stderr
    assert "Live processes on this backend" in as_text.stdout
    for p in procs:
        assert f":{p.pid}:" in as_text.stdout


def test_monitor_refreshes_and_shows_processes(
        workers: tuple[dict[str, str], list[subprocess.Popen[str]]], db: str) -> None:
    env, procs = workers
    r = run_cli("monitor", "--iterations", "2", "--interval", "0.3", "--backend", db, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("=== llm-governor monitor") == 2
    assert "(refresh 0.3s, 2/2)" in r.stdout
    frames = r.stdout.split("=== llm-governor monitor")[1:]
    for frame in frames:
        assert "Live processes on this backend" in frame and "Recent alerts" in frame
        assert "worker2" in frame
    assert any(str(p.pid) in frames[-1] for p in procs)


# --------------------------------------------------------------------- emergency across processes
WATCHER = textwrap.dedent("""
    import sys, time
    import llm_governor

    @llm_governor.rate_limited("worker")
    def call():
        return None

    def refused():
        try:
            call()
        except llm_governor.EmergencyModeError:
            return True
        return False

    print("ready", flush=True)
    for wanted in (True, False):
        while True:
            flag, refusal = llm_governor.is_emergency_mode(), refused()
            if flag == wanted and refusal == wanted:
                print(f"{'on' if wanted else 'off'} {time.time():.6f}", flush=True)
                break
            time.sleep(0.005)
""")


def test_emergency_switch_is_seen_by_a_running_process_within_a_second(
        tmp_path: Path, db: str) -> None:
    script = tmp_path / "watcher.py"
    script.write_text(WATCHER)
    cfg = tmp_path / "refuse.toml"
    cfg.write_text('emergency_action = "refuse"\n' + FAST_SVC)
    env = cli_env(tmp_path, LLM_GOVERNOR_BACKEND=db, LLM_GOVERNOR_CONFIG=str(cfg))
    watcher = subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "ready", watcher.stderr
        time.sleep(0.2)  # the watcher is polling and being admitted
        for action, word in (("--enable", "on"), ("--disable", "off")):
            r = run_cli("emergency", action, "--backend", db, env=env)
            done = time.time()
            assert r.returncode == 0, r.stderr
            assert ("ENABLED" if word == "on" else "disabled") in r.stdout
            fd = watcher.stdout.fileno()
            ready, _, _ = select.select([fd], [], [], 5.0)
            assert ready, f"watcher did not see emergency {word}"
            seen_word, seen_at = watcher.stdout.readline().split()
            assert seen_word == word
            # flag read and admission refusal (or admission again) both observed
            assert float(seen_at) - done < 1.0, float(seen_at) - done
        assert watcher.wait(timeout=10) == 0
    finally:
        watcher.kill()
        watcher.communicate()


# --------------------------------------------------------------------- terminal output
def _run_in_pty(args: Sequence[str], env: dict[str, str], timeout: float = 30,
                prelude: str = "") -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout (what an operator sees)."""
    master, slave = pty.openpty()
    code = (f"{prelude}\nimport sys\nfrom llm_governor.cli import main\n"
            f"sys.exit(main({list(args)!r}))")
    env = {**env, "COLUMNS": "160", "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.kill()
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def test_terminal_gets_rich_tables(env: dict[str, str], db: str) -> None:
    rc, text = _run_in_pty(["status", "--backend", db], env)
    assert rc == 0, text
    assert "\x1b[" in text, "no styling on a terminal"
    assert "SERVICE" in text and "openai" in text
    assert "  SERVICE    SCORE" not in text  # not the plain layout


def test_terminal_monitor_uses_a_live_view(env: dict[str, str], db: str) -> None:
    rc, text = _run_in_pty(["monitor", "--iterations", "2", "--interval", "0.2", "--backend",
                            db], env)
    assert rc == 0, text
    assert "\x1b[" in text and "Live processes" in text


def test_terminal_without_rich_falls_back_to_plain_text(env: dict[str, str], db: str) -> None:
    rc, text = _run_in_pty(["status", "--backend", db], env,
                           prelude="import sys; sys.modules['rich'] = None")
    assert rc == 0, text
    assert "  SERVICE    SCORE" in text and "\x1b[" not in text


# --------------------------------------------------------------------- what the apps enforce
APP = textwrap.dedent("""
    import sys, time
    import llm_governor

    budget, rate, ready = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    llm_governor.instrument({"budget": {"per_day": budget},
                             "services": {"worker": {"max_tokens": 3, "burst_capacity": 0,
                                                     "refill_rate": rate,
                                                     "max_cost_per_minute": "100"}}})
    open(ready, "w").close()
    time.sleep(120)
""")


@pytest.fixture
def apps(tmp_path: Path, db: str) -> Iterator[Callable[[str, float], subprocess.Popen[str]]]:
    """Start applications configured in code (no file) on the CLI's backend; each is
    returned once it has published what it enforces."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    started: list[subprocess.Popen[str]] = []

    def start(budget: str, rate: float) -> subprocess.Popen[str]:
        ready = tmp_path / f"ready-{len(started)}"
        p = subprocess.Popen([sys.executable, str(script), budget, str(rate), str(ready)],
                             env=cli_env(tmp_path, LLM_GOVERNOR_BACKEND=db), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(p)
        deadline = time.monotonic() + 30
        backend = SQLiteBackend(Path(db.removeprefix("sqlite://")))
        try:
            while p.pid not in {d.get("pid") for d in backend.processes().values()}:
                assert p.poll() is None, p.communicate()
                assert time.monotonic() < deadline, "the app did not publish itself"
                time.sleep(0.05)
        finally:
            backend.close()
        return p

    try:
        yield start
    finally:
        for p in started:
            p.kill()
            p.communicate()


def test_status_shows_what_apps_in_other_processes_enforce(
        apps: Callable[[str, float], subprocess.Popen[str]], env: dict[str, str], db: str,
        tmp_path: Path) -> None:
    first = apps("5.00", 7.0)
    as_json, as_text = run_many([["status", "--json", "--backend", db],
                                 ["status", "--backend", db]], env)
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["budgets"]["day"]["limit"] == "5.00"
    worker = doc["services"]["worker"]
    assert (worker["configured_rate"], worker["configured_capacity"]) == (7.0, 3)
    (member,) = doc["enforced"]["members"]
    assert f":{first.pid}:" in member and doc["enforced"]["disagreements"] == []
    assert doc["enforced"]["members"][member]["config"] == "in code"
    assert "as published by 1 live process" in as_text.stdout
    assert "per_day $5.0000" in as_text.stdout and "$5.0000" in as_text.stdout
    assert f"backend sqlite:///{sqlite_path(db)} |" in as_text.stdout

    apps("2.00", 7.0)
    cfg = tmp_path / "mine.toml"
    cfg.write_text('[budget]\nper_day = "9.00"\n')
    as_json, as_text, with_config, export = run_many(
        [["status", "--json", "--backend", db], ["status", "--backend", db],
         ["status", "--json", "--config", str(cfg), "--backend", db],
         ["export", "--backend", db]], env)
    doc = json.loads(as_json.stdout)
    assert doc["budgets"]["day"]["limit"] == "2.00"  # the tightest is the first to refuse
    (line,) = doc["enforced"]["disagreements"]
    assert line.startswith("budget per_day:") and "$5.00" in line and "$2.00" in line
    assert "PROCESSES DISAGREE" in as_text.stdout and "budget per_day" in as_text.stdout
    mine = json.loads(with_config.stdout)["enforced"]
    assert f"--config {cfg}" in mine["members"]
    assert "$9.00 in --config" in mine["disagreements"][0]
    assert json.loads(export.stdout)["enforced"]["budgets"] == {"day": "2.00"}


def test_health_api_shows_the_union_with_other_processes(
        apps: Callable[[str, float], subprocess.Popen[str]], db: str) -> None:
    from llm_governor.exporters.monitor import health

    apps("5.00", 7.0)
    gov = Governor(llm_governor.load_config({"backend": db, "budget": {"per_day": "8.00"}}))
    try:
        h = health(gov)
    finally:
        gov.close()
    assert h["budgets"]["day"]["limit"] == "5.00"
    assert len(h["enforced"]["members"]) == 2
    assert "$8.00" in h["enforced"]["disagreements"][0]


# --------------------------------------------------------------------- reset
def _spent(db: str) -> dict[str, Decimal]:
    backend = SQLiteBackend(Path(db.removeprefix("sqlite://")))
    try:
        spends, _, _ = backend.budget_status()
        return {w: s.spent for w, s in spends.items()}
    finally:
        backend.close()


def _circuit(db: str) -> str:
    backend = SQLiteBackend(Path(db.removeprefix("sqlite://")))
    try:
        return backend.service_state("worker").breaker.state
    finally:
        backend.close()


def test_reset_limits_and_budgets_separately_with_confirmation(env: dict[str, str],
                                                               db: str) -> None:
    budget = {"budget": {"per_hour": "5.00", "per_day": "5.00"}}
    _spend(db, {**budget, **WORKER_CFG}, calls=3, cost="0.10", fail=3)  # opens the breaker
    assert _spent(db) == {"hour": Decimal("0.60"), "day": Decimal("0.60")}
    assert _circuit(db) == "open"

    limits = run_cli("reset", "worker", "--backend", db, env=env)
    assert limits.returncode == 0, limits.stderr
    assert "budgets are untouched" in limits.stdout
    assert _circuit(db) == "closed" and _spent(db)["day"] == Decimal("0.60")

    def answer(text: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llm_governor", "reset", "--budgets",
                               "--backend", db, *args], input=text, env=env, text=True,
                              capture_output=True, timeout=60, cwd=ROOT)

    no = answer("n\n")
    assert no.returncode == 1 and "nothing reset" in no.stdout, no
    assert "day: $0.6000 spent" in no.stdout and "Forget the spend" in no.stdout
    eof = answer("")
    assert eof.returncode == 1
    assert _spent(db)["day"] == Decimal("0.60")

    _spend(db, {**budget, **WORKER_CFG}, calls=0, cost="0.10", fail=3)
    hour = answer("y\n", "--window", "hour")
    assert hour.returncode == 0 and "hour $0.9000" in hour.stdout, hour
    assert _spent(db) == {"day": Decimal("0.90")}
    assert _circuit(db) == "open"  # --budgets leaves limits alone

    done = run_cli("reset", "--budgets", "--yes", "--backend", db, env=env)
    assert done.returncode == 0 and "day $0.9000" in done.stdout, done.stderr
    assert _spent(db) == {}


def test_reset_rejects_what_it_cannot_do(env: dict[str, str], db: str) -> None:
    scoped, bad_scope, service_budget, window_alone = run_many([
        ["reset", "--budgets", "--scope", "tenant=acme", "--yes", "--backend", db],
        ["reset", "--budgets", "--scope", "tenant", "--backend", db],
        ["reset", "worker", "--budgets", "--backend", db],
        ["reset", "--window", "day", "--backend", db]], env)
    assert scoped.returncode == 0 and "no scoped budgets configured" in scoped.stdout
    assert bad_scope.returncode == 2 and "KIND=VALUE" in bad_scope.stderr
    assert service_budget.returncode == 2 and "shared by every service" in service_budget.stderr
    assert window_alone.returncode == 2 and "add --budgets" in window_alone.stderr


SCOPED_CFG: dict[str, Any] = {"scopes": {"tenant": {
    "per_day": "1.00", "overrides": {"acme": {"per_day": "5.00"}}}}}


def test_status_scope_shows_top_spenders_and_reset_forgets_one(env: dict[str, str],
                                                               db: str) -> None:
    """The app declares [scopes.tenant] in code; the CLI learns it from what the app
    publishes, lists the tenants that spent most first, and resets one tenant's spend."""
    gov = Governor(llm_governor.load_config({**SCOPED_CFG, **WORKER_CFG, "backend": db}))
    spec = llm_governor.CallSpec("worker", model="m1", cost=Decimal("0.10"))
    try:
        for tenant, calls in (("small", 1), ("acme", 4), ("mid", 2)):
            with llm_governor.scope(tenant=tenant):
                for _ in range(calls):
                    gov.call(spec, lambda: None)
        table, as_json, top1, unknown = run_many([
            ["status", "--scope", "tenant", "--backend", db],
            ["status", "--scope", "tenant", "--json", "--backend", db],
            ["status", "--scope", "tenant", "--top", "1", "--backend", db],
            ["status", "--scope", "team", "--backend", db]], env)
        assert table.returncode == 0, table.stderr
        rows = [line.split() for line in table.stdout.splitlines()]
        assert [r[0] for r in rows if r and r[0] in ("acme", "mid", "small")] == \
            ["acme", "mid", "small"]
        assert "$0.4000 / $5.0000" in table.stdout and "$0.2000 / $1.0000" in table.stdout
        tenants = json.loads(as_json.stdout)["scopes"]["tenant"]
        assert list(tenants) == ["acme", "mid", "small"]
        assert tenants["acme"]["windows"]["day"] == {
            "limit": "5.00", "spent": "0.40", "reserved": "0", "remaining": "4.60"}
        assert "1 of 3" in top1.stdout and "mid" not in top1.stdout.split("1 of 3")[1]
        assert unknown.returncode == 3 and "declare tenant" in unknown.stderr

        reset = run_cli("reset", "--budgets", "--scope", "tenant=acme", "--yes",
                        "--backend", db, env=env)
        assert reset.returncode == 0, reset.stderr
        assert "of tenant=acme" in reset.stdout and "day $0.4000" in reset.stdout
        day = gov.scope_report("tenant", "acme")["tenant=acme"]["windows"]["day"]
        assert day["spent"] == 0
        assert gov.scope_report("tenant", "mid")["tenant=mid"]["windows"]["day"]["spent"] == \
            Decimal("0.20")
        assert Decimal(gov.backend.counters()["cost"]["worker"]["m1"]) == Decimal("0.70")
    finally:
        gov.close()


def test_serve_answers_what_status_shows_until_interrupted(env: dict[str, str], db: str) -> None:
    import signal
    import urllib.request

    _spend(db, WORKER_CFG, calls=3, cost="0.10")
    refused = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--backend", db, env=env)
    assert refused.returncode == 3 and "needs a bearer token" in refused.stderr
    server = start_cli(["serve", "--port", "0", "--backend", db], env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("serving /healthz /status /metrics /alerts on http://127.0.0.1:")
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(f"{url}/status", timeout=10) as response:
            doc = json.loads(response.read())
        assert doc["costs"]["by_service"] == {"worker": "0.30"}
        assert doc["overall_status"] == "healthy"
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            assert b'llm_governor_requests_total{decision="admitted",service="worker"} 3' in \
                response.read()
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    assert "Traceback" not in err
