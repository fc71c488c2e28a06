"""The I/O-free half of the httpx transports: the router that prepares each request and attempt.

:mod:`interceptors.httpx` holds the two thin executors (sync and asyncio); what they share
is written once, in five rooms: :mod:`._httpx_classify` (what a response means),
:mod:`._httpx_routes` (the rule table and per-request options), :mod:`._httpx_bodies`
(bodies sent once), :mod:`._httpx_endpoints` (the endpoints' own transports) and this
module (the router, and the exchange that prepares each attempt's request).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import httpx

from resilience._validate import seconds
from resilience.balancing.base import Balancer, RoundRobin
from resilience.balancing.pool import EndpointPool, EndpointState, HealthFactory
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.errors import DeadlineExceededError
from resilience.pipeline import Pipeline

from ._httpx_bodies import OnceAsyncStream, OnceSyncStream, _OnceBody, replayable
from ._httpx_classify import DEFAULT_FAILURE_STATUSES, HttpxClassifier, parse_retry_after
from ._httpx_endpoints import EndpointTransports
from ._httpx_routes import (
    _EXTENSION_KEYS,
    EXTENSION,
    IDEMPOTENT_METHODS,
    PipelineFactory,
    PolicySet,
    ResilienceExtension,
    Route,
    _PolicySet,
)
from ._wiring import CallPicks, Ejection, as_discovery, as_ejection, hedges, may_race

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "EXTENSION",
    "IDEMPOTENT_METHODS",
    "HttpxClassifier",
    "PipelineFactory",
    "PolicySet",
    "ResilienceExtension",
    "Route",
    "parse_retry_after",
]

# -- the per-call preparation, shared by both transports ---------------------------------


class Router:
    """Everything a transport decides about a request before and between attempts."""

    def __init__(
        self,
        *,
        pipeline: PolicySet | None,
        policies: Mapping[str, PolicySet] | None,
        routes: Sequence[Route],
        classifier: HttpxClassifier | None,
        discovery: Discovery | str | None,
        balancer: Balancer | None,
        idempotent_methods: Collection[str],
        rewrite_host_header: bool,
        endpoint_health: HealthFactory | None = None,
        ejection: Ejection | None = None,
    ) -> None:
        self.default = _PolicySet("default", pipeline if pipeline is not None else Pipeline())
        self.policies: dict[str, _PolicySet] = {}
        for name, value in (policies or {}).items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"policy set names must be non-empty strings, got {name!r}")
            self.policies[name] = _PolicySet(name, value)
        if isinstance(routes, Route):
            routes = (routes,)
        self.routes: tuple[Route, ...] = tuple(routes)
        self._route_sets: list[_PolicySet | None] = []
        for i, route in enumerate(self.routes):
            if not isinstance(route, Route):
                raise TypeError(f"routes[{i}] must be a Route, got {route!r}")
            self._route_sets.append(self._policy_set(route.policy, f"routes[{i}]"))
        if classifier is not None and not isinstance(classifier, HttpxClassifier):
            raise TypeError(f"classifier must be an HttpxClassifier, got {classifier!r}")
        self.classifier = classifier if classifier is not None else HttpxClassifier()
        self.failure_statuses = self.classifier.failure_statuses
        if balancer is not None and not isinstance(balancer, Balancer):
            raise TypeError(f"balancer must be a Balancer, got {balancer!r}")
        self.balancer: Balancer = balancer if balancer is not None else RoundRobin()
        if isinstance(idempotent_methods, str):
            raise TypeError(
                f"idempotent_methods must be a collection of methods, got the string {idempotent_methods!r}"
            )
        self.idempotent_methods = frozenset(m.upper() for m in idempotent_methods)
        self.rewrite_host_header = bool(rewrite_host_header)
        self._discovered: set[str] = set()
        if endpoint_health is not None and not callable(endpoint_health):
            raise TypeError(f"endpoint_health must be a callable(endpoint) -> gate(s), got {endpoint_health!r}")
        self.endpoint_health = endpoint_health
        self.ejection = as_ejection(ejection)
        self.make_resource: Callable[[Endpoint], Any] | None = None
        self.close_resource: Callable[[EndpointState[Any]], None] | None = None
        self._pools: dict[str, EndpointPool[Any]] = {}
        self._pools_lock = threading.Lock()
        self.closed = False
        # Last, once every other argument is known good: a URI may start a watch.
        self.discovery: Discovery | None = None
        self._owned: Discovery | None = None  # made here from a URI: closed with the transport
        if discovery is not None:
            self.discovery, owned = as_discovery(discovery)
            if owned:
                self._owned = self.discovery

    def _policy_set(self, policy: object, where: str) -> _PolicySet | None:
        if policy is None:
            return None
        if isinstance(policy, str):
            found = self.policies.get(policy)
            if found is None:
                raise ValueError(f"{where}: unknown policy set {policy!r}; known: {sorted(self.policies)}")
            return found
        return _PolicySet(where, policy)

    def begin(self, request: httpx.Request) -> tuple[Pipeline, CallContext, str | None]:
        """The pipeline and the context of a request, and the discovery service it is balanced over, if any."""
        method = request.method
        url = request.url
        host = url.host
        options: Mapping[str, Any] | None = request.extensions.get(EXTENSION)
        route: Route | None = None
        policy_set: _PolicySet | None = None
        if self.routes:
            path = url.path
            for i, candidate in enumerate(self.routes):
                if candidate.matches(host, method, path):
                    route = candidate
                    policy_set = self._route_sets[i]
                    break
        service = host
        idempotent: bool | None = None
        timeout: float | None = None
        tags: dict[str, str] | None = None
        name: str | None = None
        if route is not None:
            if route.service is not None:
                service = route.service
            idempotent = route.idempotent
            timeout = route._timeout
            name = route.name
            if route.tags:
                tags = dict(route.tags)
        deadline: float | None = None
        if options is not None:
            if not isinstance(options, Mapping):
                raise TypeError(f'request.extensions["{EXTENSION}"] must be a dict, got {options!r}')
            unknown = options.keys() - _EXTENSION_KEYS
            if unknown:
                raise ValueError(
                    f'request.extensions["{EXTENSION}"] has unknown keys {sorted(unknown)}; '
                    f"allowed: {sorted(_EXTENSION_KEYS)}"
                )
            if "policy" in options:
                named = options["policy"]
                policy_set = self.policies.get(named) if isinstance(named, str) else None
                if policy_set is None:
                    raise ValueError(f"unknown policy set {named!r}; known: {sorted(self.policies)}")
            if "service" in options:
                service = options["service"]
                if not isinstance(service, str) or not service:
                    raise ValueError(f"service must be a non-empty string, got {service!r}")
            if "idempotent" in options:
                idempotent = options["idempotent"]
                if not isinstance(idempotent, bool):
                    raise TypeError(f"idempotent must be a bool, got {idempotent!r}")
            if "timeout" in options:
                timeout = seconds("timeout", options["timeout"])
            if "deadline" in options:
                deadline = options["deadline"]
                if isinstance(deadline, bool) or not isinstance(deadline, int | float) or math.isnan(deadline):
                    raise TypeError(f"deadline must be a number (pipeline clock's monotonic), got {deadline!r}")
                deadline = float(deadline)
            if options.get("tags"):
                tags = {**(tags or {}), **options["tags"]}
        pipeline = (policy_set or self.default).get(service)
        keyed = False
        if idempotent is None:
            idempotent = method in self.idempotent_methods
            if not idempotent and "idempotency-key" in request.headers:
                idempotent = keyed = True  # retried one at a time; a hedge would send copies at once
        clock = pipeline.clock
        ctx = CallContext(
            service,
            name if name is not None else f"{method} {_raw_path(url)}",
            idempotent=idempotent,
            tags=tags,
            clock=clock,
            classifier=self.classifier,
            listeners=pipeline.listeners,
        )
        if keyed:
            ctx.hedgeable = False
        if timeout is not None:
            deadline = clock.monotonic() + timeout if deadline is None else min(deadline, clock.monotonic() + timeout)
        ctx.deadline = deadline
        discovered: str | None = None
        discovery = self.discovery
        if discovery is not None:
            # A route that names its service balances over that service's endpoints whatever
            # the host; otherwise a host that discovery knows is the service.
            for name in (route.service, host) if route is not None and route.service is not None else (host,):
                if name in self._discovered:
                    discovered = name
                    break
                if discovery.endpoints(name):
                    # Once a service, always one: when its list empties, calls fail with
                    # NoEndpointError instead of going to a host of that name.
                    self._discovered.add(name)
                    discovered = name
                    break
        return pipeline, ctx, discovered

    def pool(self, service: str) -> EndpointPool[Any]:
        """The endpoint pool of ``service`` (made on its first request, then following discovery)."""
        pool = self._pools.get(service)
        if pool is not None:
            return pool
        assert self.discovery is not None
        with self._pools_lock:
            pool = self._pools.get(service)
            if pool is None:
                if self.closed:
                    raise RuntimeError("the transport is closed")
                if self.make_resource is not None:
                    pool = EndpointTransports(
                        service,
                        self.discovery,
                        self.balancer,
                        health=self.endpoint_health,
                        make=self.make_resource,
                        close=self.close_resource,
                        ejection=self.ejection,
                    )
                else:
                    pool = EndpointPool(
                        service, self.discovery, self.balancer, health=self.endpoint_health, ejection=self.ejection
                    )
                self._pools[service] = pool
        return pool

    def shutdown(self) -> list[Any]:
        """Stop following discovery; every per-endpoint resource to close now."""
        with self._pools_lock:
            self.closed = True
            pools, self._pools = list(self._pools.values()), {}
        resources: list[Any] = []
        for pool in pools:
            resources.extend(state.resource for state in pool.close())
        return resources

    def close_discovery(self) -> None:
        """Close the discovery made from a URI (once; a source given ready-made is the caller's)."""
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

    async def aclose_discovery(self) -> None:
        """:meth:`close_discovery` for the async transport."""
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    def addresses(self) -> list[str]:
        """The endpoints that have a live per-endpoint resource now (for tests and diagnostics)."""
        return sorted(
            state.address
            for pool in list(self._pools.values())
            for state in pool.states
            if state.resource is not None and not state.closed
        )

    def attempt_extensions(self, ctx: CallContext, extensions: dict[str, Any]) -> dict[str, Any] | None:
        """The request extensions of one attempt, with the httpx timeouts cut to the deadline.

        ``None`` when the request's own timeouts all end before the deadline anyway.
        """
        assert ctx.deadline is not None
        remaining = ctx.deadline - ctx.clock.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"{ctx.service} {ctx.method}: the deadline passed before attempt {ctx.attempt} could start",
                context=ctx,
                timeout=0.0,
            )
        user = extensions.get("timeout")
        if isinstance(user, Mapping):
            connect, read, write, pool = user.get("connect"), user.get("read"), user.get("write"), user.get("pool")
            if (
                connect is not None
                and read is not None
                and write is not None
                and pool is not None
                and max(connect, read, write, pool) <= remaining
            ):
                return None
            timeout: dict[str, float | None] = {
                "connect": remaining if connect is None or connect > remaining else connect,
                "read": remaining if read is None or read > remaining else read,
                "write": remaining if write is None or write > remaining else write,
                "pool": remaining if pool is None or pool > remaining else pool,
            }
        else:
            timeout = {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}
        return {**extensions, "timeout": timeout}

    def pushback(self, ctx: CallContext, response: httpx.Response) -> None:
        """Read ``Retry-After`` of a failed response into ``ctx.pushback``."""
        if response.status_code in self.failure_statuses:
            value = response.headers.get("retry-after")
            if value is not None:
                ctx.pushback = parse_retry_after(value, ctx.clock.wall())


