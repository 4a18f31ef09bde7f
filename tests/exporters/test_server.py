"""The read-only status server (``llm-governor serve``), through a real HTTP client
(``http.client`` over loopback): ``/healthz``, ``/status`` (the ``status --json``
document), ``/metrics`` (Prometheus text, accepted by ``promtool check metrics`` and by
prometheus_client's parser, with the names the shipped alert rules query) and
``/alerts``; the state of other processes sharing the SQLite backend; the bearer token;
read-only methods; loopback by default; :func:`serve` until stopped.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import llm_governor
from llm_governor.api import set_governor
from llm_governor.config import load_config
from llm_governor.exporters.export import status_document
from llm_governor.exporters.server import StatusServer, is_loopback, prometheus_text, serve
from llm_governor.governor import Governor

TOKEN = "s3rv3r-T0KEN-abcdef0123456789"


def get(url: str, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return {"environment": "development", "backend": f"sqlite:///{tmp_path / 'state.db'}",
            "budget": {"per_day": "10.00"},
            "services": {"svc": {"max_tokens": 100, "refill_rate": 100.0,
                                 "max_cost_per_minute": "100"}}}


@pytest.fixture
def app(config: dict[str, Any]) -> Iterator[Governor]:
    """An application's governor that made some calls (another process, as far as the
    server knows: they share only the SQLite file)."""
    gov = Governor(load_config(config))
    previous = set_governor(gov)

    @llm_governor.rate_limited("svc", cost=Decimal("0.25"), model="m1")
    def ok() -> str:
        return "ok"

    @llm_governor.rate_limited("svc", model="m1")
    def broken() -> None:
        raise ValueError("boom")

    try:
        for _ in range(3):
            ok()
        with pytest.raises(ValueError):
            broken()
        yield gov
    finally:
        set_governor(previous)
        gov.close()


@pytest.fixture
def server(app: Governor, config: dict[str, Any]) -> Iterator[StatusServer]:
    with StatusServer(config, port=0) as running:  # a governor of its own, on the same file
        yield running


def test_endpoints_serve_the_shared_state(server: StatusServer, app: Governor) -> None:
    assert server.address[0] == "127.0.0.1"
    status, headers, body = get(server.url, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    status, headers, body = get(server.url, "/status")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    expected = json.loads(json.dumps(status_document(app), sort_keys=True, default=str))
    for volatile in ("generated_at", "processes"):
        doc.pop(volatile)
        expected.pop(volatile)
    # the server's configuration joins what the app publishes, as one more member
    members = doc["enforced"].pop("members")
    assert list(expected["enforced"].pop("members").values()) == [members.pop(app.process_id)]
    assert list(members) == ["config in code"]
    for name in expected["services"]:  # bucket levels refill between the two readings
        for key in ("tokens_available", "health_score"):
            doc["services"][name].pop(key)
            expected["services"][name].pop(key)
    doc.pop("health_score"), expected.pop("health_score"), doc.pop("health"), expected.pop(
        "health")
    assert doc == expected
    assert doc["services"]["svc"]["calls"] == {"m1": {"ok": 3, "error": 1}}

    status, headers, body = get(server.url, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'llm_governor_calls_total{model="m1",service="svc",status="error"} 1' in text
    assert 'llm_governor_requests_total{decision="admitted",service="svc"} 4' in text
    assert 'llm_governor_budget_limit_USD{window="day"} 10' in text
    # 3 x $0.25 stated, and the failed call charged its reservation ($0.01 by default)
    assert 'llm_governor_cost_USD_total{model="m1",service="svc"} 0.76' in text

    status, _, body = get(server.url, "/alerts")
    assert status == 200
    alerts = json.loads(body)
    assert alerts["alerts"] == [] and alerts["window_s"] == 300.0

    status, _, body = get(server.url, "/nowhere")
    assert status == 404
    status, _, body = get(server.url, "/status", "HEAD")
    assert (status, body) == (200, b"")


def test_metrics_are_valid_prometheus_text_with_the_rules_names(server: StatusServer) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    _, _, body = get(server.url, "/metrics")
    families = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
    # every series the shipped alert rules read (tests/exporters/test_rules.py)
    for name in ("llm_governor_circuit_state", "llm_governor_calls", "llm_governor_queue_size",
                 "llm_governor_queue_capacity", "llm_governor_cost_USD",
                 "llm_governor_tokens_available", "llm_governor_tokens_capacity",
                 "llm_governor_budget_remaining_USD", "llm_governor_budget_limit_USD"):
        assert name in families, name
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = subprocess.run([promtool, "check", "metrics"], input=body,
                                 capture_output=True, timeout=30, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alerts_list_what_the_monitor_raised(app: Governor, config: dict[str, Any]) -> None:
    # the app spent $0.76; read with a $0.80 daily budget, 5% is left
    tight = {**config, "budget": {"per_day": "0.80"}}
    with StatusServer(tight, port=0) as running:
        _, _, body = get(running.url, "/alerts")
        _, _, again = get(running.url, "/alerts")  # listed while recent, not raised twice
    (alert,) = json.loads(body)["alerts"]
    assert alert["alert_type"] == "budget_nearly_exhausted"
    assert alert["value"] == pytest.approx(0.05)
    assert json.loads(again)["alerts"] == [alert]


def test_a_token_guards_everything_but_healthz(app: Governor,
                                               config: dict[str, Any]) -> None:
    with StatusServer(config, port=0, token=TOKEN) as running:
        assert get(running.url, "/healthz")[0] == 200
        for path in ("/status", "/metrics", "/alerts"):
            status, headers, body = get(running.url, path)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in body.decode()
            assert get(running.url, path, headers={"Authorization": "Bearer wrong"})[0] == 401
            assert get(running.url, path, headers={"Authorization": TOKEN})[0] == 401
            assert get(running.url, path,
                       headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_it_is_read_only(server: StatusServer) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = get(server.url, "/status", method)
        assert status == 405 and headers["allow"] == "GET, HEAD"


def test_loopback_by_default_and_a_token_for_anything_else(config: dict[str, Any]) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    with pytest.raises(ValueError, match="needs a bearer token"):
        StatusServer(config, host="0.0.0.0", port=0)
    with pytest.raises(ValueError, match="must not be empty"):
        StatusServer(config, port=0, token=" ")


def test_serve_runs_until_stopped(app: Governor, config: dict[str, Any]) -> None:
    started = threading.Event()
    found: list[StatusServer] = []

    def ready(s: StatusServer) -> None:
        found.append(s)
        started.set()

    thread = threading.Thread(target=serve, args=(config,),
                              kwargs={"port": 0, "ready": ready}, daemon=True)
    thread.start()
    assert started.wait(10)
    (running,) = found
    assert get(running.url, "/healthz")[0] == 200
    running._httpd.shutdown()
    thread.join(10)
    assert not thread.is_alive()


def test_prometheus_text_escapes_labels() -> None:
    doc = {"services": {'we"ird\\svc': {"requests": {"admitted": 2}}}, "budgets": {}}
    text = prometheus_text(doc)
    assert 'llm_governor_requests_total{decision="admitted",service="we\\"ird\\\\svc"} 2' in text
