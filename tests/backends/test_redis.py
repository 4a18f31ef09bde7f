"""The Redis backend against real ``redis-server`` processes: round trips, key slots,
server time, fork safety, passwords, outages (kill -9, SIGSTOP) and many processes.

The contract suite (test_contract.py) and the differential test cover the
decisions themselves; this file covers what only a real server can show.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import llm_governor
from llm_governor.backends import CallRecord, create_backend
from llm_governor.backends.redis import RedisBackend, from_nanos, to_nanos
from llm_governor.config import RateLimitConfig
from llm_governor.errors import BackendUnavailableError, GovernorError
from llm_governor.governor import CallSpec, Governor, limits_of
from llm_governor.policies import budget
from llm_governor.policies.admission import AdmitRequest, Observation
from llm_governor.policies.scopes import ScopeRequest
from tests._redis_server import REDIS_SERVER, RedisServer
from tests.conftest import require

D = Decimal
LIM = limits_of(RateLimitConfig.model_validate(
    {"max_tokens": 1000, "refill_rate": 1000.0, "min_interval": 0.001,
     "max_cost_per_minute": "1000"}))
CAPACITY, RATE, SLOTS = 5, 20.0, 3
SERVICE: dict[str, Any] = {
    "max_tokens": CAPACITY, "burst_capacity": 0, "refill_rate": RATE, "min_interval": 0.001,
    "max_cost_per_minute": "1000", "max_queue_size": 500, "request_timeout": 10,
    "max_concurrency": SLOTS}


def req(cost: str = "0.01", reserve: bool = True) -> AdmitRequest:
    return AdmitRequest("svc", 0, 0.0, D(cost), LIM, LIM, reserve=reserve)


def rec(cost: str = "0.01") -> CallRecord:
    return CallRecord("svc", "m", None, D(cost), "ok")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A private server this test may kill."""
    require(REDIS_SERVER is not None, "redis-server is not installed")
    srv = RedisServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def backends() -> Iterator[list[RedisBackend]]:
    made: list[RedisBackend] = []
    yield made
    for b in made:
        b.close()


def make(made: list[RedisBackend], url: str, budget: dict[str, Decimal] | None = None,
         **kw: Any) -> RedisBackend:
    kw.setdefault("probe_interval", 0.2)
    b = RedisBackend(url, budget or {}, namespace="t", **kw)
    made.append(b)
    return b


