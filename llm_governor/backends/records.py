"""The service-state record: the one definition of how it is laid out.

A :class:`~llm_governor.policies.admission.ServiceState` (with its nested
``BreakerState`` and ``AdaptiveState``) is stored flat, one value per position:
a JSON array in SQLite, space-separated text in Redis (written by the Lua
scripts). :data:`SERVICE_STATE` is that layout, and every reader and writer of
the record is generated from it: the JSON codec (``_codec.dump_service`` and
``load_service``), the Redis text decoder (``redis._load_state``) and the Lua
``load_state`` / ``dump_state`` that ``redis._prelude`` puts into every script
(in place of ``$STATE_CODEC`` in ``redis_scripts/common.lua``).

Positions are forever: a new field is appended, with the default that records
written before it existed read as; none is moved or removed. A record shorter
than the layout (older SQLite files have 18 fields) is padded with the missing
fields' defaults; values beyond the layout (a newer version's) are ignored.
Every field of the three dataclasses needs an entry: without one this module
refuses to import, naming the field (``tests/backends/test_records.py`` checks
the layout against the dataclasses too).

A sibling of ``schema.py`` rather than part of it: that module changes when
counter keys are named differently, this one when a policy record gains a field.

The codecs are compiled from generated source once, at import: they run on
every SQLite admission and every Redis status read, and a generic loop over the
layout (``attrgetter``/``itemgetter``, a list of converters) measured 10-36 %
slower than the hand-written functions they replace; the generated ones are
those same functions. ``PYTHON_SOURCE`` and :func:`lua_source` show the code.
"""

from __future__ import annotations

import dataclasses
import json
import linecache
import re
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ..policies.admission import ServiceState

__all__ = ["SERVICE_STATE", "Field", "dump_json", "load_json", "load_text", "lua_source"]


@dataclass(frozen=True, slots=True)
class Field:
    """One value of the record."""

    position: int  # its index in the record (0-based; the Lua table's is one more)
    path: str  # where it lives in ServiceState: "req_tat", "breaker.probes"
    kind: type[float | int | str]  # how the Redis text is parsed (JSON keeps its own types)
    default: float | int | str  # what a record written before the field existed reads as
    lua: str  # its name in the Lua scripts' flat state table (s.b_probes)


