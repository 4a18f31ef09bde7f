"""Usage above the reservation: the one case where the provider's bill may pass the budget.

A provider that counts (and bills) 100,000 more input tokens than the request
could hold makes a call cost far more than its upper bound. The governor
charges what was billed, warns naming the model, counts the overrun in the
backend (``overrun|service|model``) and in OpenTelemetry
(``llm_governor.budget.overrun``), and refuses the next calls until the
window has room again. The bill passes the budget by at most that one call's
overrun. The budget runs on a fake clock so "the next day" is instant.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import llm_governor
from llm_governor.testing import FakeProvider
from tests.conftest import FakeClock

from .conftest import GPT, MESSAGES, Govern, Spy, audit, check_errors, make_backend

BUDGET = Decimal("0.01")
EXTRA = 100_000  # input tokens the provider invents: $0.015 on gpt-4o-mini


def otel_overrun(reader: InMemoryMetricReader) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "llm_governor.budget.overrun":
                    for point in metric.data.data_points:
                        assert dict(point.attributes) == {"service": "openai", "model": GPT}
                        total += point.value
    return total


def test_usage_above_the_reservation_is_charged_counted_and_bounded(
        kind: str, fake: FakeProvider, govern: Govern, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(1_800_000_000.0)
    reader = InMemoryMetricReader()
    backend = make_backend(kind, tmp_path, {"day": BUDGET}, clock)
    gov = govern(kind, BUDGET, backend=backend, meter_provider=MeterProvider([reader]))
    spy = Spy(gov)
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)

    def chat() -> Any:
        return client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=20)

    chat()
    chat()
    fake.fail_next(kind="inflate_usage", extra_input_tokens=EXTRA)
    with caplog.at_level(logging.WARNING, logger="llm_governor"):
        inflated = chat()
    assert inflated.usage is not None and inflated.usage.prompt_tokens > EXTRA

    # the overrun: charged, warned about (naming the model), counted twice over
    big = fake.ledger.entries[-1]
    reservation = spy.reserved[-1]
    overrun = big.cost - reservation
    assert overrun > 0 and spy.records[-1].cost == big.cost
    warnings = [r.getMessage() for r in caplog.records if "above its reservation" in
                r.getMessage()]
    assert len(warnings) == 1 and GPT in warnings[0], warnings
    assert gov.backend.counters()["overrun"] == {"openai": {GPT: overrun}}
    assert otel_overrun(reader) == pytest.approx(float(overrun))

    # the next calls are refused before they reach the provider
    served = len(fake.ledger)
    refused = []
    for _ in range(3):
        with pytest.raises(openai.RateLimitError) as caught:
            chat()
        refused.append(caught.value)
    check_errors(refused)
    assert all(isinstance(e, llm_governor.BudgetExceededError) for e in refused)
    assert len(fake.ledger) == served

    # overshoot: at most that one call's overrun, and below that one call's cost
    books = audit(gov, fake, BUDGET, exact=True, overshoot=overrun)
    assert 0 < books.overshoot <= overrun < big.cost

    # the window turns over: there is room again
    clock.advance(86_400)
    chat()
    assert len(fake.ledger) == served + 1
    assert gov.budget_report()["day"]["spent"] == fake.ledger.entries[-1].cost
