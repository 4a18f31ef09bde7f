"""The commands: each takes the parsed arguments and an :class:`Output`, returns an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import GovernorConfig, config_warnings, load_config, sqlite_path
from ..context import SCOPE_KIND, SCOPE_VALUE
from ..exporters.export import status_document
from ..exporters.fleet import Fleet
from ..redaction import redact_url
from .errors import EXIT_CRITICAL, EXIT_DEGRADED, EXIT_OK, EXIT_USAGE, STATUS_EXIT, CLIError
from .render import Block, Output, Table, money, render_rich
from .scrub import remember_url
from .views import alerts_view, scopes_view, status_view

if TYPE_CHECKING:
    from ..backends import Backend
    from ..exporters.monitor import RateLimitAlert
    from ..governor import Governor, GovernorSnapshot

__all__ = ["COMMANDS", "Session", "cmd_demo", "scope_arg", "scope_kind_arg"]


def _config(args: argparse.Namespace, path: str | None = None) -> GovernorConfig:
    remember_url(args.backend)
    remember_url(os.environ.get("LLM_GOVERNOR_BACKEND"))
    cfg = load_config(path or args.config, environment=args.environment, backend=args.backend)
    remember_url(cfg.backend)
    namespace = getattr(args, "namespace", None)
    if namespace:
        cfg = cfg.model_copy(update={"namespace": namespace})
    return cfg


def _location(cfg: GovernorConfig) -> str:
    """Where the configured backend's state lives (the SQLite file's path, or the URL)."""
    if cfg.backend.startswith("sqlite"):
        return str(sqlite_path(cfg.backend))
    return cfg.redacted_backend()


@dataclass
class Session:
    """What a command works on: the backend, and a governor that observes it with the
    budgets and limits the live processes publish (:class:`~llm_governor.exporters.
    fleet.Fleet`), never announcing itself."""

    base: GovernorConfig
    backend: Backend
    explicit: bool  # --config or $LLM_GOVERNOR_CONFIG named a file: it joins the union
    gov: Governor = field(init=False)
    fleet: Fleet = field(init=False)
    view: GovernorSnapshot = field(init=False)  # what the last refresh read

    def __post_init__(self) -> None:
        self.fleet = Fleet()
        self.refresh()

    @property
    def where(self) -> str:
        return f"{redact_url(self.backend.url or self.base.backend)} " \
               f"(namespace {self.base.namespace})"

    def refresh(self, scopes: bool = True) -> GovernorSnapshot:
        """Read the backend once (:meth:`~.Backend.snapshot`): the live processes, adopting
        their budgets and limits if they changed, and the view every document is made of."""
        from ..exporters.fleet import published, union
        from ..governor import Governor

        state = self.backend.snapshot(scopes)
        members, silent = published(state.processes)
        if self.explicit:
            members[f"--config {self.base.source}"] = self.base.summary()
        fleet = union(members, silent)
        first = not hasattr(self, "gov")
        if first or (fleet.budgets, fleet.services) != (self.fleet.budgets,
                                                          self.fleet.services):
            self.gov = Governor(fleet.adopt(self.base), backend=self.backend, publish=False)
        self.fleet = fleet
        self.view = self.gov.snapshot(state=state)
        return self.view

    def close(self) -> None:
        self.gov.close()


def _session(args: argparse.Namespace, *, readonly: bool) -> Session:
    """Open the configured backend; ``readonly`` (status, monitor, export) creates nothing
    and wants an existing SQLite file."""
    import sqlite3

    from ..backends import create_backend

    cfg = _config(args)
    path = _location(cfg)
    try:
        backend = create_backend(cfg.backend, {}, namespace=cfg.namespace,
                                 on_error=cfg.on_backend_error,
                                 degraded_budget_share=cfg.degraded_budget_share,
                                 readonly=readonly)
    except FileNotFoundError:
        raise CLIError(f"no llm-governor state file at {path}: nothing has run with this "
                       "backend yet, or your applications use another one (--backend, "
                       "$LLM_GOVERNOR_BACKEND, the config's backend)") from None
    except (OSError, sqlite3.Error) as exc:
        raise CLIError(f"cannot read the SQLite state file {path}: {exc}") from None
    if cfg.backend.startswith("sqlite") and backend.name != "sqlite":
        backend.close()
        raise CLIError(f"cannot open the SQLite state file {path} (it cannot be created or "
                       "written); nothing to show or steer (use --backend to choose another)")
    explicit = bool(args.config or os.environ.get("LLM_GOVERNOR_CONFIG"))
    session = Session(cfg, backend, explicit)
    _check_reachable(session)
    return session


def _check_reachable(session: Session, what: str = "nothing to show or steer") -> None:
    """A shared backend that cannot be reached would show (or steer) only a local fallback."""
    if getattr(session.backend, "degraded", False):
        session.close()
        raise CLIError(f"the backend {session.where} is unreachable: {what}")


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from ..exporters.monitor import scope_summary

    session = _session(args, readonly=True)
    try:
        doc = status_document(session.view, session.fleet)
        if args.scope:
            kinds = sorted(session.gov.scope_kinds.kinds())
            if args.scope not in kinds:
                raise CLIError(f"no scope kind {args.scope!r} on {session.where}: the live "
                               "processes (and --config) declare "
                               + (", ".join(kinds) if kinds else "none")
                               + " ([scopes.KIND] in the configuration)")
            every = scope_summary(session.view, args.scope, top=None)[args.scope]
            doc["scopes"] = {args.scope: dict(list(every.items())[:args.top or None])}
    finally:
        session.close()
    if args.json:
        out.text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    elif args.scope:
        status = str(doc["overall_status"])
        out.show([f"llm-governor: {status.upper()} (health score {doc['health_score']}) | "
                  f"backend {doc['backend']} | namespace {doc['namespace']}",
                  *scopes_view({args.scope: every}, top=args.top or None)])
    else:
        out.show(status_view(doc))
    return STATUS_EXIT.get(str(doc["overall_status"]), EXIT_CRITICAL)


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from ..exporters.server import serve

    cfg = _config(args)
    explicit = bool(args.config or os.environ.get("LLM_GOVERNOR_CONFIG"))
    try:
        serve(cfg, host=args.host, port=args.port, token=args.token, join=explicit,
              ready=lambda server: out.text(
                  f"serving /healthz /status /metrics /alerts on {server.url} "
                  f"(backend {redact_url(cfg.backend)}, namespace {cfg.namespace}); "
                  "Ctrl-C stops"))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") \
            from None
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace, out: Output) -> int:
    from ..exporters.monitor import RateLimitMonitor

    session = _session(args, readonly=True)
    alerts: list[RateLimitAlert] = []
    monitor = RateLimitMonitor(session.gov, alerts.append, args.interval, publish=False)
    iterations = args.iterations

    def frame(i: int) -> list[Block]:
        view = session.refresh()  # one backend read per frame
        monitor.gov = session.gov
        monitor.evaluate(session.fleet, view)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        head = f"=== llm-governor monitor {stamp} (refresh {args.interval:g}s"
        head += f", {i}/{iterations})" if iterations else ", Ctrl-C to stop)"
        blocks = status_view(status_document(view, session.fleet))
        # What changes most first, so a short terminal still shows it in the live view.
        lines = [b for b in blocks if not isinstance(b, Table)]
        tables = [b for b in blocks if isinstance(b, Table)]
        first = [t for t in tables if t.title == "Services" or t.title.startswith("Live")]
        rest = [t for t in tables if t not in first]
        return [head, *lines, *first, alerts_view(alerts), *rest]

    i = 0
    try:
        if out.rich:
            from rich.live import Live

            i = 1
            with Live(render_rich(frame(i)), console=out.console, auto_refresh=False,
                      transient=False) as live:
                while not iterations or i < iterations:
                    time.sleep(args.interval)
                    i += 1
                    live.update(render_rich(frame(i)), refresh=True)
        else:
            while not iterations or i < iterations:
                if i:
                    time.sleep(args.interval)
                i += 1
                out.show([*frame(i), ""])
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return EXIT_OK


def cmd_emergency(args: argparse.Namespace, out: Output) -> int:
    change = bool(args.enable or args.disable)
    session = _session(args, readonly=not change)
    try:
        if change:
            session.gov.set_emergency(bool(args.enable))
        on = session.gov.emergency()
        _check_reachable(session, "emergency mode was NOT changed")
    finally:
        session.close()
    where = session.where
    if args.enable:
        out.text(f"emergency mode ENABLED on {where}: every process on this backend now runs "
                 "at the emergency limits")
    elif args.disable:
        out.text(f"emergency mode disabled on {where}: normal limits are back")
    else:
        out.text(f"emergency mode {'ON' if on else 'off'} on {where}")
    return EXIT_OK


def scope_arg(text: str) -> tuple[str, str]:
    """``kind=value`` (``--scope tenant=acme``), spelled as ``llm_governor.scope()`` takes them."""
    kind, sep, value = text.partition("=")
    if not sep or not re.match(SCOPE_KIND, kind) or not re.match(SCOPE_VALUE, value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KIND=VALUE (e.g. tenant=acme: KIND an identifier of at most 32 "
            "characters, VALUE 1-128 characters without whitespace or '|')")
    return kind, value


def scope_kind_arg(text: str) -> str:
    """A scope kind (``status --scope tenant``)."""
    if not re.match(SCOPE_KIND, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a scope kind (an identifier of at most 32 characters, e.g. "
            "tenant)")
    return text


def _confirm(out: Output, question: str, assume_yes: bool) -> bool:
    """Ask on the terminal (stdin); ``--yes`` answers for the user."""
    if assume_yes:
        return True
    out.stream.write(f"{question} [y/N] ")
    out.stream.flush()
    try:
        answer = sys.stdin.readline()
        typed = sys.stdin.isatty()
    except (OSError, ValueError):
        answer, typed = "", False
    if not typed:  # the answer came from a pipe: end the prompt's line ourselves
        out.text(answer.strip())
    return answer.strip().lower() in ("y", "yes")


def cmd_reset(args: argparse.Namespace, out: Output) -> int:
    service = args.service or args.service_option
    if args.service and args.service_option and args.service != args.service_option:
        raise CLIError(f"two services given: {args.service} and --service "
                       f"{args.service_option}", EXIT_USAGE)
    limits = args.limits or not args.budgets
    if args.budgets and service and not args.limits:
        raise CLIError("budgets are shared by every service, so --budgets takes no SERVICE; "
                       "add --limits to also reset that service's limits", EXIT_USAGE)
    if not args.budgets and (args.window or args.scope):
        raise CLIError("--window and --scope choose which budgets to reset: add --budgets",
                       EXIT_USAGE)
    session = _session(args, readonly=False)
    try:
        lines: list[str] = []
        if args.budgets:
            done = _reset_budgets(session, args, out)
            if done is None:
                return EXIT_DEGRADED
            lines.append(done)
        if limits:
            keys = session.gov.reset_limits(service)
            _check_reachable(session, "nothing was reset")
            lines.append(f"limits state of {service or 'every service'} reset on "
                         f"{session.where}: {len(keys)} limit scope(s) "
                         f"({', '.join(keys) or 'none had state'}); learned provider limits, "
                         "blocks, circuit and buckets start afresh")
            if not args.budgets:
                lines[-1] += "; budgets are untouched"
    finally:
        session.close()
    for line in lines:
        out.text(line)
    return EXIT_OK


def _reset_budgets(session: Session, args: argparse.Namespace, out: Output) -> str | None:
    """Reset what --budgets [--window W] [--scope K=V] name; None when not confirmed."""
    windows = [args.window] if args.window else None
    named = f"the {args.window} budget" if args.window else "every budget window"
    if args.scope:
        kind, value = args.scope
        if kind not in session.fleet.scopes:
            return (f"no scoped budgets configured for {kind!r} (no live process on "
                    f"{session.where} declares [scopes.{kind}]): nothing reset")
        named += f" of {kind}={value}"
        row = session.gov.scope_report(kind, value).get(f"{kind}={value}", {})
        report = {w: cells for w, cells in row.get("windows", {}).items()
                  if cells["limit"] is not None}
        spent = {w: cells["spent"] for w, cells in row.get("windows", {}).items()
                 if windows is None or w in windows}
    else:
        report = session.gov.budget_report(session.fleet.budgets or None)
        spends, _, _ = session.backend.budget_status()
        spent = {w: s.spent for w, s in spends.items() if windows is None or w in windows}
    lines = [f"  {w}: {money(v)} spent" + (f" of {money(report[w]['limit'])}"
                                            if w in report else "")
             for w, v in sorted(spent.items()) if v] or ["  (nothing spent in the chosen windows)"]
    if not _confirm(out, f"Forget the spend of {named} on {session.where}?\n" + "\n".join(lines)
                    + "\nEvery process sharing it may spend again at once, up to its limits.",
                    args.yes):
        out.text("not confirmed: nothing reset")
        return None
    gone = session.backend.reset_budget(windows, args.scope)
    _check_reachable(session, "nothing was reset")
    what = ", ".join(f"{w} {money(v)}" for w, v in sorted(gone.items())) or "nothing was spent"
    return f"spend of {named} reset on {session.where} ({what}); limits untouched"


def _write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the user only (cost data is sensitive)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cmd_export(args: argparse.Namespace, out: Output) -> int:
    from ..exporters.export import export_json

    session = _session(args, readonly=True)
    try:
        text = export_json(session.gov, session.fleet) + "\n"
    finally:
        session.close()
    if args.output == "-":
        out.stream.write(text)
        out.stream.flush()
        return EXIT_OK
    path = Path(args.output)
    try:
        _write_private(path, text)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
    out.text(f"exported metrics to {path}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, out: Output) -> int:
    path = args.file or args.config or os.environ.get("LLM_GOVERNOR_CONFIG")
    cfg = _config(args, path)
    source = path or "no configuration file (LLM_GOVERNOR_CONFIG unset): presets only"
    budgets = ", ".join(f"per_{w} {money(v)}" for w, v in cfg.budget.windows().items())
    out.show([
        f"OK: {source} is a valid llm-governor configuration",
        Table("Effective settings", ["KEY", "VALUE"], [
            ["environment", cfg.environment],
            ["backend", cfg.redacted_backend()],
            ["namespace", cfg.namespace],
            ["on_backend_error", cfg.on_backend_error],
            ["emergency_action", cfg.emergency_action],
            ["budgets", budgets or "none"],
            ["services", ", ".join(sorted(cfg.services))],
            ["price overrides", ", ".join(sorted(cfg.prices)) or "none"],
        ]),
        *((f"warning: {w}", "yellow") for w in config_warnings(cfg)),
    ])
    return EXIT_OK


def cmd_rules(args: argparse.Namespace, out: Output) -> int:
    from ..exporters.rules import read_rule_file

    out.text(read_rule_file(args.file))
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace, out: Output) -> int:
    from ..exporters.rules import read_rule_file

    out.text(read_rule_file("dashboard.json"))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: Output, extra: list[str]) -> int:
    try:
        from . import demo
    except ImportError as exc:
        if "--help" in extra or "-h" in extra:
            out.text("usage: llm-governor demo [DEMO OPTIONS]\n\nAn offline workload through "
                     "the real SDKs against the bundled fake provider.")
            return EXIT_OK
        raise CLIError(f"the demo is not available in this installation ({exc})") from None
    # The demo builds its own governor; hand it the global choices the usual way.
    if args.config:
        os.environ["LLM_GOVERNOR_CONFIG"] = args.config
    if args.backend:
        os.environ["LLM_GOVERNOR_BACKEND"] = args.backend
    if args.environment:
        os.environ["LLM_GOVERNOR_ENV"] = args.environment
    try:
        code = demo.main(extra)
    except SystemExit as exc:  # argparse inside the demo (--help, bad options)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(code or 0)


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "status": cmd_status, "monitor": cmd_monitor, "emergency": cmd_emergency,
    "reset": cmd_reset, "export": cmd_export, "validate": cmd_validate, "rules": cmd_rules,
    "dashboard": cmd_dashboard, "serve": cmd_serve,
}
