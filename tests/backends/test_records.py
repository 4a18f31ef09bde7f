"""The service-state record has one layout (``backends/records.py``): every dataclass
field has exactly one place in it, and the SQLite JSON codec, the Redis text decoder
and the Lua ``load_state`` / ``dump_state`` generated from it agree with each other
and with the records older versions wrote."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import typing
from collections.abc import Iterator
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_governor.backends import records
from llm_governor.backends._codec import dump_service, load_service
from llm_governor.backends.redis import RedisBackend, _load_state, _prelude
from llm_governor.backends.sqlite import SQLiteBackend
from llm_governor.config import RateLimitConfig
from llm_governor.governor import limits_of
from llm_governor.policies import share
from llm_governor.policies.adaptive import AdaptiveState, ProviderLimits
from llm_governor.policies.admission import AdmitRequest, Observation, ServiceState
from llm_governor.policies.breaker import BreakerState
from tests.conftest import FakeClock

D = Decimal
NOW = 1_800_000_000.0
LAYOUT = records.SERVICE_STATE
# A state with a different value in every field, times around NOW (so the policies use them).
STATE = ServiceState(
    NOW + 0.5, NOW + 1.25, NOW + 0.1, BreakerState("half_open", 2, 1, NOW - 40.0, 1, NOW - 3.0),
    AdaptiveState(2.5, 3, 4.0, 500.0, NOW + 20.0, NOW + 0.25, 60.0, 30000.0, NOW + 100.0,
                  NOW - 5.0, NOW - 6.0, NOW + 0.75, 12.5, 1.5),
    NOW - 30.0, 7, 2, 11, 3, 41, "1799999999.5:39;1800000000.25:41")
# A 29-field record (before the provider's window) reads as STATE without it.
STATE_29 = dataclasses.replace(STATE, adaptive=dataclasses.replace(STATE.adaptive, window=0.0))
# A 27-field record (before the send history and others' calls) reads as STATE_29 without them.
STATE_27 = dataclasses.replace(STATE_29, sends=share.EMPTY, adaptive=dataclasses.replace(
    STATE_29.adaptive, others=0.0))
# A 25-field record (before cold starts and sent counts) reads as STATE_27 without them.
STATE_25 = dataclasses.replace(STATE_27, sent=0, adaptive=dataclasses.replace(
    STATE_27.adaptive, cold_until=0.0))
# STATE_25 as SQLite stores it (written by the hand-written codec this layout replaced).
JSON_25 = ('[1800000000.5, 1800000001.25, 1800000000.1, "half_open", 2, 1, 1799999960.0, 2.5, '
           '3, 4.0, 500.0, 1800000020.0, 1800000000.25, 1799999970.0, 7, 2, 11, 3, 1, '
           '1799999997.0, 60.0, 30000.0, 1800000100.0, 1799999995.0, 1799999994.0]')
# The same as the Lua scripts store it ('%.17g').
TEXT_25 = ("1800000000.5 1800000001.25 1800000000.0999999 half_open 2 1 1799999960 2.5 3 4 500 "
           "1800000020 1800000000.25 1799999970 7 2 11 3 1 1799999997 60 30000 1800000100 "
           "1799999995 1799999994")
JSON_27 = JSON_25[:-1] + ", 1800000000.75, 41]"
TEXT_27 = TEXT_25 + " 1800000000.75 41"
# STATE, whole, in both formats.
JSON_29 = JSON_27[:-1] + ', "1799999999.5:39;1800000000.25:41", 12.5]'
TEXT_29 = TEXT_27 + " 1799999999.5:39;1800000000.25:41 12.5"
JSON_30 = JSON_29[:-1] + ", 1.5]"
TEXT_30 = TEXT_29 + " 1.5"
# The first release's record: no probes, no learned limits, no AIMD instants.
OLD = dataclasses.replace(STATE_25, breaker=dataclasses.replace(STATE.breaker, probes=0,
                                                                probe_at=0.0),
                          adaptive=dataclasses.replace(STATE_25.adaptive, request_limit=0.0,
                                                       token_limit=0.0, learned_until=0.0,
                                                       slowed_at=0.0, throttled_at=0.0))


def leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(path, annotation, default)`` of every stored value of ``cls``, nested ones too."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from leaves(hint, prefix + f.name + ".")
        else:
            yield prefix + f.name, hint, f.default


def build(values: dict[str, Any], cls: type = ServiceState, prefix: str = "") -> Any:
    """A ``cls`` from ``{path: value}``."""
    hints = typing.get_type_hints(cls)
    args = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            args[f.name] = build(values, hint, prefix + f.name + ".")
        else:
            args[f.name] = values[prefix + f.name]
    return cls(**args)


def lua_text(s: ServiceState) -> str:
    """``s`` as the scripts' ``dump_state`` writes it (C's '%.17g', like Lua's)."""
    return " ".join(v if f.kind is str else f"{v:.17g}"
                    for f, v in zip(LAYOUT, attrgetter(*(f.path for f in LAYOUT))(s),
                                    strict=True))


