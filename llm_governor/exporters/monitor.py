"""Health score, alert evaluation and the background monitor.

Health (0-100) per service::

    100 - 50·[circuit open] - 25·[half-open]
        - 30·(1 - recent success rate)      # attempts in the last 1-2 minutes
        - 10·queue fill                     # fullest queue of any live process / max_queue_size
        - 10·(1 - request bucket fill)      # tokens available / capacity

Overall score: ``(min + mean) / 2`` over services, minus
``40·max(0, 0.5 - budget left fraction)`` for the tightest budget window.
Budgets are those the live processes publish (:mod:`.fleet`), at their
tightest, so every process and the CLI agree on them.
Status: ``critical`` below 50 or with a budget exhausted; ``degraded`` below 80,
with any circuit not closed, in emergency mode or with the backend degraded;
otherwise ``healthy``.

Alerts: the five classic types (``circuit_breaker_open``, ``high_failure_rate``,
``queue_backup``, ``cost_spike``, ``low_tokens``) plus
``budget_nearly_exhausted`` and ``backend_degraded``, each a
:class:`RateLimitAlert`, repeated at most once a minute per service while the
condition lasts; and ``budget_threshold``, once per crossing of an
``[alerts] budget_thresholds`` fraction of a window's budget (global or a
scope value's), as counted by the settlement that crossed it in any process.
Log lines carry the ``RATE_LIMIT`` marker.

Scopes: ``health()["scopes"]`` lists, per configured kind, the values that
spent most (``top``), read from the backend: every value is read, so a
status of a million users costs a scan of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from ..accounts import service_of
from ..governor import Governor, GovernorSnapshot
from ..policies import admission
from .fleet import Fleet, fleet_of

__all__ = ["RateLimitAlert", "RateLimitMonitor", "health", "log_alert_handler", "scope_summary",
           "service_report", "total_cost", "view_of"]

logger = logging.getLogger("llm_governor")
AlertCallback = Callable[["RateLimitAlert"], Any]


@dataclass(frozen=True)
class RateLimitAlert:
    """One alert: what, where, how bad, the value that crossed which threshold, when."""

    alert_type: str
    service: str
    severity: str  # "info" | "warning" | "critical"
    message: str
    value: float
    threshold: float
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_alert_handler(alert: RateLimitAlert) -> None:
    """Ready-made callback: one structured ``RATE_LIMIT`` log line per alert."""
    level = logging.CRITICAL if alert.severity == "critical" else (
        logging.WARNING if alert.severity == "warning" else logging.INFO)
    logger.log(level, "RATE_LIMIT ALERT [%s] %s service=%s value=%.4g threshold=%.4g: %s",
               alert.severity.upper(), alert.alert_type, alert.service, alert.value,
               alert.threshold, alert.message)


def view_of(source: Governor | GovernorSnapshot, scopes: bool = True) -> GovernorSnapshot:
    """``source`` itself, or a governor's :meth:`~llm_governor.governor.Governor.snapshot`."""
    if isinstance(source, GovernorSnapshot):
        return source
    return source.snapshot(scopes)


def service_report(view: GovernorSnapshot, service: str) -> dict[str, Any]:
    """State of one service: bucket, circuit, recent outcomes, queues, config summary.

    Bucket and circuit come from the shared backend, so they are every
    process's. Queues live in each process: ``queue_size_local`` is this
    process's, ``queue_size`` adds what the other live processes published,
    ``queue_fill`` is the fullest single queue as a fraction of
    ``max_queue_size``. In emergency mode the emergency limits are the ones
    in force.
    """
    cfg, limits = view.service_limits(service)
    snap = admission.snapshot(view.state.state(service), limits, view.now)
    local = view.queues.get(service, 0)
    others = [int(doc.get("queues", {}).get(service, 0))
              for pid, doc in view.state.processes.items() if pid != view.process_id]
    ok, failed = int(snap["recent_ok"]), int(snap["recent_failed"])
    total = ok + failed
    return {
        **snap,
        "success_rate": ok / total if total else 1.0,
        "recent_calls": total,
        "queue_size": local + sum(others),
        "queue_size_local": local,
        "queue_fill": max([local, *others]) / max(1, cfg.max_queue_size),
        "max_queue_size": cfg.max_queue_size,
        "configured_capacity": cfg.capacity,
        "configured_rate": cfg.refill_rate,
        "max_cost_per_minute": str(cfg.max_cost_per_minute),
        "llm_tokens_per_minute": cfg.llm_tokens_per_minute,
        "max_concurrency": cfg.max_concurrency,
        "request_timeout": cfg.request_timeout,
        "in_flight": view.state.in_flight.get(service, 0),
    }


