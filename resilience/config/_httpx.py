"""The httpx side of a config: its routes, and transports that a reload can rebuild (imports httpx).

**Routes.** ``http.hosts`` become :class:`~interceptors.httpx.Route` rules, first match wins:
each host's routes, then a rule for the rest of the host, then one for every other request.
Each rule's settings are inherited (route, then host, then ``http``). Each rule gets a *view*
pipeline of its own, a :class:`~resilience.Pipeline` that holds the chain of the policy set
the rule names (:meth:`~resilience.Pipeline.replace`): the policies and their state are the
set's. A reload that only moves a rule to another set, or changes a set, re-points the views;
the transport stays as it is, with its endpoint pools and their balancer scores.

**Rebuilds.** A transport's rule table is fixed when it is made. A reload that changes the
rules themselves (hosts, paths, methods, service names, timeouts, tags, idempotency), the
classifier, the balancer's kind or ``idempotent_methods`` makes a new inner transport:
:class:`ConfigTransport` (and :class:`AsyncConfigTransport`) send new requests to it at once,
and close the old one when its last request (its last response body) is done. The new one
starts with new endpoint pools (in-flight counts, Peak-EWMA scores and ejections start
afresh); the policies' state (breakers, limiters, budgets) is kept, being the sets'.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from interceptors.httpx import AsyncResilientTransport, HttpxClassifier, ResilientTransport, Route

from ..pipeline import Pipeline
from .schema_adapters import HttpSection, RouteSettings

__all__ = ["AsyncConfigTransport", "ConfigTransport", "RuleShape", "compile_rules", "rules"]

RuleShape = tuple[Any, ...]
"""A rule without its policy set: what a transport fixes when it is made."""


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _shape(host: str | None, path: str | None, methods: Any, chain: list[RouteSettings]) -> RuleShape:
    tags: dict[str, str] = {}
    for settings in reversed(chain):
        tags.update(settings.tags or {})
    return (
        host,
        path,
        tuple(methods) if methods else None,
        _first(*(s.name for s in chain)),
        _first(*(s.service for s in chain)),
        _first(*(s.idempotent for s in chain)),
        _first(*(s.timeout for s in chain)),
        tuple(sorted(tags.items())) or None,
    )


def compile_rules(http: HttpSection) -> list[tuple[RuleShape, str | None]]:
    """Every rule ``http`` describes, first match first, with the policy set it names."""
    out: list[tuple[RuleShape, str | None]] = []
    for host, section in http.hosts.items():
        for route in section.routes:
            chain: list[RouteSettings] = [route, section, http]
            out.append((_shape(host, route.path, route.methods, chain), _first(*(s.policy for s in chain))))
        out.append((_shape(host, None, None, [section, http]), _first(section.policy, http.policy)))
    out.append((_shape(None, None, None, [http]), http.policy))
    return out


def rules(shapes: list[RuleShape], views: list[Pipeline]) -> list[Route]:
    """The :class:`Route` of each shape, each with its view pipeline."""
    made = []
    for shape, view in zip(shapes, views, strict=True):
        host, path, methods, name, service, idempotent, timeout, tags = shape
        made.append(
            Route(
                policy=view,
                host=host,
                path=path,
                methods=methods,
                name=name,
                service=service,
                idempotent=idempotent,
                timeout=timeout,
                tags=dict(tags) if tags else None,
            )
        )
    return made


def classifier(http: HttpSection) -> HttpxClassifier:
    section = http.classifier
    args: dict[str, Any] = {"retryable_statuses": section.retryable_statuses, "drain_limit": section.drain_limit}
    if section.failure_statuses is not None:
        args["failure_statuses"] = section.failure_statuses
    return HttpxClassifier(**args)


class _Generation:
    """One inner transport and how many requests (responses not yet closed) use it."""

    __slots__ = ("active", "lock", "retired", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.active = 0
        self.retired = False
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.active += 1

    def leave(self) -> bool:
        """One request done; whether the transport is now retired and idle (to close)."""
        with self.lock:
            self.active -= 1
            return self.retired and self.active == 0

    def retire(self) -> bool:
        """No new request comes; whether it is idle already (to close now)."""
        with self.lock:
            self.retired = True
            return self.active == 0


class _Released(httpx.SyncByteStream):
    def __init__(self, inner: Any, done: Callable[[], None]) -> None:
        self._inner = inner
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


class ConfigTransport(httpx.BaseTransport):
    """A sync httpx transport of a :class:`~resilience.config.Setup`: a
    :class:`~interceptors.httpx.ResilientTransport` that a reload may replace (see the module doc)."""

    def __init__(self, transport: ResilientTransport, on_close: Callable[[ConfigTransport], None]) -> None:
        self._current = _Generation(transport)
        self._on_close = on_close
        self._closed = False

    @property
    def transport(self) -> ResilientTransport:
        """The inner transport new requests go to."""
        transport: ResilientTransport = self._current.transport
        return transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        generation = self._current
        generation.enter()
        try:
            response: httpx.Response = generation.transport.handle_request(request)
        except BaseException:
            self._leave(generation)
            raise
        response.stream = _Released(response.stream, lambda: self._leave(generation))
        return response

    def _leave(self, generation: _Generation) -> None:
        if generation.leave():
            generation.transport.close()

    def swap(self, transport: ResilientTransport) -> None:
        """Send new requests to ``transport``; close the old one once its requests are done."""
        old, self._current = self._current, _Generation(transport)
        if old.retire():
            old.transport.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)
        if self._current.retire():
            self._current.transport.close()

    def __repr__(self) -> str:
        return f"ConfigTransport({self._current.transport!r})"


class _AsyncReleased(httpx.AsyncByteStream):
    def __init__(self, inner: Any, done: Callable[[], Any]) -> None:
        self._inner = inner
        self._done: Callable[[], Any] | None = done

    def __aiter__(self) -> AsyncIterator[bytes]:
        iterator: AsyncIterator[bytes] = self._inner.__aiter__()
        return iterator

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            done, self._done = self._done, None
            if done is not None:
                await done()


class AsyncConfigTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`ConfigTransport`, over an :class:`~interceptors.httpx.AsyncResilientTransport`.

    An old inner transport is closed in the event loop: by the request that ends its last
    use, or by the next request after the swap when it was idle then.
    """

    def __init__(self, transport: AsyncResilientTransport, on_close: Callable[[Any], None]) -> None:
        self._current = _Generation(transport)
        self._idle: list[_Generation] = []
        self._lock = threading.Lock()
        self._on_close = on_close
        self._closed = False

    @property
    def transport(self) -> AsyncResilientTransport:
        transport: AsyncResilientTransport = self._current.transport
        return transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._idle:
            await self._close_idle()
        generation = self._current
        generation.enter()
        try:
            response: httpx.Response = await generation.transport.handle_async_request(request)
        except BaseException:
            await self._leave(generation)
            raise
        response.stream = _AsyncReleased(response.stream, lambda: self._leave(generation))
        return response

    async def _leave(self, generation: _Generation) -> None:
        if generation.leave():
            await generation.transport.aclose()

    async def _close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for generation in idle:
            await generation.transport.aclose()

    def swap(self, transport: AsyncResilientTransport) -> None:
        """Send new requests to ``transport`` (from any thread); the old one is closed in the loop."""
        old, self._current = self._current, _Generation(transport)
        if old.retire():
            with self._lock:
                self._idle.append(old)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)
        await self._close_idle()
        if self._current.retire():
            await self._current.transport.aclose()

    def __repr__(self) -> str:
        return f"AsyncConfigTransport({self._current.transport!r})"
