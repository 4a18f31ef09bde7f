"""The commands: each takes the parsed arguments and an :class:`Output`, returns an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import GovernorConfig, default_state_path, load_config
from .errors import EXIT_CRITICAL, EXIT_OK, STATUS_EXIT, CLIError
from .render import Block, Output, Table, money, render_rich
from .scrub import remember_url
from .views import alerts_view, status_document, status_view

if TYPE_CHECKING:
    from ..exporters.monitor import RateLimitAlert
    from ..governor import Governor

__all__ = ["COMMANDS", "cmd_demo"]


def _config(args: argparse.Namespace, path: str | None = None) -> GovernorConfig:
    remember_url(args.backend)
    remember_url(os.environ.get("LLM_GOVERNOR_BACKEND"))
    cfg = load_config(path or args.config, environment=args.environment, backend=args.backend)
    remember_url(cfg.backend)
    return cfg


def _governor(args: argparse.Namespace) -> Governor:
    """A governor on the configured backend (no SDK patched, nothing exported)."""
    from ..governor import Governor

    cfg = _config(args)
    gov = Governor(cfg)
    _check_reachable(gov)
    if cfg.backend.startswith("sqlite") and gov.backend.name != "sqlite":
        gov.close()
        path = default_state_path() if cfg.backend == "sqlite" else \
            cfg.backend.removeprefix("sqlite://")
        raise CLIError(f"cannot open the SQLite state file {path} (it cannot be created or "
                       "written); "
                       "nothing to show or steer (use --backend to choose another)")
    return gov


def _check_reachable(gov: Governor, what: str = "nothing to show or steer") -> None:
    """A shared backend that cannot be reached would show (or steer) only a local fallback."""
    if getattr(gov.backend, "degraded", False):
        gov.close()
        raise CLIError(f"the backend {gov.config.redacted_backend()} is unreachable: {what}")


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    gov = _governor(args)
    try:
        doc = status_document(gov)
    finally:
        gov.close()
    if args.json:
        out.text(json.dumps(doc, indent=2, sort_keys=True))
    else:
        out.show(status_view(doc))
    return STATUS_EXIT.get(str(doc["overall_status"]), EXIT_CRITICAL)


def cmd_monitor(args: argparse.Namespace, out: Output) -> int:
    from ..exporters.monitor import RateLimitMonitor

    gov = _governor(args)
    alerts: list[RateLimitAlert] = []
    monitor = RateLimitMonitor(gov, alerts.append, args.interval, publish=False)
    iterations = args.iterations

    def frame(i: int) -> list[Block]:
        monitor.evaluate()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        head = f"=== llm-governor monitor {stamp} (refresh {args.interval:g}s"
        head += f", {i}/{iterations})" if iterations else ", Ctrl-C to stop)"
        view = status_view(status_document(gov))
        # What changes most first, so a short terminal still shows it in the live view.
        lines = [b for b in view if not isinstance(b, Table)]
        tables = [b for b in view if isinstance(b, Table)]
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
        gov.close()
    return EXIT_OK


def cmd_emergency(args: argparse.Namespace, out: Output) -> int:
    gov = _governor(args)
    try:
        where = f"{gov.config.redacted_backend()} (namespace {gov.config.namespace})"
        if args.enable or args.disable:
            gov.set_emergency(bool(args.enable))
        on = gov.emergency()
        _check_reachable(gov, "emergency mode was NOT changed")
    finally:
        gov.close()
    if args.enable:
        out.text(f"emergency mode ENABLED on {where}: every process on this backend now runs "
                 "at the emergency limits")
    elif args.disable:
        out.text(f"emergency mode disabled on {where}: normal limits are back")
    else:
        out.text(f"emergency mode {'ON' if on else 'off'} on {where}")
    return EXIT_OK


def cmd_reset(args: argparse.Namespace, out: Output) -> int:
    gov = _governor(args)
    try:
        where = f"{gov.config.redacted_backend()} (namespace {gov.config.namespace})"
        keys = gov.reset_limits(args.service)
        _check_reachable(gov, "nothing was reset")
    finally:
        gov.close()
    what = args.service or "every service"
    out.text(f"limits state of {what} reset on {where}: {len(keys)} limit scope(s) "
             f"({', '.join(keys) or 'none had state'}); learned provider limits, blocks, "
             "circuit and buckets start afresh; budgets are untouched")
    return EXIT_OK


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

    gov = _governor(args)
    try:
        text = export_json(gov) + "\n"
    finally:
        gov.close()
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
    "dashboard": cmd_dashboard,
}
