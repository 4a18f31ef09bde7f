"""Counter keys have one definition (``backends/schema.py``): names with ``|`` or ``%``
count as one service, model or job on every backend, and the Lua scripts escape
exactly as Python does."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

import llm_governor
from llm_governor.backends import CallRecord, schema
from llm_governor.backends.redis import _prelude
from llm_governor.backends.sqlite import SQLiteBackend
from llm_governor.config import RateLimitConfig
from llm_governor.governor import Governor, limits_of
from llm_governor.policies.admission import AdmitRequest, Observation
from tests.conftest import BackendFactory, FakeClock

D = Decimal
ODD = ["plain", "a|b", "100%", "%7C", "|", "%", "a%|b|%25", "", "ünï|cödé"]


def test_escape_is_a_no_op_without_bar_or_percent() -> None:
    assert schema.key("requests", "openai", "admitted") == "requests|openai|admitted"
    assert schema.escape("gpt-4o/mini (x)=y") == "gpt-4o/mini (x)=y"


@pytest.mark.parametrize("part", ODD)
def test_split_inverts_key(part: str) -> None:
    k = schema.key("cost", part, part)
    assert k.count("|") == 2
    assert schema.split(k) == ["cost", part, part]


def test_a_service_with_a_bar_is_one_service(make_backend: BackendFactory,
                                             clock: FakeClock) -> None:
    b = make_backend(clock=clock)
    lim = limits_of(RateLimitConfig.model_validate({"max_tokens": 100, "refill_rate": 100.0}))
    for service in ("a|b", "50%|off"):
        assert b.admit(AdmitRequest(service, 2, 0.0, D("0.01"), lim, lim), "l-" + service,
                       60).admitted
        b.settle("l-" + service, lim, Observation("success"),
                 CallRecord(service, "m|1", "job|%", D("0.25"), "ok"))
    counters = b.counters()
    assert counters["requests"]["a|b"] == {"admitted": 1}
    assert counters["requests"]["50%|off"] == {"admitted": 1}
    assert counters["calls"]["a|b"] == {"m|1": {"ok": 1}}
    assert counters["cost"]["a|b"] == {"m|1": D("0.25")}
    assert counters["job"] == {"job|%": D("0.50")}
    assert "a" not in counters["requests"] and "50%" not in counters["requests"]
    assert {"a|b", "50%|off"} <= set(b.services())
    assert "a" not in b.services()


def test_counters_written_before_escaping_still_read(tmp_path: Path) -> None:
    path = tmp_path / "state" / "governor.db"
    b = SQLiteBackend(path, {})
    b.count(schema.key("requests", "warmup", "admitted"))  # creates the tables
    b.close()
    with sqlite3.connect(path) as conn:  # rows as an older version wrote them
        conn.executemany("INSERT INTO counters VALUES (?, ?)",
                         [("default|requests|openai|admitted", "3"),
                          ("default|cost|openai|gpt-4o", "1.5")])
    b = SQLiteBackend(path, {})
    try:
        b.count(schema.key("requests", "openai", "admitted"))
        counters = b.counters()
        assert counters["requests"]["openai"] == {"admitted": 4}
        assert counters["cost"]["openai"] == {"gpt-4o": D("1.5")}
    finally:
        b.close()


@pytest.mark.parametrize("parts", [["cost", *ODD], ["requests", "a|b", "admitted"], ["job", ""]])
def test_lua_builds_the_same_keys_as_python(parts: list[str], tmp_path: Path) -> None:
    from tests._redis_server import shared_server  # skips (fails in CI) without redis-server

    client = shared_server().client()
    try:
        lua = client.eval(_prelude() + "\nreturn ctr_key(unpack(ARGV))", 0, *parts)
    finally:
        client.close()
    assert lua == schema.key(*parts)


def test_the_governor_reports_a_bar_service_as_one(
        governor_factory: Callable[..., Governor]) -> None:
    """Through the whole pipeline: the settlement no longer rewrites ``|`` to ``/``
    (which read as a provider account) and the export shows one service."""
    governor_factory({"backend": "memory"})

    @llm_governor.rate_limited("team|search", cost=D("0.01"))
    def call() -> int:
        return 1

    with llm_governor.job("nightly%7Cbatch"):  # scope values forbid "|"; this must not decode
        assert call() == 1
    doc = json.loads(llm_governor.export_rate_limit_metrics())
    assert doc["services"]["team|search"]["calls"]
    assert "team" not in doc["services"] and "team/search" not in doc["services"]
    assert set(doc["costs"]["by_job"]) == {"nightly%7Cbatch"}


def test_redis_counters_written_before_escaping_still_read(tmp_path: Path) -> None:
    from llm_governor.backends.redis import RedisBackend
    from tests._redis_server import shared_server  # skips (fails in CI) without redis-server

    server = shared_server()
    namespace = f"legacy-{tmp_path.name}"
    b = RedisBackend(server.url, {}, namespace=namespace)
    client = server.client()
    try:
        ctr = f"{{llmg:{namespace}}}:ctr"
        client.hincrby(ctr, "requests|openai|admitted", 3)  # as an older version wrote it
        client.hincrby(ctr, "cost|openai|gpt-4o", 1_500_000_000)
        b.count(schema.key("requests", "openai", "admitted"))
        counters = b.counters()
        assert counters["requests"]["openai"] == {"admitted": 4}
        assert counters["cost"]["openai"] == {"gpt-4o": D("1.5")}
    finally:
        client.close()
        b.close()
