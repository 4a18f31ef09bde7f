"""The ``llm-governor`` command line (also ``python -m llm_governor``).

Every command reads and writes the configured backend, so it sees and steers
every process that shares it: ``status`` and ``monitor`` show the shared
limiter state plus the live processes published on the backend, ``emergency``
flips the flag every process reads inside each admission.

Output: rich tables on a terminal, plain text when piped (or with ``--plain``,
or when rich is not installed), JSON with ``--json``. Backend URLs are always
shown redacted and error messages are scrubbed of passwords.

Exit codes (``status`` follows the Nagios plugin convention)::

    0  success; status: healthy
    1  status: degraded
    2  status: critical; any command: usage error or invalid configuration
    3  runtime failure: backend unusable, file not writable, demo missing or failed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import unquote

from . import __version__
from .config import GovernorConfig, default_state_path, load_config
from .errors import ConfigError

if TYPE_CHECKING:
    from .exporters.monitor import RateLimitAlert
    from .governor import Governor

__all__ = ["EXIT_CRITICAL", "EXIT_DEGRADED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_CRITICAL = 2
EXIT_USAGE = 2
EXIT_RUNTIME = 3
_STATUS_EXIT = {"healthy": EXIT_OK, "degraded": EXIT_DEGRADED, "critical": EXIT_CRITICAL}
_RULE_CHOICES = ("alerts.yml", "alerts_test.yml", "prometheus-scrape.yml", "otel-collector.yaml")

logger = logging.getLogger("llm_governor")


class CLIError(Exception):
    """A failure the CLI reports in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ secrets
_secrets: set[str] = set()


def _remember_url(url: str | None) -> None:
    """Note the password of a backend URL so no output can carry it."""
    if not url or "://" not in url or "@" not in url:
        return
    creds = url.split("://", 1)[1].rpartition("@")[0]
    password = creds.split(":", 1)[1] if ":" in creds else creds
    for variant in (password, unquote(password)):
        if len(variant) >= 3:
            _secrets.add(variant)


def scrub(text: str) -> str:
    """``text`` with every known backend password replaced by ``***``."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class _ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


# ------------------------------------------------------------------ output
Cell = str | tuple[str, str]  # text, or (text, rich style)


@dataclass
class Table:
    """A titled table rendered as rich or plain text."""

    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    empty: str = "(none)"


Block = str | tuple[str, str] | Table


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _text(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell[0]


def render_plain(blocks: Sequence[Block]) -> str:
    """Aligned plain text: what a pipe, a log file or ``grep`` gets."""
    lines: list[str] = []
    for block in blocks:
        if not isinstance(block, Table):
            lines.append(_text(block))
            continue
        lines.append("")
        lines.append(block.title)
        if not block.rows:
            lines.append(f"  {block.empty}")
            continue
        cells = [block.columns] + [[_text(c) for c in row] for row in block.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(block.columns))]
        for r in cells:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
                         .rstrip())
    return "\n".join(lines) + "\n"


def render_rich(blocks: Sequence[Block]) -> Any:
    """A rich renderable of ``blocks`` (a Group of texts and tables)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    parts: list[Any] = []
    for block in blocks:
        if isinstance(block, str):
            parts.append(Text(block))
        elif isinstance(block, tuple):
            parts.append(Text(block[0], style=block[1]))
        else:
            parts.append(Text(""))
            if not block.rows:
                parts.append(Text(f"{block.title}: {block.empty}", style="dim"))
                continue
            parts.append(Text(block.title, style="bold"))
            t = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            for col in block.columns:
                t.add_column(col)
            for row in block.rows:
                t.add_row(*(Text(c) if isinstance(c, str) else Text(c[0], style=c[1])
                            for c in row))
            parts.append(t)
    return Group(*parts)


class Output:
    """Where and how a command prints: rich on a terminal, plain otherwise."""

    def __init__(self, plain: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.rich = not plain and self.stream.isatty() and _rich_available()
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream)
        return self._console

    def show(self, blocks: Sequence[Block]) -> None:
        if self.rich:
            self.console.print(render_rich(blocks))
        else:
            self.stream.write(render_plain(blocks))
        self.stream.flush()

    def text(self, text: str) -> None:
        self.stream.write(text if text.endswith("\n") else text + "\n")
        self.stream.flush()


