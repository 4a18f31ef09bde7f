"""The argument parser: global options valid before or after the command, one sub-parser
per command, help texts and the exit codes in every epilog."""

from __future__ import annotations

import argparse
import re
from typing import Any

from .._version import __version__
from ..exporters.server import DEFAULT_PORT
from ..policies.budget import WINDOW_SECONDS
from .argtypes import seconds, whole
from .commands import scope_arg, scope_kind_arg

__all__ = ["EPILOG", "build_parser"]

RULE_CHOICES = ("alerts.yml", "alerts_test.yml", "prometheus-scrape.yml", "otel-collector.yaml")


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Options valid before or after the command (``--config X status`` = ``status --config X``)."""
    default: Any = argparse.SUPPRESS if suppress else None
    g = p.add_argument_group("global options")
    g.add_argument("--config", metavar="FILE", default=default,
                   help="TOML configuration (default: $LLM_GOVERNOR_CONFIG, else the presets)")
    g.add_argument("--backend", metavar="URL", default=default,
                   help='state backend: "memory", "sqlite:///path", "redis://host:6379/0" '
                        "(default: $LLM_GOVERNOR_BACKEND, else the config's, else the "
                        "user's SQLite file)")
    g.add_argument("--namespace", metavar="NAME", default=default, type=_namespace,
                   help="the applications' namespace on the backend (default: the config's, "
                        "else default)")
    g.add_argument("--environment", metavar="ENV", default=default,
                   help="development | testing | staging | production (overrides the config)")
    g.add_argument("--plain", action="store_true",
                   default=argparse.SUPPRESS if suppress else False,
                   help="plain text even on a terminal")
    g.add_argument("-v", "--verbose", action="count",
                   default=argparse.SUPPRESS if suppress else 0,
                   help="log more to stderr (-v info, -vv debug)")


def _namespace(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: 1-64 letters, digits, '_', '.' or '-'")
    return text


EPILOG = """exit codes:
  0  success; status: healthy
  1  status: degraded; reset: not confirmed
  2  status: critical; any command: usage error or invalid configuration
  3  runtime failure (state file missing, backend unusable, file not writable, demo
     unavailable or failed)
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="llm-governor",
        description="Status, live monitor, emergency switch, exports, config validation and "
                    "monitoring assets for llm-governor. Commands act on the configured "
                    "backend, so they see and steer every process sharing it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"llm-governor {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, description: str,
                add_help: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           add_help=add_help)
        _global_options(p, suppress=True)
        return p

    p = command("status", "health, services, budgets, costs and live processes",
                "Show overall health, per-service limiter state, budgets, costs and every "
                "live process on the backend, with the budgets and limits the live processes "
                "publish (no --config needed; a --config joins them, and differences are "
                "shown). Reads only: a missing state file is an error. Exit 0 healthy, "
                "1 degraded, 2 critical, 3 backend missing or unreachable.")
    p.add_argument("--json", action="store_true", help="print the JSON status document")
    p.add_argument("--scope", metavar="KIND", type=scope_kind_arg,
                   help="only the scope kind KIND (e.g. tenant): its values that spent most "
                        "first, each budget window's spend and limit")
    p.add_argument("--top", type=whole(), default=20, metavar="N",
                   help="with --scope: show the N top spenders (default 20, 0: all)")

    p = command("monitor", "live refreshing view of status and alerts",
                "Refresh the status view and evaluate alerts every --interval seconds: a "
                "live view on a terminal, one text block per refresh when piped.")
    p.add_argument("--interval", type=seconds(), default=2.0, metavar="S",
                   help="seconds between refreshes (default 2)")
    p.add_argument("--iterations", type=whole(), default=0, metavar="N",
                   help="stop after N refreshes (default 0: until Ctrl-C)")

    p = command("emergency", "switch emergency mode for every process on the backend",
                "Enable or disable emergency mode: every process on the backend drops to the "
                "emergency limits (or refuses calls with emergency_action = \"refuse\") at its "
                "next admission.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--enable", action="store_true", help="turn emergency mode on")
    g.add_argument("--disable", action="store_true", help="turn emergency mode off")
    g.add_argument("--status", action="store_true", help="only show whether it is on")

    p = command("reset", "forget learned limits, blocks and circuit state; --budgets: spend",
                "Without --budgets: reset the limiter state of SERVICE (every service when "
                "omitted) for every process on the backend: the limits learned from the "
                "provider's headers, any block a retry-after set, the circuit breaker and the "
                "rate buckets start afresh; budgets are untouched. With --budgets: forget the "
                "spend of every budget window (or --window), after a confirmation (--yes "
                "skips it): budgets persist across restarts on purpose, this is the way to "
                "start one afresh. Exit 1 when not confirmed.")
    p.add_argument("service", nargs="?", metavar="SERVICE",
                   help="the service whose limits to reset, e.g. openai (default: all)")
    p.add_argument("--service", dest="service_option", metavar="SERVICE",
                   help="the same as SERVICE")
    p.add_argument("--limits", action="store_true",
                   help="reset limits state (the default without --budgets)")
    p.add_argument("--budgets", action="store_true",
                   help="forget the spend of the budgets instead (add --limits for both)")
    p.add_argument("--window", choices=tuple(WINDOW_SECONDS),
                   help="with --budgets: only this window (default: every window)")
    p.add_argument("--scope", type=scope_arg, metavar="KIND=VALUE",
                   help="with --budgets: the scoped budget of e.g. tenant=acme instead of "
                        "the global one")
    p.add_argument("--yes", "-y", action="store_true",
                   help="do not ask for confirmation")

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
    p.add_argument("--file", choices=RULE_CHOICES, default="alerts.yml",
                   help="which bundled file to print (default alerts.yml)")

    command("dashboard", "print the Grafana dashboard JSON",
            "Print the shipped Grafana dashboard, e.g. llm-governor dashboard > dashboard.json")

    p = command("serve", "serve /healthz, /status, /metrics and /alerts over HTTP",
                "A read-only HTTP status server for what the live processes on the backend "
                "enforce and spend: /healthz, /status (the JSON of status --json), /metrics "
                "(Prometheus text) and /alerts. Loopback by default; any other address needs "
                "a bearer token (--token or $LLM_GOVERNOR_SERVE_TOKEN). Runs until Ctrl-C.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=whole(0, 65535), default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}, 0: any free port)")
    p.add_argument("--token", default=None,
                   help="bearer token required on every path but /healthz")

    command("demo", "every promise in six short acts, offline (options go to the demo)",
            "Rate limits, a hard budget, retries, the circuit breaker, priorities and "
            "emergency mode, through the real SDKs against the bundled fake provider, in "
            "about 20 seconds. Every option after 'demo' is passed to it; see "
            "llm-governor demo --help.",
            add_help=False)
    return parser