class Exchange:
    """One request's passage through the pipeline; the pipeline calls it once per attempt.

    What an attempt needs is decided here, once for both transports; the two subclasses
    only send (``handle_request`` or ``await handle_async_request``). Hedged attempts may
    run concurrently, so nothing per attempt is stored on this object.
    """

    __slots__ = ("body", "discovered", "picks", "request", "router", "stream", "transport")

    def __init__(
        self, transport: Any, request: httpx.Request, ctx: CallContext, pipeline: Pipeline, discovered: str | None
    ) -> None:
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
        # The endpoints of every attempt, when attempts may run at once (see interceptors._wiring).
        self.picks = CallPicks() if discovered is not None and may_race(ctx) and hedges(pipeline) else None

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
        if ctx.telemetry is not None:
            return self._traced(ctx, endpoint, extensions)
        if endpoint is not None:
            return endpoint_request(request, endpoint, extensions, rewrite_host_header=router.rewrite_host_header)
        if extensions is not None:
            # The caller's request is never changed: an attempt with its own timeouts gets a
            # copy (a hedge or an abandoned attempt may still run when the call returns).
            return endpoint_request(request, None, extensions, rewrite_host_header=False)
        return request

    def _traced(self, ctx: CallContext, endpoint: Endpoint | None, extensions: dict[str, Any] | None) -> httpx.Request:
        """A traced attempt's request: a copy with headers of its own, carrying the attempt
        span's trace context (the caller's request and the other attempts' stay as they are)."""
        from resilience.telemetry import http_attempt

        rewrite = self.router.rewrite_host_header
        request = endpoint_request(self.request, endpoint, extensions, rewrite_host_header=rewrite)
        request.headers = request.headers.copy()
        http_attempt(ctx, request.method, str(request.url), request.headers)
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