SERVICE_STATE: tuple[Field, ...] = (
    Field(0, "req_tat", float, 0.0, "req_tat"),
    Field(1, "tok_tat", float, 0.0, "tok_tat"),
    Field(2, "cost_tat", float, 0.0, "cost_tat"),
    Field(3, "breaker.state", str, "closed", "b_state"),
    Field(4, "breaker.failures", int, 0, "b_fail"),
    Field(5, "breaker.successes", int, 0, "b_succ"),
    Field(6, "breaker.opened_at", float, 0.0, "opened_at"),
    Field(7, "adaptive.rate", float, 0.0, "a_rate"),
    Field(8, "adaptive.successes", int, 0, "a_succ"),
    Field(9, "adaptive.request_cap", float, 0.0, "req_cap"),
    Field(10, "adaptive.token_cap", float, 0.0, "tok_cap"),
    Field(11, "adaptive.cap_until", float, 0.0, "cap_until"),
    Field(12, "adaptive.blocked_until", float, 0.0, "blocked_until"),
    Field(13, "minute", float, 0.0, "minute"),
    Field(14, "ok", int, 0, "ok"),
    Field(15, "failed", int, 0, "failed"),
    Field(16, "prev_ok", int, 0, "prev_ok"),
    Field(17, "prev_failed", int, 0, "prev_failed"),
    # appended after the first release (18 fields)
    Field(18, "breaker.probes", int, 0, "b_probes"),
    Field(19, "breaker.probe_at", float, 0.0, "b_probe_at"),
    Field(20, "adaptive.request_limit", float, 0.0, "req_limit"),
    Field(21, "adaptive.token_limit", float, 0.0, "tok_limit"),
    Field(22, "adaptive.learned_until", float, 0.0, "learned_until"),
    Field(23, "adaptive.slowed_at", float, 0.0, "slowed_at"),
    Field(24, "adaptive.throttled_at", float, 0.0, "throttled_at"),
    Field(25, "adaptive.cold_until", float, 0.0, "cold_until"),
    Field(26, "sent", int, 0, "sent"),
    Field(27, "sends", str, "none", "sends"),
    Field(28, "adaptive.others", float, 0.0, "others"),
    Field(29, "adaptive.window", float, 0.0, "window"),
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check(layout: tuple[Field, ...]) -> dict[str, Field]:
    """``layout`` by path, once its positions, paths and Lua names are sound."""
    if [f.position for f in layout] != list(range(len(layout))):
        raise TypeError("service-state record: positions must be 0, 1, 2… in order")
    by_path = {f.path: f for f in layout}
    lua_names = {f.lua for f in layout}
    if len(by_path) != len(layout) or len(lua_names) != len(layout):
        raise TypeError("service-state record: a path or Lua name appears twice")
    for f in layout:
        if not _NAME.match(f.lua) or (isinstance(f.default, str) and not _NAME.match(f.default)):
            raise TypeError(f"service-state record: {f.path}: Lua name or default not a word")
    return by_path


_BY_PATH = _check(SERVICE_STATE)


def _construct(cls: type, prefix: str, value: Callable[[Field], str],
               names: dict[str, Any], used: set[str]) -> str:
    """Source of ``cls(...)``, each argument ``value(field)`` (nested records recursively)."""
    names[cls.__name__] = cls
    hints = typing.get_type_hints(cls)
    args = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            args.append(_construct(hint, path + ".", value, names, used))
        elif path in _BY_PATH:
            args.append(value(_BY_PATH[path]))
            used.add(path)
        else:
            raise TypeError(f"{path} has no place in the service-state record: append it to "
                            "SERVICE_STATE in llm_governor/backends/records.py")
    return f"{cls.__name__}({', '.join(args)})"


def _python_source() -> tuple[str, dict[str, Any]]:
    """The codecs' source and the globals it runs with."""
    n = len(SERVICE_STATE)
    names: dict[str, Any] = {
        "loads": json.loads, "dumps": json.dumps,
        "JSON_PAD": [f.default for f in SERVICE_STATE],
        "TEXT_PAD": [str(f.default) for f in SERVICE_STATE],
    }
    used: set[str] = set()
    from_json = _construct(ServiceState, "", lambda f: f"v[{f.position}]", names, used)
    from_text = _construct(
        ServiceState, "",
        lambda f: f"v[{f.position}]" if f.kind is str else f"{f.kind.__name__}(v[{f.position}])",
        names, set())
    if used != set(_BY_PATH):
        raise TypeError(f"service-state record: no such fields: {sorted(set(_BY_PATH) - used)}")
    nested = sorted({f.path.split(".", 1)[0] for f in SERVICE_STATE if "." in f.path})
    values = ", ".join(f"_{f.path}" if "." in f.path else f"s.{f.path}" for f in SERVICE_STATE)
    source = "\n".join([
        "def dump_json(s):",
        *(f"    _{name} = s.{name}" for name in nested),
        f"    return dumps([{values}])",
        "",
        "def load_json(text):",
        "    if not text:",
        "        return ServiceState()",
        "    v = loads(text)",
        f"    if len(v) < {n}:",
        "        v += JSON_PAD[len(v):]",
        f"    return {from_json}",
        "",
        "def load_text(raw):",
        "    if not raw:",
        "        return ServiceState()",
        "    v = raw.split(' ')",
        f"    if len(v) < {n}:",
        "        v += TEXT_PAD[len(v):]",
        f"    return {from_text}",
        "",
    ])
    return source, names


PYTHON_SOURCE, _globals = _python_source()
_FILENAME = f"<generated by {__name__}>"
linecache.cache[_FILENAME] = (len(PYTHON_SOURCE), None, PYTHON_SOURCE.splitlines(True),
                              _FILENAME)  # tracebacks show the generated lines
exec(compile(PYTHON_SOURCE, _FILENAME, "exec"), _globals)
for _name, _doc in (
        ("dump_json", "A ServiceState as the JSON array SQLite stores."),
        ("load_json", "The ServiceState of a stored JSON array (a default one for none); "
                      "an older, shorter record reads its missing fields as their defaults."),
        ("load_text", "The ServiceState of the space-separated text the Redis scripts store "
                      "(a default one for none); short records are padded with defaults.")):
    _globals[_name].__doc__ = _doc
    _globals[_name].__module__ = __name__
del _name, _doc

dump_json = cast(Callable[[ServiceState], str], _globals["dump_json"])
load_json = cast(Callable[[str | None], ServiceState], _globals["load_json"])
load_text = cast(Callable[[str | None], ServiceState], _globals["load_text"])


def _lua_literal(value: float | int | str) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


def lua_source() -> str:
    """The scripts' ``load_state(raw)`` (a flat table named by ``Field.lua``, numbers
    with ``tonumber``; missing values their defaults) and ``dump_state(s)``
    (``'%.17g'`` per number, so floats cross to Python bit for bit)."""
    fmt = " ".join("%s" if f.kind is str else "%.17g" for f in SERVICE_STATE)
    loads = [f"    {f.lua} = v[{f.position + 1}] or {_lua_literal(f.default)},"
             if f.kind is str else
             f"    {f.lua} = state_number(v[{f.position + 1}], {_lua_literal(f.default)}),"
             for f in SERVICE_STATE]
    dumps = textwrap.fill(", ".join(f"s.{f.lua}" for f in SERVICE_STATE), 96,
                          initial_indent="    ", subsequent_indent="    ")
    return "\n".join([
        "-- ServiceState, space-separated: generated from llm_governor/backends/records.py",
        "-- (SERVICE_STATE), like the Python decoders of the same record.",
        "local function state_number(tok, default)",
        "  if tok == nil then return default end",
        "  return tonumber(tok)",
        "end",
        "",
        "local function load_state(raw)",
        "  local v = {}",
        "  if raw then",
        "    for tok in string.gmatch(raw, '%S+') do v[#v + 1] = tok end",
        "  end",
        "  return {",
        *loads,
        "  }",
        "end",
        "",
        "local function dump_state(s)",
        f"  return string.format('{fmt}',",
        f"{dumps})",
        "end",
    ])
