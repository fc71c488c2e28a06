"""Telemetry test helpers: an SDK with in-memory exporters, and ways to read what it holds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from resilience.telemetry import OpenTelemetryListener


class Recorder:
    """A listener on its own SDK providers (never the global ones), and what they recorded."""

    def __init__(self, **options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.listener = OpenTelemetryListener(self.tracer_provider, self.meter_provider, **options)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def calls(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.INTERNAL and s.instrumentation_scope.name == "resilience"]

    def attempts(self) -> list[ReadableSpan]:
        found = [s for s in self.spans() if s.kind is SpanKind.CLIENT and s.instrumentation_scope.name == "resilience"]
        return sorted(found, key=lambda s: (s.attributes["resilience.attempt"], s.attributes["resilience.hedge"]))  # type: ignore[index]

    def call(self) -> ReadableSpan:
        calls = self.calls()
        assert len(calls) == 1, [s.name for s in calls]
        return calls[0]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of every point of metric ``name``: a sum's value, a gauge's value,
        a histogram's count."""
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for metric in _metrics(data):
            if metric.name != name:
                continue
            for point in metric.data.data_points:
                value = getattr(point, "value", None)
                if value is None:
                    value = point.count
                found.append((dict(point.attributes or {}), value))
        return found

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _metrics(data: Any) -> Iterator[Any]:
    if data is None:
        return
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            yield from scope.metrics


def foreign(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """The spans another instrumentation made."""
    return [s for s in spans if s.instrumentation_scope.name != "resilience"]


def traceparent(span: ReadableSpan) -> str:
    """The W3C ``traceparent`` a sampled span propagates."""
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]
