"""A small read-only HTTP status server (``llm-governor serve``), standard library only.

Endpoints, all ``GET`` (``HEAD`` too)::

    /healthz   {"status": "ok"}: the server is up (no data; never needs the token)
    /status    the ``llm-governor status --json`` document
    /metrics   Prometheus text of the shared state: every process on the backend
    /alerts    the alerts the monitor raised in the last ``alert_window`` seconds

It reads the configured backend, so it shows every process that shares it,
like the CLI. It binds to 127.0.0.1 by default; any other address needs a
bearer token (``Authorization: Bearer <token>``), required then by every
endpoint but ``/healthz``. Nothing can be changed through it; responses carry
no keys, auth headers or backend passwords (the status document redacts
them), and request lines are logged at debug level only, without headers.

``/metrics`` uses the contract's Prometheus names (see docs/operations.md), so
the shipped alert rules and dashboard work against it. Its counters are the
backend's fleet totals (``llm_governor_requests_total`` by service and
decision, ``llm_governor_calls_total`` by service, model and status,
``llm_governor_cost_USD_total``, ``llm_governor_retries_total``), not one
process's: scrape either the applications' own OTel exporters or this server
for those, not both into the same sums.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ..accounts import service_of
from .export import status_document
from .fleet import Fleet, published, union
from .monitor import RateLimitAlert, RateLimitMonitor

if TYPE_CHECKING:
    from ..governor import GovernorSnapshot

__all__ = ["DEFAULT_PORT", "StatusServer", "prometheus_text", "serve"]

logger = logging.getLogger("llm_governor")
DEFAULT_PORT = 9473
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
_CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback only."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ Prometheus text
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str:
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number) if not number.is_integer() else str(int(number))


class _Text:
    """Prometheus text exposition (format 0.0.4), one family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Mapping[str, Any], Any]]) -> None:
        rows = list(samples)
        if not rows:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in rows:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            self.lines.append(f"{name}{{{text}}} {_number(value)}" if text else
                              f"{name} {_number(value)}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


def _where(name: str) -> dict[str, str]:
    """The labels of a service row: a provider account (``service/fingerprint``) by its
    service (:func:`~llm_governor.accounts.service_of`, the one spelling of that key)."""
    service = service_of(name)
    return {"service": service} if service == name else {"service": service, "account": name}


def prometheus_text(doc: Mapping[str, Any]) -> str:
    """The Prometheus text of a status document (see the module doc for the names)."""
    out = _Text()
    services: Mapping[str, Any] = doc.get("services", {})

    def per_service(key: str) -> list[tuple[Mapping[str, Any], Any]]:
        return [(_where(n), s[key]) for n, s in sorted(services.items()) if key in s]

    out.family("llm_governor_requests_total", "counter", "Admission decisions by outcome",
               [({"service": n, "decision": d}, c) for n, s in sorted(services.items())
                for d, c in sorted((s.get("requests") or {}).items())])
    out.family("llm_governor_calls_total", "counter", "Governed calls completed, by status",
               [({"service": n, "model": m, "status": st}, c)
                for n, s in sorted(services.items())
                for m, statuses in sorted((s.get("calls") or {}).items())
                for st, c in sorted(statuses.items())])
    out.family("llm_governor_retries_total", "counter", "Attempts retried, by service",
               [({"service": n}, s.get("retries") or 0) for n, s in sorted(services.items())])
    by_model = doc.get("costs", {}).get("by_service_model", {})
    out.family("llm_governor_cost_USD_total", "counter", "Settled cost of governed calls",
               [({"service": n, "model": m}, Decimal(str(v)))
                for n, models in sorted(by_model.items()) for m, v in sorted(models.items())])
    thresholds = (doc.get("alerts") or {}).get("budget_threshold") or {}
    crossings: dict[tuple[str, str, str], int] = {}
    for whose, windows in thresholds.items():
        kind = "global" if whose == "all" else whose.partition("=")[0]
        for window, counts in windows.items():
            for threshold, n in counts.items():
                key = (kind, window, threshold)
                crossings[key] = crossings.get(key, 0) + int(n)
    out.family("llm_governor_budget_threshold_total", "counter",
               "Budget thresholds crossed, per window instance, threshold and scope kind",
               [({"scope_kind": k, "window": w, "threshold": t}, n)
                for (k, w, t), n in sorted(crossings.items())])
    budgets: Mapping[str, Any] = doc.get("budgets", {})
    out.family("llm_governor_budget_remaining_USD", "gauge",
               "Budget left per window after reservations",
               [({"window": w}, Decimal(str(b["remaining"]))) for w, b in budgets.items()])
    out.family("llm_governor_budget_limit_USD", "gauge", "Budget per window",
               [({"window": w}, Decimal(str(b["limit"]))) for w, b in budgets.items()])
    out.family("llm_governor_tokens_available", "gauge", "Request bucket fill",
               per_service("tokens_available"))
    out.family("llm_governor_tokens_capacity", "gauge", "Request bucket capacity",
               per_service("tokens_capacity"))
    out.family("llm_governor_limit_rate", "gauge",
               "Request rate in force, requests per second (adaptive)", per_service("rate"))
    out.family("llm_governor_circuit_state", "gauge", "0 closed, 1 half-open, 2 open",
               [(_where(n), _CIRCUIT.get(str(s.get("circuit_state")), 0))
                for n, s in sorted(services.items())])
    out.family("llm_governor_queue_size", "gauge", "Calls waiting for admission, all processes",
               per_service("queue_size"))
    out.family("llm_governor_queue_capacity", "gauge", "max_queue_size",
               per_service("max_queue_size"))
    out.family("llm_governor_in_flight", "gauge", "Calls in flight, all processes",
               per_service("in_flight"))
    out.family("llm_governor_health_score", "gauge", "Health score 0-100 (overall: no labels)",
               [({}, doc.get("health_score", 0)), *per_service("health_score")])
    out.family("llm_governor_emergency", "gauge", "1 while emergency mode is on",
               [({}, 1 if doc.get("emergency_mode") else 0)])
    out.family("llm_governor_backend_degraded", "gauge",
               "1 while the shared backend is unreachable and limits are local",
               [({}, 1 if doc.get("backend_degraded") else 0)])
    return out.render()


# ------------------------------------------------------------------ server
class StatusServer:
    """The status server over a governor (or one made from a configuration).

    ``port`` 0 picks a free one (see :attr:`url`). Use as a context manager, or
    :meth:`start` (a background thread) / :meth:`serve_forever` and :meth:`close`.
    A governor the server made itself is closed with it.
    """

    def __init__(self, source: Any = None, *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, token: str | None = None,
                 alert_window: float = 300.0, join: bool | None = None) -> None:
        from ..governor import Governor

        if token is not None and not token.strip():
            raise ValueError("the bearer token must not be empty")
        if not is_loopback(host) and token is None:
            raise ValueError(f"serving on {host} (not loopback) needs a bearer token: "
                             "anyone who can reach the port could read costs and limits")
        if isinstance(source, Governor):
            self.gov, self._owned = source, False
        else:
            from ..config import load_config

            # an observer, like the CLI: it reports what the live processes enforce
            # and never announces itself as one of them
            self.gov, self._owned = Governor(load_config(source), publish=False), True
        # the configuration it was given joins what the processes publish, as the CLI's
        # --config does (default: when one was given)
        if join is None:
            join = source is not None
        self._config_member = f"config {self.gov.config.source}" if join and self._owned \
            else None
        self._token = token
        self._alert_window = alert_window
        self._monitor = RateLimitMonitor(self.gov, callback=_quiet, publish=False)
        self._monitor_lock = threading.Lock()
        self._evaluated = 0.0
        self._thread: threading.Thread | None = None
        server_cls = _Server6 if ":" in host else ThreadingHTTPServer
        try:
            self._httpd = server_cls((host.strip("[]"), port), self._handler())
        except BaseException:
            if self._owned:
                self.gov.close()
            raise
        self._httpd.daemon_threads = True

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # ------------------------------------------------------------ documents
    def fleet(self, view: GovernorSnapshot) -> Fleet:
        """What the live processes enforce, and the server's own configuration when it
        was given one (as ``llm-governor status --config`` does)."""
        members, silent = published(view.state.processes)
        if view.enforcement is not None:
            members[view.process_id] = view.enforcement
        elif self._config_member is not None:
            members[self._config_member] = self.gov.config.summary()
        return union(members, silent)

    def status(self) -> dict[str, Any]:
        view = self.gov.snapshot()  # one backend read for the whole document
        return status_document(view, self.fleet(view))

    def alerts(self) -> dict[str, Any]:
        """Evaluate the alert conditions (at most once a second) and list recent alerts."""
        with self._monitor_lock:
            now = time.monotonic()
            if now - self._evaluated >= 1.0:
                self._evaluated = now
                view = self.gov.snapshot(scopes=False)
                self._monitor.evaluate(self.fleet(view), view)
            since = self.gov.backend.now() - self._alert_window
            recent: list[RateLimitAlert] = [a for a in self._monitor.alerts
                                            if a.timestamp >= since]
        return {"generated_at": time.time(), "window_s": self._alert_window,
                "alerts": [a.to_dict() for a in recent]}

    def metrics(self) -> str:
        return prometheus_text(self.status())

    # ------------------------------------------------------------ lifecycle
    def start(self) -> StatusServer:
        """Serve on a background (daemon) thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            name="llm-governor-serve", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._owned:
            self.gov.close()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ HTTP
    def _authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token.encode())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        routes: dict[str, Callable[[], tuple[str, bytes]]] = {
            "/status": lambda: _json(server.status()),
            "/alerts": lambda: _json(server.alerts()),
            "/metrics": lambda: ("text/plain; version=0.0.4; charset=utf-8",
                                 server.metrics().encode()),
        }

        class Handler(BaseHTTPRequestHandler):
            server_version = "llm-governor"
            sys_version = ""

            def _reply(self, status: HTTPStatus, ctype: str, body: bytes,
                       extra: Mapping[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: HTTPStatus, message: str,
                       extra: Mapping[str, str] | None = None) -> None:
                self._reply(status, *_json({"error": message}), extra)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                if path == "/healthz":
                    self._reply(HTTPStatus.OK, *_json({"status": "ok"}))
                    return
                route = routes.get(path)
                if route is None:
                    self._error(HTTPStatus.NOT_FOUND,
                                "not found: /healthz, /status, /metrics, /alerts")
                    return
                if not server._authorized(self.headers.get("Authorization")):
                    self._error(HTTPStatus.UNAUTHORIZED, "a bearer token is required",
                                {"WWW-Authenticate": 'Bearer realm="llm-governor"'})
                    return
                try:
                    ctype, body = route()
                except Exception:
                    logger.exception("RATE_LIMIT status server: %s failed", path)
                    self._error(HTTPStatus.INTERNAL_SERVER_ERROR,
                                "reading the governor's state failed (see the server's log)")
                    return
                self._reply(HTTPStatus.OK, ctype, body)

            do_HEAD = do_GET

            def _read_only(self) -> None:
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET and HEAD only",
                            {"Allow": "GET, HEAD"})

            do_POST = do_PUT = do_DELETE = do_PATCH = _read_only

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("status server: %s %s", self.address_string(), format % args)

        return Handler


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _json(doc: Any) -> tuple[str, bytes]:
    return "application/json", json.dumps(doc, indent=2, sort_keys=True,
                                          default=str).encode()


def _quiet(alert: RateLimitAlert) -> None:
    """The server lists alerts; it does not log each one again."""


def serve(source: Any = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          token: str | None = None, join: bool | None = None,
          ready: Callable[[StatusServer], None] | None = None) -> None:
    """Serve ``/healthz``, ``/status``, ``/metrics``, ``/alerts`` until interrupted.

    ``source``: a :class:`~llm_governor.governor.Governor`, or what
    :func:`llm_governor.config.load_config` takes (``None``: the configured
    one). ``token`` falls back to ``$LLM_GOVERNOR_SERVE_TOKEN``. ``join``: whether
    that configuration's budgets and limits join those the live processes
    publish (default: when ``source`` is given). ``ready`` is
    called with the server once it listens. Returns on SIGINT / SIGTERM.
    """
    token = token if token is not None else os.environ.get("LLM_GOVERNOR_SERVE_TOKEN") or None
    server = StatusServer(source, host=host, port=port, token=token, join=join)
    logger.warning("RATE_LIMIT status server on %s (%s)", server.url,
                   "bearer token required" if token else "loopback, no token")
    previous = None
    if threading.current_thread() is threading.main_thread():
        def stop(signum: int, frame: Any) -> None:
            threading.Thread(target=server._httpd.shutdown, daemon=True).start()
        previous = signal.signal(signal.SIGTERM, stop)
    try:
        if ready is not None:
            ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server._thread = None
        server.close()
