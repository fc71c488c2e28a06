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
- for a host that the ``discovery`` source knows as a service (``http://orders/...``),
  sends each attempt to an endpoint picked by the ``balancer``, a retry to another one.

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

Errors of the policies (:class:`~resilience.CircuitOpenError`,
:class:`~resilience.DeadlineExceededError`, ...) propagate out of the client's call as
they are, next to httpx's own errors.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import httpx

from resilience.balancing.base import Balancer
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint

from ._httpx_core import (
    DEFAULT_FAILURE_STATUSES,
    EXTENSION,
    IDEMPOTENT_METHODS,
    EndpointTransports,
    HttpxClassifier,
    OnceAsyncStream,
    OnceSyncStream,
    PipelineFactory,
    PolicySet,
    ResilienceExtension,
    Route,
    Router,
    _Entry,
    _OnceBody,
    endpoint_request,
    parse_retry_after,
    replayable,
)

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


class _Exchange:
    """One request's passage through the pipeline; the pipeline calls it once per attempt.

    What an attempt needs is decided here, once for both transports; the two subclasses
    only send (``handle_request`` or ``await handle_async_request``). Hedged attempts may
    run concurrently, so nothing per attempt is stored on this object.
    """

    __slots__ = ("body", "discovered", "request", "router", "stream", "transport")

    def __init__(self, transport: Any, request: httpx.Request, ctx: CallContext, discovered: bool) -> None:
        self.transport = transport
        self.router: Router = transport._router
        self.request = request
        self.discovered = discovered
        self.body: _OnceBody | None = None
        stream = self.stream = request.stream
        if type(stream) is not httpx.ByteStream and not replayable(stream):
            # Sent at most once: no hedge, no retry once it started to go out (ctx.committed).
            ctx.idempotent = False
            body: _OnceBody
            if isinstance(stream, httpx.SyncByteStream):
                body = request.stream = OnceSyncStream(stream)
            elif isinstance(stream, httpx.AsyncByteStream):
                body = request.stream = OnceAsyncStream(stream)
            else:  # pragma: no cover - httpx always gives one of the two
                raise TypeError(f"unsupported request stream {stream!r}")
            self.body = body

    def prepare(self, ctx: CallContext) -> tuple[httpx.Request, Endpoint | None]:
        """The request to send in this attempt, and its endpoint when discovery routes it."""
        router = self.router
        extensions = None
        if ctx.deadline is not None:
            extensions = router.attempt_extensions(ctx, self.request.extensions)
        body = self.body
        if body is not None:
            if body.started:
                raise httpx.StreamConsumed()
            body.ctx = ctx
        request = self.request
        if self.discovered:
            endpoint = router.pick(ctx, request.url.host)
            return (
                endpoint_request(request, endpoint, extensions, rewrite_host_header=router.rewrite_host_header),
                endpoint,
            )
        if extensions is not None:
            # The caller's request is never changed: an attempt with its own timeouts gets a
            # copy (a hedge or an abandoned attempt may still run when the call returns).
            return endpoint_request(request, None, extensions, rewrite_host_header=False), None
        return request, None

    def answered(self, ctx: CallContext, response: httpx.Response) -> httpx.Response:
        router = self.router
        if response.status_code in router.failure_statuses:
            router.pushback(ctx, response)
        return response

    def finish(self) -> None:
        """Give the caller's request back as it was."""
        if self.body is not None:
            self.request.stream = self.stream


def _checked(response: object) -> httpx.Response:
    if not isinstance(response, httpx.Response):
        raise TypeError(f"the pipeline returned {response!r}, not an httpx.Response (check the fallback)")
    return response


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
        discovery: a discovery source; a request whose host is a service it knows goes to
            one of the service's endpoints (default none).
        balancer: picks the endpoint of each attempt (default round robin).
        endpoint_transport: makes the inner transport of an endpoint. By default each
            endpoint gets its own ``httpx.HTTPTransport()`` (its own connection pool), unless
            ``inner`` is given, which then serves every endpoint.
        idempotent_methods: methods retried without an opt-in (default GET, HEAD, OPTIONS,
            PUT, DELETE, TRACE).
        rewrite_host_header: send the endpoint's address as ``Host`` instead of the
            service name (default ``False``).
    """

    def __init__(
        self,
        inner: httpx.BaseTransport | None = None,
        *,
        pipeline: PolicySet | None = None,
        policies: Mapping[str, PolicySet] | None = None,
        routes: Sequence[Route] = (),
        classifier: HttpxClassifier | None = None,
        discovery: Discovery | None = None,
        balancer: Balancer | None = None,
        endpoint_transport: Callable[[Endpoint], httpx.BaseTransport] | None = None,
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
        )
        self._endpoints: EndpointTransports[httpx.BaseTransport] | None = None
        if discovery is not None and (endpoint_transport is not None or inner is None):
            self._endpoints = EndpointTransports(discovery, endpoint_transport or _default_sync_transport, _close_sync)
        self._inner = inner if inner is not None else httpx.HTTPTransport()

    @property
    def classifier(self) -> HttpxClassifier:
        """The classifier given to every call."""
        return self._router.classifier

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pipeline, ctx, discovered = self._router.begin(request)
        exchange = _SyncExchange(self, request, ctx, discovered)
        try:
            response = pipeline.execute(exchange, ctx)
        finally:
            exchange.finish()
        ctx.committed = True
        return _checked(response)

    def close(self) -> None:
        if self._endpoints is not None:
            for transport in self._endpoints.shutdown():
                transport.close()
        self._inner.close()

    def __repr__(self) -> str:
        return f"ResilientTransport({self._inner!r}, pipeline={self._router.default.pipeline!r})"


class _SyncExchange(_Exchange):
    __slots__ = ()

    transport: ResilientTransport

    def __call__(self, ctx: CallContext) -> httpx.Response:
        request, endpoint = self.prepare(ctx)
        if endpoint is None:
            return self.answered(ctx, self.transport._inner.handle_request(request))
        pool = self.transport._endpoints
        entry = None
        if pool is not None:
            pool.watch(self.request.url.host)
            entry = pool.acquire(endpoint)
        inner = entry.transport if entry is not None else self.transport._inner
        clock = ctx.clock
        balancer = self.router.balancer
        start = clock.monotonic()
        try:
            response = inner.handle_request(request)
        except BaseException as exc:
            balancer.release(endpoint, ctx.classifier.error(exc), clock.monotonic() - start)
            if entry is not None:
                assert pool is not None
                _close_sync_or_none(pool.release(entry))
            raise
        balancer.release(endpoint, ctx.classifier.result(response), clock.monotonic() - start)
        if entry is not None:
            assert pool is not None
            response.stream = _ReleasingSyncStream(response.stream, pool, entry)
        return self.answered(ctx, response)


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
        discovery: Discovery | None = None,
        balancer: Balancer | None = None,
        endpoint_transport: Callable[[Endpoint], httpx.AsyncBaseTransport] | None = None,
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
        )
        self._endpoints: EndpointTransports[httpx.AsyncBaseTransport] | None = None
        if discovery is not None and (endpoint_transport is not None or inner is None):
            # Retired transports are closed in the event loop (close=None queues them).
            self._endpoints = EndpointTransports(discovery, endpoint_transport or _default_async_transport, None)
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()

    @property
    def classifier(self) -> HttpxClassifier:
        """The classifier given to every call."""
        return self._router.classifier

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        endpoints = self._endpoints
        if endpoints is not None and endpoints.pending:
            for transport in endpoints.take_pending():
                await transport.aclose()
        pipeline, ctx, discovered = self._router.begin(request)
        exchange = _AsyncExchange(self, request, ctx, discovered)
        try:
            response = await pipeline.aexecute(exchange, ctx)
        finally:
            exchange.finish()
        ctx.committed = True
        return _checked(response)

    async def aclose(self) -> None:
        if self._endpoints is not None:
            for transport in self._endpoints.shutdown():
                await transport.aclose()
        await self._inner.aclose()

    def __repr__(self) -> str:
        return f"AsyncResilientTransport({self._inner!r}, pipeline={self._router.default.pipeline!r})"


class _AsyncExchange(_Exchange):
    __slots__ = ()

    transport: AsyncResilientTransport

    async def __call__(self, ctx: CallContext) -> httpx.Response:
        request, endpoint = self.prepare(ctx)
        if endpoint is None:
            return self.answered(ctx, await self.transport._inner.handle_async_request(request))
        pool = self.transport._endpoints
        entry = None
        if pool is not None:
            pool.watch(self.request.url.host)
            entry = pool.acquire(endpoint)
        inner = entry.transport if entry is not None else self.transport._inner
        clock = ctx.clock
        balancer = self.router.balancer
        start = clock.monotonic()
        try:
            response = await inner.handle_async_request(request)
        except BaseException as exc:
            balancer.release(endpoint, ctx.classifier.error(exc), clock.monotonic() - start)
            if entry is not None:
                assert pool is not None
                retired = pool.release(entry)
                if retired is not None:
                    await retired.aclose()
            raise
        balancer.release(endpoint, ctx.classifier.result(response), clock.monotonic() - start)
        if entry is not None:
            assert pool is not None
            response.stream = _ReleasingAsyncStream(response.stream, pool, entry)
        return self.answered(ctx, response)


# -- per-endpoint transports ---------------------------------------------------------------


def _default_sync_transport(endpoint: Endpoint) -> httpx.BaseTransport:
    return httpx.HTTPTransport()


def _default_async_transport(endpoint: Endpoint) -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport()


def _close_sync(transport: httpx.BaseTransport) -> None:
    transport.close()


def _close_sync_or_none(transport: httpx.BaseTransport | None) -> None:
    if transport is not None:
        transport.close()


class _ReleasingSyncStream(httpx.SyncByteStream):
    """A response body that gives its endpoint transport back when closed."""

    __slots__ = ("_entry", "_inner", "_pool")

    def __init__(self, inner: Any, pool: EndpointTransports[httpx.BaseTransport], entry: _Entry[Any]) -> None:
        self._inner: httpx.SyncByteStream = inner
        self._pool: EndpointTransports[httpx.BaseTransport] | None = pool
        self._entry = entry

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                _close_sync_or_none(pool.release(self._entry))


class _ReleasingAsyncStream(httpx.AsyncByteStream):
    """The async twin of :class:`_ReleasingSyncStream`."""

    __slots__ = ("_entry", "_inner", "_pool")

    def __init__(self, inner: Any, pool: EndpointTransports[httpx.AsyncBaseTransport], entry: _Entry[Any]) -> None:
        self._inner: httpx.AsyncByteStream = inner
        self._pool: EndpointTransports[httpx.AsyncBaseTransport] | None = pool
        self._entry = entry

    def __aiter__(self) -> Any:
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                retired = pool.release(self._entry)
                if retired is not None:
                    await retired.aclose()
