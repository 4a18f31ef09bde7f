"""The JSON metrics export: per-service state, counters, costs by service/model/job,
budgets, what the live processes enforce, and the processes themselves. Money as
decimal strings; no secrets."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..policies import budget
from ..redaction import redact_url
from .monitor import health, scope_summary, view_of

if TYPE_CHECKING:
    from ..governor import Governor, GovernorSnapshot
    from .fleet import Fleet

__all__ = ["export_document", "export_json", "status_document"]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def export_document(source: Governor | GovernorSnapshot, fleet: Fleet | None = None) -> Any:
    """The export as plain JSON values, from one snapshot (``source`` and ``fleet`` as for
    :func:`~llm_governor.exporters.monitor.health`)."""
    view = view_of(source)
    counters = view.state.counters
    h = health(view, fleet, scopes=False)
    spends = view.state.spends
    costs = counters.get("cost", {})
    by_service = {s: sum((Decimal(v) for v in models.values()), Decimal(0))
                  for s, models in costs.items()}
    by_model: dict[str, Decimal] = {}
    for models in costs.values():
        for model, v in models.items():
            by_model[model] = by_model.get(model, Decimal(0)) + Decimal(v)
    return _plain({
        "generated_at": time.time(),
        "environment": view.config.environment,
        "backend": redact_url(view.backend or view.config.backend),
        "namespace": view.config.namespace,
        "config": view.config.source,
        "emergency_mode": h["emergency_mode"],
        "backend_degraded": h["backend_degraded"],
        "health": {"overall_status": h["overall_status"], "health_score": h["health_score"]},
        "services": {
            name: {**r, "requests": counters.get("requests", {}).get(name, {}),
                   "calls": counters.get("calls", {}).get(name, {}),
                   "retries": counters.get("retries", {}).get(name, 0)}
            for name, r in h["services"].items()
        },
        "costs": {"total": sum(by_service.values(), Decimal(0)), "by_service": by_service,
                  "by_model": by_model, "by_service_model": costs,
                  "by_job": counters.get("job", {})},
        "budgets": h["budgets"],
        "spend": {w: s.spent for w, s in sorted(spends.items(), key=lambda kv: _order(kv[0]))},
        "enforced": h["enforced"],
        "scopes": scope_summary(view, top=100),
        "alerts": counters.get("alerts", {}),
        "processes": dict(view.state.processes),
    })


def status_document(source: Governor | GovernorSnapshot, fleet: Fleet | None = None
                    ) -> dict[str, Any]:
    """The export document plus the health headline at the top level: what
    ``llm-governor status --json`` prints and the status server's ``/status`` serves."""
    doc: dict[str, Any] = export_document(source, fleet)
    doc["overall_status"] = doc["health"]["overall_status"]
    doc["health_score"] = doc["health"]["health_score"]
    return doc


def _order(window: str) -> int:
    return budget.WINDOW_SECONDS.get(window, 1 << 40)


def export_json(source: Governor | GovernorSnapshot, fleet: Fleet | None = None) -> str:
    return json.dumps(export_document(source, fleet), indent=2, sort_keys=True)
