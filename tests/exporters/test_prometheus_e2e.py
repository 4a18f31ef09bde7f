"""End to end with a real Prometheus: an instrumented workload process exports
with the OTel Prometheus reader on loopback, calls the fake provider through
the openai SDK, a real Prometheus (the Debian binary) scrapes it every second
and evaluates the shipped ``alerts.yml``; the test queries the ``llm_governor_*``
series, spends past a tenant's budget threshold and waits for
``LLMGovernorBudgetThreshold``, then makes the provider fail and waits for
``LLMGovernorCircuitOpen`` to fire.

Skipped without the ``prometheus`` binary, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_governor.exporters.rules import read_rule_file
from tests.conftest import require

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HAVE_INSTRUMENTATION = (ROOT / "llm_governor" / "instrumentation" / "openai.py").exists()

WORKLOAD = textwrap.dedent("""
    import sys, threading, time

    import openai
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    import llm_governor
    from llm_governor.testing import FakeProvider

    port, mode = int(sys.argv[1]), sys.argv[2]
    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    start_http_server(port, addr="127.0.0.1")
    fake = FakeProvider().start()
    config = {
        "backend": "memory",
        "environment": "development",  # min_interval 0.1: the rate in force is 10/s
        "budget": {"per_day": "100.00"},
        "scopes": {"tenant": {"per_day": "0.0001"}},
        "alerts": {"budget_thresholds": [0.5]},
        "services": {"openai": {
            "max_tokens": 100, "refill_rate": 20.0, "burst_capacity": 0,
            "max_cost_per_minute": "100", "failure_threshold": 3, "recovery_timeout": 600,
            "max_retries": 0, "cost_per_request": "0.00004",
        }},
    }
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="sk-test-e2e-0000",
                           max_retries=0)

    def request():
        return client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hi"}])

    if mode == "sdk":
        llm_governor.instrument(config, meter_provider=meter_provider)
        call = request
    else:
        from llm_governor.api import set_governor
        from llm_governor.governor import Governor

        set_governor(Governor(llm_governor.load_config(config),
                              meter_provider=meter_provider))
        call = llm_governor.rate_limited("openai", model="gpt-4o-mini")(request)

    def commands():
        for line in sys.stdin:
            if line.strip() == "fail":
                fake.fail_next(100000, 500)
            elif line.strip() == "spend":  # past half of tenant acme's day budget
                with llm_governor.scope(tenant="acme"):
                    for _ in range(40):
                        try:
                            call()
                        except Exception:
                            break
            elif line.strip() == "quit":
                break
        stop.set()

    stop = threading.Event()
    threading.Thread(target=commands, daemon=True).start()
    ready = False
    while not stop.is_set():
        try:
            call()
        except Exception as exc:  # provider errors and governor refusals alike
            pass
        if not ready:
            print("ready", flush=True)
            ready = True
        stop.wait(0.1)
    fake.stop()
