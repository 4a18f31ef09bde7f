"""Export llm-governor's metrics to Prometheus through OpenTelemetry.

The application owns the OTel SDK: it builds a MeterProvider with the
Prometheus reader, serves it on 127.0.0.1 (never a public interface by
default), and hands the provider to ``instrument()``. Prometheus then scrapes
``/metrics`` and the shipped alert rules (``llm-governor rules``) apply.

Run: python examples/otel_prometheus.py
"""

from __future__ import annotations

import socket
import urllib.request
from decimal import Decimal

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

import llm_governor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


port = free_port()
start_http_server(port, addr="127.0.0.1")
provider = MeterProvider(metric_readers=[PrometheusMetricReader()])

llm_governor.instrument({"backend": "memory", "budget": {"per_day": "5.00"}},
                        meter_provider=provider)


@llm_governor.rate_limited("my_service", cost=Decimal("0.02"))
def call() -> str:
    return "ok"


for _ in range(3):
    call()

text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("llm_governor_requests_total", "llm_governor_cost_USD_total",
                        "llm_governor_budget_remaining_USD")):
        print(line)
