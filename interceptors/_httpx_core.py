"""The I/O-free half of the httpx transports: routes, contexts, classification, endpoints.

:mod:`interceptors.httpx` holds the two thin executors (sync and asyncio); everything they
share lives here, written once.
"""

from __future__ import annotations

import email.utils
import fnmatch
import math
import re
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypedDict

import httpx

from resilience._validate import seconds
from resilience.balancing.base import Balancer, RoundRobin
from resilience.balancing.pool import EndpointPool, EndpointState, HealthFactory
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.errors import DeadlineExceededError, RejectedError
from resilience.outcome import Classifier, Outcome
from resilience.pipeline import Pipeline

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

EXTENSION = "resilience"
"""The key of the per-request options in ``request.extensions``."""

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""HTTP methods that are safe to send twice (RFC 9110, section 9.2.2)."""

DEFAULT_FAILURE_STATUSES: frozenset[int] = frozenset({429, *range(500, 600)})
"""Statuses that count against the backend by default: 429 and every 5xx."""

PipelineFactory = Callable[[str], Pipeline]
"""Builds the pipeline of one service (called once per service name, then cached)."""

PolicySet = Pipeline | PipelineFactory
"""A pipeline shared by every service, or a factory giving each service its own."""


class ResilienceExtension(TypedDict, total=False):
    """The shape of ``request.extensions["resilience"]``; every key is optional.

    Example: ``client.post(url, json=..., extensions={"resilience": {"idempotent": True, "timeout": 2.0}})``.

    Keys:
        idempotent: ``True`` lets a non-idempotent method (POST, PATCH) be retried and hedged;
            ``False`` forbids it for any method.
        timeout: seconds for the whole call, every attempt and backoff included (> 0).
        deadline: an absolute deadline on the pipeline clock's ``monotonic()``; the earlier of
            ``timeout`` and ``deadline`` wins.
        policy: the name of a policy set given to the transport's ``policies``.
        service: the logical service name put in the call's context (default: the host).
        tags: labels added to the call's context (for keys and telemetry).
    """

    idempotent: bool
    timeout: float | timedelta
    deadline: float
    policy: str
    service: str
    tags: Mapping[str, str]


_EXTENSION_KEYS = frozenset(ResilienceExtension.__annotations__)


# -- classification ------------------------------------------------------------------------


def parse_retry_after(value: str, now_wall: float) -> float | None:
    """A ``Retry-After`` value as seconds from now, or ``None`` when it cannot be read.

    Both forms of RFC 9110 are understood: delay seconds (``"120"``; a decimal is tolerated)
    and an HTTP date (``"Wed, 21 Oct 2015 07:28:00 GMT"``), read against ``now_wall`` (seconds
    since the epoch, from the call's clock). A date in the past gives ``0.0``.
    """
    text = value.strip()
    if not text:
        return None
    if text[0].isdigit():
        try:
            delay = float(text)
        except ValueError:
            return None
        return delay if math.isfinite(delay) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now_wall)


class HttpxClassifier(Classifier):
    """What httpx responses and errors mean for the backend.

    - A response whose status is in ``failure_statuses`` (default 429 and every 5xx) is a
      failure; any other status >= 400 is the caller's fault (:data:`Outcome.IGNORED`): it
      neither trips a breaker nor is retried; 1xx-3xx are successes.
    - Transport errors (connection refused or reset, timeouts, a server that hangs up) are
      failures; errors made on our side (an unsupported scheme, an invalid URL, a local
      protocol error, a request body already consumed) and the library's own rejections
      are ignored.

    A response that is thrown away (before a retry, or a losing hedge) is closed, so its
    connection goes back to the pool or is dropped. A small error body whose length is
    known (at most ``drain_limit`` bytes) is read first, which lets HTTP/1.1 reuse the
    connection instead of opening a new one for the retry.

    Args:
        failure_statuses: statuses that count against the backend (default 429 and 500-599).
        retryable_statuses: the failure statuses worth a retry (default: all of
            ``failure_statuses``); must be a subset of them.
        drain_limit: the largest error body, in bytes, read before closing a discarded
            response, >= 0 (default 65536; 0 never reads).
    """

    __slots__ = ("drain_limit", "failure_statuses", "retryable_statuses")

    checks_results = True

    def __init__(
        self,
        failure_statuses: Collection[int] = DEFAULT_FAILURE_STATUSES,
        *,
        retryable_statuses: Collection[int] | None = None,
        drain_limit: int = 65536,
    ) -> None:
        self.failure_statuses = _statuses("failure_statuses", failure_statuses)
        if retryable_statuses is None:
            self.retryable_statuses = self.failure_statuses
        else:
            self.retryable_statuses = _statuses("retryable_statuses", retryable_statuses)
            extra = self.retryable_statuses - self.failure_statuses
            if extra:
                raise ValueError(f"retryable_statuses must be a subset of failure_statuses, got extra {sorted(extra)}")
        if isinstance(drain_limit, bool) or not isinstance(drain_limit, int) or drain_limit < 0:
            raise ValueError(f"drain_limit must be an integer >= 0, got {drain_limit!r}")
        self.drain_limit = drain_limit

    def error(self, exc: BaseException) -> Outcome:
        if isinstance(exc, httpx.TransportError):
            if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
                return Outcome.IGNORED
            return Outcome.FAILURE
        if isinstance(exc, httpx.InvalidURL | httpx.StreamError | RejectedError) or not isinstance(exc, Exception):
            return Outcome.IGNORED
        return Outcome.FAILURE

    def result(self, result: object) -> Outcome:
        status: int = result.status_code if isinstance(result, httpx.Response) else 200
        if status in self.failure_statuses:
            return Outcome.FAILURE
        return Outcome.IGNORED if status >= 400 else Outcome.SUCCESS

    def retryable_result(self, result: object) -> bool:
        return isinstance(result, httpx.Response) and result.status_code in self.retryable_statuses

    def _drainable(self, response: httpx.Response) -> bool:
        if not self.drain_limit:
            return False
        length = response.headers.get("content-length")
        return length is not None and length.isdigit() and int(length) <= self.drain_limit

    def discard(self, result: object) -> None:
        if not isinstance(result, httpx.Response) or result.is_closed:
            return
        if not isinstance(result.stream, httpx.SyncByteStream):
            return  # an async response cannot be closed from sync code; adiscard does it
        try:
            if self._drainable(result):
                for _ in result.iter_raw():
                    pass
        except Exception:  # the body is thrown away anyway; closing below is what matters
            pass
        finally:
            result.close()

    async def adiscard(self, result: object) -> None:
        if not isinstance(result, httpx.Response) or result.is_closed:
            return
        if not isinstance(result.stream, httpx.AsyncByteStream):
            self.discard(result)
            return
        try:
            if self._drainable(result):
                async for _ in result.aiter_raw():
                    pass
        except Exception:
            pass
        finally:
            await result.aclose()

    def __repr__(self) -> str:
        return f"HttpxClassifier(failure_statuses={_ranges(self.failure_statuses)})"


def _statuses(name: str, value: Collection[int]) -> frozenset[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise TypeError(f"{name} must be a collection of HTTP status codes, got {value!r}")
    for status in value:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"{name} must hold status codes in [100, 599], got {status!r}")
    return frozenset(value)


def _ranges(statuses: frozenset[int]) -> str:
    out: list[str] = []
    for status in sorted(statuses):
        if out and out[-1].endswith(f"-{status - 1}"):
            out[-1] = f"{out[-1].rsplit('-', 1)[0]}-{status}"
        elif out and out[-1] == str(status - 1):
            out[-1] = f"{status - 1}-{status}"
        else:
            out.append(str(status))
    return "{" + ", ".join(out) + "}"


# -- routes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One rule of a transport's routing table: which requests get which policy set.

    Rules are tried in order; the first one whose ``host``, ``path`` and ``methods`` all
    match decides. A request that no rule matches gets the transport's default pipeline.
    Every field is plain data, so a configuration file can describe the table.

    Attributes:
        policy: the policy set: a name from the transport's ``policies``, a
            :class:`~resilience.Pipeline`, a factory ``service -> Pipeline``, or ``None``
            for the transport's default (default ``None``).
        host: a glob on the URL's host, case-insensitive (``"api.example.com"``,
            ``"*.internal"``); ``None`` matches any host (default).
        path: a glob on the whole URL path (``"/orders/*"``; ``*`` also matches ``/``), or a
            regular expression when it starts with ``^`` (``"^/v[12]/items/\\d+$"``) or is a
            compiled pattern (matched from the start); ``None`` matches any path (default).
        methods: the HTTP methods matched (any case); ``None`` matches all (default).
        name: the method name put in the call's context (``ctx.method``), e.g. ``"get-order"``;
            ``None`` uses ``"<METHOD> <path>"`` (default).
        service: the logical service name put in the call's context; ``None`` uses the
            host (default).
        idempotent: forces the call to be treated as idempotent (``True``) or not
            (``False``); ``None`` decides by method and ``Idempotency-Key`` (default).
        timeout: a deadline for the whole call, in seconds or a ``timedelta`` (> 0);
            ``None`` for none (default). A request's own ``timeout`` extension wins.
        tags: labels put in the call's context (default none).
    """

    policy: str | Pipeline | Callable[[str], Pipeline] | None = None
    host: str | None = None
    path: str | re.Pattern[str] | None = None
    methods: Collection[str] | None = None
    name: str | None = None
    service: str | None = None
    idempotent: bool | None = None
    timeout: float | timedelta | None = None
    tags: Mapping[str, str] | None = None
    _host_re: re.Pattern[str] | None = field(init=False, default=None, repr=False, compare=False)
    _path_re: re.Pattern[str] | None = field(init=False, default=None, repr=False, compare=False)
    _path_full: bool = field(init=False, default=False, repr=False, compare=False)
    _methods: frozenset[str] | None = field(init=False, default=None, repr=False, compare=False)
    _timeout: float | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.host is not None:
            if not isinstance(self.host, str) or not self.host:
                raise ValueError(f"host must be a non-empty host glob or None, got {self.host!r}")
            object.__setattr__(self, "_host_re", re.compile(fnmatch.translate(self.host), re.IGNORECASE))
        path = self.path
        if isinstance(path, re.Pattern):
            object.__setattr__(self, "_path_re", path)
        elif isinstance(path, str):
            if not path:
                raise ValueError("path must be a non-empty glob or pattern, or None, got ''")
            if path.startswith("^"):
                try:
                    object.__setattr__(self, "_path_re", re.compile(path))
                except re.error as exc:
                    raise ValueError(f"path is not a valid regular expression: {path!r} ({exc})") from None
            else:
                object.__setattr__(self, "_path_re", re.compile(fnmatch.translate(path)))
                object.__setattr__(self, "_path_full", True)
        elif path is not None:
            raise TypeError(f"path must be a glob, a pattern or None, got {path!r}")
        if self.methods is not None:
            if isinstance(self.methods, str):
                raise TypeError(f"methods must be a collection of method names, got the string {self.methods!r}")
            methods = frozenset(m.upper() for m in self.methods)
            if not methods:
                raise ValueError("methods must name at least one method, or be None for all")
            object.__setattr__(self, "_methods", methods)
        if self.timeout is not None:
            object.__setattr__(self, "_timeout", seconds("timeout", self.timeout))
        if self.idempotent is not None and not isinstance(self.idempotent, bool):
            raise TypeError(f"idempotent must be a bool or None, got {self.idempotent!r}")
        policy = self.policy
        if policy is not None and not isinstance(policy, str | Pipeline) and not callable(policy):
            raise TypeError(f"policy must be a policy set name, a Pipeline, a factory or None, got {policy!r}")

    def matches(self, host: str, method: str, path: str) -> bool:
        """Whether a request for ``method`` ``host`` ``path`` falls under this rule."""
        if self._methods is not None and method not in self._methods:
            return False
        if self._host_re is not None and self._host_re.match(host) is None:
            return False
        if self._path_re is not None:
            found = self._path_re.match(path)
            if found is None or (self._path_full and found.end() != len(path)):
                return False
        return True


class _PolicySet:
    """A pipeline, or a factory with its pipelines cached per service."""

    __slots__ = ("_factory", "_lock", "_pipelines", "name", "pipeline")

    def __init__(self, name: str, value: object) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pipelines: dict[str, Pipeline] = {}
        if isinstance(value, Pipeline):
            self.pipeline: Pipeline | None = value
            self._factory: PipelineFactory | None = None
        elif callable(value):
            self.pipeline = None
            self._factory = value
        else:
            raise TypeError(f"policy set {name!r} must be a Pipeline or a factory service -> Pipeline, got {value!r}")

    def get(self, service: str) -> Pipeline:
        pipeline = self.pipeline
        if pipeline is not None:
            return pipeline
        pipeline = self._pipelines.get(service)
        if pipeline is not None:
            return pipeline
        assert self._factory is not None
        made = self._factory(service)  # user code: never under our lock
        if not isinstance(made, Pipeline):
            raise TypeError(f"policy set {self.name!r}: the factory returned {made!r} for {service!r}, not a Pipeline")
        with self._lock:
            return self._pipelines.setdefault(service, made)


# -- request bodies ----------------------------------------------------------------------


def replayable(stream: object) -> bool:
    """Whether a request body can be sent again: bytes, or a multipart form of seekable files."""
    if isinstance(stream, httpx.ByteStream):
        return True
    fields = getattr(stream, "fields", None)
    if type(stream).__name__ == "MultipartStream" and isinstance(fields, list):
        # httpx rewinds each file before sending it; that works for seekable files only.
        for part in fields:
            file = getattr(part, "file", None)
            if file is not None and not isinstance(file, str | bytes):
                seekable = getattr(file, "seekable", None)
                if seekable is None or not seekable():
                    return False
        return True
    return False


class _OnceBody:
    """Marks the call committed when a non-replayable body starts to go out."""

    __slots__ = ("ctx", "started")

    def __init__(self) -> None:
        self.ctx: CallContext | None = None
        self.started = False

    def start(self) -> None:
        if self.started:
            raise httpx.StreamConsumed()
        self.started = True
        if self.ctx is not None:
            self.ctx.committed = True


class OnceSyncStream(httpx.SyncByteStream, _OnceBody):
    """A sync request body that can be sent once: a second send raises ``StreamConsumed``."""

    __slots__ = ("inner",)

    def __init__(self, inner: httpx.SyncByteStream) -> None:
        _OnceBody.__init__(self)
        self.inner = inner

    def __iter__(self) -> Iterator[bytes]:
        self.start()
        yield from self.inner

    def close(self) -> None:
        self.inner.close()


class OnceAsyncStream(httpx.AsyncByteStream, _OnceBody):
    """An async request body that can be sent once."""

    __slots__ = ("inner",)

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        _OnceBody.__init__(self)
        self.inner = inner

    async def __aiter__(self) -> Any:
        self.start()
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


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
        discovery: Discovery | None,
        balancer: Balancer | None,
        idempotent_methods: Collection[str],
        rewrite_host_header: bool,
        endpoint_health: HealthFactory | None = None,
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
        if discovery is not None and not isinstance(discovery, Discovery):
            raise TypeError(f"discovery must implement the Discovery protocol, got {discovery!r}")
        self.discovery = discovery
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
        self.make_resource: Callable[[Endpoint], Any] | None = None
        self.close_resource: Callable[[EndpointState[Any]], None] | None = None
        self._pools: dict[str, EndpointPool[Any]] = {}
        self._pools_lock = threading.Lock()
        self.closed = False

    def _policy_set(self, policy: object, where: str) -> _PolicySet | None:
        if policy is None:
            return None
        if isinstance(policy, str):
            found = self.policies.get(policy)
            if found is None:
                raise ValueError(f"{where}: unknown policy set {policy!r}; known: {sorted(self.policies)}")
            return found
        return _PolicySet(where, policy)

    def begin(self, request: httpx.Request) -> tuple[Pipeline, CallContext, bool]:
        """The pipeline and the context of a request, and whether it goes through discovery."""
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
        if idempotent is None:
            idempotent = method in self.idempotent_methods or "idempotency-key" in request.headers
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
        if timeout is not None:
            deadline = clock.monotonic() + timeout if deadline is None else min(deadline, clock.monotonic() + timeout)
        ctx.deadline = deadline
        discovered = False
        discovery = self.discovery
        if discovery is not None:
            if host in self._discovered:
                discovered = True
            elif discovery.endpoints(host):
                # Once a service, always one: when its list empties, calls fail with
                # NoEndpointError instead of going to a host of that name.
                self._discovered.add(host)
                discovered = True
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
                    pool = EndpointPool(
                        service,
                        self.discovery,
                        self.balancer,
                        health=self.endpoint_health,
                        make=self.make_resource,
                        close=self.close_resource,
                    )
                else:
                    pool = EndpointPool(service, self.discovery, self.balancer, health=self.endpoint_health)
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


def _raw_path(url: httpx.URL) -> str:
    # The path as sent, percent-encoded and without the query: what ``url.path`` gives
    # decoded, at a third of the cost (it runs on every request).
    reference = getattr(url, "_uri_reference", None)
    path = getattr(reference, "path", None)
    if isinstance(path, str):
        return path or "/"
    return url.path  # pragma: no cover - other httpx versions


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
