"""What the live processes enforce: the union of the configurations they publish.

Every process publishes :meth:`~llm_governor.governor.Governor.enforcement`
with its heartbeat (``processes()[id]["enforces"]``). :func:`union` merges
them: a budget window is shown at its tightest limit (the first one to refuse
calls), a service at the limits most processes use, and every difference
between processes becomes one line of ``disagreements``. ``status``,
``monitor``, ``export`` and the health API read budgets and limits from here,
so they need no ``--config`` to show what the applications enforce.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from ..config import GovernorConfig
    from ..governor import GovernorSnapshot

__all__ = ["Fleet", "fleet_of", "published", "union"]

logger = logging.getLogger("llm_governor")

# The service fields a disagreement names (the rest follow from the same config).
_COMPARED = ("max_tokens", "burst_capacity", "refill_rate", "max_cost_per_minute",
             "llm_tokens_per_minute", "max_concurrency", "max_queue_size", "request_timeout",
             "failure_threshold", "recovery_timeout")
_MAX_LINES = 12


@dataclass(frozen=True)
class Fleet:
    """The union of what several processes (or a configuration file) enforce."""

    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    budgets: dict[str, Decimal] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    scopes: dict[str, Any] = field(default_factory=dict)
    disagreements: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)  # live, but publish nothing (older versions)
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)  # scope → latest seen

    def summary(self) -> dict[str, Any]:
        """Plain JSON for the export document and the health API."""
        return {
            "members": {label: {k: m.get(k) for k in ("version", "environment", "mode",
                                                       "config", "budgets")}
                        for label, m in sorted(self.members.items())},
            "budgets": {w: str(v) for w, v in self.budgets.items()},
            "scopes": self.scopes,
            "disagreements": list(self.disagreements),
            "silent": list(self.silent),
            "learned": self.learned,
        }

    def adopt(self, base: GovernorConfig) -> GovernorConfig:
        """``base`` (backend, namespace, presets) with this fleet's budgets and service
        limits: what an observer such as the CLI computes bucket levels and budget
        fill with. A value this version cannot read keeps ``base``'s."""
        from ..config import BudgetConfig, GovernorConfig, RateLimitConfig, ScopeConfig

        if not self.members:
            return base
        raw: dict[str, Any] = base.model_dump(exclude={"services", "service_overrides",
                                                       "budget"})
        environment = _majority(m.get("environment") for m in self.members.values())
        if environment:
            raw["environment"] = environment
            raw["defaults"] = "preset"
        known_windows = {name.removeprefix("per_") for name in BudgetConfig.model_fields}
        raw["budget"] = {f"per_{w}": str(v) for w, v in self.budgets.items()
                         if w in known_windows}
        services: dict[str, Any] = {}
        for name, fields in self.services.items():
            data = {k: v for k, v in fields.items() if k in RateLimitConfig.model_fields}
            try:
                RateLimitConfig.model_validate(data)
            except ValidationError:
                logger.debug("published limits of %s unreadable here: %s", name, fields)
                continue
            services[name] = data
        raw["services"] = services
        for kind, fields in self.scopes.items():
            try:
                ScopeConfig.model_validate(fields)
            except ValidationError:
                logger.debug("published scope %s unreadable here: %s", kind, fields)
                continue
            raw.setdefault("scopes", {})[kind] = fields
        try:
            adopted = GovernorConfig.model_validate(raw)
        except ValidationError:
            logger.debug("published configuration unreadable here", exc_info=True)
            return base
        adopted._source = "published by the live processes"
        return adopted


def published(processes: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, dict[str, Any]],
                                                                      list[str]]:
    """``(summaries by process id, ids of live processes that publish none)``."""
    members: dict[str, dict[str, Any]] = {}
    silent: list[str] = []
    for pid, doc in processes.items():
        enforces = doc.get("enforces") if isinstance(doc, Mapping) else None
        if isinstance(enforces, dict):
            members[pid] = enforces
        else:
            silent.append(pid)
    return members, sorted(silent)


def fleet_of(view: GovernorSnapshot) -> Fleet:
    """The union of the snapshot's live processes and, for an application's governor,
    itself."""
    members, silent = published(view.state.processes)
    if view.enforcement is not None:
        members[view.process_id] = view.enforcement
    return union(members, silent)


