"""``configure()``: an OpenTelemetry SDK exporting over OTLP, and the listener that feeds it."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics, trace

from ._listener import OpenTelemetryListener, _global_set

__all__ = ["configure"]

_lock = threading.Lock()
_providers: dict[tuple[str, str | None, float, str], tuple[Any, Any]] = {}
"""Providers made by configure, by (endpoint, service name, ratio, protocol): a reload with
the same settings reuses them instead of opening another exporter."""


def _check(
    enabled: object, service_name: object, otlp_endpoint: object, sample_ratio: object
) -> tuple[str | None, float]:
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    if service_name is not None and (not isinstance(service_name, str) or not service_name):
        raise ValueError(f"service_name must be a non-empty string or None, got {service_name!r}")
    if otlp_endpoint is not None and (
        not isinstance(otlp_endpoint, str) or not otlp_endpoint.startswith(("http://", "https://"))
    ):
        raise ValueError(
            f"otlp_endpoint must be a URL such as 'http://localhost:4317' (http:// or https://), got {otlp_endpoint!r}"
        )
    if (
        isinstance(sample_ratio, bool)
        or not isinstance(sample_ratio, int | float)
        or math.isnan(sample_ratio)
        or not 0.0 <= sample_ratio <= 1.0
    ):
        raise ValueError(f"sample_ratio must be a number in [0, 1], got {sample_ratio!r}")
    return otlp_endpoint, float(sample_ratio)


def _exporters(endpoint: str, protocol: str) -> tuple[Any, Any]:
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=endpoint), OTLPMetricExporter(endpoint=endpoint)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found]
            OTLPMetricExporter as HttpMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter as HttpSpanExporter,
        )
    except ImportError as exc:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        raise ImportError(
            f"exporting over OTLP ({protocol}) needs {package} and opentelemetry-sdk: "
            f"pip install 'resilience-policies[otlp]' (missing: {exc.name})"
        ) from exc
    base = endpoint.rstrip("/")
    return HttpSpanExporter(endpoint=f"{base}/v1/traces"), HttpMetricExporter(endpoint=f"{base}/v1/metrics")


def _make_providers(endpoint: str, service_name: str | None, ratio: float, protocol: str) -> tuple[Any, Any]:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ImportError(
            "configure() with an OTLP endpoint needs opentelemetry-sdk: "
            f"pip install 'resilience-policies[otlp]' ({exc})"
        ) from exc
    span_exporter, metric_exporter = _exporters(endpoint, protocol)
    resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
    # A ratio of 1 leaves the choice to OTEL_TRACES_SAMPLER when it is set.
    env_sampler = ratio == 1.0 and "OTEL_TRACES_SAMPLER" in os.environ
    sampler = None if env_sampler else ParentBased(TraceIdRatioBased(ratio))
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)])
    return tracer_provider, meter_provider


def configure(
    enabled: bool = True,
    service_name: str | None = None,
    otlp_endpoint: str | None = None,
    redact_query_params: Sequence[str] = (),
    sample_ratio: float = 1.0,
    *,
    redact_headers: Sequence[str] = (),
    set_global: bool = True,
) -> OpenTelemetryListener:
    """The listener to put in pipelines' ``listeners=``, with an SDK behind it when asked.

    With ``otlp_endpoint`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT`` set), a TracerProvider and
    a MeterProvider of the SDK are made, exporting over OTLP (gRPC; ``http/protobuf`` when
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` says so and that exporter is installed) with batched
    spans and periodic metrics (``OTEL_METRIC_EXPORT_INTERVAL``), a resource named
    ``service_name`` (else ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``), and a
    parent-based ratio sampler of ``sample_ratio`` (a ratio of 1 leaves the choice to
    ``OTEL_TRACES_SAMPLER`` when set). With ``set_global`` they also become the global
    providers when none is set yet, so that other instrumentation exports there too.
    The same settings again (a config reload) reuse the same providers.

    Without an endpoint nothing is set up: the listener records to the global providers,
    whatever the application configured (and costs nothing until it does).
    ``enabled=False``, or ``OTEL_SDK_DISABLED=true``, gives a listener that never records.

    Args:
        enabled: whether to record at all.
        service_name: ``service.name`` of the providers made here.
        otlp_endpoint: the collector, e.g. ``"http://localhost:4317"`` (Jaeger's OTLP gRPC port).
        redact_query_params: query parameter names whose values are redacted from URLs.
        sample_ratio: the share of traces kept, in [0, 1].
        redact_headers: more header or metadata names whose values are secret.
        set_global: make the providers the global ones when none is set.

    Raises:
        ValueError, TypeError: a bad argument (named, with what is allowed).
        ImportError: an endpoint is given and the SDK or the exporter is not installed.
    """
    endpoint, ratio = _check(enabled, service_name, otlp_endpoint, sample_ratio)
    if not enabled or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return OpenTelemetryListener(
            redact_query_params=redact_query_params, redact_headers=redact_headers, enabled=False
        )
    if endpoint is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    if endpoint is None:
        return OpenTelemetryListener(redact_query_params=redact_query_params, redact_headers=redact_headers)
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip().lower() or "grpc"
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be 'grpc' or 'http/protobuf', got {protocol!r}")
    key = (endpoint, service_name, ratio, protocol)
    with _lock:
        providers = _providers.get(key)
        if providers is None:
            providers = _providers[key] = _make_providers(endpoint, service_name, ratio, protocol)
    tracer_provider, meter_provider = providers
    if set_global:
        if not _global_set(trace, "_TRACER_PROVIDER", trace.get_tracer_provider, trace.ProxyTracerProvider):
            trace.set_tracer_provider(tracer_provider)
        from opentelemetry.metrics import _internal as metrics_api

        if not _global_set(metrics_api, "_METER_PROVIDER", metrics.get_meter_provider, metrics_api._ProxyMeterProvider):
            metrics.set_meter_provider(meter_provider)
    listener = OpenTelemetryListener(
        tracer_provider, meter_provider, redact_query_params, redact_headers=redact_headers
    )
    listener._owned = [tracer_provider, meter_provider]
    return listener


def _forget(providers: Sequence[Any]) -> None:
    """Drop providers from the cache (called by the listener's ``shutdown``); global ones stay."""
    providers = [p for p in providers if p is not trace.get_tracer_provider() and p is not metrics.get_meter_provider()]
    with _lock:
        for key, value in list(_providers.items()):
            if any(p in value for p in providers):
                del _providers[key]