def _value(hint: Any) -> st.SearchStrategy[Any]:
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if hint is int:
        return st.integers(0, 2**53)  # exact in a Lua double, and written without an exponent
    if hint is str:  # the send history (policies/share.py)
        return st.lists(st.tuples(st.floats(0, 4e9), st.integers(0, 2**53)), max_size=4).map(
            lambda points: share.dump(tuple(points)))
    return st.sampled_from(typing.get_args(hint))  # a Literal (the breaker's state)


states = st.fixed_dictionaries({path: _value(hint) for path, hint, _ in leaves(ServiceState)}
                               ).map(build)


# -- the layout ---------------------------------------------------------------------

def test_every_dataclass_field_has_exactly_one_place() -> None:
    paths = [f.path for f in LAYOUT]
    assert sorted(paths) == sorted(path for path, _, _ in leaves(ServiceState))
    assert len(set(paths)) == len(paths)
    assert [f.position for f in LAYOUT] == list(range(len(LAYOUT)))
    assert len({f.lua for f in LAYOUT}) == len(LAYOUT)


def test_kinds_and_defaults_match_the_dataclasses() -> None:
    """A record lacking a field reads as a fresh state would; Literals are text."""
    fields = {path: (hint, default) for path, hint, default in leaves(ServiceState)}
    for f in LAYOUT:
        hint, default = fields[f.path]
        assert f.kind is (str if typing.get_origin(hint) is typing.Literal else hint), f.path
        assert f.default == default and type(f.default) is type(default), f.path


def test_a_field_without_a_place_fails_the_generation() -> None:
    @dataclasses.dataclass
    class Grown:
        req_tat: float = 0.0
        surprise: int = 0

    with pytest.raises(TypeError, match="surprise has no place"):
        records._construct(Grown, "", lambda f: "v", {}, set())


# -- the JSON codec (SQLite) -------------------------------------------------------

def test_json_format_is_unchanged() -> None:
    assert dump_service(STATE) == JSON_30
    assert load_service(JSON_30) == STATE
    assert load_service(JSON_29) == STATE_29
    assert load_service(JSON_27) == STATE_27
    assert load_service(JSON_25) == STATE_25
    assert dump_service(STATE_25) == JSON_25[:-1] + ', 0.0, 0, "none", 0.0, 0.0]'


def test_old_18_field_json_reads_with_defaults() -> None:
    old = json.dumps(json.loads(JSON_25)[:18])
    got = load_service(old)
    assert got == OLD
    assert type(got.breaker.probes) is int and type(got.adaptive.slowed_at) is float
    assert load_service(None) == load_service("") == ServiceState()


@given(states)
def test_json_round_trip(s: ServiceState) -> None:
    assert load_service(dump_service(s)) == s


# -- the Redis text decoder -------------------------------------------------------

def test_text_decodes_like_the_layout() -> None:
    assert _load_state(TEXT_30) == STATE
    assert lua_text(STATE) == TEXT_30
    assert _load_state(TEXT_29) == STATE_29
    assert _load_state(TEXT_27) == STATE_27
    assert _load_state(TEXT_25) == STATE_25
    assert _load_state(None) == _load_state("") == ServiceState()


def test_short_text_records_are_padded() -> None:
    assert _load_state(" ".join(TEXT_25.split(" ")[:18])) == OLD
    assert _load_state("1.5 2 3") == ServiceState(1.5, 2.0, 3.0)


@given(states)
def test_text_round_trip(s: ServiceState) -> None:
    assert _load_state(lua_text(s)) == s


# -- the generated Lua ---------------------------------------------------------------

@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis[str]]:
    from tests._redis_server import shared_server  # skips (fails in CI) without redis-server

    c = shared_server().client()
    yield c
    c.close()


def lua_fields(client: redis.Redis[str], raw: str | None) -> list[str]:
    """Every field of ``load_state(raw)`` by its Lua name, in layout order, as text."""
    names = ", ".join(f"'{f.lua}'" for f in LAYOUT)
    script = _prelude() + f"""
local s = load_state(ARGV[1] ~= '' and ARGV[1] or false)
local out = {{}}
for i, name in ipairs({{{names}}}) do
  local v = s[name]
  if type(v) == 'number' then v = string.format('%.17g', v) end
  out[i] = v
end
return out
"""
    result: list[str] = client.eval(script, 0, raw or "")
    return result


