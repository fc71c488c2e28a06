"""Issue 10, item 5: the adapters wired to discovery, balancing, endpoint health and outlier ejection.

Every scenario runs through each adapter against real servers on 127.0.0.1: the httpx
transports (sync, asyncio, trio) and the discovery-aware gRPC channels (sync, aio). What is
checked: hedges and retries go to endpoints no attempt of the call went to; a rejection
by an endpoint's health sends the attempt elsewhere at once; ``ejection=`` on the adapter,
each service with its own counts, its events reaching the pipeline's listeners;
``discovery=`` as a URI (static, and etcd with a real server). Servers are held back with
events rather than delays, policies that wait run on a fake clock, loops are bounded, and
nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import anyio
import grpc
import httpx
import pytest
import trio

from interceptors._grpc_common import MethodPolicy
from interceptors.grpc_channel import AioResilientChannel, ResilientChannel
from interceptors.httpx import AsyncResilientTransport, ResilientTransport, Route
from resilience import (
    CircuitBreaker,
    Constant,
    EndpointEjected,
    EndpointReturned,
    Event,
    FakeClock,
    OutlierEjection,
    OutlierEjectionOptions,
    Pipeline,
    Retry,
    RetryScheduled,
    RoundRobin,
    StaticDiscovery,
)
from resilience.balancing.pool import EndpointPool, EndpointState
from resilience.context import CallContext
from resilience.discovery.base import Discovery
from resilience.policies.hedge import Hedge
from resilience.policy import AsyncNext, Policy, SyncNext

from ._etcd_helpers import unique_prefix, value
from ._grpc_service import UNARY, Fault, Running, callables, start
from ._http_server import HttpServer, Reply, Seen

ADAPTERS = ["httpx-sync", "httpx-async", "httpx-trio", "grpc-sync", "grpc-aio"]
BOUND = 10.0  # seconds any wait may take at most; never reached when the code is right
S = grpc.StatusCode


# -- replicas --------------------------------------------------------------------------------


class _HttpBehaviour:
    """What one HTTP replica does: wait while held, then fail the next ``failures`` requests."""

    def __init__(self) -> None:
        self.free = threading.Event()
        self.free.set()
        self.failures = 0
        self.lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply | None:
        self.free.wait(BOUND)
        with self.lock:
            if self.failures:
                self.failures -= 1
                return Reply(503)
        return None


class Replicas:
    """``n`` replicas of one protocol that a test holds back, makes fail and counts."""

    def __init__(self, protocol: str, n: int) -> None:
        self.protocol = protocol
        self.grpc: list[Running] = []
        self.http: list[HttpServer] = []
        self.behaviours: list[_HttpBehaviour] = []
        if protocol == "grpc":
            self.grpc = [start() for _ in range(n)]
            self.addresses = [s.address for s in self.grpc]
        else:
            for _ in range(n):
                server = HttpServer().start()
                behaviour = _HttpBehaviour()
                server.handler = behaviour
                self.http.append(server)
                self.behaviours.append(behaviour)
            self.addresses = [s.address for s in self.http]

    def count(self, i: int) -> int:
        return self.grpc[i].service.count(UNARY) if self.grpc else len(self.http[i].requests)

    def counts(self) -> list[int]:
        return [self.count(i) for i in range(len(self.addresses))]

    def hold(self, i: int) -> None:
        if self.grpc:
            self.grpc[i].service.release.clear()
        else:
            self.behaviours[i].free.clear()

    def release(self, i: int) -> None:
        if self.grpc:
            self.grpc[i].service.release.set()
        else:
            self.behaviours[i].free.set()

    def fail(self, i: int, times: int = 1) -> None:
        """The next ``times`` attempts on replica ``i`` fail (UNAVAILABLE, or HTTP 503)."""
        if self.grpc:
            self.grpc[i].service.script(UNARY, *[Fault(S.UNAVAILABLE)] * times)
        else:
            with self.behaviours[i].lock:
                self.behaviours[i].failures += times

    def release_when(self, i: int, ready: Callable[[], bool]) -> threading.Thread:
        """Release replica ``i`` from a thread once ``ready()`` holds (or the bound passed)."""

        def wait() -> None:
            end = time.monotonic() + BOUND
            while not ready() and time.monotonic() < end:
                time.sleep(0.005)
            self.release(i)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        for i in range(len(self.addresses)):
            self.release(i)
        for server in self.grpc:
            server.stop()
        for http in self.http:
            http.stop()


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _replicas(adapter: str, n: int) -> Iterator[Replicas]:
    replicas = Replicas("grpc" if adapter.startswith("grpc") else "http", n)
    try:
        yield replicas
    finally:
        replicas.stop()


@pytest.fixture
def two(adapter: str) -> Iterator[Replicas]:
    yield from _replicas(adapter, 2)


@pytest.fixture
def three(adapter: str) -> Iterator[Replicas]:
    yield from _replicas(adapter, 3)


# -- one client API over the five adapters -------------------------------------------------------


class Client:
    """An adapter of the given kind over service ``echo``; :meth:`call` makes one call and
    checks that it succeeded."""

    def __init__(self, adapter: str, pipeline: Pipeline, discovery: Discovery | str, **kwargs: Any) -> None:
        self.adapter = adapter
        self.http: Any = None
        self.channel: Any = None
        if adapter == "httpx-sync":
            self.transport: Any = ResilientTransport(pipeline=pipeline, discovery=discovery, **kwargs)
            self.http = httpx.Client(transport=self.transport)
        elif adapter.startswith("httpx"):
            self.transport = AsyncResilientTransport(pipeline=pipeline, discovery=discovery, **kwargs)
            self.http = httpx.AsyncClient(transport=self.transport)
        else:
            balancer = kwargs.pop("balancer", None)
            policy = MethodPolicy(pipeline, idempotent=True)
            kind = ResilientChannel if adapter == "grpc-sync" else AioResilientChannel
            self.channel = kind("echo", discovery, balancer, policy, **kwargs)
            self.unary = callables(self.channel)[UNARY]

    @property
    def discovery(self) -> Any:
        return self.transport._router.discovery if self.channel is None else self.channel.pool.discovery

    def pool(self, service: str = "echo") -> EndpointPool[Any]:
        if self.channel is not None:
            pool: EndpointPool[Any] = self.channel.pool
            return pool
        return self.transport._router.pool(service)  # type: ignore[no-any-return]

    async def call(self, url: str = "http://echo/x") -> None:
        if self.adapter == "httpx-sync":
            response = self.http.get(url, timeout=BOUND)
        elif self.adapter.startswith("httpx"):
            response = await self.http.get(url, timeout=BOUND)
        elif self.adapter == "grpc-sync":
            assert self.unary(b"x", timeout=BOUND) == b"x"
            return
        else:
            assert await self.unary(b"x", timeout=BOUND) == b"x"
            return
        assert response.status_code == 200, response

    async def close(self) -> None:
        if self.adapter == "httpx-sync":
            self.http.close()
        elif self.adapter.startswith("httpx"):
            await self.http.aclose()
        elif self.adapter == "grpc-sync":
            self.channel.close()
        else:
            await self.channel.close()


def run(adapter: str, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` in the event loop the adapter needs (trio for httpx-trio)."""
    if adapter.endswith("trio"):
        trio.run(scenario)
    else:
        asyncio.run(scenario())  # type: ignore[arg-type]