def union(members: Mapping[str, Mapping[str, Any]], silent: Iterable[str] = ()) -> Fleet:
    """Merge what ``members`` (label → summary) enforce; see the module docstring."""
    given_members = {label: dict(m) for label, m in members.items()}
    lines: list[str] = []

    for key, what in (("version", "llm-governor version"), ("environment", "environment"),
                      ("mode", "mode")):
        groups = _groups({label: m.get(key) for label, m in members.items()})
        if len(groups) > 1:
            lines.append(f"{what}: " + _describe(groups, str))

    budgets: dict[str, Decimal] = {}
    windows = sorted({w for m in members.values() for w in (m.get("budgets") or {})},
                     key=_window_order)
    for window in windows:
        amounts = {label: _money((m.get("budgets") or {}).get(window))
                   for label, m in members.items()}
        limits = [v for v in amounts.values() if v is not None]
        if limits:
            budgets[window] = min(limits)
        groups = _groups(amounts)
        if len(groups) > 1:
            lines.append(f"budget per_{window}: " + _describe(
                groups, lambda v: "none" if v is None else f"${v}")
                + " (each process refuses calls once its own limit is spent)")

    services: dict[str, dict[str, Any]] = {}
    names = sorted({n for m in members.values() for n in (m.get("services") or {})})
    for name in names:
        given = {label: v for label, m in members.items()
                 if isinstance(v := (m.get("services") or {}).get(name), dict)}
        groups = _groups({label: json.dumps(v, sort_keys=True) for label, v in given.items()})
        services[name] = json.loads(max(groups.items(), key=lambda kv: len(kv[1]))[0])
        if len(groups) > 1:
            differing = []
            for f in _COMPARED:
                by_value = _groups({label: v.get(f) for label, v in given.items()})
                if len(by_value) > 1:
                    differing.append(f"{f} " + _describe(by_value, str))
            if differing:
                lines.append(f"services.{name}: " + "; ".join(differing))

    scopes: dict[str, Any] = {}
    scope_groups = _groups({label: json.dumps(m.get("scopes") or {}, sort_keys=True)
                            for label, m in members.items()})
    if scope_groups:
        scopes = json.loads(max(scope_groups.items(), key=lambda kv: len(kv[1]))[0])
    if len(scope_groups) > 1:
        lines.append("scopes: " + _describe(
            scope_groups, lambda v: ", ".join(sorted(json.loads(v))) or "none"))

    learned: dict[str, dict[str, Any]] = {}
    for m in members.values():
        for key, seen in (m.get("learned") or {}).items():
            if isinstance(seen, dict) and float(seen.get("at", 0)) >= float(
                    learned.get(key, {}).get("at", -1)):
                learned[key] = seen

    if len(lines) > _MAX_LINES:
        lines = [*lines[:_MAX_LINES - 1], f"… and {len(lines) - _MAX_LINES + 1} more"]
    return Fleet(given_members, budgets, services, scopes, lines, sorted(silent),
                 dict(sorted(learned.items())))


def _window_order(window: str) -> tuple[int, str]:
    order = ("minute", "hour", "day", "month")
    return (order.index(window) if window in order else len(order), window)


def _money(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _majority(values: Iterable[Any]) -> Any:
    counts: dict[Any, int] = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: counts[v]) if counts else None


def _groups(values: Mapping[str, Any]) -> dict[Any, list[str]]:
    """value → the labels that hold it, most common first."""
    out: dict[Any, list[str]] = {}
    for label, value in sorted(values.items()):
        out.setdefault(value, []).append(label)
    return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))


def _describe(groups: Mapping[Any, list[str]], show: Any) -> str:
    """``$50 in 2 processes, $20 in web1:812:ab12`` (the majority by count, others named)."""
    parts = []
    for i, (value, labels) in enumerate(groups.items()):
        if i == 0 and len(labels) > 1:
            where = f"{len(labels)} processes"
        else:
            where = ", ".join(labels[:2]) + (f" and {len(labels) - 2} more"
                                              if len(labels) > 2 else "")
        parts.append(f"{show(value)} in {where}")
    return ", ".join(parts)
