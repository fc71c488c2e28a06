"""Traces and metrics of every call and every attempt, on OpenTelemetry.

Put an :class:`OpenTelemetryListener` in a pipeline's ``listeners=``; :func:`configure`
makes one, with an SDK exporting over OTLP when given an endpoint (or
``OTEL_EXPORTER_OTLP_ENDPOINT``)::

    from resilience.telemetry import configure

    listener = configure(service_name="orders-client", otlp_endpoint="http://localhost:4317")
    pipeline = Pipeline(Timeout(2), Retry(3), Hedge(delay=0.05), listeners=[listener])

A call gets an INTERNAL span, each attempt sent a CLIENT span under it, the policies'
decisions span events on the call's span (see :class:`OpenTelemetryListener`), and the
metrics of :mod:`resilience.telemetry._metrics`. With no SDK configured the listener is
inactive and calls cost what they cost without it.

The adapters call :func:`grpc_attempt` / :func:`http_attempt` in each attempt (the W3C
trace context of the attempt's span goes into its metadata or headers) and send it inside
:func:`suppressed`, so that opentelemetry-instrumentation-grpc or -httpx, when on, make no
second span for it. Secrets are never recorded: see :class:`Redactor`.
"""

from ._configure import configure
from ._listener import OpenTelemetryListener
from ._propagation import (
    attempt_context,
    grpc_attempt,
    http_attempt,
    inject_into_headers,
    inject_into_metadata,
    suppressed,
)
from ._redact import REDACTED, SENSITIVE_HEADERS, SIGNATURE_PARAMS, Redactor

__all__ = [
    "REDACTED",
    "SENSITIVE_HEADERS",
    "SIGNATURE_PARAMS",
    "OpenTelemetryListener",
    "Redactor",
    "attempt_context",
    "configure",
    "grpc_attempt",
    "http_attempt",
    "inject_into_headers",
    "inject_into_metadata",
    "suppressed",
]
