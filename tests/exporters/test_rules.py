"""Tests for the monitoring assets in ``llm_governor/exporters/rules``.

* promtool: ``check rules``, ``test rules`` (unit tests in alerts_test.yml),
  ``check config`` for the scrape config, and a syntax check of every
  dashboard query (wrapped as recording rules).
* static checks: alert names and metadata, dashboard structure, and that
  every PromQL expression only uses metric names from the llm_governor
  metric contract.

When promtool is not installed the promtool tests are skipped, except in CI
(``CI=true``), where a missing promtool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

try:  # preferred: the package resource helper
    from llm_governor.exporters.rules import RULE_FILES, read_rule_file
except ImportError:  # pragma: no cover - package not importable yet
    _RULES_DIR = Path(__file__).resolve().parents[2] / "llm_governor" / "exporters" / "rules"
    RULE_FILES = (
        "alerts.yml",
        "alerts_test.yml",
        "dashboard.json",
        "otel-collector.yaml",
        "prometheus-scrape.yml",
        "README.md",
    )

    def read_rule_file(name: str) -> str:
        return (_RULES_DIR / name).read_text(encoding="utf-8")

    _HAVE_PACKAGE = False
else:
    _HAVE_PACKAGE = True


# --------------------------------------------------------------------------
# Metric contract (Prometheus names after OTel translation)
# --------------------------------------------------------------------------

COUNTERS = {
    "llm_governor_requests_total",
    "llm_governor_calls_total",
    "llm_governor_retries_total",
    "llm_governor_cost_USD_total",
    "llm_governor_budget_threshold_total",
}
GAUGES = {
    "llm_governor_budget_remaining_USD",
    "llm_governor_budget_limit_USD",
    "llm_governor_tokens_available",
    "llm_governor_tokens_capacity",
    "llm_governor_queue_size",
    "llm_governor_queue_capacity",
    "llm_governor_circuit_state",
    "llm_governor_limit_rate",
    "llm_governor_provider_remaining",
    "llm_governor_emergency",
    "llm_governor_backend_degraded",
}
HISTOGRAMS = {
    "llm_governor_queue_wait_seconds",
    "gen_ai_client_token_usage",
    "gen_ai_client_operation_duration_seconds",
}
CONTRACT_METRICS = (
    COUNTERS
    | GAUGES
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)

CONTRACT_ALERTS = {
    "LLMGovernorCircuitOpen",
    "LLMGovernorHighFailureRate",
    "LLMGovernorQueueBackup",
    "LLMGovernorCostSpike",
    "LLMGovernorLowTokens",
    "LLMGovernorBudgetNearlyExhausted",
    "LLMGovernorBudgetThreshold",
}

# Metrics the dashboard must chart (one panel family each).
DASHBOARD_REQUIRED_METRICS = {
    "llm_governor_requests_total",
    "llm_governor_calls_total",
    "llm_governor_retries_total",
    "llm_governor_cost_USD_total",
    "llm_governor_budget_remaining_USD",
    "llm_governor_queue_size",
    "llm_governor_queue_wait_seconds_bucket",
    "llm_governor_circuit_state",
    "llm_governor_tokens_available",
    "llm_governor_provider_remaining",
    "llm_governor_emergency",
    "gen_ai_client_token_usage_sum",
}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _skip_or_fail(reason: str) -> None:
    """Skip locally, but fail in CI (CI=true) so missing tools are noticed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: refusing to skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        _skip_or_fail("promtool not found on PATH (apt-get install prometheus)")
    return path


@pytest.fixture()
def rules_dir(tmp_path: Path) -> Path:
    """All rule files copied into a temp dir, so relative rule_files resolve."""
    for name in RULE_FILES:
        (tmp_path / name).write_text(read_rule_file(name), encoding="utf-8")
    return tmp_path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed with {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}


