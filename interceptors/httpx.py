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

import functools
import ssl
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import httpcore
import httpx

from resilience._aio import checkpoint
from resilience.balancing.base import Balancer
from resilience.balancing.pool import EndpointState, HealthFactory, Selection
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.errors import ResilienceError
from resilience.outcome import Outcome, error_outcome

from ._httpx_bodies import OnceAsyncStream, OnceSyncStream, _OnceBody, replayable
from ._httpx_core import (
    DEFAULT_FAILURE_STATUSES,
    EXTENSION,
    IDEMPOTENT_METHODS,
    HttpxClassifier,
    PipelineFactory,
    PolicySet,
    ResilienceExtension,
    Route,
    Router,
    endpoint_request,
    parse_retry_after,
)
from ._httpx_errors import httpx_error

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

    def __init__(self, transport: Any, request: httpx.Request, ctx: CallContext, discovered: str | None) -> None:
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

    def prepare(self, ctx: CallContext, endpoint: Endpoint | None) -> httpx.Request:
        """The request to send in this attempt (to ``endpoint`` when discovery routes it)."""
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
        if endpoint is not None:
            return endpoint_request(request, endpoint, extensions, rewrite_host_header=router.rewrite_host_header)
        if extensions is not None:
            # The caller's request is never changed: an attempt with its own timeouts gets a
            # copy (a hedge or an abandoned attempt may still run when the call returns).
            return endpoint_request(request, None, extensions, rewrite_host_header=False)
        return request

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
            replica: a pick skips an endpoint whose gates reject (default: none).
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
        endpoint_health: HealthFactory | None = None,
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
        )
        if discovery is not None and (endpoint_transport is not None or inner is None):
            self._router.make_resource = endpoint_transport or _default_sync_transport
            self._router.close_resource = _close_sync
        self._inner = inner if inner is not None else httpx.HTTPTransport(verify=_ssl_context())

    @property
    def classifier(self) -> HttpxClassifier:
        """The classifier given to every call."""
        return self._router.classifier

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pipeline, ctx, discovered = self._router.begin(request)
        exchange = _SyncExchange(self, request, ctx, discovered)
        try:
            response = pipeline.execute(exchange, ctx)
        except ResilienceError as exc:
            error = httpx_error(exc, request)
            if error is None:
                raise
        else:
            ctx.committed = True
            return _checked(response)
        finally:
            exchange.finish()
        raise error  # outside the except clause: the library error is not shown twice

    def close(self) -> None:
        for transport in self._router.shutdown():
            transport.close()
        self._inner.close()

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
            self._inner.__exit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"ResilientTransport({self._inner!r}, pipeline={self._router.default.pipeline!r})"


class _SyncExchange(_Exchange):
    __slots__ = ()

    transport: ResilientTransport

    def __call__(self, ctx: CallContext) -> httpx.Response:
        if self.discovered is None:
            return self.answered(ctx, self.transport._inner.handle_request(self.prepare(ctx, None)))
        selection = self.router.pool(self.discovered).pick(ctx)
        clock = ctx.clock
        start = clock.monotonic()
        try:
            request = self.prepare(ctx, selection.endpoint)
            resource = selection.state.resource
            inner = resource if resource is not None else self.transport._inner
            response = inner.handle_request(request)
        except BaseException as exc:
            _release_error(selection, ctx, exc, start)
            raise
        if resource is not None:
            response.stream = _HeldSyncStream(response.stream, selection.hold())
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
        discovery: Discovery | None = None,
        balancer: Balancer | None = None,
        endpoint_transport: Callable[[Endpoint], httpx.AsyncBaseTransport] | None = None,
        endpoint_health: HealthFactory | None = None,
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
        )
        # Transports of endpoints that discovery dropped are closed in the event loop: the
        # pool may retire them from any thread, so they wait here for the next request.
        self._retired: list[httpx.AsyncBaseTransport] = []
        self._retired_lock = threading.Lock()
        if discovery is not None and (endpoint_transport is not None or inner is None):
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._retired:
            await self._close_retired()
        pipeline, ctx, discovered = self._router.begin(request)
        exchange = _AsyncExchange(self, request, ctx, discovered)
        try:
            response = await pipeline.aexecute(exchange, ctx)
        except ResilienceError as exc:
            error = httpx_error(exc, request)
            if error is None:
                raise
        else:
            ctx.committed = True
            return _checked(response)
        finally:
            exchange.finish()
        raise error  # outside the except clause: the library error is not shown twice

    async def aclose(self) -> None:
        for transport in self._router.shutdown():
            await transport.aclose()
        await self._close_retired()
        await self._inner.aclose()

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
            await self._inner.__aexit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"AsyncResilientTransport({self._inner!r}, pipeline={self._router.default.pipeline!r})"


