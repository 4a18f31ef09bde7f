"""The union of what processes publish, from fabricated summaries: tightest budgets, the
majority's limits, one line per disagreement, and the config an observer adopts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import llm_governor
from llm_governor.exporters.fleet import published, union


def summary(**changes: Any) -> dict[str, Any]:
    cfg = llm_governor.load_config({"environment": "production",
                                    "budget": {"per_day": "50.00"},
                                    "services": {"worker": {"refill_rate": 2.0}}})
    out = cfg.summary(["custom"])
    out.update(changes)
    return out


def test_agreeing_processes_give_their_budgets_and_limits() -> None:
    fleet = union({"a": summary(), "b": summary()})
    assert fleet.budgets == {"day": Decimal("50.00")}
    assert fleet.disagreements == []
    assert fleet.services["worker"]["refill_rate"] == 2.0
    assert "custom" in fleet.services and "openai" in fleet.services
    adopted = fleet.adopt(llm_governor.load_config({"backend": "memory"}))
    assert adopted.budget.windows() == {"day": Decimal("50.00")}
    assert adopted.environment == "production"
    assert adopted.service("worker").refill_rate == 2.0
    assert adopted.source == "published by the live processes"


def test_disagreements_are_named_and_the_tightest_budget_wins() -> None:
    other_worker = summary()["services"]["worker"] | {"refill_rate": 0.5, "max_tokens": 4}
    fleet = union({
        "web1:1:a": summary(),
        "web1:2:b": summary(),
        "web2:3:c": summary(budgets={"day": "20.00", "hour": "5.00"}, version="0.0.9",
                            services={**summary()["services"], "worker": other_worker}),
    }, silent=["old:4:d"])
    assert fleet.budgets == {"hour": Decimal("5.00"), "day": Decimal("20.00")}
    lines = fleet.disagreements
    assert lines[0] == "llm-governor version: 0.1.0 in 2 processes, 0.0.9 in web2:3:c"
    assert "budget per_hour: none in 2 processes, $5.00 in web2:3:c" in lines[1]
    assert "budget per_day: $50.00 in 2 processes, $20.00 in web2:3:c" in lines[2]
    assert lines[3] == ("services.worker: max_tokens 2 in 2 processes, 4 in web2:3:c; "
                        "refill_rate 2.0 in 2 processes, 0.5 in web2:3:c")
    assert fleet.services["worker"]["refill_rate"] == 2.0  # the majority's
    assert fleet.silent == ["old:4:d"]


def test_published_reads_the_enforcement_of_each_process() -> None:
    members, silent = published({"p1": {"pid": 1, "enforces": summary()}, "p2": {"pid": 2}})
    assert list(members) == ["p1"] and silent == ["p2"]
    assert union({}).adopt(base := llm_governor.load_config({"backend": "memory"})) is base
