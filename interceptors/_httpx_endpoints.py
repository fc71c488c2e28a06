"""The per-endpoint side of the httpx transports: the endpoints' own transports, the response
bodies that keep them open, and what an attempt owes after an error (a cancelled attempt's
orphaned connections, a deadline's ordering).
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import httpcore
import httpx

from resilience._aio import checkpoint
from resilience.balancing.pool import EndpointPool, EndpointState
from resilience.context import CallContext
from resilience.discovery.base import Endpoint

__all__: list[str] = []

_log = logging.getLogger("resilience")

# -- per-endpoint transports, built as discovery lists the endpoints ----------------------


class EndpointTransports(EndpointPool[Any]):
    """An endpoint pool whose resources (the endpoints' transports) are built when discovery
    lists an endpoint, not on its first pick.

    Building an ``httpx.AsyncHTTPTransport`` inside a request would stall the event loop
    (it costs ~0.1 ms with the shared TLS context, 50-185 ms without one); here it happens
    in :meth:`update`, on the thread that delivers discovery's changes, and the transport
    is reused by every request until discovery drops the endpoint. Only the first request
    of a service, which subscribes the pool, builds the transports of the endpoints known
    then. A transport whose factory raised is left to be built on its first pick, which
    then raises to the caller.
    """

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        super().update(endpoints)
        for state in self.states:
            if state.resource is None and not state.removed:
                self._build(state)

    def _build(self, state: EndpointState[Any]) -> None:
        try:
            made = self._make(state.endpoint)  # the adapter's factory: never under the lock
        except Exception:
            _log.exception("building the transport of %s (service %r) failed", state.address, self.service)
            return
        with self._lock:
            if state.resource is None and not state.removed and not self.closed:
                state.resource = made
                return
        if self._close is not None:  # dropped meanwhile, or another thread was first
            spare: EndpointState[Any] = EndpointState(state.endpoint, ())
            spare.resource = made
            self._close(spare)


_DEADLINE_SLACK = 1e-3  # a timer fires up to the loop's clock resolution early


async def after_error(ctx: CallContext, inner: object, exc: BaseException) -> None:
    """What an async attempt that raised ``exc`` owes before the error goes on."""
    if not isinstance(exc, Exception):  # cancelled
        await reclaim_orphans(inner)
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


async def reclaim_orphans(transport: object) -> None:
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
def ssl_context() -> ssl.SSLContext:
    """The default TLS context, built once, when the first transport is constructed: loading
    the CA bundle costs 50-185 ms, which must never happen on the request path. Every
    default transport (inner and per endpoint) shares it."""
    return httpx.create_ssl_context()


def default_sync_transport(endpoint: Endpoint) -> httpx.BaseTransport:
    return httpx.HTTPTransport(verify=ssl_context())


def default_async_transport(endpoint: Endpoint) -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(verify=ssl_context())


def close_sync(state: EndpointState[Any]) -> None:
    if state.resource is not None:
        state.resource.close()


class _Hold(Protocol):
    """What ``Selection.hold()`` returns: closed once the response body is."""

    def close(self) -> None: ...


class HeldSyncStream(httpx.SyncByteStream):
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


class HeldAsyncStream(httpx.AsyncByteStream):
    """The async twin of :class:`HeldSyncStream`."""

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