# ------------------------------------------------------------------ views
_STATUS_STYLE = {"healthy": "bold green", "degraded": "bold yellow", "critical": "bold red"}
_CIRCUIT_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}
_DECISIONS = ("admitted", "rate_limited", "queue_full", "budget_exceeded", "circuit_open",
              "emergency")


def _money(value: Any) -> str:
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    return f"${d:.4f}" if abs(d) < 1000 else f"${d:,.2f}"


def _counts(mapping: Any) -> str:
    if not isinstance(mapping, dict):
        return "-"
    items = [f"{k}={v}" for k, v in sorted(mapping.items()) if v]
    return ", ".join(items) or "-"


def status_document(gov: Governor) -> dict[str, Any]:
    """The export document plus the health headline at the top level (``status --json``)."""
    from .exporters.export import export_document

    doc: dict[str, Any] = export_document(gov)
    doc["overall_status"] = doc["health"]["overall_status"]
    doc["health_score"] = doc["health"]["health_score"]
    return doc


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
    by_service = doc["costs"]["by_service"]
    services = Table("Services", ["SERVICE", "SCORE", "CIRCUIT", "TOKENS", "RATE/S",
                                  "SUCCESS", "RECENT", "QUEUED", "IN FLIGHT", "ADMITTED",
                                  "REFUSED", "COST"])
    for name, s in sorted(doc["services"].items()):
        requests = s.get("requests") or {}
        refused = sum(int(v) for k, v in requests.items() if k != "admitted")
        circuit = str(s["circuit_state"])
        services.rows.append([
            name, f"{s['health_score']:.1f}", (circuit, _CIRCUIT_STYLE.get(circuit, "")),
            f"{float(s['tokens_available']):.1f}/{float(s['tokens_capacity']):g}",
            f"{float(s['rate']):.3g}", f"{float(s['success_rate']):.0%}",
            str(s["recent_calls"]), str(s["queue_size"]), str(s["in_flight"]),
            str(requests.get("admitted", 0)), str(refused),
            _money(by_service.get(name, "0")),
        ])
    blocks.append(services)

    decisions = Table("Admission decisions", ["SERVICE", *(d.upper() for d in _DECISIONS)])
    for name, s in sorted(doc["services"].items()):
        req = s.get("requests") or {}
        if req:
            decisions.rows.append([name, *(str(req.get(d, 0)) for d in _DECISIONS)])
    decisions.empty = "no calls yet"
    blocks.append(decisions)

    budgets = Table("Budgets (UTC calendar windows)",
                    ["WINDOW", "LIMIT", "SPENT", "RESERVED", "REMAINING", "LEFT"],
                    empty="none configured")
    for window, b in doc["budgets"].items():
        limit = Decimal(b["limit"])
        left = Decimal(b["remaining"]) / limit if limit else Decimal(1)
        style = "red" if left < Decimal("0.1") else ("yellow" if left < Decimal("0.5") else "")
        budgets.rows.append([window, _money(b["limit"]), _money(b["spent"]),
                             _money(b["reserved"]), _money(b["remaining"]),
                             (f"{float(left):.0%}", style)])
    blocks.append(budgets)

    costs = Table(f"Costs (total {_money(doc['costs']['total'])})",
                  ["SERVICE", "MODEL", "CALLS OK", "CALLS FAILED", "COST"], empty="no calls yet")
    seen: set[tuple[str, str]] = set()
    by_model = doc["costs"]["by_service_model"]
    for name, s in sorted(doc["services"].items()):
        for model, statuses in sorted((s.get("calls") or {}).items()):
            seen.add((name, model))
            failed = sum(int(v) for k, v in statuses.items() if k != "ok")
            costs.rows.append([name, model, str(statuses.get("ok", 0)), str(failed),
                               _money(by_model.get(name, {}).get(model, "0"))])
    for name, models in sorted(by_model.items()):
        for model, cost in sorted(models.items()):
            if (name, model) not in seen:
                costs.rows.append([name, model, "0", "0", _money(cost)])
    blocks.append(costs)

    jobs = doc["costs"].get("by_job") or {}
    if jobs:
        top = sorted(jobs.items(), key=lambda kv: Decimal(str(kv[1])), reverse=True)
        job_table = Table(f"Jobs by cost (top {min(len(top), 10)} of {len(top)})",
                          ["JOB", "COST"])
        job_table.rows = [[j, _money(c)] for j, c in top[:10]]
        blocks.append(job_table)

    procs = Table("Live processes on this backend",
                  ["PROCESS", "HOST", "PID", "QUEUED", "IN FLIGHT"],
                  empty="none published in the last 10 s")
    for pid, p in sorted(doc["processes"].items()):
        procs.rows.append([pid, str(p.get("host", "?")), str(p.get("pid", "?")),
                           _counts(p.get("queues")), _counts(p.get("in_flight"))])
    blocks.append(procs)
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


