"""What ``status`` and ``monitor`` show: the status document and its tables."""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..policies.budget import WINDOW_SECONDS
from .render import Block, Cell, Table, counts, money

if TYPE_CHECKING:
    from ..exporters.monitor import RateLimitAlert

__all__ = ["alerts_view", "scopes_view", "status_view"]

_STATUS_STYLE = {"healthy": "bold green", "degraded": "bold yellow", "critical": "bold red"}
_CIRCUIT_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}
# admissions, waits (counted once per admission that had to wait), then refusals
_NOT_REFUSALS = ("admitted", "queued")
_DECISIONS = (*_NOT_REFUSALS, "rate_limited", "queue_full", "budget_exceeded", "circuit_open",
              "emergency")


def status_view(doc: dict[str, Any]) -> list[Block]:
    """The tables of ``status`` (and of each ``monitor`` frame)."""
    status = str(doc["overall_status"])
    blocks: list[Block] = [
        (f"llm-governor: {status.upper()} (health score {doc['health_score']})",
         _STATUS_STYLE.get(status, "bold")),
        f"environment {doc['environment']} | backend {doc['backend']} | "
        f"namespace {doc['namespace']} | emergency mode {'ON' if doc['emergency_mode'] else 'off'}",
    ]
    if doc["emergency_mode"]:
        blocks.append(("EMERGENCY MODE: every process runs at the emergency limits",
                       "bold red"))
    if doc.get("backend_degraded"):
        blocks.append(("BACKEND UNREACHABLE: what follows is this process's local fallback, "
                       "not the shared state", "bold red"))
    blocks.extend(_enforced_lines(doc))
    by_service = doc["costs"]["by_service"]
    services = Table("Services", ["SERVICE", "SCORE", "CIRCUIT", "TOKENS", "RATE/S",
                                  "SUCCESS", "RECENT", "WAITING", "IN FLIGHT", "ADMITTED",
                                  "QUEUED", "REFUSED", "COST"])
    for name, s in sorted(doc["services"].items()):
        requests = s.get("requests") or {}
        refused = sum(int(v) for k, v in requests.items() if k not in _NOT_REFUSALS)
        circuit = str(s["circuit_state"])
        services.rows.append([
            name, f"{s['health_score']:.1f}", (circuit, _CIRCUIT_STYLE.get(circuit, "")),
            f"{float(s['tokens_available']):.1f}/{float(s['tokens_capacity']):g}",
            f"{float(s['rate']):.3g}", f"{float(s['success_rate']):.0%}",
            str(s["recent_calls"]), str(s["queue_size"]), str(s["in_flight"]),
            str(requests.get("admitted", 0)), str(requests.get("queued", 0)), str(refused),
            money(by_service.get(name, "0")),
        ])
    blocks.append(services)
    blocks.append(_limits_table(doc))

    recorded = {d for s in doc["services"].values() for d in (s.get("requests") or {})}
    kinds = [*_DECISIONS, *sorted(recorded.difference(_DECISIONS))]
    decisions = Table("Admission decisions", ["SERVICE", *(d.upper() for d in kinds)],
                      empty="no calls yet")
    for name, s in sorted(doc["services"].items()):
        req = s.get("requests") or {}
        if req:
            decisions.rows.append([name, *(str(req.get(d, 0)) for d in kinds)])
    blocks.append(decisions)
    if decisions.rows:
        blocks.append("  QUEUED: admissions that had to wait for a limit first (each also counts "
                      "as how it ended); the columns after it are refusals, each an error the "
                      "caller saw.")

    blocks.append(_budgets_table(doc))
    blocks.extend(scopes_view(doc.get("scopes") or {}, top=5))
    learned = (doc.get("enforced") or {}).get("learned") or {}
    if learned:
        table = Table("Provider limits learned from response headers",
                      ["LIMIT SCOPE", "REQUESTS", "TOKENS", "SEEN"])
        for key, limit in sorted(learned.items()):
            table.rows.append([key, f"{limit['requests']:g}" if "requests" in limit else "-",
                               f"{limit['tokens']:g}" if "tokens" in limit else "-",
                               time.strftime("%H:%M:%S", time.localtime(float(limit["at"])))])
        blocks.append(table)

    costs = Table(f"Costs (total {money(doc['costs']['total'])})",
                  ["SERVICE", "MODEL", "CALLS OK", "CALLS FAILED", "COST"], empty="no calls yet")
    seen: set[tuple[str, str]] = set()
    by_model = doc["costs"]["by_service_model"]
    for name, s in sorted(doc["services"].items()):
        for model, statuses in sorted((s.get("calls") or {}).items()):
            seen.add((name, model))
            failed = sum(int(v) for k, v in statuses.items() if k != "ok")
            costs.rows.append([name, model, str(statuses.get("ok", 0)), str(failed),
                               money(by_model.get(name, {}).get(model, "0"))])
    for name, models in sorted(by_model.items()):
        for model, cost in sorted(models.items()):
            if (name, model) not in seen:
                costs.rows.append([name, model, "0", "0", money(cost)])
    blocks.append(costs)

    jobs = doc["costs"].get("by_job") or {}
    if jobs:
        top = sorted(jobs.items(), key=lambda kv: Decimal(str(kv[1])), reverse=True)
        job_table = Table(f"Jobs by cost (top {min(len(top), 10)} of {len(top)})",
                          ["JOB", "COST"])
        job_table.rows = [[j, money(c)] for j, c in top[:10]]
        blocks.append(job_table)

    procs = Table("Live processes on this backend",
                  ["PROCESS", "PID", "VERSION", "ENVIRONMENT", "MODE", "CONFIG", "BUDGETS",
                   "WAITING", "IN FLIGHT"],
                  empty="none (an application appears once it calls instrument() or makes "
                        "a governed call, and stays listed while it runs)")
    for pid, p in sorted(doc["processes"].items()):
        e = p.get("enforces") or {}
        procs.rows.append([pid, str(p.get("pid", "?")), str(e.get("version", "?")),
                           str(e.get("environment", "?")), str(e.get("mode", "?")),
                           str(e.get("config", "?")), _budget_text(e.get("budgets")),
                           counts(p.get("queues")), counts(p.get("in_flight"))])
    blocks.append(procs)
    return blocks


