"""Reading back what llm-governor exported, through the OTel SDK's in-memory exporter and
reader (the ``otel`` fixture of tests/exporters/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["Otel", "new_otel"]


@dataclass
class Otel:
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    meter_provider: MeterProvider
    tracer_provider: TracerProvider

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        out: dict[str, Metric] = {}
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out[m.name] = m
        return out

    def points(self, name: str) -> list[Any]:
        m = self.metrics().get(name)
        return list(m.data.data_points) if m is not None else []

    def value(self, name: str, **attrs: Any) -> float:
        """Sum of the matching points' values (counts for histograms)."""
        total = 0.0
        for p in self.points(name):
            if all(p.attributes.get(k) == v for k, v in attrs.items()):
                total += p.count if hasattr(p, "bucket_counts") else p.value
        return total

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def new_otel() -> Otel:
    """Providers exporting to memory (the application's, as ``instrument()`` gets them)."""
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return Otel(reader, exporter, mp, tp)