class _AsyncExchange(_Exchange):
    __slots__ = ()

    transport: AsyncResilientTransport

    async def __call__(self, ctx: CallContext) -> httpx.Response:
        if self.discovered is None:
            inner = self.transport._inner
            try:
                response = await inner.handle_async_request(self.prepare(ctx, None))
            except BaseException as exc:
                await _after_error(ctx, inner, exc)
                raise
            return self.answered(ctx, response)
        selection = self.router.pool(self.discovered).pick(ctx)
        clock = ctx.clock
        start = clock.monotonic()
        resource = selection.state.resource
        inner = resource if resource is not None else self.transport._inner
        try:
            response = await inner.handle_async_request(self.prepare(ctx, selection.endpoint))
        except BaseException as exc:
            _release_error(selection, ctx, exc, start)
            await _after_error(ctx, inner, exc)
            raise
        if resource is not None:
            response.stream = _HeldAsyncStream(response.stream, selection.hold())
        _release(selection, ctx, ctx.classifier.result(response), start)
        return self.answered(ctx, response)


_DEADLINE_SLACK = 1e-3  # a timer fires up to the loop's clock resolution early


async def _after_error(ctx: CallContext, inner: object, exc: BaseException) -> None:
    """What an async attempt that raised ``exc`` owes before the error goes on."""
    if not isinstance(exc, Exception):  # cancelled
        await _reclaim_orphans(inner)
    elif isinstance(exc, httpx.TimeoutException):
        deadline = ctx.deadline
        if deadline is not None and ctx.clock.monotonic() + _DEADLINE_SLACK >= deadline:
            # httpx's timeouts were cut to the call's deadline, so they fire with it: the
            # policy that set the deadline (an async Timeout, cancelling at that moment) has
            # the first word. Under load both can fall due in one scheduler pass, and yield
            # once lets its cancellation, and so its DeadlineExceededError, come through.
            await checkpoint()


# -- connections left behind by a cancelled attempt ---------------------------------------


def _unstarted(connection: object) -> bool:
    """Whether a pooled connection was made for a request and never started serving it.

    httpcore creates the connection of a queued request while that request waits, and
    connects it in the request's task. Cancelled in between, or after connecting but
    before the HTTP/1.1 exchange took its state lock, the request leaves the pool with
    the connection still CONNECTING or NEW: neither idle, closed nor expired, so the pool
    never reclaims it (encode/httpcore#1093).
    """
    if not isinstance(connection, httpcore.AsyncHTTPConnection):
        return False
    opened = getattr(connection, "_connection", None)
    if opened is None:
        return getattr(connection, "_connect_failed", True) is False
    if isinstance(opened, httpcore.AsyncHTTP11Connection):
        state = getattr(opened, "_state", None)
        return getattr(state, "name", None) == "NEW"
    return False


async def _reclaim_orphans(transport: object) -> None:
    """After a cancelled attempt, take the connections that belong to no request out of the
    httpcore pool of ``transport`` (an ``httpx.AsyncHTTPTransport``), and give their slots
    to the requests waiting. Anything else (another transport, another pool) is left alone.
    """
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool):
        return
    try:
        with pool._optional_thread_lock:
            owned = {id(r.connection) for r in pool._requests if r.connection is not None}
            orphans = [c for c in pool._connections if id(c) not in owned and _unstarted(c)]
            if not orphans:
                return
            for connection in orphans:
                pool._connections.remove(connection)
            closing = pool._assign_requests_to_connections()
    except AttributeError:  # pragma: no cover - an httpcore whose pool is laid out otherwise
        return
    # Shielded inside: the task is being cancelled, and the sockets must close all the same.
    await pool._close_connections([*orphans, *closing])


# -- per-endpoint transports ---------------------------------------------------------------


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The default TLS context, built once, when the first transport is constructed: loading
    the CA bundle costs 50-185 ms, which must never happen on the request path. Every
    default transport (inner and per endpoint) shares it."""
    return httpx.create_ssl_context()


def _default_sync_transport(endpoint: Endpoint) -> httpx.BaseTransport:
    return httpx.HTTPTransport(verify=_ssl_context())


def _default_async_transport(endpoint: Endpoint) -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(verify=_ssl_context())


def _close_sync(state: EndpointState[Any]) -> None:
    if state.resource is not None:
        state.resource.close()


class _Hold(Protocol):
    """What ``Selection.hold()`` returns: closed once the response body is."""

    def close(self) -> None: ...


class _HeldSyncStream(httpx.SyncByteStream):
    """A response body that keeps its endpoint's transport open until it is closed."""

    __slots__ = ("_hold", "_inner")

    def __init__(self, inner: Any, hold: _Hold) -> None:
        self._inner: httpx.SyncByteStream = inner
        self._hold = hold

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._hold.close()


class _HeldAsyncStream(httpx.AsyncByteStream):
    """The async twin of :class:`_HeldSyncStream`."""

    __slots__ = ("_hold", "_inner")

    def __init__(self, inner: Any, hold: _Hold) -> None:
        self._inner: httpx.AsyncByteStream = inner
        self._hold = hold

    def __aiter__(self) -> Any:
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._hold.close()
