"""The OpenTelemetry listener: the events of a pipeline as spans, span events and metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import NoOpTracer

from .. import __version__
from ..context import CallContext
from ..events import (
    AttemptEnded,
    AttemptStarted,
    BulkheadRejected,
    CallEnded,
    CallListener,
    CallStarted,
    EndpointEjected,
    EndpointReturned,
    Event,
    FallbackUsed,
    RetryGaveUp,
    RetryScheduled,
    TimeoutExpired,
)
from ..pipeline import Pipeline
from ..policies.circuit_breaker import CircuitRejected, CircuitStateChanged
from ..policies.concurrency import ConcurrencyLimitRejected
from ..policies.hedge import HedgeAttemptFailed, HedgeStarted, HedgeWon
from ..policies.rate_keys import RateLimitRejected, RateLimitWaited
from ..policies.throttle import ThrottleRejected
from ._metrics import Instruments, Watched, metric_method
from ._redact import Redactor
from ._spans import CallTrace, end_attempt, end_call, event_error_type, start_attempt, start_call

__all__ = ["OpenTelemetryListener"]

_log = logging.getLogger("resilience")
_SCOPE = "resilience"
_VERSION = __version__


def _global_set(module: Any, name: str, get: Callable[[], object], proxy: type) -> bool:
    """Whether a global provider was set: a read of the API's global when it has one, else a look."""
    value = getattr(module, name, _MISSING)
    if value is _MISSING:  # pragma: no cover - another API layout
        return not isinstance(get(), proxy)
    return value is not None


_MISSING = object()
_FAST = hasattr(trace, "_TRACER_PROVIDER") and hasattr(_metrics_api, "_METER_PROVIDER")
"""The API keeps its globals where this listener reads them (else it asks the API each time)."""
_PROXY_METER = _metrics_api._ProxyMeterProvider


def _rejection(event: Event) -> str | None:
    """The reason of a rejection event, or ``None`` for other events."""
    if isinstance(event, BulkheadRejected | RateLimitRejected):
        return event.reason
    if isinstance(event, CircuitRejected):
        return event.state.value
    if isinstance(event, ThrottleRejected):
        return "throttled"
    if isinstance(event, ConcurrencyLimitRejected):
        return "limit"
    return None