def promql_metric_names(expr: str) -> set[str]:
    """Best-effort extraction of the metric names referenced by a PromQL expr.

    Also understands Grafana's ``label_values(metric, label)`` and template
    variables (``$service``, ``$__rate_interval``, ``${datasource}``).
    """
    names: set[str] = set()
    for m in re.finditer(r"label_values\s*\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,", expr):
        names.add(m.group(1))
    if "label_values" in expr:
        return names
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # grafana variables
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range / subquery selectors
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", s):
        token = m.group(1)
        if token.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def _load_alert_rules() -> list[dict]:
    doc = yaml.safe_load(read_rule_file("alerts.yml"))
    groups = {g["name"]: g for g in doc["groups"]}
    assert "llm_governor" in groups, "rule group llm_governor missing"
    return [r for r in groups["llm_governor"]["rules"] if "alert" in r]


def _load_dashboard() -> dict:
    return json.loads(read_rule_file("dashboard.json"))


def _iter_panels(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from _iter_panels(p.get("panels", []))


def _dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) for every PromQL query in the dashboard."""
    out: list[tuple[str, str]] = []
    for p in _iter_panels(dash["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p.get('title')!r} ref {t.get('refId')}", t["expr"]))
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"]))
    for v in dash["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']!r}", q))
            if v.get("definition"):
                out.append((f"variable {v['name']!r} definition", v["definition"]))
    return out


def _duration_seconds(d: str | None) -> float:
    if not d:
        return 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total = 0.0
    for num, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", d):
        total += int(num) * units[unit]
    assert re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", d), f"bad duration {d!r}"
    return total


# --------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str, rules_dir: Path) -> None:
    proc = _run([promtool, "check", "rules", "alerts.yml"], cwd=rules_dir)
    assert f"SUCCESS: {len(CONTRACT_ALERTS)} rules found" in proc.stdout + proc.stderr


def test_promtool_unit_tests(promtool: str, rules_dir: Path) -> None:
    # run from the temp dir: rule_files in alerts_test.yml are relative
    proc = _run([promtool, "test", "rules", "alerts_test.yml"], cwd=rules_dir)
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_check_scrape_config(promtool: str, rules_dir: Path) -> None:
    _run([promtool, "check", "config", "prometheus-scrape.yml"], cwd=rules_dir)


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Wrap each dashboard query in a recording rule and let promtool parse it."""
    rules = []
    for i, (where, expr) in enumerate(_dashboard_exprs(_load_dashboard())):
        if "label_values" in expr:
            continue
        expr = (
            expr.replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$service", ".*")
        )
        assert "$" not in expr, f"{where}: unhandled template variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}:check", "expr": expr})
    (tmp_path / "dash_rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    _run([promtool, "check", "rules", "dash_rules.yml"], cwd=tmp_path)


# --------------------------------------------------------------------------
# alerts
# --------------------------------------------------------------------------


def test_all_contract_alerts_present() -> None:
    names = [r["alert"] for r in _load_alert_rules()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert set(names) == CONTRACT_ALERTS


@pytest.mark.parametrize("alert", sorted(CONTRACT_ALERTS))
def test_alert_metadata(alert: str) -> None:
    rule = {r["alert"]: r for r in _load_alert_rules()}[alert]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    ann = rule["annotations"]
    assert ann.get("summary") and ann.get("description")
    assert "{{ $labels." in ann["summary"] + ann["description"]
    # production-friendly, but never longer than 10 minutes
    assert _duration_seconds(rule.get("for")) <= 600


def test_circuit_open_alert_fires_within_one_evaluation() -> None:
    rule = {r["alert"]: r for r in _load_alert_rules()}["LLMGovernorCircuitOpen"]
    assert _duration_seconds(rule.get("for")) == 0
    assert rule["labels"]["severity"] == "critical"
    assert re.fullmatch(r"\s*llm_governor_circuit_state\s*==\s*2\s*", rule["expr"])


def test_alert_exprs_use_only_contract_metrics() -> None:
    for rule in _load_alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in expr"
        unknown = names - CONTRACT_METRICS
        assert not unknown, f"{rule['alert']} uses non-contract metrics {unknown}"


def test_unit_tests_cover_each_alert_firing_and_not_firing() -> None:
    doc = yaml.safe_load(read_rule_file("alerts_test.yml"))
    assert doc["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing >= CONTRACT_ALERTS, f"no firing test for {CONTRACT_ALERTS - firing}"
    assert silent >= CONTRACT_ALERTS, f"no not-firing test for {CONTRACT_ALERTS - silent}"


# --------------------------------------------------------------------------
# dashboard
# --------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dash = _load_dashboard()
    assert dash["uid"] and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41
    panels = list(_iter_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for p in panels:
        gp = p["gridPos"]
        assert all(isinstance(gp[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert gp["w"] > 0 and gp["h"] > 0 and gp["x"] >= 0 and gp["x"] + gp["w"] <= 24
        if p["type"] != "row":
            assert p["targets"], f"panel {p['title']!r} has no queries"
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}"


def test_dashboard_template_variables() -> None:
    variables = {v["name"]: v for v in _load_dashboard()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    svc = variables["service"]
    assert svc["type"] == "query"
    assert svc["definition"] == "label_values(llm_governor_requests_total, service)"
    assert svc["query"]["query"] == svc["definition"]
    assert svc["datasource"]["uid"] == "${datasource}"


def test_dashboard_queries_use_only_contract_metrics() -> None:
    seen: set[str] = set()
    for where, expr in _dashboard_exprs(_load_dashboard()):
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert all(n.startswith(("llm_governor_", "gen_ai_")) for n in names), (where, names)
        unknown = names - CONTRACT_METRICS
        assert not unknown, f"{where} uses non-contract metrics {unknown}"
        seen |= names
    missing = DASHBOARD_REQUIRED_METRICS - seen
    assert not missing, f"dashboard lacks panels for {missing}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (le, service) (rate(foo_bucket{a="b",c=~"$service"}[$__rate_interval]))',
            {"foo_bucket"},
        ),
        ("up == 0 and on(job) node_load1 > 2", {"up", "node_load1"}),
        ("rate(x_total[1h] offset 5m) * 60 > 0.1", {"x_total"}),
        ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}),
        ("label_values(llm_governor_requests_total, service)", {"llm_governor_requests_total"}),
    ],
)
def test_metric_name_extractor(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


# --------------------------------------------------------------------------
# collector / scrape configs
# --------------------------------------------------------------------------


def test_otel_collector_pipeline() -> None:
    cfg = yaml.safe_load(read_rule_file("otel-collector.yaml"))
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].startswith("127.0.0.1:")
    assert protocols["http"]["endpoint"].startswith("127.0.0.1:")
    assert "batch" in cfg["processors"]
    prom = cfg["exporters"]["prometheus"]
    assert prom["endpoint"] == "127.0.0.1:9464"
    assert "namespace" not in prom, "a namespace would rename every metric"
    assert "resource_to_telemetry_conversion" in prom
    pipeline = cfg["service"]["pipelines"]["metrics"]
    assert pipeline == {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["prometheus"]}


def test_prometheus_scrape_config() -> None:
    cfg = yaml.safe_load(read_rule_file("prometheus-scrape.yml"))
    assert cfg["rule_files"] == ["alerts.yml"]
    targets = [
        t
        for job in cfg["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    ]
    assert "127.0.0.1:9464" in targets


def test_read_rule_file_helper() -> None:
    if not _HAVE_PACKAGE:
        pytest.skip("llm_governor.exporters.rules not importable")
    for name in RULE_FILES:
        assert read_rule_file(name).strip()
    for bad in ("../__init__.py", "nope.yml", "/etc/passwd"):
        with pytest.raises(FileNotFoundError):
            read_rule_file(bad)
