"""The httpx transports keep httpx's semantics (issue 9): errors existing handlers catch,
no transport built inside a request, cancelled attempts that give their connection back,
and attempts cut by a deadline that count against their endpoint.

Against real HTTP servers on 127.0.0.1, sync and async (asyncio and trio), through the
harness of :mod:`tests.test_httpx_transport`.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import interceptors.httpx as transport_module
from interceptors._httpx_errors import httpx_error
from interceptors.httpx import AsyncResilientTransport, HttpxClassifier, ResilientTransport
from resilience.balancing.base import NoEndpointError, RoundRobin
from resilience.balancing.pool import EndpointState
from resilience.clock import FakeClock
from resilience.context import CallContext
from resilience.discovery.base import Endpoint
from resilience.discovery.static import StaticDiscovery
from resilience.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitError,
    DeadlineExceededError,
    IsolatedCircuitError,
    RateLimitedError,
    RejectedError,
    ResilienceError,
    RetryBudgetExhaustedError,
    ThrottledError,
)
from resilience.events import Event
from resilience.outcome import Outcome
from resilience.pipeline import Pipeline
from resilience.policies.budget import RetryBudget
from resilience.policies.circuit_breaker import CircuitBreaker, CircuitState
from resilience.policies.hedge import Hedge, HedgeStarted
from resilience.policies.retry import Retry
from resilience.policies.timeout import Timeout
from resilience.policies.token_bucket import TokenBucket
from resilience.policy import AsyncNext, Policy, SyncNext

from . import test_httpx_transport as _transport_tests
from ._http_server import HttpServer, Reply
from .test_httpx_transport import Harness

# The harness and fixtures of the transport tests, shared.
make = _transport_tests.make
mode = _transport_tests.mode
server = _transport_tests.server
servers = _transport_tests.servers

ASYNC_MODES = ["async", "trio"]


class Reject(Policy):
    """Raises ``error`` (a fresh one per call, with the call's context) instead of calling on."""

    def __init__(self, error: Callable[[CallContext], BaseException]) -> None:
        super().__init__("reject")
        self.error = error

    def wrap(self, next: SyncNext) -> SyncNext:
        def run(ctx: CallContext) -> Any:
            raise self.error(ctx)

        return run

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        async def run(ctx: CallContext) -> Any:
            raise self.error(ctx)

        return run


class Outcomes(RoundRobin):
    """Round robin that records how each attempt ended, per endpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Outcome]] = []

    def observe(self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float) -> None:
        self.seen.append((state.address, outcome))


async def _raised(client: Harness, url: str, **kwargs: Any) -> BaseException:
    try:
        await client.get(url, **kwargs)
    except BaseException as exc:  # what the caller's ``except`` clauses get to see
        return exc
    raise AssertionError(f"GET {url} did not raise")


# -- issue 9, item 6: errors existing handlers catch ------------------------------------------

REJECTIONS: list[type[RejectedError]] = [
    CircuitOpenError,
    IsolatedCircuitError,
    BulkheadFullError,
    ConcurrencyLimitError,
    RateLimitedError,
    ThrottledError,
    NoEndpointError,
    RejectedError,
]


@pytest.mark.parametrize("cls", REJECTIONS, ids=lambda c: c.__name__)
async def test_every_rejection_is_also_an_httpx_transport_error(
    make: Callable[..., Harness], server: HttpServer, cls: type[RejectedError]
) -> None:
    client = make(pipeline=Pipeline(Reject(lambda ctx: cls("refused", context=ctx, retry_after=2.5))))
    exc = await _raised(client, server.url + "/items")
    assert isinstance(exc, cls)
    assert isinstance(exc, httpx.TransportError)
    assert not isinstance(exc, httpx.TimeoutException | httpx.NetworkError)
    assert type(exc).__name__ == cls.__name__
    assert str(exc) == "refused"
    assert exc.retry_after == 2.5
    assert exc.context is not None and exc.context.method == "GET /items"
    assert exc.request.url == server.url + "/items"
    assert server.requests == []


async def test_an_open_breaker_is_caught_by_both_kinds_of_handler(
    make: Callable[..., Harness], server: HttpServer
) -> None:
    clock = FakeClock()
    client = make(pipeline=Pipeline(CircuitBreaker(failure_threshold=2, break_duration=30, clock=clock), clock=clock))
    server.default = Reply(503)
    for _ in range(2):
        assert (await client.get(server.url)).status_code == 503
    for handler in (httpx.HTTPError, httpx.RequestError, httpx.TransportError, CircuitOpenError, ResilienceError):
        try:
            await client.get(server.url)
        except handler as exc:
            assert isinstance(exc, CircuitOpenError) and isinstance(exc, httpx.TransportError)
            assert exc.retry_after == pytest.approx(30.0)
            assert exc.request.url == server.url
        else:
            raise AssertionError(f"{handler.__name__} did not catch the open breaker")
    assert len(server.requests) == 2


async def test_a_rate_limit_is_an_httpx_transport_error(make: Callable[..., Harness], server: HttpServer) -> None:
    clock = FakeClock()
    client = make(pipeline=Pipeline(TokenBucket(rate=1.0, burst=1), clock=clock))
    await client.get(server.url)
    exc = await _raised(client, server.url)
    assert isinstance(exc, RateLimitedError) and isinstance(exc, httpx.TransportError)
    assert exc.retry_after == pytest.approx(1.0)


async def test_no_endpoint_is_an_httpx_transport_error(make: Callable[..., Harness], servers: list[HttpServer]) -> None:
    discovery = StaticDiscovery({"orders": [servers[0].address]})
    client = make(pipeline=Pipeline(clock=FakeClock()), discovery=discovery)
    assert (await client.get("http://orders/")).status_code == 200
    discovery.set("orders", [])
    exc = await _raised(client, "http://orders/x")
    assert isinstance(exc, NoEndpointError) and isinstance(exc, httpx.TransportError)
    assert exc.request.url == "http://orders/x"
    assert exc.context is not None and exc.context.service == "orders"


async def test_every_endpoint_unhealthy_is_an_httpx_transport_error(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    clock = FakeClock()
    discovery = StaticDiscovery({"orders": [servers[0].address]})
    client = make(
        pipeline=Pipeline(clock=clock),
        discovery=discovery,
        endpoint_health=lambda e: CircuitBreaker(failure_threshold=1, break_duration=10, clock=clock),
    )
    servers[0].default = Reply(503)
    assert (await client.get("http://orders/")).status_code == 503
    exc = await _raised(client, "http://orders/")
    assert isinstance(exc, NoEndpointError) and isinstance(exc, httpx.TransportError)
    assert exc.retry_after == pytest.approx(10.0)


async def test_a_timeout_policy_is_an_httpx_timeout(make: Callable[..., Harness], server: HttpServer) -> None:
    server.default = Reply(delay=0.5)
    client = make(pipeline=Pipeline(Timeout(0.05)))
    exc = await _raised(client, server.url)
    assert isinstance(exc, DeadlineExceededError)
    assert isinstance(exc, httpx.TimeoutException) and isinstance(exc, TimeoutError)
    assert exc.timeout == 0.05
    assert exc.request.url == server.url


async def test_a_timeout_policy_is_an_httpx_timeout_with_discovery(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    servers[0].default = Reply(delay=0.5)
    discovery = StaticDiscovery({"orders": [servers[0].address]})
    client = make(pipeline=Pipeline(Timeout(0.05)), discovery=discovery)
    exc = await _raised(client, "http://orders/slow")
    assert isinstance(exc, DeadlineExceededError) and isinstance(exc, httpx.TimeoutException)
    assert exc.request.url == "http://orders/slow"


@pytest.mark.parametrize("lib", ASYNC_MODES)
async def test_a_timeout_policy_wins_over_the_httpx_timeout_cut_to_its_deadline(lib: str, server: HttpServer) -> None:
    # httpx's read timeout is the time left before the deadline, so it falls due with the
    # Timeout's own cancellation. A loop that wakes late finds both due at once: the call
    # must still end as the Timeout's DeadlineExceededError, never as a bare ReadTimeout.
    server.default = Reply(delay=0.5)
    transport = AsyncResilientTransport(pipeline=Pipeline(Timeout(0.05)))

    async def run() -> list[str]:
        seen: list[str] = []
        async with httpx.AsyncClient(transport=transport) as client:

            async def call() -> None:
                try:
                    await client.get(server.url)
                except httpx.TimeoutException as exc:
                    seen.append("deadline" if isinstance(exc, DeadlineExceededError) else type(exc).__name__)

            for _ in range(8):
                if lib == "async":
                    blocker = asyncio.ensure_future(_block_loop(asyncio.sleep))
                    await call()
                    await blocker
                else:
                    import trio

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_block_loop, trio.sleep)
                        await call()
        return seen

    seen = await run() if lib == "async" else await asyncio.to_thread(_trio_run, run)
    assert seen == ["deadline"] * 8


async def _block_loop(sleep: Callable[[float], Any]) -> None:
    await sleep(0.03)
    time.sleep(0.1)  # noqa: ASYNC251 - blocks the event loop past the deadline and httpx's timeout, on purpose


async def test_a_deadline_option_is_an_httpx_timeout(make: Callable[..., Harness], server: HttpServer) -> None:
    clock = FakeClock(100.0)
    client = make(pipeline=Pipeline(Retry(3, budget=None), clock=clock))
    exc = await _raised(client, server.url, extensions={"resilience": {"deadline": 99.0}})
    assert isinstance(exc, DeadlineExceededError) and isinstance(exc, httpx.TimeoutException)
    assert "deadline passed before attempt 1" in str(exc)
    # A Retry-After that does not fit before the deadline ends the call the same way.
    server.default = Reply(503, headers={"Retry-After": "5"})
    exc = await _raised(client, server.url, extensions={"resilience": {"timeout": 1.0}})
    assert isinstance(exc, DeadlineExceededError) and isinstance(exc, httpx.TimeoutException)
    assert server.wait_connections(1) <= 1


async def test_a_spent_retry_budget_keeps_the_last_attempts_httpx_error(
    make: Callable[..., Harness], server: HttpServer
) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    client = make(pipeline=Pipeline(Retry(3, budget=budget), clock=clock))
    server.default = Reply(drop=True)
    exc = await _raised(client, server.url)
    # What a handler of the attempt's own error expects still holds...
    assert isinstance(exc, httpx.RemoteProtocolError)
    assert exc.request.url == server.url
    # ...and it says why the call was not retried.
    assert isinstance(exc, RetryBudgetExhaustedError)
    assert type(exc.last_error) is httpx.RemoteProtocolError
    assert exc.__cause__ is exc.last_error
    assert len(server.requests) == 1


async def test_a_spent_retry_budget_after_a_deadline_is_an_httpx_timeout(make: Callable[..., Harness]) -> None:
    # An attempt's own deadline (an inner Timeout, here a policy that raises it), then no
    # budget for the retry: the call ends as a timeout, as the attempt did.
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    timed_out = Reject(lambda ctx: DeadlineExceededError("attempt timed out", context=ctx, timeout=1.0))
    inner = httpx.MockTransport(lambda request: httpx.Response(200))  # never reached
    client = make(inner=inner, pipeline=Pipeline(Retry(3, budget=budget), timed_out, clock=clock))
    exc = await _raised(client, "http://api/")
    assert isinstance(exc, RetryBudgetExhaustedError) and isinstance(exc, httpx.TimeoutException)
    assert not isinstance(exc, DeadlineExceededError)  # it says why it ended: the budget
    assert isinstance(exc.last_error, DeadlineExceededError)
    assert exc.request.url == "http://api/"


async def test_errors_from_httpx_pass_unchanged(make: Callable[..., Harness], server: HttpServer) -> None:
    client = make(pipeline=Pipeline(Retry(2, budget=None), clock=FakeClock()))
    server.default = Reply(drop=True)
    exc = await _raised(client, server.url)
    assert type(exc) is httpx.RemoteProtocolError
    server.default = Reply(delay=0.5)
    exc = await _raised(client, server.url, timeout=httpx.Timeout(5.0, read=0.05))
    assert type(exc) is httpx.ReadTimeout
    dead = HttpServer().start()
    url = dead.url
    dead.stop()
    exc = await _raised(client, url)
    assert type(exc) is httpx.ConnectError


def test_a_mapped_error_pickles_and_stays_a_rejection() -> None:
    request = httpx.Request("GET", "http://api/items")
    error = httpx_error(CircuitOpenError("open", retry_after=3.0), request)
    assert isinstance(error, CircuitOpenError) and isinstance(error, httpx.TransportError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (str(copy), copy.retry_after, copy.request.url) == ("open", 3.0, "http://api/items")
    # A rejection seen again (a transport nested in another) is still nobody's fault.
    assert HttpxClassifier().error(error) is Outcome.IGNORED
    assert httpx_error(error, request) is None  # already an httpx error
    assert httpx_error(ValueError("x"), request) is None
    assert httpx_error(RetryBudgetExhaustedError("spent", last_error=KeyError("bug")), request) is None


# -- issue 9, item 2: no transport built inside a request -------------------------------------


async def test_endpoint_transports_are_built_when_discovery_changes(
    make: Callable[..., Harness], mode: str, servers: list[HttpServer]
) -> None:
    built: list[str] = []

    def factory(endpoint: Endpoint) -> Any:
        built.append(endpoint.address)
        context = transport_module._ssl_context()
        return httpx.HTTPTransport(verify=context) if mode == "sync" else httpx.AsyncHTTPTransport(verify=context)

    a, b, c = (s.address for s in servers)
    discovery = StaticDiscovery({"orders": [a]})
    client = make(pipeline=Pipeline(clock=FakeClock()), discovery=discovery, endpoint_transport=factory)
    assert (await client.get("http://orders/")).text == "server-0"
    assert built == [a]  # the first request subscribed the pool: the endpoint known then
    discovery.set("orders", [a, b])
    assert built == [a, b]  # built as discovery listed it, not by the next request
    texts = {(await client.get("http://orders/")).text for _ in range(4)}
    assert texts == {"server-0", "server-1"}
    assert built == [a, b]  # the requests built nothing
    discovery.set("orders", [b, c])
    assert built == [a, b, c]
    texts = {(await client.get("http://orders/")).text for _ in range(4)}
    assert texts == {"server-1", "server-2"}
    assert built == [a, b, c]
    assert client.transport._router.addresses() == sorted([b, c])
    assert servers[0].wait_connections(0) == 0  # the dropped endpoint's transport was closed


def test_the_tls_context_is_loaded_once(mode: str, monkeypatch: pytest.MonkeyPatch, servers: list[HttpServer]) -> None:
    loads: list[object] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> Any:
        context = real(*args, **kwargs)
        loads.append(context)
        return context

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    transport_module._ssl_context.cache_clear()
    every = [s.address for s in servers]
    discovery = StaticDiscovery({"orders": every[:1]})
    try:
        transport: Any
        if mode == "sync":
            transport = ResilientTransport(discovery=discovery)
            assert len(loads) == 1  # at construction, never in a request
            with httpx.Client(transport=transport) as client:
                for _ in range(3):
                    assert client.get("http://orders/").status_code == 200
                    discovery.set("orders", every)
                made = [s.resource for s in transport._router._pools["orders"].states]
        else:
            transport = AsyncResilientTransport(discovery=discovery)
            assert len(loads) == 1

            async def run() -> list[Any]:
                async with httpx.AsyncClient(transport=transport) as client:
                    for _ in range(3):
                        assert (await client.get("http://orders/")).status_code == 200
                        discovery.set("orders", every)
                    return [s.resource for s in transport._router._pools["orders"].states]

            made = asyncio.run(run()) if mode == "async" else _trio_run(run)
        assert len(made) == 3
        assert [t._pool._ssl_context for t in made] == [loads[0]] * 3
        assert transport._inner._pool._ssl_context is loads[0]
        assert len(loads) == 1
    finally:
        transport_module._ssl_context.cache_clear()


def _trio_run(fn: Callable[[], Any]) -> Any:
    import trio

    return trio.run(fn)


# -- issue 9, item 20: cancelled attempts give their pool slot back ----------------------------


def _orphans(pool: Any) -> list[Any]:
    """Connections of an httpcore pool that serve no request and cannot serve one either."""
    owned = {id(r.connection) for r in pool._requests if r.connection is not None}
    return [c for c in pool._connections if id(c) not in owned and not c.is_idle()]


@pytest.mark.parametrize("lib", ASYNC_MODES)
async def test_hedged_calls_leave_no_pool_slot_held_by_no_request(lib: str, server: HttpServer) -> None:
    # A capped pool, hedges fired at once, several calls at a time: the losing attempts are
    # cancelled at every stage of their life, connecting included, which is where httpcore
    # 1.0.9 leaves connections behind (encode/httpcore#1093).
    started: list[Event] = []
    hedge = Hedge(delay=0.0005, budget=None)
    inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=4))
    transport = AsyncResilientTransport(inner, pipeline=Pipeline(hedge, listeners=[started.append]))
    calls, concurrency, limit = 2000, 6, 60.0

    async def run() -> tuple[int, list[Any], int]:
        async with httpx.AsyncClient(transport=transport) as client:
            done = 0
            start = time.monotonic()
            while done < calls and time.monotonic() - start < limit:
                batch = [client.get(server.url, timeout=httpx.Timeout(5.0)) for _ in range(concurrency)]
                if lib == "async":
                    responses = await asyncio.gather(*batch)
                else:
                    responses = await _trio_gather(batch)
                assert [r.status_code for r in responses] == [200] * concurrency
                done += concurrency
            left = _orphans(inner._pool)
            # A new request still gets a connection, at once.
            response = await client.get(server.url, timeout=httpx.Timeout(5.0, pool=2.0))
            return done, left, response.status_code

    try:
        done, left, status = await run() if lib == "async" else await asyncio.to_thread(_trio_run, run)
    finally:
        hedge.close()
    assert left == []
    assert status == 200
    assert done >= 1000  # thousands unless the machine is very slow: the bound is on time
    assert sum(isinstance(e, HedgeStarted) for e in started) > done // 10  # the hedges did run


async def _trio_gather(calls: list[Any]) -> list[Any]:
    import trio

    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await calls[i]

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return results


# -- issue 9, item 16: an attempt cut by an outer Timeout counts against its endpoint ---------


async def test_an_attempt_cut_by_an_outer_timeout_counts_against_its_endpoint(
    make: Callable[..., Harness], servers: list[HttpServer]
) -> None:
    slow, fast = servers[0], servers[1]
    slow.default = Reply(delay=0.5)
    balancer = Outcomes()
    breakers: dict[str, CircuitBreaker] = {}

    def health(endpoint: Endpoint) -> CircuitBreaker:
        breakers[endpoint.address] = CircuitBreaker(failure_threshold=1, break_duration=30)
        return breakers[endpoint.address]

    discovery = StaticDiscovery({"orders": [slow.address]})
    client = make(pipeline=Pipeline(Timeout(0.05)), discovery=discovery, balancer=balancer, endpoint_health=health)
    exc = await _raised(client, "http://orders/")
    assert isinstance(exc, DeadlineExceededError)
    assert balancer.seen == [(slow.address, Outcome.FAILURE)]  # too slow: the endpoint's fault
    assert breakers[slow.address].state is CircuitState.OPEN
    # The breaker of the slow endpoint now sends the calls to the other one.
    discovery.set("orders", [slow.address, fast.address])
    assert (await client.get("http://orders/")).text == "server-1"


@pytest.mark.parametrize("lib", ASYNC_MODES)
async def test_a_cancelled_caller_is_not_the_endpoints_fault(lib: str, servers: list[HttpServer]) -> None:
    # Only a cancellation at the deadline counts: a caller that gives up early does not.
    servers[0].default = Reply(delay=0.3)
    balancer = Outcomes()
    discovery = StaticDiscovery({"orders": [servers[0].address]})
    transport = AsyncResilientTransport(discovery=discovery, balancer=balancer)

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            if lib == "async":
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await client.get("http://orders/")
            else:
                import trio

                with trio.move_on_after(0.05):
                    await client.get("http://orders/")

    await run() if lib == "async" else await asyncio.to_thread(_trio_run, run)
    assert balancer.seen == [(servers[0].address, Outcome.IGNORED)]
