"""The httpx transports, against real HTTP servers on 127.0.0.1 (respx for what they cannot do).

Every behaviour test runs twice, through ``ResilientTransport`` + ``httpx.Client`` and
through ``AsyncResilientTransport`` + ``httpx.AsyncClient`` (the ``mode`` parameter).
Policy timing runs on a FakeClock, so backoff costs nothing; only the deadline tests let
the server take real time (tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.utils import formatdate
from typing import Any, TypeVar

import anyio.from_thread
import httpx
import pytest
import respx

from interceptors.httpx import (
    DEFAULT_FAILURE_STATUSES,
    AsyncResilientTransport,
    HttpxClassifier,
    ResilientTransport,
    Route,
    parse_retry_after,
)
from resilience.balancing.base import NoEndpointError, RoundRobin
from resilience.balancing.pool import EndpointState
from resilience.clock import FakeClock
from resilience.context import CallContext
from resilience.discovery.static import StaticDiscovery
from resilience.errors import BulkheadFullError, DeadlineExceededError, RejectedError
from resilience.events import Event, RetryGaveUp
from resilience.outcome import Outcome
from resilience.pipeline import Pipeline
from resilience.policies.backoff import Constant
from resilience.policies.fallback import Fallback
from resilience.policies.retry import Retry
from resilience.policies.timeout import Timeout
from resilience.policy import AsyncNext, Policy, SyncNext

from ._http_server import HttpServer, Reply

MODES = ["sync", "async", "trio"]
T = TypeVar("T")


# -- harness -------------------------------------------------------------------------------


class Recording(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Wraps a real transport and records what each attempt was sent with."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[httpx.Request] = []
        self.timeouts: list[dict[str, float | None]] = []
        self.closed = 0

    def _record(self, request: httpx.Request) -> None:
        self.sent.append(request)
        self.timeouts.append(dict(request.extensions.get("timeout", {})))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._record(request)
        response: httpx.Response = self.inner.handle_request(request)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._record(request)
        response: httpx.Response = await self.inner.handle_async_request(request)
        return response

    def close(self) -> None:
        self.closed += 1
        self.inner.close()

    async def aclose(self) -> None:
        self.closed += 1
        await self.inner.aclose()


class Harness:
    """One client of either kind behind one async API, so each test serves both modes."""

    def __init__(self, mode: str, *, record: bool = False, inner: Any = None, **kwargs: Any) -> None:
        self.mode = mode
        self.recording: Recording | None = None
        if inner is None and record:
            inner = self.recording = Recording(httpx.HTTPTransport() if mode == "sync" else httpx.AsyncHTTPTransport())
        self.transport: ResilientTransport | AsyncResilientTransport
        self._portal: Any = None
        if mode == "sync":
            self.transport = ResilientTransport(inner, **kwargs)
            self.sync_client = httpx.Client(transport=self.transport)
        else:
            self.transport = AsyncResilientTransport(inner, **kwargs)
            self.async_client = httpx.AsyncClient(transport=self.transport)
            if mode == "trio":
                # The async client runs in a trio loop of its own thread; the test drives it
                # from asyncio through a portal.
                self._portal_cm = anyio.from_thread.start_blocking_portal("trio")
                self._portal = self._portal_cm.__enter__()

    async def _in_trio(self, fn: Callable[[], Awaitable[T]]) -> T:
        portal = self._portal

        async def run() -> T:
            return await fn()

        result: T = await asyncio.to_thread(portal.call, run)
        return result

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.mode == "sync":
            return self.sync_client.request(method, url, **kwargs)
        if self._portal is not None:
            return await self._in_trio(lambda: self.async_client.request(method, url, **kwargs))
        return await self.async_client.request(method, url, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def stream_body(self, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
        """Open a streamed response and read its body chunk by chunk."""
        if self.mode == "sync":
            with self.sync_client.stream(method, url, **kwargs) as response:
                return response.status_code, b"".join(response.iter_bytes())

        async def read() -> tuple[int, bytes]:
            async with self.async_client.stream(method, url, **kwargs) as response:
                return response.status_code, b"".join([c async for c in response.aiter_bytes()])

        if self._portal is not None:
            return await self._in_trio(read)
        return await read()

    def body(self, chunks: list[bytes]) -> Any:
        """A request body generator of the kind this client takes (it cannot be replayed)."""

        def sync_gen() -> Iterator[bytes]:
            yield from chunks

        async def async_gen() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return sync_gen() if self.mode == "sync" else async_gen()

    def pool_connections(self) -> int:
        inner: Any = self.transport._inner
        if isinstance(inner, Recording):
            inner = inner.inner
        return len(inner._pool.connections)

    async def aclose(self) -> None:
        if self.mode == "sync":
            self.sync_client.close()
        elif self._portal is not None:
            try:
                await self._in_trio(self.async_client.aclose)
            finally:
                self._portal = None
                await asyncio.to_thread(self._portal_cm.__exit__, None, None, None)
        else:
            await self.async_client.aclose()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make(mode: str) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(**kwargs: Any) -> Harness:
        harness = Harness(mode, **kwargs)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.aclose()


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as s:
        yield s


@pytest.fixture
def servers() -> Iterator[list[HttpServer]]:
    started = [HttpServer().start() for _ in range(3)]
    for i, s in enumerate(started):
        s.default = Reply(body=f"server-{i}".encode())
    try:
        yield started
    finally:
        for s in started:
            s.stop()


def retrying(clock: FakeClock, attempts: int = 3, **kwargs: Any) -> Pipeline:
    return Pipeline(Retry(attempts, budget=None, **kwargs), clock=clock)


class FirstListed(RoundRobin):
    """The first candidate not tried yet, in discovery's order: a deterministic primary and retry."""

    def pick(self, candidates: Any, ctx: CallContext, now: float) -> Any:
        return candidates[0]