def count_sends(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every command buffer redis-py writes to a socket from now on (one per round trip)."""
    sends: list[Any] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    return sends


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ----------------------------------------------------------------- protocol
def test_money_is_exact_to_nine_places_and_rounds_against_overspending() -> None:
    for text in ("0", "0.01", "123.456789012", "0.000000001", "9000000"):
        assert from_nanos(to_nanos(D(text))) == D(text)
    assert to_nanos(D("0.0000000001")) == 1  # a reservation never holds less than asked
    assert to_nanos(D("0.0000000019"), ROUND_FLOOR) == 1  # a limit never grows


def test_one_round_trip_to_admit_and_one_to_settle(server: RedisServer,
                                                   backends: list[RedisBackend],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    b = make(backends, server.url, {"minute": D("10"), "day": D("100")})
    b.admit(req(), "warm-up", 60)  # connect once
    c = server.client()
    c.ping()
    sends = count_sends(monkeypatch)
    for step in ("admit", "settle", "observe"):
        c.config_resetstat()
        sends.clear()
        for i in range(10):
            if step == "admit":
                assert b.admit(req(), f"l{i}", 60).admitted
            elif step == "settle":
                b.settle(f"l{i}", LIM, Observation("success"), rec())
            else:
                b.observe("svc", LIM, Observation("failure"))
        writes = len(sends)
        stats = c.info("commandstats")
        assert writes == 10, step  # one write (and one reply) per step: one round trip
        assert stats["cmdstat_evalsha"]["calls"] == 10, step  # ...and it is the script


def test_scopes_keep_admission_one_round_trip_in_one_slot_and_expire(
        server: RedisServer, backends: list[RedisBackend],
        monkeypatch: pytest.MonkeyPatch) -> None:
    b = make(backends, server.url, {"day": D("100")})
    scopes = (ScopeRequest("tenant=acme", {"day": D("5"), "month": D("50")}),
              ScopeRequest("user=u-1", requests_per_minute=600.0),
              ScopeRequest("job=j:1/a", {"hour": D("1")}))
    request = AdmitRequest("svc", 0, 0.0, D("0.01"), LIM, LIM, scopes=scopes)
    b.admit(request, "warm-up", 60)
    sends = count_sends(monkeypatch)
    for i in range(10):
        assert b.admit(request, f"l{i}", 60).admitted
        b.settle(f"l{i}", LIM, None, CallRecord(
            "svc", "m", None, D("0.01"), "ok",
            scopes=tuple((sr.key, tuple(sr.budgets)) for sr in scopes if sr.budgets)))
    assert len(sends) == 20  # 3 scopes: still one round trip per admission and settlement
    monkeypatch.undo()
    c = server.client()
    keys = c.keys("{llmg:t}:scope:*")
    assert sorted(keys) == ["{llmg:t}:scope:job=j:1/a", "{llmg:t}:scope:tenant=acme",
                            "{llmg:t}:scope:user=u-1"]
    assert {key_slot(k.encode()) for k in keys} == {key_slot(b"llmg:t")}
    now = b.now()
    ttl = {k.removeprefix("{llmg:t}:scope:").split("=")[0]: c.pttl(k) / 1000 for k in keys}
    month_end = budget.window_end("month", budget.window_start("month", now))
    assert 0 < ttl["user"] <= 121  # rate-only: two idle minutes
    assert abs(ttl["tenant"] - (month_end - now)) < 5  # kept until its month ends
    hour_end = budget.window_end("hour", budget.window_start("hour", now))
    assert abs(ttl["job"] - max(hour_end - now, 120)) < 5
    assert c.get("{llmg:t}:scope:tenant=acme").count(" ") > 3  # spend recorded
    state, held = b.scope_status("tenant")["tenant=acme"]
    assert state.spends["day"].spent == D("0.10") and held == D("0.01")  # the warm-up's


def test_scripts_reload_after_script_flush(server: RedisServer,
                                           backends: list[RedisBackend]) -> None:
    b = make(backends, server.url)
    server.client().script_flush()
    assert b.admit(req(), "a", 60).admitted
    b.settle("a", LIM, None, rec())
    assert not b.degraded


def test_every_key_of_a_namespace_lives_in_one_cluster_slot(server: RedisServer,
                                                            backends: list[RedisBackend]) -> None:
    b = make(backends, server.url, {"day": D("1")})
    assert b.admit(req(), "a", 60).admitted
    b.settle("a", LIM, Observation("success"), CallRecord("svc", "m", "job", D("0.01"), "ok"))
    assert b.admit(req(), "b", 60).admitted  # a live lease
    b.set_emergency(False)
    b.publish_process("p", {"pid": 1}, 10)
    keys = server.client().keys("*")
    assert len(keys) == 6 and all(k.startswith("{llmg:t}:") for k in keys)
    assert {key_slot(k.encode()) for k in keys} == {key_slot(b"llmg:t")}


def test_time_comes_from_the_server_not_the_client(server: RedisServer,
                                                   backends: list[RedisBackend],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    b = make(backends, server.url, {"minute": D("1")})
    sec, usec = server.client().time()
    monkeypatch.setattr(time, "time", lambda: 86400.0 * 365)  # a client clock years off
    assert abs(b.now() - (sec + usec / 1e6)) < 2.0
    assert b.admit(req(), "a", 60).admitted
    b.settle("a", LIM, None, rec())
    spends, _, _ = b.budget_status()
    assert abs(spends["minute"].start - sec) <= 61
    assert b.in_flight("svc") == 0


def test_connections_are_not_shared_across_fork(server: RedisServer,
                                                backends: list[RedisBackend]) -> None:
    b = make(backends, server.url)
    assert b.admit(req("0"), None, 60).admitted  # the parent holds a pooled connection
    pid = os.fork()
    if pid == 0:  # child: hammer through the inherited backend, report by exit code
        try:
            ok = all(b.admit(req("0"), None, 60).admitted for _ in range(300))
            os._exit(0 if ok and not b.degraded else 1)
        except BaseException:
            os._exit(2)
    parent_ok = all(b.admit(req("0"), None, 60).admitted for _ in range(300))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent_ok and not b.degraded
    assert b.counters()["requests"]["svc"]["admitted"] == 601


def test_shared_control_is_seen_by_every_instance(server: RedisServer,
                                                  backends: list[RedisBackend]) -> None:
    one, two = make(backends, server.url), make(backends, server.url)
    one.set_emergency(True)
    assert two.emergency()
    one.set_emergency(False)
    lim = limits_of(RateLimitConfig.model_validate({"failure_threshold": 2}))
    for _ in range(2):
        one.observe("svc", lim, Observation("failure"))
    d = two.admit(AdmitRequest("svc", 0, 0.0, D(0), lim, lim), None, 60)
    assert d.outcome == "circuit_open" and d.retry_after > 0
    one.publish_process("host:1", {"in_flight": {"svc": 2}}, 10)
    assert two.processes() == {"host:1": {"in_flight": {"svc": 2}}}


# ---------------------------------------------------------------- passwords
def test_password_urls_work_and_the_password_never_shows(
    backends: list[RedisBackend], caplog: pytest.LogCaptureFixture,
) -> None:
    require(REDIS_SERVER is not None, "redis-server is not installed")
    secret = "s3cr3t-Pa55"
    srv = RedisServer(password=secret).start()
    caplog.set_level(logging.DEBUG)
    try:
        good = make(backends, srv.url)
        assert good.admit(req(), "a", 60).admitted and not good.degraded
        assert secret not in good.url and secret not in repr(good.store._client)
        wrong = srv.url.replace(secret, "not-" + secret)
        local = make(backends, wrong)
        assert local.degraded and local.admit(req(), "b", 60).admitted
        with pytest.raises(BackendUnavailableError) as auth_exc:
            make(backends, wrong, on_error="closed").admit(req(), "c", 60)
        srv.kill()
        assert good.admit(req(), "d", 60).admitted and good.degraded
        with pytest.raises(BackendUnavailableError) as down_exc:
            make(backends, srv.url, on_error="closed").admit(req(), "e", 60)
    finally:
        srv.stop()
    auth_text = "".join(traceback.format_exception(auth_exc.value))
    down_text = "".join(traceback.format_exception(down_exc.value))
    assert "AuthenticationError" in auth_text and "redis://:***@127.0.0.1" in auth_text
    assert "ConnectionError" in down_text
    for text in (caplog.text, auth_text, down_text):
        assert secret not in text


# ------------------------------------------------------------------ outages
def test_closed_refuses_with_a_governor_error_and_recovers(server: RedisServer,
                                                          backends: list[RedisBackend]) -> None:
    b = make(backends, server.url, on_error="closed")
    assert b.admit(req(), "a", 60).admitted
    server.kill()
    started = time.monotonic()
    for _ in range(5):
        with pytest.raises(BackendUnavailableError) as exc:
            b.admit(req(), "b", 60)
        assert isinstance(exc.value, GovernorError)
    assert time.monotonic() - started < 1.0 and b.degraded
    b.settle("a", LIM, None, rec())  # the call was made: recorded locally, not refused
    with pytest.raises(BackendUnavailableError):
        b.set_emergency(True)
    server.start()
    wait_for(lambda: not b.degraded)
    assert b.admit(req(), "c", 60).admitted
    assert b.counters()["calls"]["svc"]["m"]["ok"] == 1  # handed to the restarted server


def test_open_admits_everything_while_redis_is_away(server: RedisServer,
                                                   backends: list[RedisBackend],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    b = make(backends, server.url, {"day": D("0.01")}, on_error="open")
    assert b.admit(req("0.01"), "a", 60).admitted
    server.kill()
    for i in range(3):
        assert b.admit(req("0.01"), f"x{i}", 60).admitted
        b.settle(f"x{i}", LIM, None, rec("0.01"))
    warnings = [r for r in caplog.records if "RATE_LIMIT" in r.getMessage()]
    assert len(warnings) == 1 and "without limits" in warnings[0].getMessage()
    server.start()  # empty: what was spent meanwhile is handed to it
    wait_for(lambda: not b.degraded)
    assert b.budget_status()[0]["day"].spent == D("0.03")
    assert b.admit(req("0.01"), "y", 60).outcome == "budget_exceeded"


def test_local_keeps_a_share_of_the_budget_and_hands_it_back(
    server: RedisServer, backends: list[RedisBackend], caplog: pytest.LogCaptureFixture,
) -> None:
    b = make(backends, server.url, {"day": D("1.00")}, degraded_budget_share=0.25)
    assert b.admit(req("0.10"), "before", 60).admitted
    server.kill()
    # the lease taken in Redis is settled locally: nothing to release, the cost is charged
    b.settle("before", LIM, Observation("success"), rec("0.10"))
    assert b.degraded
    got = [b.admit(req("0.10"), f"l{i}", 60) for i in range(2)]
    assert [d.admitted for d in got] == [True, False]  # 0.25 share: 0.10 spent, 0.10 + 0.10 > 0.25
    assert got[1].outcome == "budget_exceeded"
    server.start()
    wait_for(lambda: not b.degraded)
    b.settle("l0", LIM, None, rec("0.10"))  # a local lease settled in Redis: no crash
    spends, reserved, live = b.budget_status()
    assert spends["day"].spent == D("0.20") and reserved == 0 and live == 0
    counts = b.counters()
    assert counts["requests"]["svc"] == {"admitted": 1, "budget_exceeded": 1}
    assert counts["calls"]["svc"]["m"]["ok"] == 2
    messages = [r.getMessage() for r in caplog.records if "RATE_LIMIT" in r.getMessage()]
    assert len(messages) == 2 and "cannot use" in messages[0] and "back" in messages[1]


def test_a_frozen_server_costs_at_most_the_socket_timeout(server: RedisServer,
                                                          backends: list[RedisBackend]) -> None:
    b = make(backends, server.url, on_error="closed", socket_timeout=0.5)
    assert b.admit(req(), "a", 60).admitted
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="Timeout"):
            b.admit(req(), "b", 60)
        assert time.monotonic() - started < 1.5
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            b.admit(req(), "c", 60)
        assert time.monotonic() - started < 0.1  # degraded: no waiting on a dead server
    finally:
        server.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: not b.degraded)


# ------------------------------------------------------- through the governor
async def test_governor_uses_redis_from_its_config(server: RedisServer) -> None:
    gov = Governor(llm_governor.load_config({
        "backend": server.url, "namespace": "gov", "budget": {"per_day": "0.05"},
        "services": {"svc": SERVICE}}))
    try:
        assert isinstance(gov.backend, RedisBackend) and gov.backend.blocking
        spec = CallSpec("svc", cost=D("0.02"))
        assert gov.call(spec, lambda: 1) == 1
        assert await gov.acall(spec, _async_one) == 1
        with pytest.raises(llm_governor.BudgetExceededError):
            gov.call(spec, lambda: 1)
        assert gov.budget_report()["day"]["spent"] == D("0.04")
    finally:
        gov.close()


async def _async_one() -> int:
    return 1


def test_create_backend_keeps_passwords_out_of_config_errors() -> None:
    with pytest.raises(llm_governor.ConfigError) as exc:
        create_backend("redis://:hunter2@127.0.0.1:notaport/0", {})
    assert "hunter2" not in str(exc.value)


# --------------------------------------------------------- many processes
def _governed_threads(config: dict[str, Any], cost: str, seconds: float,
                      watch_url: str | None, go: Any, results: Any) -> None:
    """Four threads calling one governed function for ``seconds`` after ``go``.

    Reports admissions, errors and what the backend went through. With
    ``watch_url``, each call counts itself in that Redis to measure the
    largest number in flight at once, across processes.
    """
    gov = Governor(llm_governor.load_config(config))
    watch = redis.Redis.from_url(watch_url, decode_responses=True) if watch_url else None
    spec = CallSpec("svc", cost=Decimal(cost) if cost else None)
    out: dict[str, Any] = {"ok": [], "errors": {}, "other": [], "max_in_flight": 0,
                           "degraded_seen": False, "recovered_at": None}
    lock = threading.Lock()

    def body() -> None:
        if watch is None:
            return
        now = int(watch.incr("in-flight"))
        with lock:
            out["max_in_flight"] = max(out["max_in_flight"], now)
        time.sleep(0.1)
        watch.decr("in-flight")

    def worker(stop: float) -> None:
        while time.time() < stop:
            try:
                gov.call(spec, body)
                with lock:
                    out["ok"].append(time.time())
            except GovernorError as exc:
                with lock:
                    name = type(exc).__name__
                    out["errors"][name] = out["errors"].get(name, 0) + 1
                if cost and isinstance(exc, llm_governor.BudgetExceededError):
                    return
                time.sleep(0.01)
            except Exception as exc:  # must never happen
                with lock:
                    out["other"].append(repr(exc))
                time.sleep(0.01)
            with lock:
                if getattr(gov.backend, "degraded", False):
                    out["degraded_seen"] = True
                elif out["degraded_seen"] and out["recovered_at"] is None:
                    out["recovered_at"] = time.time()

    results.put("ready")
    go.wait(120)
    out["start"] = time.time()
    threads = [threading.Thread(target=worker, args=(out["start"] + seconds,))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out["degraded_end"] = bool(getattr(gov.backend, "degraded", False))
    gov.close()
    results.put(out)


def _run_processes(n: int, args: tuple[Any, ...], meanwhile: Any = None) -> list[dict[str, Any]]:
    """``n`` spawned processes run ``_governed_threads``, started together once all are ready."""
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_governed_threads, args=(*args, go, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    try:
        ready = 0
        deadline = time.monotonic() + 60
        while ready < n:
            try:
                ready += results.get(timeout=0.2) == "ready"
            except queue.Empty:
                assert all(p.is_alive() for p in procs), "a worker died while starting"
                assert time.monotonic() < deadline, "workers did not start"
        go.set()
        if meanwhile is not None:
            meanwhile()
        out = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * n, "every process finished cleanly"
    return out


def _config(url: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return {"backend": url, "namespace": namespace, "services": {"svc": SERVICE}, **extra}


@pytest.mark.slow
def test_four_processes_of_four_threads_share_one_limit_and_budget(server: RedisServer) -> None:
    seconds = 1.5
    results = _run_processes(4, (_config(server.url, "rate"), "", seconds, server.url))
    start = min(r["start"] for r in results)
    stamps = [t for r in results for t in r["ok"]]
    # every admission happened in [start, last stamp] by this host's clock, which is the
    # server's: the GCRA guarantee is capacity + rate·d, whatever the interleaving
    span = max(stamps) - start
    seen = (len(stamps), span, [r["max_in_flight"] for r in results])
    assert len(stamps) <= CAPACITY + RATE * span, seen
    # and the limit is used, not merely respected (a generous floor for a loaded machine)
    assert sum(t < start + seconds for t in stamps) >= 0.4 * RATE * seconds, seen
    assert all(r["ok"] for r in results), "every process got a share"
    assert max(r["max_in_flight"] for r in results) == SLOTS, seen

    budget = _config(server.url, "budget", budget={"per_day": "0.10"})
    results = _run_processes(4, (budget, "0.01", 10.0, server.url))
    assert sum(len(r["ok"]) for r in results) == 10
    assert all(not r["other"] and set(r["errors"]) == {"BudgetExceededError"} for r in results)
    gov = Governor(llm_governor.load_config(budget))
    try:
        assert gov.budget_report()["day"]["spent"] == D("0.10")
        assert gov.backend.counters()["requests"]["svc"]["admitted"] == 10
    finally:
        gov.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["local", "closed"])
def test_redis_killed_mid_run_and_restarted(server: RedisServer, mode: str) -> None:
    times: dict[str, float] = {}

    def outage() -> None:
        time.sleep(1.0)
        times["killed"] = time.time()
        server.kill()
        time.sleep(1.0)
        times["restarted"] = time.time()
        server.start()

    config = _config(server.url, "kill", on_backend_error=mode)
    results = _run_processes(2, (config, "", 6.0, None), outage)
    for r in results:
        assert not r["other"], r["other"]
        assert r["degraded_seen"] and not r["degraded_end"], r
        assert r["recovered_at"] >= times["restarted"]
        assert any(t > r["recovered_at"] for t in r["ok"]), "calls went on through Redis"
        during = [t for t in r["ok"] if times["killed"] + 0.1 < t < times["restarted"]]
        if mode == "local":
            assert during, "calls continued on local limits"
            assert set(r["errors"]) <= {"RateLimitExceededError"}
        else:
            assert not during and r["errors"].get("BackendUnavailableError", 0) > 0
    # the shared limits resumed on the new (empty) server
    assert server.client().hget("{llmg:kill}:ctr", "requests|svc|admitted")


def test_a_monitor_frame_is_one_round_trip(server: RedisServer, backends: list[RedisBackend],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Each `llm-governor monitor` frame reads the whole picture in one script call
    (services, leases, budgets, counters, processes, scopes), however many services."""
    from llm_governor.cli import main

    url = server.url
    config = llm_governor.load_config({
        "backend": url, "budget": {"per_day": "5"},
        "scopes": {"tenant": {"per_day": "1"}},
        "services": {f"svc{i}": {"max_tokens": 50, "refill_rate": 50.0} for i in range(6)}})
    gov = Governor(config)
    try:
        for i in range(6):
            with llm_governor.scope(tenant=f"t{i}"):
                gov.call(CallSpec(f"svc{i}", cost=D("0.01")), lambda: None)
        gov.announce()
        sends = count_sends(monkeypatch)
        env = {"LLM_GOVERNOR_BACKEND": url}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        counts = []
        for frames in (1, 4):
            sends.clear()
            assert main(["monitor", "--plain", "--iterations", str(frames),
                         "--interval", "0.01"]) in (0, 1)
            counts.append(len(sends))
        out = capsys.readouterr().out
        assert out.count("=== llm-governor monitor") == 5
        assert "svc5" in out
        assert counts[1] - counts[0] == 3  # three more frames, three more round trips
    finally:
        gov.close()
