"""Secrets never leave through telemetry or output (design §6, "Security").

API keys and auth headers: real openai and anthropic SDK calls (successes,
retried 5xx and 429s, an exhausted retry, governor refusals) through the fake
provider with everything captured: spans, metrics, every log line at DEBUG,
the JSON export, health, the status server's responses and the errors raised.
Backend passwords: a Redis URL with a password that points nowhere, through the
CLI (status, export, emergency, validate), in-process health/export/errors, the
status server and the logs; plus the redaction function itself. The status
server's bearer token appears in none of them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llm_governor
from llm_governor.api import set_governor
from llm_governor.config import redact_url
from llm_governor.governor import Governor

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-test-Zq7SECRETkey0123456789abcdefXYZ"
KEY_FRAGMENTS = (API_KEY, API_KEY[8:24], "Zq7SECRET", f"Bearer {API_KEY}")
REDIS_PASSWORD = "hunter2-Redis-Pa55word"
SERVER_TOKEN = "serve-TOKEN-8c1f0e2d4b6a"
HAVE_INSTRUMENTATION = (ROOT / "llm_governor" / "instrumentation" / "openai.py").exists()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def assert_clean(text: str, secrets: tuple[str, ...], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into {where}"


def spans_text(exporter: InMemorySpanExporter) -> str:
    out = []
    for s in exporter.get_finished_spans():
        out.append(s.to_json())
        out.append(repr(dict(s.attributes or {})))
        for e in s.events:
            out.append(repr(dict(e.attributes or {})))
    return "\n".join(out)


# ------------------------------------------------------------------ API keys
@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[InMemoryMetricReader,
                                                                 InMemorySpanExporter]]:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    previous = set_governor(None)
    caplog.set_level(logging.DEBUG)  # every logger: ours, the SDKs', httpx
    fast = {"max_tokens": 100, "refill_rate": 100.0, "burst_capacity": 0, "min_interval": 0.001,
            "max_cost_per_minute": "100", "failure_threshold": 100}
    gov = llm_governor.instrument(
        {"backend": "memory", "budget": {"per_day": "5.00"},
         "services": {"openai": fast, "anthropic": fast, "decorated": fast}},
        meter_provider=mp, tracer_provider=tp)
    try:
        yield reader, exporter
    finally:
        llm_governor.uninstrument()
        set_governor(previous)
        gov.close()
        mp.shutdown()
        tp.shutdown()


@pytest.mark.skipif(not HAVE_INSTRUMENTATION,
                    reason="llm_governor/instrumentation/openai.py not written yet")
def test_no_api_key_in_spans_metrics_logs_exports_or_errors(
        captured: tuple[InMemoryMetricReader, InMemorySpanExporter],
        caplog: pytest.LogCaptureFixture) -> None:
    openai = pytest.importorskip("openai")
    anthropic = pytest.importorskip("anthropic")
    from llm_governor.testing import FakeProvider

    reader, exporter = captured
    errors: list[BaseException] = []
    with FakeProvider() as fake:
        oa = openai.OpenAI(base_url=fake.openai_base_url, api_key=API_KEY, max_retries=2)
        an = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key=API_KEY,
                                 max_retries=1)
        msgs = [{"role": "user", "content": "hello"}]
        oa.chat.completions.create(model="gpt-4o-mini", max_tokens=8, messages=msgs)
        fake.fail_next(1, 500)
        fake.fail_next(1, kind="rate_limit", retry_after=0.01)
        oa.chat.completions.create(model="gpt-4o-mini", max_tokens=8, messages=msgs)
        oa.embeddings.create(model="text-embedding-3-small", input="hello")
        an.messages.create(model="claude-3-5-haiku-latest", max_tokens=8, messages=msgs)
        fake.fail_next(3, 503, provider="openai")  # the first attempt and both retries
        try:
            oa.chat.completions.create(model="gpt-4o-mini", max_tokens=8, messages=msgs)
        except Exception as exc:
            errors.append(exc)
        fake.fail_next(1, kind="insufficient_quota", provider="anthropic")
        try:
            an.messages.create(model="claude-3-5-haiku-latest", max_tokens=8, messages=msgs)
        except Exception as exc:
            errors.append(exc)
        try:  # a governor refusal raised from inside the SDK call
            oa.chat.completions.create(model="gpt-4o", max_tokens=1_000_000, messages=msgs)
        except Exception as exc:
            errors.append(exc)
        with oa.chat.completions.create(model="gpt-4o-mini", max_tokens=8, messages=msgs,
                                        stream=True) as stream:
            for _ in stream:
                pass
        assert len(fake.ledger) >= 8

    assert len(errors) == 3, errors
    assert any(isinstance(e, llm_governor.BudgetExceededError) for e in errors)
    assert exporter.get_finished_spans()
    texts = {
        "spans": spans_text(exporter),
        "metrics": reader.get_metrics_data().to_json(),  # type: ignore[union-attr]
        "log lines": "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}"
                               for r in caplog.records),
        "export": llm_governor.export_rate_limit_metrics(),
        "health": json.dumps(llm_governor.get_rate_limit_health(), default=str),
        "errors": "\n".join(f"{e!s} {e!r} {getattr(e, 'args', '')!r} "
                            f"{getattr(e, 'response', None) and e.response.request.url!r}"
                            for e in errors),
    }
    texts["status server"] = served(llm_governor.get_governor())
    texts["log lines"] += "\n".join(f"{r.getMessage()} {r.exc_text or ''}"
                                    for r in caplog.records)
    assert caplog.records, "nothing was logged at DEBUG"
    for where, text in texts.items():
        assert text, where
        assert_clean(text, (*KEY_FRAGMENTS, SERVER_TOKEN), where)
        assert "authorization" not in text.lower() or where == "log lines", where
        assert "x-api-key" not in text.lower() or where == "log lines", where


def test_no_secret_through_the_decorator_path(
        captured: tuple[InMemoryMetricReader, InMemorySpanExporter],
        caplog: pytest.LogCaptureFixture) -> None:
    """Without any SDK: arguments (which may hold keys) never reach telemetry."""
    reader, exporter = captured

    @llm_governor.rate_limited("decorated")
    def call(api_key: str, fail: bool = False) -> str:
        if fail:
            raise RuntimeError("provider said no")
        return "ok"

    call(API_KEY)
    with pytest.raises(RuntimeError):
        call(API_KEY, fail=True)
    texts = [spans_text(exporter), reader.get_metrics_data().to_json(),  # type: ignore[union-attr]
             "\n".join(r.getMessage() for r in caplog.records),
             llm_governor.export_rate_limit_metrics()]
    for text in texts:
        assert_clean(text, KEY_FRAGMENTS, "telemetry")


# ------------------------------------------------------------------ backend passwords
@pytest.mark.parametrize(("url", "redacted"), [
    ("redis://user:pw1secret@h:6379/0", "redis://user:***@h:6379/0"),
    ("rediss://:pw1secret@h:6380/2", "rediss://:***@h:6380/2"),
    ("redis://pw1secret@h", "redis://***@h"),
    ("redis://user:p%40w1secret@h/0", "redis://user:***@h/0"),
    ("redis://user:pw@1secret@h/0", "redis://user:***@h/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("sqlite:///var/lib/x.db", "sqlite:///var/lib/x.db"),
    ("memory", "memory"),
])
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert "1secret" not in redact_url(url)


def served(gov: Governor | dict[str, Any]) -> str:
    """Every response of a status server over ``gov``, with a token and without one."""
    import http.client

    from llm_governor.exporters.server import StatusServer

    out = []
    with StatusServer(gov, port=0, token=SERVER_TOKEN) as server:
        host, port = server.address
        for path in ("/healthz", "/status", "/metrics", "/alerts", "/nowhere"):
            for headers in ({}, {"Authorization": f"Bearer {SERVER_TOKEN}"},
                            {"Authorization": "Bearer guess"}):
                conn = http.client.HTTPConnection(host, port, timeout=10)
                conn.request("GET", path, headers=headers)
                reply = conn.getresponse()
                out.append(f"{reply.status} {reply.getheaders()!r} {reply.read().decode()}")
                conn.close()
    assert any(line.startswith("200 ") and "llm_governor_" in line for line in out)
    return "\n".join(out)


def redis_url(on_error: str = "local") -> str:
    return f"redis://app:{REDIS_PASSWORD}@127.0.0.1:{closed_port()}/0"


def test_no_redis_password_in_process_output(caplog: pytest.LogCaptureFixture) -> None:
    url = redis_url()
    caplog.set_level(logging.DEBUG)
    previous = set_governor(None)
    outputs: list[str] = []
    try:
        for on_error in ("local", "closed"):
            try:
                gov = Governor(llm_governor.load_config(
                    {"backend": url, "on_backend_error": on_error}))
            except llm_governor.GovernorError as exc:  # no redis extra installed
                outputs.append(f"{exc!s} {exc!r}")
                continue
            set_governor(gov)
            outputs.append(repr(gov.config.redacted_backend()))
            try:
                outputs.append(json.dumps(llm_governor.get_rate_limit_health(), default=str))
                outputs.append(llm_governor.export_rate_limit_metrics())
            except llm_governor.GovernorError as exc:
                outputs.append(f"{exc!s} {exc!r}")
            try:
                llm_governor.rate_limited("svc")(lambda: None)()
            except llm_governor.GovernorError as exc:
                outputs.append(f"{exc!s} {exc!r}")
            outputs.append(served(gov))
            gov.close()
        try:
            llm_governor.load_config({"backend": url.replace("redis", "postgres")})
        except llm_governor.ConfigError as exc:
            outputs.append(str(exc))
    finally:
        set_governor(previous)
    outputs.append("\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records))
    assert len(outputs) >= 4
    for text in outputs:
        assert REDIS_PASSWORD not in text, text
    assert any("***" in text for text in outputs)


def test_no_redis_password_in_cli_output(tmp_path: Path) -> None:
    url = redis_url()
    cfg = tmp_path / "redis.toml"
    cfg.write_text(f'backend = "{url}"\non_backend_error = "closed"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GOVERNOR_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    commands = [["status", "--backend", url], ["status", "--json", "--backend", url],
                ["export", "--backend", url], ["emergency", "--enable", "--backend", url],
                ["monitor", "--iterations", "1", "--backend", url],
                ["-vv", "status", "--config", str(cfg)], ["validate", str(cfg)],
                ["validate", "--backend", url.replace("redis", "mysql")]]
    procs = [subprocess.Popen([sys.executable, "-m", "llm_governor", *c], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for c in commands]
    results: list[dict[str, Any]] = []
    for c, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=60)
        results.append({"args": c, "rc": p.returncode, "out": out, "err": err})
    for r in results:
        assert REDIS_PASSWORD not in r["out"] + r["err"], r
    by_cmd = {" ".join(r["args"][:2]): r for r in results}
    # the steering and reading commands refuse an unreachable backend (exit 3) or,
    # without the redis extra, report the missing dependency (exit 2)
    for key in ("status --backend", "export --backend", "emergency --enable"):
        assert by_cmd[key]["rc"] in (2, 3), by_cmd[key]
        assert "***" in by_cmd[key]["err"], by_cmd[key]
    assert by_cmd[f"validate {cfg}"]["rc"] == 0
    assert "app:***@127.0.0.1" in by_cmd[f"validate {cfg}"]["out"]
    assert by_cmd["validate --backend"]["rc"] == 2


def test_cli_on_a_password_protected_redis(tmp_path: Path) -> None:
    """The CLI reads and steers a real Redis that needs a password, and never shows it."""
    from tests._redis_server import REDIS_SERVER, RedisServer
    from tests.conftest import require

    require(REDIS_SERVER is not None, "redis-server is not installed")
    server = RedisServer(password=REDIS_PASSWORD).start()
    try:
        url = server.url
        gov = Governor(llm_governor.load_config({"backend": url, "namespace": "secrets"}))
        try:
            with llm_governor.job("nightly"):
                gov.call(llm_governor.CallSpec("svc", model="m"), lambda: None)
        finally:
            gov.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GOVERNOR_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        env["XDG_STATE_HOME"] = str(tmp_path / "state")
        base = [sys.executable, "-m", "llm_governor", "--backend", url]
        cfg = tmp_path / "ns.toml"
        cfg.write_text('namespace = "secrets"\n')
        runs = [subprocess.run([*base, "--config", str(cfg), *args], env=env, text=True,
                               capture_output=True, timeout=60)
                for args in (["status", "--json"], ["export"], ["emergency", "--enable"],
                             ["emergency", "--status"], ["status"])]
        for r in runs:
            assert REDIS_PASSWORD not in r.stdout + r.stderr, r
        status = json.loads(runs[0].stdout)
        assert runs[0].returncode == 0, runs[0].stderr
        assert status["backend"] == f"redis://:***@127.0.0.1:{server.port}/0"
        assert status["services"]["svc"]["requests"]["admitted"] == 1
        assert json.loads(runs[1].stdout)["costs"]["by_job"] == {"nightly": "0.01"}
        assert runs[2].returncode == 0 and "ENABLED" in runs[2].stdout
        assert "emergency mode ON" in runs[3].stdout
        assert runs[4].returncode == 1 and "EMERGENCY MODE" in runs[4].stdout
        with server.client() as c:
            assert any("emergency" in k for k in c.keys("*secrets*"))
    finally:
        server.stop()