class Spy(Policy):
    """Records the context of every call that passes (outermost position)."""

    def __init__(self) -> None:
        super().__init__("spy")
        self.contexts: list[CallContext] = []

    def wrap(self, next: SyncNext) -> SyncNext:
        def run(ctx: CallContext) -> Any:
            self.contexts.append(ctx)
            return next(ctx)

        return run

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        async def run(ctx: CallContext) -> Any:
            self.contexts.append(ctx)
            return await next(ctx)

        return run


# -- classification and retries ----------------------------------------------------------


async def test_get_is_retried_on_5xx_until_success(make: Callable[..., Harness], server: HttpServer) -> None:
    clock = FakeClock()
    server.script(503, 502, 200)
    client = make(pipeline=retrying(clock, backoff=Constant(0.5)))
    response = await client.get(server.url + "/items")
    assert response.status_code == 200
    assert response.text == "ok"
    assert len(server.requests) == 3
    assert clock.sleeps == [0.5, 0.5]


async def test_429_is_retried_and_404_is_not(make: Callable[..., Harness], server: HttpServer) -> None:
    client = make(pipeline=retrying(FakeClock()))
    server.script(429, 200)
    assert (await client.get(server.url)).status_code == 200
    assert len(server.requests) == 2
    server.reset()
    server.script(404, 200)
    assert (await client.get(server.url)).status_code == 404
    assert len(server.requests) == 1


async def test_dropped_connection_is_retried(make: Callable[..., Harness], server: HttpServer) -> None:
    server.script(Reply(drop=True), Reply(drop=True), 200)
    client = make(pipeline=retrying(FakeClock()))
    assert (await client.get(server.url)).status_code == 200
    assert len(server.requests) == 3


async def test_last_failure_is_returned_when_attempts_run_out(make: Callable[..., Harness], server: HttpServer) -> None:
    server.default = Reply(503, body=b"down")
    client = make(pipeline=retrying(FakeClock(), attempts=3))
    response = await client.get(server.url)
    assert (response.status_code, response.text) == (503, "down")
    assert len(server.requests) == 3


async def test_post_is_not_retried(make: Callable[..., Harness], server: HttpServer) -> None:
    events: list[Event] = []
    clock = FakeClock()
    client = make(pipeline=Pipeline(Retry(3, budget=None), clock=clock, listeners=[events.append]))
    server.default = Reply(503)
    assert (await client.request("POST", server.url, json={"a": 1})).status_code == 503
    assert len(server.requests) == 1
    assert [e.reason for e in events if isinstance(e, RetryGaveUp)] == ["non_idempotent"]
    server.reset()
    server.script(Reply(drop=True))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.request("PATCH", server.url, content=b"x")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("headers", "extensions"),
    [({"Idempotency-Key": "k-1"}, {}), ({}, {"resilience": {"idempotent": True}})],
    ids=["idempotency-key", "opt-in"],
)
async def test_post_is_retried_with_idempotency_key_or_opt_in(
    make: Callable[..., Harness], server: HttpServer, headers: dict[str, str], extensions: dict[str, Any]
) -> None:
    server.script(503, Reply(drop=True), 201)
    client = make(pipeline=retrying(FakeClock()))
    response = await client.request("POST", server.url, content=b"order", headers=headers, extensions=extensions)
    assert response.status_code == 201
    assert [s.body for s in server.requests] == [b"order"] * 3


async def test_opt_out_stops_retries_of_a_get(make: Callable[..., Harness], server: HttpServer) -> None:
    server.default = Reply(503)
    client = make(pipeline=retrying(FakeClock()))
    assert (await client.get(server.url, extensions={"resilience": {"idempotent": False}})).status_code == 503
    assert len(server.requests) == 1


async def test_a_generator_body_is_never_sent_twice(make: Callable[..., Harness], server: HttpServer) -> None:
    spy = Spy()
    pipeline = Pipeline(spy, Retry(3, budget=None, retry_non_idempotent=True), clock=FakeClock())
    client = make(pipeline=pipeline)
    server.default = Reply(503)
    response = await client.request(
        "PUT", server.url, content=client.body([b"a", b"b"]), extensions={"resilience": {"idempotent": True}}
    )
    assert response.status_code == 503
    assert [s.body for s in server.requests] == [b"ab"]
    assert spy.contexts[0].committed
    assert not spy.contexts[0].idempotent

    server.reset()
    server.script(Reply(drop=True), 200)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.request("POST", server.url, content=client.body([b"c"]), headers={"Idempotency-Key": "k"})
    assert [s.body for s in server.requests] == [b"c"]


async def test_a_bytes_body_is_replayed_in_full(make: Callable[..., Harness], server: HttpServer) -> None:
    server.script(500, 200)
    client = make(pipeline=retrying(FakeClock()))
    files = {"upload": ("a.txt", io.BytesIO(b"file-content"))}
    response = await client.request("PUT", server.url, files=files)
    assert response.status_code == 200
    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body
    assert b"file-content" in server.requests[1].body


