"""The spans of one call: an INTERNAL span for the logical call, a CLIENT span per attempt.

What a call's context carries (``ctx.telemetry``) is a :class:`CallTrace` between attempts
and, on each attempt's context, that attempt's :class:`AttemptTrace` (a hedge's forked
context has its own). The adapters describe an attempt once they know where it goes
(:mod:`resilience.telemetry._propagation`); what the attempt returned or raised completes
its span when it ends.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..context import CallContext
from ..outcome import Outcome, is_cancellation
from ._redact import Redactor

__all__ = ["AttemptTrace", "CallTrace"]

_SUCCESS, _FAILURE, _IGNORED = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED
GRPC, HTTP = "grpc", "http"


def outcome_label(outcome: Outcome, error: BaseException | None) -> str:
    """``success``, ``failure``, ``ignored``, or ``cancelled`` (a lost hedge, a caller that gave up)."""
    if outcome is _IGNORED and error is not None and is_cancellation(error):
        return "cancelled"
    return outcome.name.lower()


def error_type(error: BaseException) -> str:
    """The exception's fully qualified class name (builtins without a module)."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def event_error_type(error: BaseException) -> str:
    """``error.type`` of a policy's event: the gRPC status name when the error has one, as on
    the attempt's span, else the exception's class name."""
    return grpc_code(error) or error_type(error)


def grpc_code(error: BaseException | None) -> str | None:
    """The gRPC status name of an error that carries one (``code()``), else ``None``."""
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    try:
        value = code()
    except Exception:
        return None
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else None


def split_address(address: str) -> tuple[str, int | None]:
    """``host`` and ``port`` of ``host:port`` (``[v6]:port`` too)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
        return address, None
    return host.strip("[]"), int(port)


def call_name(ctx: CallContext) -> str:
    """A low-cardinality span name for a call: ``service/method``, or ``VERB service`` for an
    HTTP call named after its raw path (``"GET /items/42"``)."""
    service, method = ctx.service, ctx.method
    verb, space, _ = method.partition(" ")
    if space:
        return f"{verb} {service}" if service else verb
    if service and method:
        return f"{service}/{method}"
    return method or service or "resilience.call"


class CallTrace:
    """The span of one logical call, what it learnt, and its attempts still open."""

    __slots__ = ("attempts", "context", "fallback", "kind", "listener", "method", "secrets", "span")

    def __init__(self, listener: object, span: trace.Span, parent: otel_context.Context, method: str) -> None:
        self.listener = listener
        self.span = span
        self.context = trace.set_span_in_context(span, parent)
        self.attempts: dict[tuple[int, int], AttemptTrace] = {}
        self.secrets: set[str] = set()
        self.kind: str | None = None
        self.fallback = False
        self.method = method  # the call's method for metrics (``GET`` for ``GET /raw/path``)

    @property
    def call(self) -> CallTrace:
        return self

    def __repr__(self) -> str:
        return f"CallTrace({self.span!r}, open attempts={sorted(self.attempts)})"


class AttemptTrace:
    """The CLIENT span of one attempt, and the context to propagate with it."""

    __slots__ = ("_context", "call", "described", "kind", "span")

    def __init__(self, call: CallTrace, span: trace.Span) -> None:
        self.call = call
        self.span = span
        self._context: otel_context.Context | None = None
        self.kind: str | None = None
        self.described = False

    @property
    def context(self) -> otel_context.Context:
        """The OpenTelemetry context with this attempt's span current (made when first asked)."""
        context = self._context
        if context is None:
            context = self._context = trace.set_span_in_context(self.span, self.call.context)
        return context

    def __repr__(self) -> str:
        return f"AttemptTrace({self.span!r}, kind={self.kind!r})"


def start_call(
    listener: object, tracer: trace.Tracer, ctx: CallContext, policies: tuple[str, ...], method: str
) -> CallTrace:
    """Start the call's span (a child of the caller's current span) and put it on ``ctx``."""
    parent = otel_context.get_current()
    attributes: dict[str, Any] = {"resilience.service": ctx.service, "resilience.method": ctx.method}
    if policies:
        attributes["resilience.policies"] = ",".join(policies)
    span = tracer.start_span(call_name(ctx), context=parent, kind=SpanKind.INTERNAL, attributes=attributes)
    call = CallTrace(listener, span, parent, method)
    ctx.telemetry = call
    return call


def end_call(call: CallTrace, outcome: Outcome, error: BaseException | None, redactor: Redactor) -> str:
    """End the call's span with its outcome; returns the outcome's label for metrics."""
    span = call.span
    label = "fallback" if call.fallback and error is None else outcome_label(outcome, error)
    if error is not None and label != "cancelled":
        kind = _error_type_of(call.kind, error)
        span.set_attributes({"resilience.outcome": label, "error.type": kind})
        span.set_status(Status(StatusCode.ERROR, kind))
        _exception_event(span, error, call.secrets, redactor)
        span.end()
        return label
    span.set_attribute("resilience.outcome", label)
    if error is None and outcome is _FAILURE:
        span.set_status(Status(StatusCode.ERROR))  # a failing answer (an HTTP 503) after all the retries
    span.end()
    return label


