"""The JSON metrics export (``export_rate_limit_metrics()``): its structure,
per-service state and counters, costs by service, model and job, budgets and
live processes, with money as exact decimal strings."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

import llm_governor
from llm_governor.governor import Governor

GovFactory = Callable[..., Governor]
FAST = {"max_tokens": 100, "refill_rate": 100.0, "burst_capacity": 0, "min_interval": 0.001,
        "max_cost_per_minute": "100", "failure_threshold": 10}


@pytest.fixture
def gov(governor_factory: GovFactory) -> Governor:
    gov = governor_factory({"environment": "staging",
                            "budget": {"per_day": "5.00", "per_minute": "2.00"},
                            "services": {"chat": FAST, "speech": FAST}})

    @llm_governor.rate_limited("chat", cost=Decimal("0.10"), model="gpt-4o")
    def chat() -> None:
        return None

    @llm_governor.rate_limited("chat", cost=Decimal("0.01"), model="gpt-4o-mini")
    def chat_mini() -> None:
        return None

    @llm_governor.rate_limited("speech", cost=Decimal("0.25"), model="nova-3")
    def speech(fail: bool = False) -> None:
        if fail:  # provably never sent: free by the charging rule
            raise ConnectionRefusedError("down")

    with llm_governor.job("j1"):
        chat()
        chat()
        speech()
    with llm_governor.job("j2"):
        chat_mini()
    chat_mini()  # no job
    with pytest.raises(ConnectionRefusedError):
        speech(fail=True)
    with pytest.raises(llm_governor.BudgetExceededError):
        llm_governor.rate_limited("chat", cost=Decimal("3.00"))(lambda: None)()
    return gov


def test_top_level_structure(gov: Governor) -> None:
    doc = json.loads(llm_governor.export_rate_limit_metrics())
    assert set(doc) == {"generated_at", "environment", "backend", "namespace", "config",
                        "emergency_mode", "backend_degraded", "health", "services", "costs",
                        "budgets", "spend", "enforced", "scopes", "alerts", "processes"}
    assert doc["environment"] == "staging"
    assert doc["backend"] == "memory" and doc["namespace"] == "default"
    assert doc["emergency_mode"] is False and doc["backend_degraded"] is False
    assert set(doc["health"]) == {"overall_status", "health_score"}
    assert isinstance(doc["generated_at"], float)


def test_per_service_state_and_counters(gov: Governor) -> None:
    doc = json.loads(llm_governor.export_rate_limit_metrics())
    assert set(doc["services"]) >= {"chat", "speech", "openai", "anthropic", "gemini",
                                    "deepgram"}
    chat, speech = doc["services"]["chat"], doc["services"]["speech"]
    for key in ("circuit_state", "tokens_available", "tokens_capacity", "rate",
                "success_rate", "recent_calls", "queue_size", "queue_fill", "max_queue_size",
                "in_flight", "health_score", "requests", "calls", "retries"):
        assert key in chat, key
    assert chat["requests"] == {"admitted": 4, "budget_exceeded": 1}
    assert chat["calls"] == {"gpt-4o": {"ok": 2}, "gpt-4o-mini": {"ok": 2}}
    assert speech["calls"] == {"nova-3": {"ok": 1, "error": 1}}
    assert speech["success_rate"] == 0.5 and speech["recent_calls"] == 2
    assert chat["circuit_state"] == "closed" and chat["in_flight"] == 0
    assert chat["tokens_capacity"] == 100.0
    assert chat["retries"] == 0


def test_costs_by_service_model_and_job(gov: Governor) -> None:
    costs = json.loads(llm_governor.export_rate_limit_metrics())["costs"]
    assert costs["total"] == "0.47"
    assert costs["by_service"] == {"chat": "0.22", "speech": "0.25"}
    assert costs["by_model"] == {"gpt-4o": "0.20", "gpt-4o-mini": "0.02", "nova-3": "0.25"}
    assert costs["by_service_model"] == {"chat": {"gpt-4o": "0.20", "gpt-4o-mini": "0.02"},
                                         "speech": {"nova-3": "0.25"}}
    assert costs["by_job"] == {"j1": "0.45", "j2": "0.01"}


def test_budgets(gov: Governor) -> None:
    doc = json.loads(llm_governor.export_rate_limit_metrics())
    budgets = doc["budgets"]
    assert set(budgets) == {"minute", "day"}
    assert budgets["day"] == {"limit": "5.00", "spent": "0.47", "reserved": "0",
                              "remaining": "4.53"}
    assert budgets["minute"]["limit"] == "2.00"
    assert doc["spend"] == {"minute": "0.47", "day": "0.47"}
    # what this process enforces, as every other process and the CLI see it
    enforced = doc["enforced"]
    assert list(enforced["members"]) == [gov.process_id]
    assert enforced["budgets"] == {"minute": "2.00", "day": "5.00"}
    assert enforced["members"][gov.process_id]["environment"] == "staging"
    assert enforced["disagreements"] == []


def test_money_is_exact_decimal_strings(gov: Governor) -> None:
    doc = json.loads(llm_governor.export_rate_limit_metrics())

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif path.startswith((".costs", ".budgets")):
            assert isinstance(node, str), path
            Decimal(node)

    walk(doc, "")


def test_live_processes_and_emergency(gov: Governor) -> None:
    gov._last_publish = 0.0
    gov._maybe_publish()
    gov.set_emergency(True)
    doc = json.loads(llm_governor.export_rate_limit_metrics())
    assert doc["emergency_mode"] is True
    assert doc["health"]["overall_status"] == "degraded"
    (proc,) = doc["processes"].values()
    assert set(proc) >= {"pid", "host", "queues", "in_flight"}


def test_export_from_another_process_sees_the_same_state(governor_factory: GovFactory,
                                                         tmp_path: Path) -> None:
    """On SQLite the export is the backend's, not one process's view."""
    url = f"sqlite:///{tmp_path / 'g.db'}"
    gov = governor_factory({"backend": url, "services": {"chat": FAST}})
    with llm_governor.job("nightly"):
        llm_governor.rate_limited("chat", cost=Decimal("0.30"), model="m")(lambda: None)()
    other = Governor(llm_governor.load_config({"backend": url}))
    try:
        from llm_governor.exporters.export import export_document

        doc = export_document(other)
        assert doc["costs"]["by_job"] == {"nightly": "0.30"}
        assert doc["services"]["chat"]["calls"] == {"m": {"ok": 1}}
        assert gov.process_id in doc["processes"]
    finally:
        other.close()