# ------------------------------------------------------------------ governor
def _config(args: argparse.Namespace, path: str | None = None) -> GovernorConfig:
    _remember_url(args.backend)
    _remember_url(os.environ.get("LLM_GOVERNOR_BACKEND"))
    cfg = load_config(path or args.config, environment=args.environment, backend=args.backend)
    _remember_url(cfg.backend)
    return cfg


def _governor(args: argparse.Namespace) -> Governor:
    """A governor on the configured backend (no SDK patched, nothing exported)."""
    from .governor import Governor

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


# ------------------------------------------------------------------ commands
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
    return _STATUS_EXIT.get(str(doc["overall_status"]), EXIT_CRITICAL)


def cmd_monitor(args: argparse.Namespace, out: Output) -> int:
    from .exporters.monitor import RateLimitMonitor

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
    from .exporters.export import export_json

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
    budgets = ", ".join(f"per_{w} {_money(v)}" for w, v in cfg.budget.windows().items())
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
    from .exporters.rules import read_rule_file

    out.text(read_rule_file(args.file))
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace, out: Output) -> int:
    from .exporters.rules import read_rule_file

    out.text(read_rule_file("dashboard.json"))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: Output, extra: list[str]) -> int:
    try:
        from . import demo  # type: ignore[attr-defined,unused-ignore]
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