def start_attempt(tracer: trace.Tracer, call: CallTrace, ctx: CallContext, endpoint: str | None) -> AttemptTrace:
    """Start an attempt's CLIENT span under the call's and put it on the attempt's context."""
    attributes: dict[str, Any] = {"resilience.attempt": ctx.attempt, "resilience.hedge": ctx.hedge}
    if endpoint is not None:
        attributes["resilience.endpoint"] = endpoint
    span = tracer.start_span(call_name(ctx), context=call.context, kind=SpanKind.CLIENT, attributes=attributes)
    attempt = AttemptTrace(call, span)
    call.attempts[ctx.attempt, ctx.hedge] = attempt
    ctx.telemetry = attempt
    return attempt


def describe_grpc(attempt: AttemptTrace, ctx: CallContext, target: str | None) -> None:
    """The RPC conventions' attributes of a gRPC attempt (its status comes at its end)."""
    attempt.kind = attempt.call.kind = GRPC
    attempt.described = True
    method = f"{ctx.service}/{ctx.method}" if ctx.service else ctx.method
    span = attempt.span
    if not ctx.service:
        span.update_name(method)  # else it was named service/method when it started
    attributes: dict[str, Any] = {"rpc.system.name": "grpc", "rpc.method": method}
    _address(attributes, target if target is not None else ctx.endpoint)
    span.set_attributes(attributes)


def describe_http(attempt: AttemptTrace, ctx: CallContext, method: str, url: str, redactor: Redactor) -> None:
    """The HTTP conventions' attributes of an attempt (its status comes at its end)."""
    attempt.kind = attempt.call.kind = HTTP
    attempt.described = True
    call = attempt.call
    redacted, secrets = redactor.url(url)
    call.secrets.update(secrets)
    span = attempt.span
    span.update_name(method)
    attributes: dict[str, Any] = {"http.request.method": method, "url.full": redacted}
    resend = ctx.attempt - 1 + ctx.hedge
    if resend > 0:
        attributes["http.request.resend_count"] = resend
    scheme, _, rest = redacted.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    host, port = split_address(authority)
    if port is None and scheme in ("http", "https"):
        port = 443 if scheme == "https" else 80
    attributes["server.address"] = host
    if port is not None:
        attributes["server.port"] = port
    if ctx.endpoint is not None:
        attributes["resilience.endpoint"] = ctx.endpoint
    span.set_attributes(attributes)


def _address(attributes: dict[str, Any], address: str | None) -> None:
    if not address:
        return
    host, port = split_address(address)
    attributes["server.address"] = host
    if port is not None:
        attributes["server.port"] = port
    attributes["resilience.endpoint"] = address


def _error_type_of(kind: str | None, error: BaseException) -> str:
    if kind == GRPC:
        code = grpc_code(error)
        if code is not None:
            return code
    return error_type(error)


def _exception_event(span: trace.Span, error: BaseException, secrets: set[str], redactor: Redactor) -> None:
    # No stack trace: its source lines may hold literal credentials.
    span.add_event(
        "exception",
        {"exception.type": error_type(error), "exception.message": redactor.scrub(str(error), secrets)},
    )


def end_attempt(
    attempt: AttemptTrace,
    ctx: CallContext,
    endpoint: str | None,
    outcome: Outcome,
    error: BaseException | None,
    result: object,
    redactor: Redactor,
) -> tuple[str, str | None]:
    """End an attempt's span; returns its outcome label and ``error.type`` for metrics."""
    span = attempt.span
    label = outcome_label(outcome, error)
    attributes: dict[str, Any] = {"resilience.outcome": label}
    if not attempt.described and endpoint is not None:
        _address(attributes, endpoint)
    kind = attempt.kind
    failure: str | None = None
    if kind == HTTP:
        status = getattr(result, "status_code", None)
        if isinstance(status, int):
            attributes["http.response.status_code"] = status
            if status >= 400:
                failure = str(status)
    elif kind == GRPC:
        code = "OK" if error is None else grpc_code(error) or ("CANCELLED" if label == "cancelled" else None)
        if code is not None:
            attributes["rpc.response.status_code"] = code
            if code != "OK" and label != "cancelled":
                failure = code
    if error is not None and failure is None and label != "cancelled":
        failure = error_type(error)
    if failure is None and outcome is _FAILURE:
        failure = "failure"  # a result the classifier called a failure, with nothing more to name it
    if failure is not None:
        attributes["error.type"] = failure
    span.set_attributes(attributes)
    if failure is not None:
        span.set_status(Status(StatusCode.ERROR, failure))
    if error is not None and label != "cancelled":
        _exception_event(span, error, attempt.call.secrets, redactor)
    span.end()
    return label, failure