def _service_score(r: dict[str, Any]) -> float:
    score: float = 100.0
    if r["circuit_state"] == "open":
        score -= 50
    elif r["circuit_state"] == "half_open":
        score -= 25
    score -= 30 * (1 - r["success_rate"])
    score -= 10 * min(1.0, r["queue_fill"])
    cap = float(r["tokens_capacity"]) or 1.0
    score -= 10 * (1 - min(1.0, float(r["tokens_available"]) / cap))
    return max(0.0, min(100.0, float(score)))


def scope_summary(source: Governor | GovernorSnapshot, kind: str | None = None,
                  top: int | None = 10) -> dict[str, dict[str, Any]]:
    """Per scope kind (configured, or ``kind``), its ``top`` spenders, most first:
    ``{kind: {value: {"mode", "windows": {window: {limit, spent, reserved, remaining}}}}}``
    with money as decimal strings (``None``: a window that only tracks spend)."""
    view = view_of(source)
    kinds = [kind] if kind is not None else view.kinds()
    out: dict[str, dict[str, Any]] = {}
    for k in kinds:
        rows = view.scope_report(k, top=top)
        out[k] = {key.partition("=")[2]: {
            "mode": row["mode"],
            "windows": {w: {f: None if v is None else str(v) for f, v in cells.items()}
                        for w, cells in row["windows"].items()},
        } for key, row in rows.items()}
    return out


def health(source: Governor | GovernorSnapshot, fleet: Fleet | None = None, *,
           scopes: bool = True) -> dict[str, Any]:
    """The documented health score and status, per service and overall (and the top
    spending scope values, unless ``scopes`` is False).

    ``source``: a snapshot, or a governor to take one of (one backend read).
    ``fleet``: what the live processes enforce (default: from the snapshot's
    processes, with the governor itself when it is an application's).
    """
    view = view_of(source, scopes)
    names = sorted(set(view.config.services) | set(view.state.names))
    if fleet is None:
        fleet = fleet_of(view)
    services: dict[str, Any] = {}
    for name in sorted({service_of(n) for n in names}):
        # one row per service; a service called through several provider accounts
        # (keys, hosts) shows its most constrained one, with every account under it
        accounts = {}
        for key in (k for k in names if k != name and service_of(k) == name):
            a = service_report(view, key)
            a["health_score"] = round(_service_score(a), 1)
            accounts[key] = a
        if accounts:
            r = dict(min(accounts.values(), key=lambda a: float(a["health_score"])))
        else:
            r = service_report(view, name)
            r["health_score"] = round(_service_score(r), 1)
        r["accounts"] = accounts
        services[name] = r
    scores = [s["health_score"] for s in services.values()] or [100.0]
    overall = (min(scores) + sum(scores) / len(scores)) / 2
    budgets = view.budget_report(fleet.budgets if fleet.members else None)
    exhausted = False
    if budgets:
        fraction = min(float(b["remaining"] / b["limit"]) for b in budgets.values())
        overall -= 40 * max(0.0, 0.5 - fraction)
        exhausted = fraction <= 0
    overall = max(0.0, min(100.0, overall))
    emergency, degraded_backend = view.state.emergency, view.state.degraded
    if overall < 50 or exhausted:
        status = "critical"
    elif (overall < 80 or emergency or degraded_backend
          or any(s["circuit_state"] != "closed" for s in services.values())):
        status = "degraded"
    else:
        status = "healthy"
    return {
        "overall_status": status,
        "health_score": round(overall, 1),
        "emergency_mode": emergency,
        "backend_degraded": degraded_backend,
        "services": services,
        "budgets": {w: {k: str(v) for k, v in b.items()} for w, b in budgets.items()},
        "scopes": scope_summary(view) if scopes else {},
        "enforced": fleet.summary(),
    }