def _static(replicas: Replicas) -> StaticDiscovery:
    return StaticDiscovery({"echo": replicas.addresses})


class FirstListed(RoundRobin):
    """The first candidate in discovery's order: a deterministic primary, hedge and retry.

    Records each pick: an attempt cut short when its call ends (a hedge that lost) may
    never reach its server, so what the client chose is counted here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.picked: list[str] = []

    def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
        self.picked.append(candidates[0].address)
        return candidates[0]


class HoldPrimary(Policy):
    """Inside a hedge: the primary attempt waits until the hedge has passed (as behind a
    bulkhead or a limiter), so that the hedge picks first."""

    def __init__(self) -> None:
        super().__init__("holdprimary")
        self.hedged = threading.Event()

    def wrap(self, next: SyncNext) -> SyncNext:
        def run(ctx: CallContext) -> Any:
            if ctx.hedge:
                self.hedged.set()
            else:
                self.hedged.wait(BOUND)
            return next(ctx)

        return run

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        async def run(ctx: CallContext) -> Any:
            if ctx.hedge:
                self.hedged.set()
            else:
                for _ in range(int(BOUND / 0.005)):
                    if self.hedged.is_set():
                        break
                    await anyio.sleep(0.005)
            return await next(ctx)

        return run


# -- hedges and retries go elsewhere ----------------------------------------------------------------


def test_hedges_go_to_replicas_where_no_attempt_of_the_call_is(adapter: str, three: Replicas) -> None:
    # The first two replicas hold every call: the primary waits on the first, the first
    # hedge on the second; the second hedge must go to the third, which answers.
    three.hold(0)
    three.hold(1)
    hedge = Hedge(0.02, max_hedges=2, budget=None)
    balancer = FirstListed()

    async def scenario() -> None:
        client = Client(adapter, Pipeline(hedge), _static(three), balancer=balancer)
        try:
            await client.call()
        finally:
            three.release(0)
            three.release(1)
            await client.close()

    try:
        run(adapter, scenario)
    finally:
        hedge.close()
    assert balancer.picked == three.addresses
    assert three.count(2) == 1  # the answer


def test_a_primary_held_back_does_not_join_its_hedge(adapter: str, two: Replicas) -> None:
    # The hedge picks while the primary waits before its pick (the fork was made with
    # nothing tried yet): whichever picks second must take the other replica.
    two.hold(0)
    hedge = Hedge(0.02, budget=None)
    balancer = FirstListed()

    async def scenario() -> None:
        client = Client(adapter, Pipeline(hedge, HoldPrimary()), _static(two), balancer=balancer)
        try:
            await client.call()
        finally:
            two.release(0)
            # A sync hedge's losing primary still reads its answer on a worker thread:
            # let it end before the transport closes under it.
            hedge.close()
            await client.close()

    try:
        run(adapter, scenario)
    finally:
        hedge.close()
    assert balancer.picked == two.addresses
    assert two.count(1) == 1  # the answer


def test_a_retry_after_a_hedged_round_avoids_every_replica_of_the_round(adapter: str, three: Replicas) -> None:
    # The primary (replica 0) is held, then fails; its hedge (replica 1) fails at once. The
    # call's retry must go to replica 2, not to the hedge's replica.
    three.hold(0)
    three.fail(0)
    three.fail(1)
    releaser = three.release_when(0, lambda: three.count(1) >= 1)
    # A long delay: the retry's own round answers before it could send a hedge.
    hedge = Hedge(0.25, budget=None)
    pipeline = Pipeline(Retry(2, backoff=Constant(0), budget=None), hedge)
    balancer = FirstListed()

    async def scenario() -> None:
        client = Client(adapter, pipeline, _static(three), balancer=balancer)
        try:
            await client.call()
        finally:
            await client.close()

    try:
        run(adapter, scenario)
    finally:
        hedge.close()
        releaser.join(BOUND)
    assert balancer.picked == three.addresses
    assert three.counts() == [1, 1, 1]


# -- a rejection by an endpoint's health -------------------------------------------------------------


def test_a_rejection_by_an_endpoints_health_sends_the_attempt_elsewhere_at_once(adapter: str, two: Replicas) -> None:
    clock = FakeClock()
    events: list[Event] = []
    breakers: dict[str, CircuitBreaker] = {}

    def health(endpoint: Any) -> CircuitBreaker:
        return breakers.setdefault(endpoint.address, CircuitBreaker(failure_threshold=5, clock=clock))

    pipeline = Pipeline(Retry(3, backoff=Constant(5), budget=None), clock=clock, listeners=[events.append])

    async def scenario() -> None:
        client = Client(adapter, pipeline, _static(two), balancer=FirstListed(), endpoint_health=health)
        try:
            await client.call()  # the pool's first pick makes the breakers
            breakers[two.addresses[0]].isolate()
            for _ in range(5):
                await client.call()
        finally:
            await client.close()

    run(adapter, scenario)
    # The first listed replica served the first call; its breaker rejects every later pick,
    # which goes to the other replica in the same attempt: no retry, no backoff slept.
    assert two.counts() == [1, 5]
    assert clock.sleeps == []
    assert not [e for e in events if isinstance(e, RetryScheduled)]


# -- outlier ejection given to the adapter --------------------------------------------------------


@pytest.mark.parametrize("form", ["ejection", "options"])
def test_ejection_on_the_adapter_ejects_returns_and_tells_the_pipelines_listeners(
    adapter: str, two: Replicas, form: str
) -> None:
    clock = FakeClock()
    events: list[Event] = []
    options = OutlierEjectionOptions(consecutive_failures=1, base_ejection_time=30, max_ejection_percent=50)
    ejection = OutlierEjection(options=options) if form == "ejection" else options
    pipeline = Pipeline(Retry(2, backoff=Constant(0), budget=None), clock=clock, listeners=[events.append])
    first = two.addresses[0]
    two.fail(0)

    async def scenario() -> None:
        client = Client(adapter, pipeline, _static(two), balancer=FirstListed(), ejection=ejection)
        try:
            await client.call()  # replica 0 fails and is ejected; the retry goes to replica 1
            outliers = client.pool().outliers
            assert outliers is not None and outliers.ejected() == [first]
            await client.call()
            await client.call()
            clock.advance(31)  # the ejection ends: the next pick returns replica 0
            await client.call()
            assert outliers.ejected() == []
        finally:
            await client.close()

    run(adapter, scenario)
    assert two.counts() == [2, 3]
    ejected = [e for e in events if isinstance(e, EndpointEjected)]
    returned = [e for e in events if isinstance(e, EndpointReturned)]
    assert [(e.service, e.address, e.reason) for e in ejected] == [("echo", first, "consecutive_failures")]
    assert [(e.service, e.address) for e in returned] == [("echo", first)]


def test_the_adapters_ejection_is_used_before_the_balancers(adapter: str, two: Replicas) -> None:
    mine, carried = OutlierEjection(), OutlierEjection()

    async def scenario() -> None:
        with_both = Client(adapter, Pipeline(), _static(two), balancer=RoundRobin(ejection=carried), ejection=mine)
        through_balancer = Client(adapter, Pipeline(), _static(two), balancer=RoundRobin(ejection=carried))
        without = Client(adapter, Pipeline(), _static(two))
        try:
            for client, expected in ((with_both, mine), (through_balancer, carried)):
                outliers = client.pool().outliers
                assert outliers is not None and outliers.ejection is expected
            assert without.pool().outliers is None
        finally:
            for client in (with_both, through_balancer, without):
                await client.close()

    run(adapter, scenario)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_routed_service_keeps_its_own_ejection_counts(mode: str) -> None:
    """One OutlierEjection on a transport: the pools of two services (routes naming them,
    on the same replicas) count apart, so a replica ejected for one still serves the other."""
    with HttpServer() as a, HttpServer() as b:
        clock = FakeClock()
        events: list[Event] = []
        discovery = StaticDiscovery({"orders": [a.address, b.address], "users": [a.address, b.address]})
        routes = [Route(path="/orders/*", service="orders"), Route(path="/users/*", service="users")]
        kwargs: dict[str, Any] = {
            "pipeline": Pipeline(Retry(2, backoff=Constant(0), budget=None), clock=clock, listeners=[events.append]),
            "discovery": discovery,
            "routes": routes,
            "balancer": FirstListed(),
            "ejection": OutlierEjection(consecutive_failures=1, max_ejection_percent=50),
        }
        a.script(503)  # the first request (to orders) fails on a
        urls = ["http://api.example.com/orders/1", "http://api.example.com/users/1"] * 2

        def outliers(transport: Any) -> list[Any]:
            return [transport._router.pool(service).outliers for service in ("orders", "users")]

        def sync() -> tuple[list[int], list[Any]]:
            transport = ResilientTransport(**kwargs)
            with httpx.Client(transport=transport) as client:
                return [client.get(url).status_code for url in urls], outliers(transport)

        async def asynchronous() -> tuple[list[int], list[Any]]:
            transport = AsyncResilientTransport(**kwargs)
            async with httpx.AsyncClient(transport=transport) as client:
                return [(await client.get(url)).status_code for url in urls], outliers(transport)

        statuses, (orders, users) = sync() if mode == "sync" else asyncio.run(asynchronous())
        assert statuses == [200] * 4
        assert orders is not users and orders.ejected() == [a.address] and users.ejected() == []
        # orders: a (503), b, b; users: a, a — the ejection in orders did not reach users.
        assert ([s.path for s in a.requests], len(b.requests)) == (["/orders/1", "/users/1", "/users/1"], 2)
        assert [(e.service, e.address) for e in events if isinstance(e, EndpointEjected)] == [("orders", a.address)]


# -- discovery from a URI --------------------------------------------------------------------------


def test_discovery_from_a_static_uri_is_made_and_closed_by_the_adapter(adapter: str, two: Replicas) -> None:
    uri = "static://" + ",".join(two.addresses)
    given = _static(two)

    async def scenario() -> None:
        client = Client(adapter, Pipeline(), uri)
        ready_made = Client(adapter, Pipeline(), given)
        try:
            for _ in range(4):
                await client.call()
            made = client.discovery
            assert isinstance(made, StaticDiscovery) and not made.closed
        finally:
            await client.close()
            await ready_made.close()
        assert made.closed  # the adapter's own
        assert not given.closed  # the caller's: left open

    run(adapter, scenario)
    assert two.counts() == [2, 2]


def test_bad_discovery_and_ejection_arguments_name_the_value(adapter: str) -> None:
    async def scenario() -> None:
        with pytest.raises(TypeError, match=r"discovery must implement the Discovery protocol or be a URI .*, got 42"):
            Client(adapter, Pipeline(), 42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown discovery scheme 'nope'"):
            Client(adapter, Pipeline(), "nope://x")
        with pytest.raises(ValueError, match="static discovery URI 'static://'"):
            Client(adapter, Pipeline(), "static://")
        with pytest.raises(TypeError, match="ejection must be an OutlierEjection, OutlierEjectionOptions or None"):
            Client(adapter, Pipeline(), StaticDiscovery(), ejection={"consecutive_failures": 3})

    run(adapter, scenario)


@pytest.mark.etcd
def test_the_adapters_follow_an_etcd_uri(adapter: str, two: Replicas, etcd_server: Any) -> None:
    """An etcd URI as ``discovery=``: the adapter lists, follows puts and deletes, and stops
    the watch when it closes. httpx requests reach the service through a route."""
    from resilience.discovery.etcd import EtcdClient, EtcdDiscovery

    prefix = unique_prefix("wiring")
    a, b = two.addresses
    route = Route(host="api.example.com", path="/echo/*", service="echo")
    extra: dict[str, Any] = {} if adapter.startswith("grpc") else {"routes": [route]}
    url = "http://api.example.com/echo/1"

    async def until(client: Client, addresses: list[str]) -> None:
        for _ in range(int(BOUND / 0.01)):
            if [e.address for e in client.pool().endpoints] == addresses:
                return
            await anyio.sleep(0.01)
        raise AssertionError(f"the pool has {client.pool().endpoints}, not {addresses}")

    async def scenario() -> None:
        with EtcdClient(f"etcd://127.0.0.1:{etcd_server.port}") as etcd:
            etcd.put(f"{prefix}/echo/a", value(a))
            client = Client(adapter, Pipeline(), f"etcd://127.0.0.1:{etcd_server.port}{prefix}", **extra)
            try:
                await client.call(url)
                etcd.put(f"{prefix}/echo/b", value(b))
                await until(client, [a, b])
                for _ in range(4):
                    await client.call(url)
                etcd.delete(f"{prefix}/echo/a")
                await until(client, [b])
                for _ in range(3):
                    await client.call(url)
                watch = client.discovery
                assert isinstance(watch, EtcdDiscovery) and watch.running
            finally:
                await client.close()
            assert not watch.running

    run(adapter, scenario)
    assert two.counts() == [3, 5]  # a: the first call and two of four; b: two of four and the last three