def _budget_text(budgets: Any) -> str:
    if not isinstance(budgets, dict):
        return "?"
    return ", ".join(f"per_{w} {money(v)}" for w, v in budgets.items()) or "none"


def _enforced_lines(doc: dict[str, Any]) -> list[Block]:
    """Whose budgets and limits the tables show, and where the processes disagree."""
    enforced = doc.get("enforced") or {}
    members = enforced.get("members") or {}
    live = [m for m in members if not m.startswith("--config ")]
    files = [m.removeprefix("--config ") for m in members if m.startswith("--config ")]
    if live:
        whose = f"as published by {len(live)} live process{'es' if len(live) > 1 else ''}"
        if files:
            whose += f" and --config {files[0]}"
    elif files:
        whose = f"from --config {files[0]} (no live process publishes its own)"
    else:
        source = str(doc.get("config") or "presets")
        whose = (f"no live process publishes them; showing "
                 f"{'the presets' if source == 'presets' else source} "
                 "(start your application, or pass --config)")
    out: list[Block] = [f"budgets and limits: {whose}"]
    silent = enforced.get("silent") or []
    if silent:
        out.append((f"{len(silent)} live process(es) publish no limits (an older "
                    "llm-governor): their budgets and limits are not shown", "yellow"))
    disagreements = enforced.get("disagreements") or []
    if disagreements:
        out.append(("PROCESSES DISAGREE (each enforces its own configuration):", "bold yellow"))
        out.extend((f"  {line}", "yellow") for line in disagreements)
    return out


def _limits_table(doc: dict[str, Any]) -> Table:
    table = Table("Limits in force", ["SERVICE", "BURST", "REQUESTS/S", "LLM TOKENS/MIN",
                                      "$/MIN", "IN FLIGHT MAX", "QUEUE MAX", "WAIT MAX"])
    for name, s in sorted(doc["services"].items()):
        if "configured_capacity" not in s:
            continue
        table.rows.append([
            name, f"{float(s['configured_capacity']):g}", f"{float(s['configured_rate']):g}",
            str(s.get("llm_tokens_per_minute") or "-"), money(s["max_cost_per_minute"]),
            str(s.get("max_concurrency") or "-"), str(s["max_queue_size"]),
            f"{float(s['request_timeout']):g}s"])
    return table


def _budgets_table(doc: dict[str, Any]) -> Table:
    budgets = Table("Budgets (UTC calendar windows, shared by every process; spend persists "
                    "across restarts)",
                    ["WINDOW", "LIMIT", "SPENT", "RESERVED", "REMAINING", "LEFT"],
                    empty="none configured, nothing spent")
    spend = doc.get("spend") or {}
    for window, b in doc["budgets"].items():
        limit = Decimal(b["limit"])
        left = Decimal(b["remaining"]) / limit if limit else Decimal(1)
        style = "red" if left < Decimal("0.1") else ("yellow" if left < Decimal("0.5") else "")
        budgets.rows.append([window, money(b["limit"]), money(b["spent"]),
                             money(b["reserved"]), money(b["remaining"]),
                             (f"{float(left):.0%}", style)])
    for window, spent in spend.items():
        if window not in doc["budgets"]:
            budgets.rows.append([window, "not published", money(spent), "-", "-", "-"])
    return budgets


def scopes_view(scopes: dict[str, Any], top: int | None = None) -> list[Block]:
    """A table per scope kind: its values that spent most first (``top`` of them), with
    each budget window's spend and what is left (a window without a limit only counts)."""
    blocks: list[Block] = []
    for kind, values in sorted(scopes.items()):
        windows = sorted({w for v in values.values() for w in v["windows"]},
                         key=lambda w: WINDOW_SECONDS.get(w, 1 << 40))
        shown = list(values.items())[:top]
        title = f"Scope {kind}: top spenders" + (
            f" ({len(shown)} of {len(values)} with state)" if len(shown) < len(values) else "")
        table = Table(title, [kind.upper(), "MODE", *(f"{w.upper()} SPENT/LIMIT"
                                                       for w in windows)],
                      empty="no value has spent or been limited yet")
        for value, row in shown:
            cells: list[Cell] = []
            for w in windows:
                c = row["windows"].get(w)
                if c is None:
                    cells.append("-")
                    continue
                text = money(c["spent"]) + ("" if c["limit"] is None else
                                            f" / {money(c['limit'])}")
                low = c["limit"] is not None and Decimal(c["remaining"]) <= Decimal(c["limit"]) / 10
                cells.append((text, "red") if low else text)
            table.rows.append([value, str(row["mode"]), *cells])
        blocks.append(table)
    return blocks


def alerts_view(alerts: Sequence[RateLimitAlert]) -> Table:
    severity_style = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
    table = Table("Recent alerts", ["TIME", "SEVERITY", "TYPE", "SERVICE", "MESSAGE"],
                  empty="none")
    for a in list(alerts)[-10:]:
        table.rows.append([time.strftime("%H:%M:%S", time.localtime(a.timestamp)),
                           (a.severity, severity_style.get(a.severity, "")), a.alert_type,
                           a.service, a.message])
    return table
