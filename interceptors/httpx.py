"""httpx transports that run every request through a resilience pipeline.

Add one transport to a client and its requests get retries, timeouts, breakers, limits,
hedging and load balancing::

    import httpx
    from resilience import Pipeline, Retry, Timeout
    from interceptors.httpx import ResilientTransport

    pipeline = Pipeline(Timeout(10.0), Retry(3))
    client = httpx.Client(transport=ResilientTransport(pipeline=pipeline))

:class:`AsyncResilientTransport` does the same for ``httpx.AsyncClient``.

What the transport does for each request:

- picks the policy set: the first matching :class:`Route` of ``routes`` (by host, path and
  method), else ``request.extensions["resilience"]["policy"]``, else ``pipeline``;
- builds the :class:`~resilience.CallContext`: ``service`` is the host (or the route's
  service), ``method`` is ``"GET /path"`` (or the route's name), ``idempotent`` comes from
  the method, an ``Idempotency-Key`` header or an explicit opt-in, the deadline from a
  ``timeout`` option;
- sends each attempt through the inner transport, with the remaining deadline as httpx's
  connect/read/write/pool timeouts (never longer than the request's own);
- classifies the outcome with :class:`HttpxClassifier`: transport errors, 5xx and 429 are
  the backend's failures, other 4xx the caller's; ``Retry-After`` on a failed response is
  the server's pushback for the retry policy;
- closes a response that is retried; returns the winning one as soon as its headers
  arrive. From then on it is the caller's: its body is never retried;
- sends a request body that cannot be replayed (a generator) at most once;
- for a host that the ``discovery`` source knows as a service (``http://orders/...``), or
  a route's ``service``, sends each attempt to an endpoint picked by the ``balancer``
  among those whose health admits it, a retry or a hedge to one the call has not tried.

Per-request options go in ``request.extensions["resilience"]`` (see
:class:`ResilienceExtension`)::

    client.post(url, json=order, extensions={"resilience": {"idempotent": True, "timeout": 2.0}})

**Deadlines.** httpx's timeouts bound each network operation (connect, each read, each
write, the wait for a pooled connection), not the whole exchange; the transport gives every
attempt the time left before the call's deadline as each of them, keeping the request's own
when they are shorter. A sync :class:`~resilience.Timeout` cannot interrupt a blocking call,
so this is what bounds a sync request; an async one is also cancelled at the deadline. The
body of a streamed response is read by the caller after the call returned: its reads keep
the read timeout of the attempt that answered.

**Errors.** When a policy ends a call, the error raised is the library's own
(:class:`~resilience.CircuitOpenError`, :class:`~resilience.DeadlineExceededError`, ...,
with its ``context`` and ``retry_after``) and also an httpx exception with ``.request``
set: a deadline is an ``httpx.TimeoutException``, a rejection (open circuit, full
bulkhead, rate limit, throttling, concurrency limit, no endpoint) an
``httpx.TransportError``, a spent retry budget the class of the last attempt's error. So
``except httpx.HTTPError`` and ``except CircuitOpenError`` both catch it (the table is in
:mod:`interceptors._httpx_errors`). httpx's own errors pass through unchanged.

**Cancelled attempts** (a hedge that lost, an async ``Timeout``, a caller that gave up)
give their pooled connection back: httpcore 1.0.9 can leave a connection that was being
opened for a cancelled request in its pool, assigned to no request, until every slot is
taken (encode/httpcore#1093); the async transport takes such connections out of the
pool of ``httpx.AsyncHTTPTransport`` after each cancelled attempt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"interceptors.httpx needs the 'httpx' extra ({exc.name} is missing): pip install 'resilience-policies[httpx]'"
    ) from exc

from resilience.balancing.base import Balancer
from resilience.balancing.pool import EndpointPool, EndpointState, HealthFactory, Selection
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.errors import ResilienceError
from resilience.outcome import Outcome, error_outcome

from ._httpx_core import (
    DEFAULT_FAILURE_STATUSES,
    EXTENSION,
    IDEMPOTENT_METHODS,
    Exchange,
    HttpxClassifier,
    PipelineFactory,
    PolicySet,
    ResilienceExtension,
    Route,
    Router,
    asend_traced,
    checked,
    parse_retry_after,
    send_traced,
)
from ._httpx_endpoints import HeldAsyncStream, HeldSyncStream, after_error, close_sync
from ._httpx_endpoints import default_async_transport as _default_async_transport
from ._httpx_endpoints import default_sync_transport as _default_sync_transport
from ._httpx_endpoints import ssl_context as _ssl_context
from ._httpx_errors import httpx_error
from ._wiring import Ejection, pick

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "EXTENSION",
    "IDEMPOTENT_METHODS",
    "AsyncResilientTransport",
    "HttpxClassifier",
    "PipelineFactory",
    "PolicySet",
    "ResilienceExtension",
    "ResilientTransport",
    "Route",
    "parse_retry_after",
]


class ResilientTransport(httpx.BaseTransport):
    """A sync httpx transport running each request through a resilience pipeline.

    Args:
        inner: the transport that sends (default a new ``httpx.HTTPTransport()``); closed
            with this one.
        pipeline: the default policy set: a :class:`~resilience.Pipeline` shared by all
            requests, or a factory ``service -> Pipeline`` called once per service (host) so
            that each service gets its own breaker and limits (default: an empty pipeline).
            Its clock and listeners serve the calls that use it.
        policies: named policy sets, for :class:`Route` rules and for the ``policy``
            request option (default none).
        routes: the rule table, first match wins (default none).
        classifier: how responses and errors count (default :class:`HttpxClassifier()`).
        discovery: a discovery source, or its URI (``"etcd://host:2379/prefix"``,
            ``"static://host:port,host:port"``: the transport then makes the source and closes
            it with itself); a request whose host is a service it knows goes to one of the
            service's endpoints (default none).
        balancer: picks the endpoint of each attempt (default round robin); a retry or a
            hedge goes to an endpoint the call has not tried, when there is one.
        endpoint_transport: makes the inner transport of an endpoint. By default each
            endpoint gets its own ``httpx.HTTPTransport()`` (its own connection pool, all of
            them sharing one TLS context), unless ``inner`` is given, which then serves every
            endpoint. Called when discovery lists the endpoint (on the thread that delivers
            discovery's changes; for the endpoints known at a service's first request, in
            that request), never per request; the transport is closed once discovery drops
            the endpoint and its last response is closed.
        idempotent_methods: methods retried without an opt-in (default GET, HEAD, OPTIONS,
            PUT, DELETE, TRACE).
        rewrite_host_header: send the endpoint's address as ``Host`` instead of the
            service name (default ``False``).
        endpoint_health: builds the health gates of each discovered endpoint, e.g.
            ``lambda endpoint: CircuitBreaker(failure_threshold=5)`` for a breaker per
            replica: a pick skips an endpoint whose gates reject, and the attempt goes to
            another one at once (default: none).
        ejection: outlier ejection, an :class:`~resilience.OutlierEjection` or its
            options; each service's endpoints get their own counts, and the events go to
            the ejection's listeners and the pipeline's (default: the balancer's ``ejection``).
    """

    def __init__(
        self,
        inner: httpx.BaseTransport | None = None,
        *,
        pipeline: PolicySet | None = None,
        policies: Mapping[str, PolicySet] | None = None,
        routes: Sequence[Route] = (),
        classifier: HttpxClassifier | None = None,
        discovery: Discovery | str | None = None,
        balancer: Balancer | None = None,
        endpoint_transport: Callable[[Endpoint], httpx.BaseTransport] | None = None,
        endpoint_health: HealthFactory | None = None,
        ejection: Ejection | None = None,
        idempotent_methods: Collection[str] = IDEMPOTENT_METHODS,
        rewrite_host_header: bool = False,
    ) -> None:
        if inner is not None and not isinstance(inner, httpx.BaseTransport):
            raise TypeError(f"inner must be an httpx.BaseTransport, got {inner!r}")
        self._router = Router(
            pipeline=pipeline,
            policies=policies,
            routes=routes,
            classifier=classifier,
            discovery=discovery,
            balancer=balancer,
            idempotent_methods=idempotent_methods,
            rewrite_host_header=rewrite_host_header,
            endpoint_health=endpoint_health,
            ejection=ejection,
        )
        if self._router.discovery is not None and (endpoint_transport is not None or inner is None):
            self._router.make_resource = endpoint_transport or _default_sync_transport
            self._router.close_resource = close_sync
        self._inner = inner if inner is not None else httpx.HTTPTransport(verify=_ssl_context())

    @property
    def classifier(self) -> HttpxClassifier:
        """The classifier given to every call."""
        return self._router.classifier

    def pools(self) -> list[EndpointPool[Any]]:
        """The endpoint pools of the services discovery balanced so far (one per service), for
        telemetry's gauges (``OpenTelemetryListener.watch``)."""
        return list(self._router._pools.values())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pipeline, ctx, discovered = self._router.begin(request)
        exchange = _SyncExchange(self, request, ctx, pipeline, discovered)
        try:
            response = pipeline.execute(exchange, ctx)
        except ResilienceError as exc:
            error = httpx_error(exc, request)
            if error is None:
                raise
        else:
            ctx.committed = True
            return checked(response)
        finally:
            exchange.finish()
        raise error  # outside the except clause: the library error is not shown twice

    def close(self) -> None:
        try:
            for transport in self._router.shutdown():
                transport.close()
            self._inner.close()
        finally:
            self._router.close_discovery()

    def __enter__(self) -> ResilientTransport:
        """Enter the inner transport (its connection pool), as ``httpx.Client`` does on ``with``."""
        self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Close the per-endpoint transports, and exit the inner one with the exception details."""
        try:
            for transport in self._router.shutdown():
                transport.close()
        finally:
            self._router.close_discovery()
            self._inner.__exit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"ResilientTransport({self._inner!r}, pipeline={self._router.default.pipeline!r})"


class _SyncExchange(Exchange):
    __slots__ = ()

    transport: ResilientTransport

    def __call__(self, ctx: CallContext) -> httpx.Response:
        if self.discovered is None:
            request = self.prepare(ctx, None)
            send = self.transport._inner.handle_request
            return self.answered(ctx, send(request) if ctx.telemetry is None else send_traced(ctx, send, request))
        selection = pick(self.router.pool(self.discovered), ctx, self.picks)
        clock = ctx.clock
        start = clock.monotonic()
        try:
            request = self.prepare(ctx, selection.endpoint)
            resource = selection.state.resource
            inner = resource if resource is not None else self.transport._inner
            if ctx.telemetry is None:
                response = inner.handle_request(request)
            else:
                response = send_traced(ctx, inner.handle_request, request)
        except BaseException as exc:
            _release_error(selection, ctx, exc, start)
            raise
        if resource is not None:
            response.stream = HeldSyncStream(response.stream, selection.hold())
        _release(selection, ctx, ctx.classifier.result(response), start)
        return self.answered(ctx, response)


def _release(selection: Selection[Any], ctx: CallContext, outcome: Outcome, start: float) -> None:
    now = ctx.clock.monotonic()
    selection.release(outcome, now - start, now, ctx)


def _release_error(selection: Selection[Any], ctx: CallContext, exc: BaseException, start: float) -> None:
    # error_outcome, not the classifier alone: an attempt cut by the call's deadline (an
    # outer Timeout cancelling it) was too slow, which counts against the endpoint.
    now = ctx.clock.monotonic()
    selection.release(error_outcome(ctx, exc, now), now - start, now, ctx)


class AsyncResilientTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`ResilientTransport`, for ``httpx.AsyncClient``.

    Same arguments; ``inner`` is an ``httpx.AsyncBaseTransport`` (default a new
    ``httpx.AsyncHTTPTransport()``) and ``endpoint_transport`` makes async transports.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        pipeline: PolicySet | None = None,
        policies: Mapping[str, PolicySet] | None = None,
        routes: Sequence[Route] = (),
        classifier: HttpxClassifier | None = None,
        discovery: Discovery | str | None = None,
        balancer: Balancer | None = None,
        endpoint_transport: Callable[[Endpoint], httpx.AsyncBaseTransport] | None = None,
        endpoint_health: HealthFactory | None = None,
        ejection: Ejection | None = None,
        idempotent_methods: Collection[str] = IDEMPOTENT_METHODS,
        rewrite_host_header: bool = False,
    ) -> None:
        if inner is not None and not isinstance(inner, httpx.AsyncBaseTransport):
            raise TypeError(f"inner must be an httpx.AsyncBaseTransport, got {inner!r}")
        self._router = Router(
            pipeline=pipeline,
            policies=policies,
            routes=routes,
            classifier=classifier,
            discovery=discovery,
            balancer=balancer,
            idempotent_methods=idempotent_methods,
            rewrite_host_header=rewrite_host_header,
            endpoint_health=endpoint_health,
            ejection=ejection,
        )
        # Transports of endpoints that discovery dropped are closed in the event loop: the
        # pool may retire them from any thread, so they wait here for the next request.
        self._retired: list[httpx.AsyncBaseTransport] = []
        self._retired_lock = threading.Lock()
        if self._router.discovery is not None and (endpoint_transport is not None or inner is None):
            self._router.make_resource = endpoint_transport or _default_async_transport
            self._router.close_resource = self._retire
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(verify=_ssl_context())

    def _retire(self, state: EndpointState[Any]) -> None:
        if state.resource is not None:
            with self._retired_lock:
                self._retired.append(state.resource)

    async def _close_retired(self) -> None:
        with self._retired_lock:
            retired, self._retired = self._retired, []
        for transport in retired:
            await transport.aclose()

    @property
    def classifier(self) -> HttpxClassifier:
        """The classifier given to every call."""
        return self._router.classifier

    def pools(self) -> list[EndpointPool[Any]]:
        """The endpoint pools of the services discovery balanced so far (one per service), for
        telemetry's gauges (``OpenTelemetryListener.watch``)."""
        return list(self._router._pools.values())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._retired:
            await self._close_retired()
        pipeline, ctx, discovered = self._router.begin(request)
        exchange = _AsyncExchange(self, request, ctx, pipeline, discovered)
        try:
            response = await pipeline.aexecute(exchange, ctx)
        except ResilienceError as exc:
            error = httpx_error(exc, request)
            if error is None:
                raise
        else:
            ctx.committed = True
            return checked(response)
        finally:
            exchange.finish()
        raise error  # outside the except clause: the library error is not shown twice

    async def aclose(self) -> None:
        try:
            for transport in self._router.shutdown():
                await transport.aclose()
            await self._close_retired()
            await self._inner.aclose()
        finally:
            await self._router.aclose_discovery()

    async def __aenter__(self) -> AsyncResilientTransport:
        """Enter the inner transport (its connection pool), as ``httpx.AsyncClient`` does on ``async with``."""
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Close the per-endpoint transports, and exit the inner one with the exception details."""
        try:
            for transport in self._router.shutdown():
                await transport.aclose()
            await self._close_retired()
        finally:
            await self._router.aclose_discovery()
            await self._inner.__aexit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"AsyncResilientTransport({self._inner!r}, pipeline={self._router.default.pipeline!r})"


class _AsyncExchange(Exchange):
    __slots__ = ()

    transport: AsyncResilientTransport

    async def __call__(self, ctx: CallContext) -> httpx.Response:
        if self.discovered is None:
            inner = self.transport._inner
            try:
                request = self.prepare(ctx, None)
                if ctx.telemetry is None:
                    response = await inner.handle_async_request(request)
                else:
                    response = await asend_traced(ctx, inner.handle_async_request, request)
            except BaseException as exc:
                await after_error(ctx, inner, exc)
                raise
            return self.answered(ctx, response)
        selection = pick(self.router.pool(self.discovered), ctx, self.picks)
        clock = ctx.clock
        start = clock.monotonic()
        resource = selection.state.resource
        inner = resource if resource is not None else self.transport._inner
        try:
            request = self.prepare(ctx, selection.endpoint)
            if ctx.telemetry is None:
                response = await inner.handle_async_request(request)
            else:
                response = await asend_traced(ctx, inner.handle_async_request, request)
        except BaseException as exc:
            _release_error(selection, ctx, exc, start)
            await after_error(ctx, inner, exc)
            raise
        if resource is not None:
            response.stream = HeldAsyncStream(response.stream, selection.hold())
        _release(selection, ctx, ctx.classifier.result(response), start)
        return self.answered(ctx, response)
