"""Decision counters tell a wait from a refusal, on every backend and in OpenTelemetry.

Twelve calls through a 1-request bucket all succeed: they were admitted (12)
and some had to wait (``queued``, once per call that waited, however often
its queue head asked the backend); nothing was refused. A call whose wait
would pass ``request_timeout`` is refused: that, and only that, is
``rate_limited``.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import llm_governor
from llm_governor.governor import CallSpec, Governor
from tests.conftest import BackendFactory

SERVICE = {"max_tokens": 1, "burst_capacity": 0, "refill_rate": 40.0, "min_interval": 0.001,
           "max_cost_per_minute": "1000", "request_timeout": 30}


def _requests(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    out: dict[str, int] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "llm_governor.requests":
                    for p in m.data.data_points:
                        decision = str(p.attributes["decision"])
                        out[decision] = out.get(decision, 0) + int(p.value)
    return out


def test_waits_are_queued_and_only_refusals_are_rate_limited(
        make_backend: BackendFactory) -> None:
    reader = InMemoryMetricReader()
    gov = Governor(llm_governor.load_config({"services": {"svc": SERVICE}}),
                   backend=make_backend(), meter_provider=MeterProvider(metric_readers=[reader]))
    spec = CallSpec("svc", cost=Decimal("0.001"))
    errors: list[BaseException] = []

    def one() -> None:
        try:
            gov.call(spec, lambda: None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        counted: dict[str, Any] = gov.backend.counters()["requests"]["svc"]
        assert counted["admitted"] == 12
        assert 1 <= counted["queued"] <= 11, counted
        assert "rate_limited" not in counted, counted
        assert _requests(reader) == counted

        # a call that cannot be admitted within its request_timeout is refused: rate_limited
        impatient = llm_governor.load_config({"services": {"svc": {**SERVICE,
                                                                   "request_timeout": 0.001}}})
        slow = Governor(impatient, backend=gov.backend)
        try:
            gov.call(spec, lambda: None)  # takes the bucket's only token
            with pytest.raises(llm_governor.RateLimitExceededError):
                slow.call(spec, lambda: None)
        finally:
            slow.telemetry.close()
        counted = gov.backend.counters()["requests"]["svc"]
        assert counted["rate_limited"] == 1 and counted["admitted"] == 13, counted
    finally:
        gov.close()