async def test_the_request_is_given_back_unchanged(make: Callable[..., Harness], server: HttpServer) -> None:
    server.script(503, 200)
    client = make(pipeline=retrying(FakeClock()))
    response = await client.get(server.url, timeout=7.0, extensions={"resilience": {"timeout": 1.0}})
    assert response.request.extensions["timeout"] == httpx.Timeout(7.0).as_dict()
    assert response.request.url == server.url


# -- streaming and connections -------------------------------------------------------------


async def test_a_stream_is_not_retried_after_its_first_byte(make: Callable[..., Harness], server: HttpServer) -> None:
    server.script(Reply(body=b"abcdef", chunks=3, drop_after=1), 200)
    client = make(pipeline=retrying(FakeClock()))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.stream_body("GET", server.url)
    assert len(server.requests) == 1


async def test_a_failed_stream_is_closed_and_retried_before_the_caller_sees_it(
    make: Callable[..., Harness], server: HttpServer
) -> None:
    big = b"x" * 200_000  # larger than the drain limit: the connection is dropped, not reused
    server.script(Reply(503, body=big, chunks=4), Reply(503, body=b"small"), Reply(body=b"payload", chunks=2))
    client = make(pipeline=retrying(FakeClock()))
    status, body = await client.stream_body("GET", server.url)
    assert (status, body) == (200, b"payload")
    assert len(server.requests) == 3
    # The first response was closed unread: its connection is gone. The second was drained
    # and its connection reused for the third attempt.
    assert [s.connection for s in server.requests][1:] == [server.requests[1].connection] * 2
    assert server.requests[0].connection != server.requests[1].connection
    assert server.wait_connections(1) == 1


async def test_no_connection_leaks_after_1000_retried_requests(
    make: Callable[..., Harness], server: HttpServer
) -> None:
    counter = iter(range(10**6))

    def fail_every_other(seen: Any) -> Reply:
        n = next(counter)
        if n % 2:
            return Reply(200)
        # Alternate a drainable error body and a chunked one that must be closed unread.
        return Reply(503, body=b"busy", chunks=2 if n % 4 else 0)

    server.handler = fail_every_other
    client = make(pipeline=retrying(FakeClock()))
    start = time.monotonic()
    for _ in range(1000):
        response = await client.get(server.url)
        assert response.status_code == 200
        assert time.monotonic() - start < 30
    assert len(server.requests) == 2000
    assert client.pool_connections() <= 1
    assert server.wait_connections(1) <= 1
    await client.aclose()
    assert server.wait_connections(0) == 0


# -- Retry-After ---------------------------------------------------------------------------


async def test_retry_after_seconds_sets_the_delay(make: Callable[..., Harness], server: HttpServer) -> None:
    clock = FakeClock()
    server.script(Reply(503, headers={"Retry-After": "2"}), Reply(429, headers={"Retry-After": "1"}), 200)
    client = make(pipeline=retrying(clock, backoff=Constant(0.1)))
    assert (await client.get(server.url)).status_code == 200
    assert clock.sleeps == [2.0, 1.0]


async def test_retry_after_http_date_sets_the_delay(make: Callable[..., Harness], server: HttpServer) -> None:
    clock = FakeClock()
    when = formatdate(clock.wall() + 3, usegmt=True)
    server.script(Reply(503, headers={"Retry-After": when}), 200)
    client = make(pipeline=retrying(clock, backoff=Constant(0.1)))
    assert (await client.get(server.url)).status_code == 200
    assert clock.sleeps == [3.0]


async def test_a_retry_after_longer_than_max_pushback_ends_the_retries(
    make: Callable[..., Harness], server: HttpServer
) -> None:
    clock = FakeClock()
    server.script(Reply(503, headers={"Retry-After": "3600"}), 200)
    client = make(pipeline=retrying(clock, max_pushback=1.5))
    assert (await client.get(server.url)).status_code == 503  # the server's answer, not an early retry
    assert clock.sleeps == []
    assert len(server.requests) == 1


async def test_a_retry_after_within_max_pushback_is_honoured(make: Callable[..., Harness], server: HttpServer) -> None:
    clock = FakeClock()
    server.script(Reply(503, headers={"Retry-After": "1"}), 200)
    client = make(pipeline=retrying(clock, max_pushback=1.5))
    assert (await client.get(server.url)).status_code == 200
    assert clock.sleeps == [1.0]


async def test_retry_after_past_the_deadline_fails_at_once(make: Callable[..., Harness], server: HttpServer) -> None:
    clock = FakeClock()
    server.default = Reply(503, headers={"Retry-After": "5"})
    client = make(pipeline=retrying(clock))
    with pytest.raises(DeadlineExceededError, match=r"retry in 5\.000s but only 1\.000s remain"):
        await client.get(server.url, extensions={"resilience": {"timeout": 1.0}})
    assert len(server.requests) == 1
    assert clock.sleeps == []
    assert server.wait_connections(1) <= 1  # the 503 was closed, not left open


async def test_retry_after_on_a_success_or_a_4xx_is_not_pushback(
    make: Callable[..., Harness], server: HttpServer
) -> None:
    spy = Spy()
    server.default = Reply(404, headers={"Retry-After": "9"})
    client = make(pipeline=Pipeline(spy, clock=FakeClock()))
    assert (await client.get(server.url)).status_code == 404
    assert spy.contexts[0].pushback is None