class OpenTelemetryListener(CallListener):
    """Turns a pipeline's events into OpenTelemetry spans, span events and metrics.

    Give it to pipelines (``Pipeline(..., listeners=[listener])``). Each call gets an
    INTERNAL span (a child of the span current where the call was made), each attempt
    sent a CLIENT span under it, with the semantic conventions' attributes once the
    adapter described it (HTTP: ``http.request.method``, ``url.full`` redacted,
    ``server.address``, ``server.port``, ``http.response.status_code``,
    ``http.request.resend_count``, ``error.type``; gRPC: ``rpc.system.name``,
    ``rpc.method``, ``rpc.response.status_code``, ``server.*``, ``error.type``) and the
    toolkit's: ``resilience.attempt``, ``resilience.hedge``, ``resilience.endpoint``,
    ``resilience.outcome``; the call span has ``resilience.service``,
    ``resilience.method``, ``resilience.policies`` and ``resilience.outcome``. The
    policies' decisions are span events on the call's span: ``resilience.retry`` (with
    its delay), ``resilience.retry.gave_up``, ``resilience.hedge``, ``resilience.hedge.won``,
    ``resilience.hedge.attempt_failed``, ``resilience.fallback``, ``resilience.timeout``,
    ``resilience.rejected`` (bulkhead, rate limit, throttle, concurrency limit, breaker),
    ``resilience.rate_limit.waited``, ``resilience.circuit.state_changed``,
    ``resilience.endpoint.ejected`` and ``resilience.endpoint.returned``. The metrics are
    listed in :mod:`resilience.telemetry._metrics`.

    Secrets are never recorded (see :mod:`resilience.telemetry._redact`): no header or
    metadata value is, URLs are redacted, error messages are scrubbed of the call's
    secret values, and exceptions are recorded without their stack trace.

    **Free when off.** With no SDK configured (the API's global providers not set, and
    none given here) the listener is inactive: calls run as with no listener at all, until
    a global provider is set. ``enabled=False`` keeps it inactive for good.

    Args:
        tracer_provider: where spans go (default: the global one, followed if set later).
        meter_provider: where metrics go (default: the global one).
        redact_query_params: query parameter names whose values are redacted from URLs.
        redact_headers: more header or metadata names whose values are secret.
        enabled: ``False`` for a listener that never records anything.
    """

    __slots__ = (
        "_enabled",
        "_global_meter",
        "_global_tracer",
        "_instruments",
        "_live",
        "_owned",
        "_tracer",
        "redactor",
        "watched",
    )

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        redact_query_params: Collection[str] = (),
        *,
        redact_headers: Collection[str] = (),
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
            raise TypeError(f"tracer_provider must be an opentelemetry TracerProvider, got {tracer_provider!r}")
        if meter_provider is not None and not isinstance(meter_provider, metrics.MeterProvider):
            raise TypeError(f"meter_provider must be an opentelemetry MeterProvider, got {meter_provider!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")
        self.redactor = Redactor(redact_query_params, redact_headers)
        self._enabled = enabled
        self._tracer = trace.get_tracer(_SCOPE, _VERSION, tracer_provider=tracer_provider)
        self.watched = Watched()
        meter = metrics.get_meter(_SCOPE, _VERSION, meter_provider=meter_provider)
        self._instruments = Instruments(meter, self.watched)
        self._global_tracer = tracer_provider is None
        self._global_meter = meter_provider is None
        self._owned: list[Any] = []
        self._live = False
        if enabled:
            own_tracer = tracer_provider is not None and not isinstance(self._tracer, NoOpTracer)
            own_meter = meter_provider is not None and not isinstance(meter_provider, metrics.NoOpMeterProvider)
            self._live = own_tracer or own_meter or self._globals_set()

    # -- CallListener ---------------------------------------------------------------------

    @property
    def follows_calls(self) -> bool:  # type: ignore[override]
        """A disabled listener follows no call: a pipeline given only it builds no call step."""
        return self._enabled

    def active(self) -> bool:
        """Whether calls are followed now: enabled, and a provider to record to."""
        if self._live:
            return True
        # Two reads of the API's globals while nothing is set: what "off" costs a call.
        if self._enabled and (
            not _FAST or trace._TRACER_PROVIDER is not None or _metrics_api._METER_PROVIDER is not None
        ):
            self._live = self._globals_set()  # a global was set: is it one this listener uses?
            return self._live
        return False

    def _globals_set(self) -> bool:
        return (
            self._global_tracer
            and _global_set(trace, "_TRACER_PROVIDER", trace.get_tracer_provider, trace.ProxyTracerProvider)
        ) or (
            self._global_meter
            and _global_set(_metrics_api, "_METER_PROVIDER", metrics.get_meter_provider, _PROXY_METER)
        )

    def watch(self, obj: object) -> None:
        """Read ``obj``'s state in the gauges: a Pipeline (done for each pipeline built with
        this listener), a CircuitBreaker, ConcurrencyLimit or RetryBudget, or the endpoints
        and balancer scores of an EndpointPool, a discovery channel or an httpx transport
        with discovery (weakly held: a closed adapter drops out)."""
        if isinstance(obj, Pipeline):
            self.watched.add(obj, obj.clock)
        else:
            self.watched.add(obj)

    def unwatch(self, obj: object) -> None:
        """Stop reading ``obj`` (a pipeline: its policies) in the gauges."""
        self.watched.discard(obj)

    def __call__(self, event: Event) -> None:
        if not self._live and not self.active():
            return
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
        else:
            reason = _rejection(event)
            if reason is not None:
                self._rejected(event, reason)

    # -- calls and attempts ---------------------------------------------------------------

    def _call(self, ctx: CallContext | None) -> CallTrace | None:
        """The trace of the call of ``ctx``, when this listener made it."""
        trace_ = ctx.telemetry if ctx is not None else None
        call = getattr(trace_, "call", None)
        return call if isinstance(call, CallTrace) and call.listener is self else None

    def _call_started(self, event: CallStarted) -> None:
        ctx = event.context
        if ctx is None or ctx.telemetry is not None:
            return  # another tracing listener follows this call: one set of spans per call
        start_call(self, self._tracer, ctx, event.policies, metric_method(ctx.method))

    def _call_ended(self, event: CallEnded) -> None:
        ctx = event.context
        call = self._call(ctx)
        if call is None or ctx is None:
            return
        label = end_call(call, event.outcome, event.error, self.redactor)
        attributes = {"resilience.service": ctx.service, "resilience.method": call.method, "resilience.outcome": label}
        self._instruments.call_duration.record(event.duration, attributes)

    def _attempt_started(self, event: AttemptStarted) -> None:
        ctx = event.context
        call = self._call(ctx)
        if call is not None and ctx is not None:
            start_attempt(self._tracer, call, ctx, event.endpoint)

    def _attempt_ended(self, event: AttemptEnded) -> None:
        ctx = event.context
        call = self._call(ctx)
        if call is None or ctx is None:
            return
        attempt = call.attempts.pop((event.attempt, event.hedge), None)
        if attempt is None:
            return
        if ctx.telemetry is attempt:
            ctx.telemetry = call
        label, failure = end_attempt(
            attempt, ctx, event.endpoint, event.outcome, event.error, event.result, self.redactor
        )
        attributes: dict[str, Any] = {
            "resilience.service": ctx.service,
            "resilience.method": call.method,
            "resilience.outcome": label,
            "resilience.hedge": event.hedge > 0,
        }
        if failure is not None:
            attributes["error.type"] = failure
        self._instruments.attempt_duration.record(event.duration, attributes)

    # -- the policies' events -------------------------------------------------------------

    def _span_event(self, event: Event, name: str, attributes: dict[str, Any]) -> None:
        call = self._call(event.context)
        if call is not None:
            attributes["resilience.policy"] = event.policy
            call.span.add_event(name, attributes)

    def _retry(self, event: RetryScheduled) -> None:
        attributes: dict[str, Any] = {"resilience.attempt": event.attempt, "resilience.retry.delay": event.delay}
        if event.error is not None:
            attributes["error.type"] = event_error_type(event.error)
        self._span_event(event, "resilience.retry", attributes)
        self._instruments.retries.add(1, {"resilience.policy": event.policy})

    def _gave_up(self, event: RetryGaveUp) -> None:
        attributes: dict[str, Any] = {"resilience.attempt": event.attempt, "resilience.reason": event.reason}
        if event.error is not None:
            attributes["error.type"] = event_error_type(event.error)
        self._span_event(event, "resilience.retry.gave_up", attributes)

    def _hedge(self, event: HedgeStarted) -> None:
        attributes = {"resilience.hedge": event.hedge, "resilience.hedge.delay": event.delay}
        self._span_event(event, "resilience.hedge", attributes)
        self._instruments.hedges.add(1, {"resilience.policy": event.policy})

    def _hedge_won(self, event: HedgeWon) -> None:
        self._span_event(event, "resilience.hedge.won", {"resilience.hedge": event.hedge})

    def _hedge_failed(self, event: HedgeAttemptFailed) -> None:
        attributes: dict[str, Any] = {"resilience.hedge": event.hedge}
        if event.error is not None:
            attributes["error.type"] = event_error_type(event.error)
        self._span_event(event, "resilience.hedge.attempt_failed", attributes)

    def _fallback(self, event: FallbackUsed) -> None:
        call = self._call(event.context)
        if call is not None:
            call.fallback = True
        attributes: dict[str, Any] = {}
        if event.error is not None:
            attributes["error.type"] = event_error_type(event.error)
        self._span_event(event, "resilience.fallback", attributes)
        self._instruments.fallbacks.add(1, {"resilience.policy": event.policy})

    def _timeout(self, event: TimeoutExpired) -> None:
        self._span_event(event, "resilience.timeout", {"resilience.timeout": event.timeout})

    def _rejected(self, event: Event, reason: str) -> None:
        attributes: dict[str, Any] = {"resilience.reason": reason, "resilience.rejected_by": type(event).__name__}
        retry_after = getattr(event, "retry_after", None)
        if isinstance(retry_after, float | int):
            attributes["resilience.retry_after"] = float(retry_after)
        self._span_event(event, "resilience.rejected", attributes)
        self._instruments.rejections.add(1, {"resilience.policy": event.policy, "resilience.reason": reason})

    def _waited(self, event: RateLimitWaited) -> None:
        self._span_event(event, "resilience.rate_limit.waited", {"resilience.delay": event.delay})

    def _circuit(self, event: CircuitStateChanged) -> None:
        attributes = {
            "resilience.circuit.old": event.old.value,
            "resilience.circuit.new": event.new.value,
            "resilience.reason": event.reason,
        }
        self._span_event(event, "resilience.circuit.state_changed", attributes)

    def _ejected(self, event: EndpointEjected) -> None:
        attributes: dict[str, Any] = {
            "resilience.service": event.service,
            "resilience.endpoint": event.address,
            "resilience.reason": event.reason,
            "resilience.ejections": event.ejections,
            "resilience.ejection.duration": event.duration,
        }
        self._span_event(event, "resilience.endpoint.ejected", attributes)
        self._instruments.ejections.add(1, {"resilience.service": event.service, "resilience.reason": event.reason})

    def _returned(self, event: EndpointReturned) -> None:
        attributes: dict[str, Any] = {
            "resilience.service": event.service,
            "resilience.endpoint": event.address,
            "resilience.ejected_for": event.ejected_for,
        }
        self._span_event(event, "resilience.endpoint.returned", attributes)

    # -- providers made by configure() ----------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> None:
        """Export what the providers made by :func:`~resilience.telemetry.configure` hold now."""
        for provider in self._owned:
            provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and shut down the providers made by :func:`~resilience.telemetry.configure`
        (shared by the listeners it made with the same settings; a later call makes new ones).

        A provider that became the global one is only flushed: the API allows one global per
        process, and other instrumentation still records to it.
        """
        owned, self._owned = self._owned, []
        if owned:
            from ._configure import _forget

            _forget(owned)
        for provider in owned:
            if any(provider is g for g in (trace.get_tracer_provider(), metrics.get_meter_provider())):
                provider.force_flush()
            else:
                provider.shutdown()

    def __repr__(self) -> str:
        state = "disabled" if not self._enabled else "active" if self._live else "inactive"
        return f"OpenTelemetryListener({state}, {self.redactor!r})"


_HANDLERS: dict[type, Callable[[OpenTelemetryListener, Any], None]] = {
    CallStarted: OpenTelemetryListener._call_started,
    CallEnded: OpenTelemetryListener._call_ended,
    AttemptStarted: OpenTelemetryListener._attempt_started,
    AttemptEnded: OpenTelemetryListener._attempt_ended,
    RetryScheduled: OpenTelemetryListener._retry,
    RetryGaveUp: OpenTelemetryListener._gave_up,
    HedgeStarted: OpenTelemetryListener._hedge,
    HedgeWon: OpenTelemetryListener._hedge_won,
    HedgeAttemptFailed: OpenTelemetryListener._hedge_failed,
    FallbackUsed: OpenTelemetryListener._fallback,
    TimeoutExpired: OpenTelemetryListener._timeout,
    RateLimitWaited: OpenTelemetryListener._waited,
    CircuitStateChanged: OpenTelemetryListener._circuit,
    EndpointEjected: OpenTelemetryListener._ejected,
    EndpointReturned: OpenTelemetryListener._returned,
}
