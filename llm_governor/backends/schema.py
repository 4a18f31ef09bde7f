"""Counter keys: the one definition of how they are built and read.

A counter key is parts joined by ``|`` (``requests|<service>|<outcome>``,
``cost|<service>|<model>``, ``job|<job>``, ``alerts|budget_threshold|<whose>|<window>|<x>``).
Parts are user text (service, model, job, scope values), so each part is escaped:
``%`` → ``%25`` and ``|`` → ``%7C``, nothing else. A name without ``|`` or ``%``
is written as it always was, so SQLite files and Redis data from before the
escaping read the same. The Redis scripts apply the same rule (``esc`` and
``ctr_key`` in ``redis_scripts/common.lua``); ``tests/backends/test_schema.py``
holds the two to identical keys.
"""

from __future__ import annotations

import re

__all__ = ["CALL_KINDS", "MONEY_KINDS", "SEP", "escape", "is_money", "key", "kind", "split",
           "unescape"]

SEP = "|"
"""Separates the parts of a counter key."""

MONEY_KINDS = ("cost", "job", "overrun")
"""Counter kinds (first part) that hold USD amounts; the rest count events."""

CALL_KINDS = ("requests", "calls")
"""Counter kinds whose second part is a service that was called (``services()`` lists it)."""

_UNESCAPE = re.compile("%(25|7C)")
_CHARS = {"25": "%", "7C": "|"}


def escape(part: str) -> str:
    """One part as stored: ``%`` and ``|`` percent-escaped, anything else unchanged."""
    if "%" not in part and "|" not in part:
        return part
    return part.replace("%", "%25").replace("|", "%7C")


def unescape(part: str) -> str:
    """The inverse of :func:`escape`."""
    if "%" not in part:
        return part
    return _UNESCAPE.sub(lambda m: _CHARS[m.group(1)], part)


def key(*parts: object) -> str:
    """The counter key of ``parts`` (each converted with ``str`` and escaped)."""
    return SEP.join(escape(str(p)) for p in parts)


def split(counter_key: str) -> list[str]:
    """The parts of a counter key, unescaped."""
    return [unescape(p) for p in counter_key.split(SEP)]


def kind(counter_key: str) -> str:
    """The first part of a counter key (a fixed word: ``requests``, ``cost``…)."""
    return counter_key.split(SEP, 1)[0]


def is_money(counter_key: str) -> bool:
    """Whether the counter holds USD (else it counts events)."""
    return kind(counter_key) in MONEY_KINDS