# -- deadlines -----------------------------------------------------------------------------


async def test_the_remaining_deadline_becomes_the_httpx_timeout(
    make: Callable[..., Harness], server: HttpServer
) -> None:
    clock = FakeClock()
    server.script(503, 200)
    client = make(pipeline=retrying(clock, backoff=Constant(0.25)), record=True)
    timeout = httpx.Timeout(5.0, connect=0.5)
    await client.get(server.url, timeout=timeout, extensions={"resilience": {"timeout": 2.0}})
    assert client.recording is not None
    first, second = client.recording.timeouts
    assert first == {"connect": 0.5, "read": 2.0, "write": 2.0, "pool": 2.0}
    assert second == {"connect": 0.5, "read": 1.75, "write": 1.75, "pool": 1.75}  # 0.25 s of backoff later


async def test_without_a_deadline_the_users_timeout_is_kept(make: Callable[..., Harness], server: HttpServer) -> None:
    client = make(pipeline=Pipeline(clock=FakeClock()), record=True)
    await client.get(server.url, timeout=3.0)
    assert client.recording is not None
    assert client.recording.timeouts == [httpx.Timeout(3.0).as_dict()]


async def test_a_slow_server_times_out_at_the_deadline(make: Callable[..., Harness], server: HttpServer) -> None:
    server.default = Reply(delay=1.0)
    client = make()
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await client.get(server.url, extensions={"resilience": {"timeout": 0.05}})
    assert time.monotonic() - start < 0.8  # cut at 0.05 s, long before the server's 1 s


async def test_a_timeout_policy_bounds_the_call(make: Callable[..., Harness], server: HttpServer) -> None:
    server.default = Reply(delay=1.0)
    client = make(pipeline=Pipeline(Timeout(0.05)))
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await client.get(server.url)
    assert time.monotonic() - start < 0.8  # cut at 0.05 s, long before the server's 1 s


async def test_a_passed_deadline_sends_nothing(make: Callable[..., Harness], server: HttpServer) -> None:
    clock = FakeClock(100.0)
    client = make(pipeline=Pipeline(clock=clock))
    with pytest.raises(DeadlineExceededError, match="deadline passed before attempt 1"):
        await client.get(server.url, extensions={"resilience": {"deadline": 99.0}})
    assert server.requests == []


# -- endpoints -------------------------------------------------------------------------------