def lua_round_trip(client: redis.Redis[str], raw: str) -> str:
    result: str = client.eval(_prelude() + "\nreturn dump_state(load_state(ARGV[1]))", 0, raw)
    return result


def test_lua_table_has_each_field_under_its_name(client: redis.Redis[str]) -> None:
    assert lua_fields(client, TEXT_30) == TEXT_30.split(" ")
    defaults = [str(f.default) if f.kind is str else f"{f.default:.17g}" for f in LAYOUT]
    assert lua_fields(client, None) == defaults
    assert lua_fields(client, " ".join(TEXT_25.split(" ")[:18])) == \
        TEXT_25.split(" ")[:18] + defaults[18:]


def test_lua_round_trip_and_short_records(client: redis.Redis[str]) -> None:
    assert lua_round_trip(client, TEXT_30) == TEXT_30
    assert lua_round_trip(client, TEXT_29) == lua_text(STATE_29)
    assert lua_round_trip(client, TEXT_27) == lua_text(STATE_27)
    assert lua_round_trip(client, TEXT_25) == lua_text(STATE_25)
    assert lua_round_trip(client, " ".join(TEXT_25.split(" ")[:18])) == lua_text(OLD)


@settings(max_examples=50, deadline=None)
@given(states)
def test_lua_round_trip_of_any_state(client: redis.Redis[str], s: ServiceState) -> None:
    dumped = lua_round_trip(client, lua_text(s))
    assert dumped == lua_text(s)
    assert _load_state(dumped) == s


# -- through the real scripts: SQLite (Python policies) and Redis (Lua) agree -------

LIM = limits_of(RateLimitConfig.model_validate(
    {"max_tokens": 10, "refill_rate": 5.0, "min_interval": 0.01, "max_cost_per_minute": "10",
     "failure_threshold": 2, "success_threshold": 3}))
STEPS: list[Any] = [
    Observation("success", ProviderLimits(60, 40, 12.0, 30000, 20000, 6.0)),
    AdmitRequest("svc", 0, 100.0, D("0.01"), LIM, LIM),
    Observation("throttled", ProviderLimits(60, 0, 3.0, retry_after=2.0), age=0.25),
    Observation("failure"),
    AdmitRequest("svc", 0, 100.0, D("0.01"), LIM, LIM),
    Observation("success"),
]


@pytest.mark.parametrize(("stored_json", "stored_text", "expected"),
                         [(JSON_30, TEXT_30, STATE), (JSON_29, TEXT_29, STATE_29),
                          (JSON_27, TEXT_27, STATE_27),
                          (JSON_25, TEXT_25, STATE_25),
                          (json.dumps(json.loads(JSON_25)[:18]),
                           " ".join(TEXT_25.split(" ")[:18]), OLD)],
                         ids=["30 fields", "29 fields", "27 fields", "25 fields",
                              "18 fields"])
def test_stored_records_run_the_same_through_sqlite_and_the_lua_scripts(
        tmp_path: Path, stored_json: str, stored_text: str, expected: ServiceState) -> None:
    from tests._redis_server import shared_server

    clock = FakeClock(NOW)
    path = tmp_path / "governor.db"
    lite = SQLiteBackend(path, {}, clock)
    lite.count("warmup")  # creates the tables
    lite.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO services VALUES (?, ?)", ("default|svc", stored_json))
    conn.close()
    server = shared_server()
    red = RedisBackend(server.url, {}, namespace=f"records-{tmp_path.name}", clock=clock)
    writer = server.client()
    lite = SQLiteBackend(path, {}, clock)
    try:
        writer.hset(f"{{llmg:records-{tmp_path.name}}}:svc", "svc", stored_text)
        assert lite.service_state("svc") == red.service_state("svc") == expected
        for i, step in enumerate(STEPS):
            clock.advance(0.5)
            if isinstance(step, AdmitRequest):
                assert lite.admit(step, None, 60) == red.admit(step, None, 60), f"step {i}"
            else:
                lite.observe("svc", LIM, step)
                red.observe("svc", LIM, step)
            assert lite.service_state("svc") == red.service_state("svc"), f"step {i}"
        assert len(writer.hget(f"{{llmg:records-{tmp_path.name}}}:svc", "svc").split()) \
            == len(LAYOUT)
    finally:
        red.reset()
        red.close()
        lite.close()
        writer.close()