def total_cost(counters: Mapping[str, Any]) -> Decimal:
    """Everything spent, from the ``cost`` counters (service → model → USD)."""
    costs = counters.get("cost", {})
    return sum((Decimal(v) for models in costs.values() for v in models.values()), Decimal(0))


class RateLimitMonitor:
    """Evaluates alerts every ``interval`` seconds on a daemon thread."""

    REPEAT_AFTER = 60.0

    def __init__(self, gov: Governor, callback: AlertCallback | None = None,
                 interval: float | None = None, *, publish: bool = True) -> None:
        self.gov = gov
        self.publish = publish  # heartbeat this process to the backend (off for the CLI)
        self.callback = callback or log_alert_handler
        self.interval = interval if interval is not None else gov.config.monitor.interval
        if self.interval <= 0:
            raise ValueError(f"monitor interval must be > 0 seconds, got {interval!r}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sent: dict[tuple[str, str], float] = {}
        self._thresholds_seen: dict[tuple[str, str, str], int] | None = None
        self._cost_samples: list[tuple[float, Decimal]] = []
        self.alerts: list[RateLimitAlert] = []

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="llm-governor-monitor",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.evaluate()
            except Exception:
                logger.exception("RATE_LIMIT monitor evaluation failed")
            self._stop.wait(self.interval)

    def _emit(self, alert: RateLimitAlert, raised: list[RateLimitAlert],
              once: bool = False) -> None:
        """Raise ``alert``: at most once a minute per type and service, or always when
        ``once`` (an event that happens once by itself)."""
        key = (alert.alert_type, alert.service)
        last = self._last_sent.get(key)
        if not once and last is not None and alert.timestamp - last < self.REPEAT_AFTER:
            return
        self._last_sent[key] = alert.timestamp
        raised.append(alert)
        self.alerts.append(alert)
        if len(self.alerts) > 1000:
            del self.alerts[:500]
        try:
            self.callback(alert)
        except Exception:
            logger.exception("RATE_LIMIT alert callback failed")

    def evaluate(self, fleet: Fleet | None = None, view: GovernorSnapshot | None = None
                 ) -> list[RateLimitAlert]:
        """Check every condition once; returns the alerts raised by this evaluation.

        ``fleet`` as for :func:`health`; ``view`` a snapshot already taken
        (default: one of the governor, one backend read).

        Time is the backend's clock (Redis: the server's), so every process
        and the CLI agree on rates and on when an alert may repeat.
        """
        raised: list[RateLimitAlert] = []
        m = self.gov.config.monitor
        # Keep this process listed (with its queues) by `llm-governor status`
        # while it lives, even when it makes no calls.
        if self.publish:
            self.gov.publish()
        if view is None:
            view = self.gov.snapshot(scopes=False)
        now = view.now

        def emit(alert_type: str, service: str, severity: str, message: str, value: float,
                 threshold: float) -> None:
            self._emit(RateLimitAlert(alert_type, service, severity, message, value, threshold,
                                      now), raised)

        h = health(view, fleet, scopes=False)
        for name, r in h["services"].items():
            if r["circuit_state"] == "open":
                emit("circuit_breaker_open", name, "critical",
                     f"Circuit breaker open for {name} after {r['consecutive_failures']} "
                     "consecutive failures", 2.0, 2.0)
            total = r["recent_calls"]
            failure_rate = 1 - r["success_rate"]
            if total >= m.min_calls_for_failure_rate and failure_rate > m.failure_rate_threshold:
                emit("high_failure_rate", name, "warning",
                     f"High failure rate for {name}: {failure_rate:.0%} of the last {total} "
                     "attempts failed", failure_rate, m.failure_rate_threshold)
            fill = r["queue_fill"]
            if fill >= m.queue_backup_threshold:
                emit("queue_backup", name, "warning",
                     f"Queue backup for {name}: fullest queue {fill:.0%} of "
                     f"max_queue_size={r['max_queue_size']} ({r['queue_size']} waiting in all "
                     "processes)", fill, m.queue_backup_threshold)
            cap = float(r["tokens_capacity"]) or 1.0
            tokens_fill = float(r["tokens_available"]) / cap
            if r["recent_calls"] and tokens_fill < m.low_tokens_threshold:
                emit("low_tokens", name, "info",
                     f"Low tokens for {name}: {float(r['tokens_available']):.2f} of {cap:g} left",
                     tokens_fill, m.low_tokens_threshold)
        self._cost_samples.append((now, total_cost(view.state.counters)))
        self._cost_samples = [(t, c) for t, c in self._cost_samples if now - t <= 3600]
        if len(self._cost_samples) >= 3:
            (t0, c0), (t1, c1), (t2, c2) = (self._cost_samples[0], self._cost_samples[-2],
                                            self._cost_samples[-1])
            recent = float(c2 - c1) / max(t2 - t1, 1e-6) * 60
            baseline = float(c1 - c0) / max(t1 - t0, 1e-6) * 60
            if recent > float(m.cost_spike_min_per_minute) and \
                    recent > m.cost_spike_multiplier * baseline:
                emit("cost_spike", "all", "warning",
                     f"Cost spike: spending ${recent:.4f}/min vs ${baseline:.4f}/min before",
                     recent, m.cost_spike_multiplier * baseline)
        for window, b in h["budgets"].items():
            left = float(Decimal(b["remaining"]) / Decimal(b["limit"]))
            if left < m.budget_nearly_exhausted_threshold:
                emit("budget_nearly_exhausted", "all", "critical" if left <= 0 else "warning",
                     f"Budget nearly exhausted: ${b['remaining']} of ${b['limit']} left this "
                     f"{window}", left, m.budget_nearly_exhausted_threshold)
        if h["backend_degraded"]:
            emit("backend_degraded", "all", "critical",
                 f"Backend {self.gov.config.redacted_backend()} unreachable: limits are local "
                 "to each process", 1.0, 0.0)
        self._budget_thresholds(view, raised)
        return raised

    def _budget_thresholds(self, view: GovernorSnapshot, raised: list[RateLimitAlert]) -> None:
        """One ``budget_threshold`` alert per crossing counted since the last evaluation
        (the first evaluation only takes note of the crossings before it)."""
        now = view.now
        found: dict[tuple[str, str, str], int] = {}
        counted = view.state.counters.get("alerts", {}).get("budget_threshold", {})
        for whose, windows in counted.items():
            for window, thresholds in windows.items():
                for threshold, n in thresholds.items():
                    found[(whose, window, threshold)] = int(n)
        seen, self._thresholds_seen = self._thresholds_seen, found
        if seen is None:
            return
        for (whose, window, threshold), n in sorted(found.items()):
            if n <= seen.get((whose, window, threshold), 0):
                continue
            fraction = float(threshold)
            budget = f"the {window} budget" + ("" if whose == "all" else f" of {whose}")
            self._emit(RateLimitAlert(
                "budget_threshold", whose, "critical" if fraction >= 0.95 else "warning",
                f"{fraction:.0%} of {budget} is spent", fraction, fraction, now), raised,
                once=True)