async def test_a_service_name_goes_to_its_endpoints_in_turn(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    discovery = StaticDiscovery({"orders": [s.address for s in servers]})
    client = make(pipeline=Pipeline(clock=FakeClock()), discovery=discovery)
    bodies = [(await client.get("http://orders/items?id=1")).text for _ in range(6)]
    assert bodies == ["server-0", "server-1", "server-2"] * 2
    seen = servers[0].requests[0]
    assert (seen.path, seen.headers["host"]) == ("/items?id=1", "orders")


async def test_a_retry_goes_to_another_endpoint(make: Callable[..., Harness], servers: list[HttpServer]) -> None:
    spy = Spy()
    servers[0].default = Reply(503)
    servers[2].default = Reply(drop=True)
    discovery = StaticDiscovery({"orders": [s.address for s in servers]})
    client = make(pipeline=Pipeline(spy, Retry(3, budget=None), clock=FakeClock()), discovery=discovery)
    response = await client.get("http://orders/")
    # Round robin among the endpoints not tried yet: 0 (503), then 2 of [1, 2] (drops), then 1.
    assert response.text == "server-1"
    assert [len(s.requests) for s in servers] == [1, 1, 1]
    ctx = spy.contexts[0]
    assert ctx.tried == [servers[0].address, servers[2].address, servers[1].address]
    assert ctx.endpoint == servers[1].address
    assert ctx.service == "orders"


async def test_the_balancer_learns_each_attempts_outcome(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    released: list[tuple[str, Outcome]] = []

    class Recorder(RoundRobin):
        def observe(self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float) -> None:
            assert duration >= 0
            released.append((state.address, outcome))

    servers[0].script(503)
    servers[1].script(404)
    discovery = StaticDiscovery({"orders": [s.address for s in servers[:2]]})
    client = make(pipeline=retrying(FakeClock()), discovery=discovery, balancer=Recorder())
    assert (await client.get("http://orders/")).status_code == 404
    assert released == [(servers[0].address, Outcome.FAILURE), (servers[1].address, Outcome.IGNORED)]


async def test_each_endpoint_gets_its_own_pool_until_discovery_drops_it(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    discovery = StaticDiscovery({"orders": [s.address for s in servers[:2]]})
    client = make(pipeline=Pipeline(clock=FakeClock()), discovery=discovery)
    pool = client.transport._router
    for _ in range(2):
        await client.get("http://orders/")
    assert pool.addresses() == sorted(s.address for s in servers[:2])
    assert [s.open_connections for s in servers[:2]] == [1, 1]

    discovery.set("orders", [servers[2].address])
    assert pool.addresses() == [servers[2].address]  # built as discovery listed it, before any request
    assert (await client.get("http://orders/")).text == "server-2"
    assert pool.addresses() == [servers[2].address]
    assert servers[0].wait_connections(0) == 0  # the dropped endpoint's pool was closed
    assert servers[1].wait_connections(0) == 0

    discovery.set("orders", [])
    with pytest.raises(NoEndpointError):
        await client.get("http://orders/")


async def test_a_dropped_endpoint_in_use_closes_when_its_response_does(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    discovery = StaticDiscovery({"orders": [servers[0].address]})
    client = make(pipeline=Pipeline(clock=FakeClock()), discovery=discovery)
    servers[0].default = Reply(body=b"abcdef", chunks=3, chunk_delay=0.01)
    if client.mode == "sync":
        with client.sync_client.stream("GET", "http://orders/") as response:
            discovery.set("orders", [servers[1].address])
            assert response.read() == b"abcdef"
    else:

        async def read() -> None:
            async with client.async_client.stream("GET", "http://orders/") as aresponse:
                discovery.set("orders", [servers[1].address])
                assert await aresponse.aread() == b"abcdef"

        await (client._in_trio(read) if client.mode == "trio" else read())
        await client.get("http://orders/")  # the async transport closes retired pools in its loop
    assert servers[0].wait_connections(0) == 0


async def test_a_shared_inner_transport_serves_every_endpoint(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    discovery = StaticDiscovery({"orders": [s.address for s in servers[:2]]})
    client = make(pipeline=Pipeline(clock=FakeClock()), discovery=discovery, record=True)
    await client.get("http://orders/a")
    await client.get("http://orders/b")
    assert client.transport._router.make_resource is None
    assert client.recording is not None
    assert [str(r.url) for r in client.recording.sent] == [
        f"http://{s.address}/{p}" for s, p in zip(servers, "ab", strict=False)
    ]


async def test_host_header_can_name_the_endpoint(make: Callable[..., Harness], servers: list[HttpServer]) -> None:
    discovery = StaticDiscovery({"orders": [servers[0].address]})
    client = make(pipeline=Pipeline(clock=FakeClock()), discovery=discovery, rewrite_host_header=True)
    await client.get("http://orders/")
    assert servers[0].requests[0].headers["host"] == servers[0].address


# -- policy selection ----------------------------------------------------------------------


async def test_routes_pick_the_policy_set_and_name_the_call(make: Callable[..., Harness], server: HttpServer) -> None:
    default, orders, reports = Spy(), Spy(), Spy()
    clock = FakeClock()
    routes = [
        Route(
            policy="orders",
            host="127.0.0.*",
            path="/orders/*",
            methods=["post"],
            name="create-order",
            service="orders",
            idempotent=True,
            tags={"team": "shop"},
        ),
        Route(policy=Pipeline(reports, clock=clock), path="^/reports/\\d+$"),
    ]
    client = make(
        pipeline=Pipeline(default, clock=clock),
        policies={"orders": Pipeline(orders, Retry(2, budget=None), clock=clock)},
        routes=routes,
    )
    server.script(503, 200)
    assert (await client.request("POST", server.url + "/orders/1/lines", content=b"{}")).status_code == 200
    assert len(server.requests) == 2  # the route made the POST idempotent
    ctx = orders.contexts[0]
    assert (ctx.service, ctx.method, ctx.idempotent, ctx.tags) == ("orders", "create-order", True, {"team": "shop"})
    await client.get(server.url + "/orders/1")  # GET: not the route's method
    await client.get(server.url + "/reports/12")
    await client.get(server.url + "/reports/12/x")  # the pattern is anchored by its $
    assert len(orders.contexts) == 1
    assert len(reports.contexts) == 1
    assert [c.method for c in default.contexts] == ["GET /orders/1", "GET /reports/12/x"]
    assert default.contexts[0].service == "127.0.0.1"


async def test_a_request_names_its_policy_set(make: Callable[..., Harness], server: HttpServer) -> None:
    default, special = Spy(), Spy()
    client = make(pipeline=Pipeline(default), policies={"special": Pipeline(special)})
    await client.get(server.url, extensions={"resilience": {"policy": "special", "tags": {"k": "v"}}})
    assert len(special.contexts) == 1
    assert not default.contexts
    assert special.contexts[0].tags == {"k": "v"}
    with pytest.raises(ValueError, match="unknown policy set 'nope'"):
        await client.get(server.url, extensions={"resilience": {"policy": "nope"}})
    with pytest.raises(ValueError, match="unknown keys \\['timout'\\]"):
        await client.get(server.url, extensions={"resilience": {"timout": 1}})


async def test_a_factory_gives_each_service_its_own_pipeline(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    made: dict[str, Pipeline] = {}

    def per_service(service: str) -> Pipeline:
        made[service] = Pipeline(Spy(), clock=FakeClock())
        return made[service]

    discovery = StaticDiscovery({"a": [servers[0].address], "b": [servers[1].address]})
    client = make(pipeline=per_service, discovery=discovery)
    for _ in range(2):
        await client.get("http://a/")
        await client.get("http://b/")
    assert sorted(made) == ["a", "b"]


async def test_policy_errors_reach_the_caller(make: Callable[..., Harness], server: HttpServer) -> None:
    class Full(Spy):
        def wrap(self, next: SyncNext) -> SyncNext:
            def run(ctx: CallContext) -> Any:
                raise BulkheadFullError("full", context=ctx)

            return run

        def wrap_async(self, next: AsyncNext) -> AsyncNext:
            async def run(ctx: CallContext) -> Any:
                raise BulkheadFullError("full", context=ctx)

            return run

    client = make(pipeline=Pipeline(Full()))
    with pytest.raises(BulkheadFullError):
        await client.get(server.url)
    assert server.requests == []


async def test_a_fallback_must_answer_with_a_response(make: Callable[..., Harness], server: HttpServer) -> None:
    server.default = Reply(drop=True)
    client = make(pipeline=Pipeline(Fallback(httpx.Response(299, text="cached"))))
    response = await client.get(server.url)
    assert (response.status_code, response.text) == (299, "cached")
    other = make(pipeline=Pipeline(Fallback("cached")))
    with pytest.raises(TypeError, match=r"not an httpx\.Response"):
        await other.get(server.url)


async def test_close_is_delegated(mode: str) -> None:
    inner = Recording(httpx.HTTPTransport() if mode == "sync" else httpx.AsyncHTTPTransport())
    if mode == "sync":
        with httpx.Client(transport=ResilientTransport(inner)):
            pass
    else:
        async with httpx.AsyncClient(transport=AsyncResilientTransport(inner)):
            pass
    assert inner.closed == 1


# -- edge cases a server cannot produce on demand (respx) ------------------------------------


async def test_connect_and_pool_timeouts_are_retried(make: Callable[..., Harness]) -> None:
    client = make(pipeline=retrying(FakeClock(), attempts=4))
    with respx.mock(assert_all_called=True) as router:
        route = router.get("http://backend.test/x").mock(
            side_effect=[httpx.ConnectTimeout("slow connect"), httpx.PoolTimeout("pool"), httpx.Response(200)]
        )
        assert (await client.get("http://backend.test/x")).status_code == 200
        assert route.call_count == 3


async def test_an_unreadable_retry_after_falls_back_to_backoff(make: Callable[..., Harness]) -> None:
    clock = FakeClock()
    client = make(pipeline=retrying(clock, backoff=Constant(0.2)))
    with respx.mock() as router:
        router.get("http://backend.test/").mock(
            side_effect=[httpx.Response(503, headers={"Retry-After": "soon"}), httpx.Response(200)]
        )
        assert (await client.get("http://backend.test/")).status_code == 200
    assert clock.sleeps == [0.2]


async def test_a_local_protocol_error_is_not_retried(make: Callable[..., Harness]) -> None:
    client = make(pipeline=retrying(FakeClock()))
    with respx.mock() as router:
        route = router.get("http://backend.test/").mock(side_effect=httpx.LocalProtocolError("bad header"))
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("http://backend.test/")
        assert route.call_count == 1


# -- pure parts ----------------------------------------------------------------------------


def test_classifier_outcomes() -> None:
    c = HttpxClassifier()
    request = httpx.Request("GET", "http://x")
    assert c.checks_results
    for status, outcome in [(200, Outcome.SUCCESS), (302, Outcome.SUCCESS), (400, Outcome.IGNORED),
                            (404, Outcome.IGNORED), (429, Outcome.FAILURE), (500, Outcome.FAILURE),
                            (503, Outcome.FAILURE), (599, Outcome.FAILURE)]:  # fmt: skip
        assert c.result(httpx.Response(status)) is outcome, status
    for exc, outcome in [
        (httpx.ConnectError("x", request=request), Outcome.FAILURE),
        (httpx.ReadTimeout("x", request=request), Outcome.FAILURE),
        (httpx.RemoteProtocolError("x", request=request), Outcome.FAILURE),
        (httpx.UnsupportedProtocol("x", request=request), Outcome.IGNORED),
        (httpx.LocalProtocolError("x", request=request), Outcome.IGNORED),
        (httpx.InvalidURL("x"), Outcome.IGNORED),
        (httpx.StreamConsumed(), Outcome.IGNORED),
        (RejectedError("full"), Outcome.IGNORED),
        (asyncio.CancelledError(), Outcome.IGNORED),
        (RuntimeError("bug"), Outcome.FAILURE),
    ]:
        assert c.error(exc) is outcome, exc
    assert not c.retryable_error(httpx.LocalProtocolError("x"))
    assert c.retryable_error(httpx.ConnectError("x"))
    assert frozenset({429, *range(500, 600)}) == DEFAULT_FAILURE_STATUSES
    assert repr(c) == "HttpxClassifier(failure_statuses={429, 500-599})"


def test_classifier_options() -> None:
    c = HttpxClassifier({503, 504, 429}, retryable_statuses={503})
    assert c.result(httpx.Response(500)) is Outcome.IGNORED
    assert c.result(httpx.Response(504)) is Outcome.FAILURE
    assert c.retryable_result(httpx.Response(503))
    assert not c.retryable_result(httpx.Response(504))
    with pytest.raises(ValueError, match="subset of failure_statuses, got extra \\[500\\]"):
        HttpxClassifier({503}, retryable_statuses={500})
    with pytest.raises(ValueError, match="status codes in \\[100, 599\\], got 600"):
        HttpxClassifier({600})
    with pytest.raises(ValueError, match="drain_limit must be an integer >= 0, got -1"):
        HttpxClassifier(drain_limit=-1)


def test_discard_closes_a_response() -> None:
    closed: list[bool] = []

    class Body(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            closed.append(True)

    response = httpx.Response(503, stream=Body())
    HttpxClassifier().discard(response)
    assert response.is_closed
    assert closed == [True]


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0
    for bad in ["", "soon", "1e999", "12abc", "Wed, 99 Foo 2015"]:
        assert parse_retry_after(bad, now) is None, bad


def test_route_validation() -> None:
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0, got 0"):
        Route(timeout=0)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        Route(path="^(")
    with pytest.raises(TypeError, match="methods must be a collection of method names"):
        Route(methods="GET")
    with pytest.raises(ValueError, match="unknown policy set 'x'"):
        ResilientTransport(routes=[Route(policy="x")])
    with pytest.raises(TypeError, match=r"inner must be an httpx\.BaseTransport"):
        ResilientTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    route = Route(host="*.example.com", path="/a/*", methods=["get"])
    assert route.matches("api.EXAMPLE.com", "GET", "/a/b/c")
    assert not route.matches("example.com", "GET", "/a/b")
    assert not route.matches("api.example.com", "POST", "/a/b")
    assert not route.matches("api.example.com", "GET", "/b/a/x")


# -- with the other policies -------------------------------------------------------------------


async def test_a_breaker_opens_on_5xx_and_not_on_4xx(make: Callable[..., Harness], server: HttpServer) -> None:
    from resilience.errors import CircuitOpenError
    from resilience.policies.circuit_breaker import CircuitBreaker

    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, break_duration=30, clock=clock)
    client = make(pipeline=Pipeline(breaker, clock=clock))
    server.default = Reply(404)
    for _ in range(10):
        assert (await client.get(server.url)).status_code == 404
    server.default = Reply(503)
    for _ in range(3):
        assert (await client.get(server.url)).status_code == 503
    with pytest.raises(CircuitOpenError):
        await client.get(server.url)
    assert len(server.requests) == 13
    clock.advance(31)
    server.default = Reply(200)
    assert (await client.get(server.url)).status_code == 200  # the probe closes it again
    assert (await client.get(server.url)).status_code == 200


async def test_a_breaker_inside_retry_counts_each_attempt(make: Callable[..., Harness], server: HttpServer) -> None:
    from resilience.errors import CircuitOpenError
    from resilience.policies.circuit_breaker import CircuitBreaker

    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, break_duration=30, clock=clock)
    client = make(pipeline=Pipeline(Retry(5, budget=None), breaker, clock=clock))
    server.default = Reply(drop=True)
    with pytest.raises(CircuitOpenError):
        await client.get(server.url)
    assert len(server.requests) == 2  # the open breaker stopped the retries


async def test_a_hedged_get_goes_to_another_endpoint(make: Callable[..., Harness], servers: list[HttpServer]) -> None:
    from resilience.policies.hedge import Hedge

    hedge = Hedge(delay=0.02, budget=None)
    spy = Spy()
    servers[0].default = Reply(body=b"slow", delay=0.3)
    discovery = StaticDiscovery({"orders": [s.address for s in servers[:2]]})
    client = make(pipeline=Pipeline(hedge, spy), discovery=discovery)
    try:
        response = await client.get("http://orders/")
        assert response.text == "server-1"  # the hedge answered: the primary's server is slow
        assert [c.hedge for c in spy.contexts] == [0, 1]
        assert spy.contexts[1].endpoint == servers[1].address
        assert spy.contexts[0].tried == [servers[0].address, servers[1].address]  # the winner's, copied back

        # A POST is not hedged: it waits for the slow endpoint.
        spy.contexts.clear()
        response = await client.request("POST", "http://orders/", content=b"x")
        assert response.text == "slow"
        assert [c.hedge for c in spy.contexts] == [0]

    finally:
        hedge.close()


async def test_a_post_that_reached_no_server_is_retried_elsewhere(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    dead = HttpServer()
    dead.start()
    dead_address = dead.address
    dead.stop()  # nothing listens there any more: the connection is refused
    discovery = StaticDiscovery({"orders": [dead_address, servers[0].address]})
    client = make(pipeline=retrying(FakeClock()), discovery=discovery, balancer=FirstListed())
    response = await client.request("POST", "http://orders/", content=b"order")
    assert response.status_code == 200  # retried on the live endpoint although a POST
    assert [s.body for s in servers[0].requests] == [b"order"]
    # Once something reached a server, a POST is not retried.
    servers[0].script(Reply(drop=True))
    discovery.set("orders", [servers[0].address, servers[1].address])
    with pytest.raises(httpx.RemoteProtocolError):
        await client.request("POST", "http://orders/", content=b"again")
    assert len(servers[1].requests) == 0


@pytest.mark.parametrize(
    "error", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")]
)
def test_an_attempt_that_sent_nothing_is_retried_whatever_the_method(error: Exception) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise error
        return httpx.Response(201)

    transport = ResilientTransport(httpx.MockTransport(handler), pipeline=retrying(FakeClock()))
    with httpx.Client(transport=transport) as client:
        assert client.post("http://api/orders", content=b"x").status_code == 201
    assert calls == ["POST", "POST"]


async def test_a_route_naming_its_service_balances_over_that_services_endpoints(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    discovery = StaticDiscovery({"orders": [s.address for s in servers[:2]]})
    route = Route(host="api.example.com", path="/orders/*", service="orders")
    client = make(pipeline=Pipeline(clock=FakeClock()), discovery=discovery, routes=[route])
    texts = [(await client.get("http://api.example.com/orders/7")).text for _ in range(4)]
    assert sorted(set(texts)) == ["server-0", "server-1"]  # both endpoints of orders, in turn
    assert servers[0].requests[0].path == "/orders/7"
    assert servers[0].requests[0].headers["host"] == "api.example.com"  # the Host is kept
    # A path the route does not cover goes to the host as it is (no such host here).
    with pytest.raises(httpx.ConnectError):
        await client.get("http://127.0.0.1:9/other")


async def test_an_idempotency_key_makes_a_post_retryable_not_hedgeable(
    make: Callable[..., Harness], server: HttpServer
) -> None:
    from resilience.policies.hedge import Hedge

    hedge = Hedge(delay=0.02, budget=None)
    spy = Spy()
    server.default = Reply(body=b"slow", delay=0.2)
    client = make(pipeline=Pipeline(hedge, spy))
    try:
        # Retried one copy at a time is safe with a key; two copies at once (a hedge) is not.
        response = await client.request("POST", server.url, content=b"x", headers={"Idempotency-Key": "k-9"})
        assert response.text == "slow"
        assert [c.hedge for c in spy.contexts] == [0]
        assert spy.contexts[0].idempotent and spy.contexts[0].hedgeable is False
        assert len(server.requests) == 1
        # A request that opts in is hedged.
        spy.contexts.clear()
        await client.request("POST", server.url, content=b"x", extensions={"resilience": {"idempotent": True}})
        assert [c.hedge for c in spy.contexts] == [0, 1]
    finally:
        hedge.close()


async def test_a_rate_limit_rejects_before_sending(make: Callable[..., Harness], server: HttpServer) -> None:
    from resilience.errors import RateLimitedError
    from resilience.policies.token_bucket import TokenBucket

    clock = FakeClock()
    client = make(pipeline=Pipeline(TokenBucket(rate=1.0, burst=2), clock=clock))
    await client.get(server.url)
    await client.get(server.url)
    with pytest.raises(RateLimitedError) as caught:
        await client.get(server.url)
    assert caught.value.retry_after == pytest.approx(1.0)
    assert len(server.requests) == 2


async def test_the_call_is_committed_once_returned(make: Callable[..., Harness], server: HttpServer) -> None:
    spy = Spy()
    client = make(pipeline=Pipeline(spy, clock=FakeClock()))
    await client.get(server.url)
    assert spy.contexts[0].committed


def test_which_bodies_can_be_replayed() -> None:
    from interceptors._httpx_bodies import replayable

    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

    def gen() -> Iterator[bytes]:
        yield b"x"

    assert replayable(httpx.Request("POST", "http://x", content=b"abc").stream)
    assert replayable(httpx.Request("POST", "http://x", json={"a": 1}).stream)
    assert replayable(httpx.Request("POST", "http://x", files={"f": io.BytesIO(b"data")}).stream)
    assert not replayable(httpx.Request("POST", "http://x", files={"f": Pipe()}).stream)
    assert not replayable(httpx.Request("POST", "http://x", content=gen()).stream)


def test_exports_are_complete() -> None:
    import interceptors._httpx_core as core
    import interceptors.httpx as module

    for name in module.__all__:
        assert hasattr(module, name), name
    assert set(core.__all__) <= set(module.__all__)
    assert sorted(module.__all__) == sorted(set(module.__all__))


# -- lifecycle (issue 9, item 1) ---------------------------------------------------------------------


class _Entered(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []

    def __enter__(self) -> _Entered:
        self.calls.append("enter")
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self.calls.append(("exit", exc_info[0]))
        super().__exit__(*exc_info)


class _AsyncEntered(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []

    async def __aenter__(self) -> _AsyncEntered:
        self.calls.append("enter")
        return await super().__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.calls.append(("exit", exc_info[0]))
        await super().__aexit__(*exc_info)


def test_a_client_context_enters_and_exits_the_inner_transport(server: HttpServer) -> None:
    inner = _Entered()
    with httpx.Client(transport=ResilientTransport(inner)) as client:
        assert client.get(server.url).status_code == 200
        assert inner.calls == ["enter"]
    assert inner.calls == ["enter", ("exit", None)]
    inner = _Entered()

    def fail_inside() -> None:
        with httpx.Client(transport=ResilientTransport(inner)) as client:
            client.get(server.url)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fail_inside()
    assert inner.calls == ["enter", ("exit", KeyError)]  # the exception details are passed on


async def test_an_async_client_context_enters_and_exits_the_inner_transport(server: HttpServer) -> None:
    inner = _AsyncEntered()
    async with httpx.AsyncClient(transport=AsyncResilientTransport(inner)) as client:
        assert (await client.get(server.url)).status_code == 200
        assert inner.calls == ["enter"]
    assert inner.calls == ["enter", ("exit", None)]


async def test_leaving_the_client_closes_the_endpoint_transports(servers: list[HttpServer]) -> None:
    discovery = StaticDiscovery({"orders": [s.address for s in servers[:2]]})
    async with httpx.AsyncClient(transport=AsyncResilientTransport(discovery=discovery)) as client:
        for _ in range(2):
            assert (await client.get("http://orders/")).status_code == 200
        transport = client._transport
        assert isinstance(transport, AsyncResilientTransport)
        assert transport._router.addresses() == sorted(s.address for s in servers[:2])
    assert transport._router.addresses() == []
    assert servers[0].wait_connections(0) == 0
