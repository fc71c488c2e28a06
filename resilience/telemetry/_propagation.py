"""What an adapter does in each attempt when the call is traced: describe it, propagate its
span, and keep the OpenTelemetry instrumentations of grpc and httpx from doubling it.

Every function here does nothing (and costs one attribute read) when the attempt has no
span of ours: no OpenTelemetry listener on the pipeline, or none active. An adapter calls,
in each attempt, once it knows where the attempt goes:

- gRPC: ``metadata = grpc_attempt(ctx, metadata, target)``, then makes the call inside
  ``with suppressed(ctx):``;
- HTTP: ``http_attempt(ctx, request.method, str(request.url), request.headers)`` on the
  attempt's own copy of the request (the headers are changed), then sends it inside
  ``with suppressed(ctx, http=True):``.

The lower-level :func:`inject_into_metadata` and :func:`inject_into_headers` only inject
the W3C trace context (``traceparent``, ``tracestate``, and ``baggage``: the globally
configured propagator, W3C by default) of the attempt's span.

**Suppression.** The contrib instrumentations (opentelemetry-instrumentation-grpc and
-httpx) check OpenTelemetry's suppression keys when they are about to make a span;
:func:`suppressed` sets them for the inner call, so an attempt has one CLIENT span, ours,
and the server sees ours as its parent. They only see the keys when they run inside the
attempt: the sync grpc client instrumentation (an interceptor on the channels it makes),
a discovery channel's sub-channels, httpx's ``HTTPXClientInstrumentor().instrument()``
(it patches the inner ``HTTPTransport``). Two set-ups put the instrumentation outside
ours, where it makes one span for the whole call, parent of ours:
``GrpcAioInstrumentorClient`` (it puts its interceptors before the ones given to
``grpc.aio.insecure_channel``) and ``HTTPXClientInstrumentor.instrument_client(client)``
on a client whose transport is ours.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate

from ..context import CallContext
from ._spans import AttemptTrace, describe_grpc, describe_http

__all__ = [
    "attempt_context",
    "grpc_attempt",
    "http_attempt",
    "inject_into_headers",
    "inject_into_metadata",
    "suppressed",
]

try:  # the keys the contrib instrumentations read (opentelemetry-api defines them)
    from opentelemetry.context import (
        _SUPPRESS_HTTP_INSTRUMENTATION_KEY as _HTTP_KEY,
    )
    from opentelemetry.context import (
        _SUPPRESS_INSTRUMENTATION_KEY as _ALL_KEY,
    )
except ImportError:  # pragma: no cover - an API without them: fall back to their names
    _ALL_KEY = otel_context.create_key("suppress_instrumentation")
    _HTTP_KEY = otel_context.create_key("suppress_http_instrumentation")
_PLAIN_KEY = "suppress_instrumentation"  # the older spelling, still read by the contrib helpers


def _attempt(ctx: CallContext) -> AttemptTrace | None:
    trace = ctx.telemetry
    return trace if type(trace) is AttemptTrace else None


def attempt_context(ctx: CallContext) -> otel_context.Context | None:
    """The OpenTelemetry context of the attempt running on ``ctx`` (its span current), or
    ``None`` when the attempt is not traced: for spans of your own under the attempt."""
    attempt = _attempt(ctx)
    return attempt.context if attempt is not None else None


def inject_into_metadata(ctx: CallContext, metadata: Sequence[tuple[str, Any]] | None) -> Any:
    """``metadata`` plus the trace context of the attempt's span, as a tuple of pairs
    (earlier ``traceparent``/``tracestate``/``baggage`` entries replaced); ``metadata``
    itself when the attempt is not traced."""
    attempt = _attempt(ctx)
    if attempt is None:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=attempt.context)
    if not carrier:
        return metadata
    items = [m for m in metadata or () if m[0] not in carrier]
    items.extend(carrier.items())
    return tuple(items)


def inject_into_headers(ctx: CallContext, headers: MutableMapping[str, str]) -> None:
    """Set the trace context of the attempt's span in ``headers`` (replacing earlier values);
    nothing when the attempt is not traced."""
    attempt = _attempt(ctx)
    if attempt is not None:
        propagate.inject(headers, context=attempt.context)


def grpc_attempt(ctx: CallContext, metadata: Sequence[tuple[str, Any]] | None, target: str | None = None) -> Any:
    """Describe a gRPC attempt on its span (``rpc.*``, ``server.*`` from ``target`` or
    ``ctx.endpoint``) and return ``metadata`` with its trace context (see
    :func:`inject_into_metadata`). Secret metadata values are noted, to be kept out of
    anything recorded for the call."""
    attempt = _attempt(ctx)
    if attempt is None:
        return metadata
    describe_grpc(attempt, ctx, target)
    if metadata:
        listener: Any = attempt.call.listener
        attempt.call.secrets.update(listener.redactor.secrets_of(metadata))
    return inject_into_metadata(ctx, metadata)


def http_attempt(ctx: CallContext, method: str, url: str, headers: MutableMapping[str, str]) -> None:
    """Describe an HTTP attempt on its span (``http.request.method``, ``url.full`` redacted,
    ``server.*``, ``http.request.resend_count``) and set its trace context in ``headers``
    (the attempt's own request's: they are changed). Secret header values are noted."""
    attempt = _attempt(ctx)
    if attempt is None:
        return
    listener: Any = attempt.call.listener
    describe_http(attempt, ctx, method, url, listener.redactor)
    attempt.call.secrets.update(listener.redactor.secrets_of(headers.items()))
    propagate.inject(headers, context=attempt.context)


class _Suppressed:
    """Sets the suppression keys for the block (see the module's docstring)."""

    __slots__ = ("_http", "_token")

    def __init__(self, http: bool) -> None:
        self._http = http
        self._token: object = None

    def __enter__(self) -> None:
        current = otel_context.get_current()
        if self._http:
            current = otel_context.set_value(_HTTP_KEY, True, current)
        else:
            current = otel_context.set_value(_ALL_KEY, True, current)
            current = otel_context.set_value(_PLAIN_KEY, True, current)
        self._token = otel_context.attach(current)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]


class _Nothing:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_NOTHING = _Nothing()


def suppressed(ctx: CallContext | None = None, *, http: bool = False) -> _Suppressed | _Nothing:
    """A context manager that keeps the contrib instrumentations from making spans in its block.

    With ``ctx``, it does so only when the attempt on ``ctx`` has a span of ours (otherwise
    the instrumentations are the only tracing there is, and are left alone). ``http=True``
    sets only the HTTP key (httpx's instrumentation reads it; others still trace); the
    default sets the general one, which the grpc instrumentation reads.
    """
    if ctx is not None and type(ctx.telemetry) is not AttemptTrace:
        return _NOTHING
    return _Suppressed(http)