def checked(response: object) -> httpx.Response:
    if not isinstance(response, httpx.Response):
        raise TypeError(f"the pipeline returned {response!r}, not an httpx.Response (check the fallback)")
    return response


def _raw_path(url: httpx.URL) -> str:
    # The path as sent, percent-encoded and without the query: what ``url.path`` gives
    # decoded, at a third of the cost (it runs on every request).
    reference = getattr(url, "_uri_reference", None)
    path = getattr(reference, "path", None)
    if isinstance(path, str):
        return path or "/"
    return url.path  # pragma: no cover - other httpx versions


def send_traced(
    ctx: CallContext, send: Callable[[httpx.Request], httpx.Response], request: httpx.Request
) -> httpx.Response:
    """``send(request)`` for a traced attempt: with httpx's contrib instrumentation suppressed
    (the attempt's span is ours)."""
    from resilience.telemetry import suppressed

    with suppressed(ctx, http=True):
        return send(request)


async def asend_traced(
    ctx: CallContext, send: Callable[[httpx.Request], Any], request: httpx.Request
) -> httpx.Response:
    """The async twin of :func:`send_traced`."""
    from resilience.telemetry import suppressed

    with suppressed(ctx, http=True):
        response: httpx.Response = await send(request)
        return response


def endpoint_request(
    request: httpx.Request,
    endpoint: Endpoint | None,
    extensions: dict[str, Any] | None,
    *,
    rewrite_host_header: bool,
) -> httpx.Request:
    """A shallow copy of ``request`` for one attempt, sent to ``endpoint`` with ``extensions``.

    The body stream and the headers are shared (transports read them, never change them).
    The ``Host`` header keeps the logical service name unless ``rewrite_host_header``.
    """
    copy: httpx.Request = object.__new__(httpx.Request)
    copy.__dict__.update(request.__dict__)
    if extensions is not None:
        copy.extensions = extensions
    if endpoint is not None:
        copy.url = _url_with_endpoint(request.url, endpoint)
        if request.url.scheme == "https" and "sni_hostname" not in copy.extensions:
            copy.extensions = {**copy.extensions, "sni_hostname": request.url.host}
        if rewrite_host_header:
            headers = request.headers.copy()
            headers["Host"] = endpoint.address
            copy.headers = headers
    return copy


def _url_with_endpoint(url: httpx.URL, endpoint: Endpoint) -> httpx.URL:
    # URL.copy_with re-parses the whole URL (about 13 µs); replacing host and port in the
    # parsed form is a small fraction of that.
    reference = getattr(url, "_uri_reference", None)
    replace = getattr(reference, "_replace", None)
    if replace is not None:
        new: httpx.URL = object.__new__(httpx.URL)
        new._uri_reference = replace(host=endpoint.host.lower(), port=endpoint.port)
        return new
    return url.copy_with(host=endpoint.host, port=endpoint.port)  # pragma: no cover - other httpx versions