""")

EXPECTED_SERIES = {
    "llm_governor_requests_total", "llm_governor_calls_total", "llm_governor_cost_USD_total",
    "llm_governor_budget_remaining_USD", "llm_governor_budget_limit_USD",
    "llm_governor_tokens_available", "llm_governor_tokens_capacity",
    "llm_governor_queue_size", "llm_governor_queue_capacity",
    "llm_governor_queue_wait_seconds_bucket", "llm_governor_circuit_state",
    "llm_governor_limit_rate", "llm_governor_emergency",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


@pytest.fixture
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    require(path is not None, "the prometheus binary is not installed (apt-get install "
                              "prometheus)")
    assert path is not None
    return path


@pytest.fixture(params=["sdk", "decorator"])
def mode(request: pytest.FixtureRequest) -> str:
    """sdk: instrument() governs the openai SDK; decorator: @rate_limited wraps the same call."""
    if request.param == "sdk" and not HAVE_INSTRUMENTATION:
        pytest.skip("llm_governor/instrumentation/openai.py not written yet")
    return str(request.param)


@pytest.fixture
def stack(prometheus_bin: str, tmp_path: Path,
          mode: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """(prometheus base URL, workload process), both on loopback, torn down after."""
    metrics_port, prom_port = free_port(), free_port()
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for var in ("LLM_GOVERNOR_CONFIG", "LLM_GOVERNOR_BACKEND", "LLM_GOVERNOR_ENV"):
        env.pop(var, None)
    workload = subprocess.Popen([sys.executable, str(script), str(metrics_port), mode],
                                env=env, text=True, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    (tmp_path / "alerts.yml").write_text(read_rule_file("alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 1s
          evaluation_interval: 1s
        rule_files: [alerts.yml]
        scrape_configs:
          - job_name: llm-governor
            static_configs:
              - targets: ["127.0.0.1:{metrics_port}"]
    """))
    prom_log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=prom_log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        assert workload.stdout is not None
        ready, _, _ = select.select([workload.stdout], [], [], 30)
        line = workload.stdout.readline() if ready else ""
        if line.strip() != "ready":
            workload.kill()
            pytest.fail(f"workload did not start: {line!r} {workload.communicate()[1]}")

        def prometheus_ready() -> bool:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)

        wait_for("prometheus to be ready", prometheus_ready, 30)
        yield base, workload
    finally:
        if workload.poll() is None and workload.stdin is not None:
            try:
                workload.stdin.write("quit\n")
                workload.stdin.flush()
                workload.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        workload.kill()
        workload.communicate()
        prom.terminate()
        try:
            prom.wait(timeout=10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        prom_log.close()


def test_prometheus_scrapes_the_series_and_the_circuit_alert_fires(
        stack: tuple[str, subprocess.Popen[str]], mode: str) -> None:
    base, workload = stack

    def series() -> set[str]:
        names = {r["metric"]["__name__"]
                 for r in query(base, '{__name__=~"llm_governor_.+|gen_ai_.+"}')}
        return names if names >= EXPECTED_SERIES else set()

    names = wait_for("the llm_governor_* series", series, 20)
    if mode == "sdk":
        assert "gen_ai_client_operation_duration_seconds_bucket" in names
        assert "gen_ai_client_token_usage_bucket" in names
    else:  # a decorated function is no GenAI call: only llm_governor_* series of its own
        assert not {n for n in names if n.startswith("gen_ai_")}

    admitted = query(base, 'llm_governor_requests_total{service="openai",'
                           'decision="admitted",job="llm-governor"}')
    assert admitted and float(admitted[0]["value"][1]) >= 1
    assert admitted[0]["metric"]["model"] == "gpt-4o-mini"
    assert admitted[0]["metric"]["priority"] == "normal"
    (circuit,) = query(base, 'llm_governor_circuit_state{service="openai"}')
    assert circuit["value"][1] == "0"
    (rate,) = query(base, 'llm_governor_limit_rate{service="openai"}')
    assert float(rate["value"][1]) == pytest.approx(10.0)  # 1 / min_interval caps 20/s
    (budget,) = query(base, 'llm_governor_budget_limit_USD{window="day"}')
    assert budget["value"][1] == "100"
    assert float(query(base, 'sum(llm_governor_cost_USD_total{service="openai"})')[0]
                 ["value"][1]) > 0
    assert not query(base, 'ALERTS{alertname="LLMGovernorCircuitOpen"}')
    assert not query(base, 'ALERTS{alertname="LLMGovernorBudgetThreshold"}')

    assert workload.stdin is not None
    workload.stdin.write("spend\n")
    workload.stdin.flush()
    (threshold,) = wait_for(
        "LLMGovernorBudgetThreshold to fire",
        lambda: query(base, 'ALERTS{alertname="LLMGovernorBudgetThreshold",'
                            'alertstate="firing"}'), 30)
    assert (threshold["metric"]["scope_kind"], threshold["metric"]["window"],
            threshold["metric"]["threshold"]) == ("tenant", "day", "0.5")
    workload.stdin.write("fail\n")
    workload.stdin.flush()
    started = time.monotonic()
    alerts = wait_for(
        "LLMGovernorCircuitOpen to fire",
        lambda: query(base, 'ALERTS{alertname="LLMGovernorCircuitOpen",alertstate="firing"}'),
        30)
    took = time.monotonic() - started
    (alert,) = alerts
    assert alert["metric"]["service"] == "openai"
    assert alert["metric"]["severity"] == "critical"
    assert alert["metric"]["job"] == "llm-governor"
    (circuit,) = query(base, 'llm_governor_circuit_state{service="openai"}')
    assert circuit["value"][1] == "2"
    errors = query(base, 'sum(llm_governor_calls_total{service="openai",status="error"})')
    assert float(errors[0]["value"][1]) >= 3
    # the first refusal follows the opening by one workload tick, and its series may
    # reach Prometheus one scrape after the alert's
    refused = wait_for("a circuit_open refusal", lambda: query(
        base, 'llm_governor_requests_total{service="openai",decision="circuit_open"}'), 10)
    assert float(refused[0]["value"][1]) >= 1
    assert took < 30
