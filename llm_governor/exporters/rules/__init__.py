"""Prometheus alert rules, Grafana dashboard and collector/scrape configs.

The files in this package are data, shipped as package resources::

    from llm_governor.exporters.rules import read_rule_file

    alerts_yaml = read_rule_file("alerts.yml")

See README.md in this folder for how to load each file.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["RULE_FILES", "read_rule_file"]

RULE_FILES: tuple[str, ...] = (
    "alerts.yml",
    "alerts_test.yml",
    "dashboard.json",
    "otel-collector.yaml",
    "prometheus-scrape.yml",
    "README.md",
)


def read_rule_file(name: str) -> str:
    """Return the text of the bundled file ``name`` (e.g. ``"alerts.yml"``).

    Only the files listed in :data:`RULE_FILES` can be read; anything else
    raises :class:`FileNotFoundError` (this also rules out path traversal).
    """
    if name not in RULE_FILES:
        raise FileNotFoundError(
            f"unknown llm_governor rule file {name!r}; expected one of {', '.join(RULE_FILES)}"
        )
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