# ------------------------------------------------------------------ parser
def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Options valid before or after the command (``--config X status`` = ``status --config X``)."""
    default: Any = argparse.SUPPRESS if suppress else None
    g = p.add_argument_group("global options")
    g.add_argument("--config", metavar="FILE", default=default,
                   help="TOML configuration (default: $LLM_GOVERNOR_CONFIG, else the presets)")
    g.add_argument("--backend", metavar="URL", default=default,
                   help='state backend: "memory", "sqlite:///path", "redis://host:6379/0" '
                        "(default: the config's, else $LLM_GOVERNOR_BACKEND, else the "
                        "user's SQLite file)")
    g.add_argument("--environment", metavar="ENV", default=default,
                   help="development | testing | staging | production (overrides the config)")
    g.add_argument("--plain", action="store_true",
                   default=argparse.SUPPRESS if suppress else False,
                   help="plain text even on a terminal")
    g.add_argument("-v", "--verbose", action="count",
                   default=argparse.SUPPRESS if suppress else 0,
                   help="log more to stderr (-v info, -vv debug)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


_EPILOG = """exit codes:
  0  success; status: healthy
  1  status: degraded
  2  status: critical; any command: usage error or invalid configuration
  3  runtime failure (backend unusable, file not writable, demo unavailable)
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="llm-governor",
        description="Status, live monitor, emergency switch, exports, config validation and "
                    "monitoring assets for llm-governor. Commands act on the configured "
                    "backend, so they see and steer every process sharing it.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"llm-governor {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, description: str,
                add_help: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description, epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           add_help=add_help)
        _global_options(p, suppress=True)
        return p

    p = command("status", "health, services, budgets, costs and live processes",
                "Show overall health, per-service limiter state, budgets, costs and every "
                "live process on the backend. Exit 0 healthy, 1 degraded, 2 critical.")
    p.add_argument("--json", action="store_true", help="print the JSON status document")

    p = command("monitor", "live refreshing view of status and alerts",
                "Refresh the status view and evaluate alerts every --interval seconds: a "
                "live view on a terminal, one text block per refresh when piped.")
    p.add_argument("--interval", type=_positive, default=2.0, metavar="S",
                   help="seconds between refreshes (default 2)")
    p.add_argument("--iterations", type=_count, default=0, metavar="N",
                   help="stop after N refreshes (default 0: until Ctrl-C)")

    p = command("emergency", "switch emergency mode for every process on the backend",
                "Enable or disable emergency mode: every process on the backend drops to the "
                "emergency limits (or refuses calls with emergency_action = \"refuse\") at its "
                "next admission.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--enable", action="store_true", help="turn emergency mode on")
    g.add_argument("--disable", action="store_true", help="turn emergency mode off")
    g.add_argument("--status", action="store_true", help="only show whether it is on")

    p = command("reset", "forget learned limits, blocks and circuit state (not budgets)",
                "Reset the limiter state of SERVICE (every service when omitted) for every "
                "process on the backend: the limits learned from the provider's headers, any "
                "block a retry-after set, the circuit breaker and the rate buckets start "
                "afresh. Budgets and spend are untouched.")
    p.add_argument("service", nargs="?", metavar="SERVICE",
                   help="the service to reset, e.g. openai (default: all)")

    p = command("export", "write the JSON metrics document",
                "Write the JSON metrics export (per-service state, counters, costs by "
                "service/model/job, budgets, live processes). Files are created 0600.")
    p.add_argument("--output", "-o", metavar="FILE", default="-",
                   help="output file, '-' for stdout (default)")

    p = command("validate", "check a configuration file",
                "Validate a configuration (CONFIG, else --config, else $LLM_GOVERNOR_CONFIG, "
                "else the presets). Exit 0 when valid, 2 with the offending key, value and "
                "what is allowed when not.")
    p.add_argument("file", nargs="?", metavar="CONFIG", help="TOML file to validate")

    p = command("rules", "print the Prometheus alert rules",
                "Print the shipped Prometheus alert rules (or another bundled monitoring "
                "file), e.g. llm-governor rules > alerts.yml")
    p.add_argument("--file", choices=_RULE_CHOICES, default="alerts.yml",
                   help="which bundled file to print (default alerts.yml)")

    command("dashboard", "print the Grafana dashboard JSON",
            "Print the shipped Grafana dashboard, e.g. llm-governor dashboard > dashboard.json")

    command("demo", "run the offline demo workload (options go to the demo)",
            "An offline workload through the real SDKs against the bundled fake provider. "
            "Every option after 'demo' is passed to it; see llm-governor demo --help.",
            add_help=False)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "status": cmd_status, "monitor": cmd_monitor, "emergency": cmd_emergency,
    "reset": cmd_reset, "export": cmd_export, "validate": cmd_validate, "rules": cmd_rules,
    "dashboard": cmd_dashboard,
}


def _setup_logging(verbose: int) -> Callable[[], None]:
    """Log llm_governor records to stderr (scrubbed); returns what restores the logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ScrubbingFormatter("llm-governor: %(levelname)s %(message)s"))
    saved = (list(logger.handlers), logger.propagate, logger.level)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else
                    logging.WARNING)

    def restore() -> None:
        logger.handlers[:] = saved[0]
        logger.propagate = saved[1]
        logger.setLevel(saved[2])

    return restore


def _error(message: str) -> None:
    sys.stderr.write(f"llm-governor: error: {scrub(message)}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(args_list)
    except SystemExit as exc:  # usage error (2) or --help/--version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if extra and args.command != "demo":
        _error(f"unrecognized arguments: {' '.join(extra)} (see llm-governor "
               f"{args.command} --help)")
        return EXIT_USAGE
    restore_logging = _setup_logging(args.verbose)
    out = Output(plain=args.plain or getattr(args, "json", False))
    try:
        if args.command == "demo":
            return cmd_demo(args, out, extra)
        return _COMMANDS[args.command](args, out)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except CLIError as exc:
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `llm-governor rules | head`: the reader left; that is not a failure.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        logger.debug("command failed", exc_info=True)
        _error(f"{args.command} failed: {type(exc).__name__}: {exc}")
        return EXIT_RUNTIME
    finally:
        restore_logging()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
