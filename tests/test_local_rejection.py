"""A local rejection is not server pushback (issue 9, item 15).

A policy of the call itself that refuses an attempt (an open breaker, a full bulkhead, a
rate limit, a throttle, a concurrency limit, no healthy endpoint) ends the call at once:
``Retry`` does not sleep out its ``retry_after``, whatever the classifier says — unless
``retry_rejections`` asks for it. With discovery, the endpoint pool skips an endpoint whose
health rejects, so a retry goes to a live one at once. Waits are counted on a fake clock.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest

from interceptors._grpc_common import GrpcClassifier, MethodPolicy
from interceptors._grpc_errors import rpc_error
from interceptors.grpc_channel import AioResilientChannel, ResilientChannel
from interceptors.httpx import AsyncResilientTransport, ResilientTransport
from resilience import (
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Classifier,
    ConcurrencyLimitError,
    Constant,
    DeadlineExceededError,
    FakeClock,
    NoEndpointError,
    Pipeline,
    RateLimitedError,
    RejectedError,
    Retry,
    RetryOptions,
    StaticDiscovery,
    ThrottledError,
    TokenBucket,
)

from ._grpc_service import UNARY, Running, callables, start
from ._http_server import HttpServer
from .helpers import MODES, Script, run, run_async, run_ctx

REJECTIONS: list[Callable[[], RejectedError]] = [
    lambda: CircuitOpenError("circuit_breaker: the circuit is open", retry_after=30.0),
    lambda: BulkheadFullError("bulkhead: full"),
    lambda: RateLimitedError("rate_limit: exceeded", retry_after=5.0),
    lambda: ThrottledError("throttle: rejected"),
    lambda: ConcurrencyLimitError("concurrency_limit: reached"),
    lambda: NoEndpointError("no healthy endpoint", retry_after=10.0),
]
IDS = ["circuit", "bulkhead", "rate", "throttle", "concurrency", "no_endpoint"]


class RetriesEverything(Classifier):
    """A user's classifier that calls every error retryable, rejections included."""

    __slots__ = ()

    def retryable_error(self, exc: BaseException) -> bool:
        return True


# -- the core: Retry and a rejection ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make", REJECTIONS, ids=IDS)
def test_a_local_rejection_ends_the_call_at_once_whatever_the_classifier(
    mode: str, make: Callable[[], RejectedError], clock: FakeClock
) -> None:
    for classifier in (Classifier(), RetriesEverything()):
        rejection = make()
        script = Script(rejection, "never")
        pipeline = Pipeline(Retry(5, backoff=Constant(0.5), budget=None), clock=clock, classifier=classifier)
        with pytest.raises(type(rejection)) as info:
            run(mode, pipeline, script)
        assert info.value is rejection
        assert script.calls == 1
        assert clock.sleeps == []


@pytest.mark.parametrize("mode", MODES)
def test_a_rejection_dressed_as_a_grpc_unavailable_is_not_slept_out(mode: str, clock: FakeClock) -> None:
    # What the gRPC adapters raise for an open circuit is also a grpc.RpcError UNAVAILABLE,
    # which GrpcClassifier calls retryable: its retry_after must not become a pushback.
    mapped = rpc_error(CircuitOpenError("circuit_breaker: the circuit is open", retry_after=30.0))
    assert isinstance(mapped, grpc.RpcError) and isinstance(mapped, CircuitOpenError)
    script = Script(mapped, "never")
    pipeline = Pipeline(Retry(3, budget=None), clock=clock, classifier=GrpcClassifier())
    with pytest.raises(CircuitOpenError):
        run_ctx(mode, pipeline, lambda c: script(), pipeline.context(idempotent=True))
    assert script.calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("mode", MODES)
def test_an_open_breaker_inside_retry_is_not_slept_out(mode: str, clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, break_duration=30, clock=clock)
    pipeline = Pipeline(
        Retry(5, backoff=Constant(0.1), budget=None), breaker, clock=clock, classifier=RetriesEverything()
    )
    script = Script(ConnectionError("down"))
    errors = []
    for _ in range(100):
        with pytest.raises((ConnectionError, CircuitOpenError)) as info:
            run(mode, pipeline, script)
        errors.append(type(info.value))
    # The first call's failure opens the breaker and is retried once, after its backoff;
    # that retry and every later call are rejected at once.
    assert script.calls == 1
    assert errors == [CircuitOpenError] * 100
    assert clock.sleeps == [0.1]
    assert clock.monotonic() == pytest.approx(0.1)


# -- opting in ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_retry_rejections_retries_the_chosen_ones_after_their_retry_after(mode: str, clock: FakeClock) -> None:
    pipeline = Pipeline(Retry(3, backoff=Constant(0.25), budget=None, retry_rejections=RateLimitedError), clock=clock)
    script = Script(RateLimitedError("rate_limit", retry_after=2.0), BulkheadFullError("bulkhead: full"), "ok")
    with pytest.raises(BulkheadFullError):  # not chosen: ends the call
        run(mode, pipeline, script)
    assert script.calls == 2
    assert clock.sleeps == [2.0]  # the rate limit's retry_after, not the backoff

    everything = Pipeline(Retry(3, backoff=Constant(0.25), budget=None, retry_rejections=True), clock=clock)
    script = Script(ThrottledError("throttle"), CircuitOpenError("open", retry_after=1.5), "ok")
    clock.sleeps.clear()
    assert run(mode, everything, script) == "ok"
    assert clock.sleeps == [0.25, 1.5]  # no retry_after: the backoff

    by_predicate = Pipeline(
        Retry(3, backoff=Constant(0), budget=None, retry_rejections=lambda e: e.retry_after is None), clock=clock
    )
    script = Script(ThrottledError("throttle"), CircuitOpenError("open", retry_after=1.5), "ok")
    with pytest.raises(CircuitOpenError):
        run(mode, by_predicate, script)
    assert script.calls == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_retried_rejection_is_retried_for_a_non_idempotent_call_too(mode: str, clock: FakeClock) -> None:
    # A rejection sent nothing: retrying it is as safe as retrying a refused connection.
    pipeline = Pipeline(Retry(2, budget=None, retry_rejections=True), clock=clock)
    script = Script(BulkheadFullError("full"), "ok")
    assert run_ctx(mode, pipeline, lambda c: script(), pipeline.context(idempotent=False)) == "ok"
    assert script.calls == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_retried_rejection_that_cannot_wait_ends_as_itself(mode: str, clock: FakeClock) -> None:
    # Longer than max_pushback: given up on, never shortened.
    pipeline = Pipeline(Retry(3, budget=None, max_pushback=10, retry_rejections=True), clock=clock)
    script = Script(CircuitOpenError("open", retry_after=30.0), "ok")
    with pytest.raises(CircuitOpenError):
        run(mode, pipeline, script)
    assert (script.calls, clock.sleeps) == (1, [])
    # Past the deadline: the rejection, not a DeadlineExceededError.
    script = Script(RateLimitedError("rate", retry_after=3.0), "ok")
    ctx = pipeline.context(timeout=2.0)
    with pytest.raises(RateLimitedError) as info:
        run_ctx(mode, pipeline, lambda c: script(), ctx)
    assert not isinstance(info.value, DeadlineExceededError)
    assert (script.calls, clock.sleeps) == (1, [])


@pytest.mark.parametrize("mode", MODES)
def test_a_real_rate_limit_retried_when_asked(mode: str, clock: FakeClock) -> None:
    bucket = TokenBucket(1, 1)  # one call per second, no burst beyond one
    pipeline = Pipeline(Retry(3, budget=None, retry_rejections=RateLimitedError), bucket, clock=clock)
    script = Script("ok")
    assert run(mode, pipeline, script) == "ok"
    assert run(mode, pipeline, script) == "ok"  # rejected, waited out its retry_after, admitted
    assert script.calls == 2
    assert clock.sleeps == [pytest.approx(1.0)]
    without = Pipeline(Retry(3, budget=None), TokenBucket(1, 1), clock=clock)
    assert run(mode, without, script) == "ok"
    with pytest.raises(RateLimitedError):
        run(mode, without, script)


def test_retry_rejections_is_checked_when_built() -> None:
    for bad, words in [
        (ConnectionError, "ConnectionError is not one"),
        ((CircuitOpenError, KeyError), "KeyError is not one"),
        ("yes", "retry_rejections must be True, False, RejectedError subclasses"),
        (1, "retry_rejections must be True, False"),
        (None, "got None"),
    ]:
        with pytest.raises(TypeError, match=words):
            Retry(retry_rejections=bad)
    with pytest.raises(TypeError, match="is not one"):
        RetryOptions().replace(retry_rejections=TimeoutError)
    assert Retry().retry_rejections is False
    options = RetryOptions(retry_rejections=(CircuitOpenError, NoEndpointError))
    assert options.rejection_predicate is not None
    assert options.rejection_predicate(NoEndpointError("x"))
    assert not options.rejection_predicate(RateLimitedError("x"))
    assert RetryOptions(retry_rejections=()).rejection_predicate is None


# -- discovery: a pick skips a rejecting endpoint ---------------------------------------------


@pytest.fixture
def dead_ports() -> Iterator[list[str]]:
    """Two loopback addresses that refuse connections: bound, never listening."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        yield [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def grpc_servers() -> Iterator[list[Running]]:
    started = [start(), start()]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def _breakers(clock: FakeClock) -> Callable[[Any], CircuitBreaker]:
    return lambda endpoint: CircuitBreaker(failure_threshold=1, break_duration=30, clock=clock)


def _grpc_policy(clock: FakeClock) -> MethodPolicy:
    return MethodPolicy(Pipeline(Retry(4, backoff=Constant(0.2), budget=None), clock=clock), idempotent=True)


def _fleet_check(clock: FakeClock, live: list[int], dead_breakers: list[Any]) -> None:
    assert sum(live) == 20
    assert all(n > 0 for n in live)
    # One backoff per dead endpoint (its one refused attempt), never a breaker's 30 s.
    assert clock.sleeps == [0.2] * len(dead_breakers)
    assert all(b.state.name == "OPEN" for b in dead_breakers)


def test_grpc_channel_retries_go_to_live_endpoints_without_waiting(
    grpc_servers: list[Running], dead_ports: list[str]
) -> None:
    clock = FakeClock()
    addresses = [dead_ports[0], grpc_servers[0].address, dead_ports[1], grpc_servers[1].address]
    discovery = StaticDiscovery({"echo": addresses})
    with ResilientChannel("echo", discovery, None, _grpc_policy(clock), endpoint_health=_breakers(clock)) as channel:
        unary = callables(channel)[UNARY]
        assert [unary(b"x", timeout=5) for _ in range(20)] == [b"x"] * 20
        health = {s.address: s.health[0] for s in channel.pool.states}
    _fleet_check(clock, [s.service.count(UNARY) for s in grpc_servers], [health[a] for a in dead_ports])


def test_grpc_channel_all_dead_fails_fast(dead_ports: list[str]) -> None:
    clock = FakeClock()
    discovery = StaticDiscovery({"echo": dead_ports})
    with ResilientChannel("echo", discovery, None, _grpc_policy(clock), endpoint_health=_breakers(clock)) as channel:
        unary = callables(channel)[UNARY]
        for _ in range(100):
            with pytest.raises(NoEndpointError, match="unhealthy"):
                unary(b"x", timeout=5)
    # The first call tries each endpoint once (a backoff between); then every breaker is
    # open and each call ends at once, its retry_after (30 s) never slept.
    assert clock.sleeps == [0.2, 0.2]


async def test_aio_grpc_channel_retries_go_to_live_endpoints_without_waiting(
    grpc_servers: list[Running], dead_ports: list[str]
) -> None:
    clock = FakeClock()
    addresses = [dead_ports[0], grpc_servers[0].address, dead_ports[1], grpc_servers[1].address]
    discovery = StaticDiscovery({"echo": addresses})
    channel = AioResilientChannel("echo", discovery, None, _grpc_policy(clock), endpoint_health=_breakers(clock))
    async with channel:
        unary = callables(channel)[UNARY]
        assert [await unary(b"x", timeout=5) for _ in range(20)] == [b"x"] * 20
        health: dict[str, Any] = {s.address: s.health[0] for s in channel.pool.states}
        for a in dead_ports:
            health[a].reset()
        discovery.set("echo", dead_ports)
        clock.sleeps.clear()
        for _ in range(20):
            with pytest.raises(NoEndpointError):
                await unary(b"x", timeout=5)
        assert clock.sleeps == [0.2, 0.2]
    live = [s.service.count(UNARY) for s in grpc_servers]
    assert sum(live) == 20 and all(n > 0 for n in live)


@pytest.fixture
def http_servers() -> Iterator[list[HttpServer]]:
    started = [HttpServer().start() for _ in range(2)]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.mark.parametrize("mode", MODES)
def test_httpx_retries_go_to_live_endpoints_without_waiting(
    mode: str, http_servers: list[HttpServer], dead_ports: list[str]
) -> None:
    clock = FakeClock()
    addresses = [dead_ports[0], http_servers[0].address, dead_ports[1], http_servers[1].address]
    discovery = StaticDiscovery({"orders": addresses})
    pipeline = Pipeline(Retry(4, backoff=Constant(0.2), budget=None), clock=clock)
    kwargs: dict[str, Any] = {"pipeline": pipeline, "discovery": discovery, "endpoint_health": _breakers(clock)}
    statuses: list[int] = []
    rejected: list[NoEndpointError] = []

    def states(transport: Any) -> dict[str, Any]:
        pool = transport._router.pool("orders")
        return {s.address: s.health[0] for s in pool.states}

    if mode == "sync":
        transport = ResilientTransport(**kwargs)
        with httpx.Client(transport=transport) as client:
            statuses += [client.get("http://orders/").status_code for _ in range(20)]
            health = states(transport)
            discovery.set("orders", dead_ports)
            for _ in range(5):
                with pytest.raises(NoEndpointError) as info:
                    client.get("http://orders/")
                rejected.append(info.value)
    else:

        async def scenario() -> dict[str, Any]:
            transport = AsyncResilientTransport(**kwargs)
            async with httpx.AsyncClient(transport=transport) as client:
                statuses.extend([(await client.get("http://orders/")).status_code for _ in range(20)])
                health = states(transport)
                discovery.set("orders", dead_ports)
                for _ in range(5):
                    with pytest.raises(NoEndpointError) as info:
                        await client.get("http://orders/")
                    rejected.append(info.value)
            return health

        health = run_async(mode, scenario)
    assert statuses == [200] * 20
    _fleet_check(clock, [len(s.requests) for s in http_servers], [health[a] for a in dead_ports])
    assert len(rejected) == 5 and all(e.retry_after is not None and e.retry_after > 20 for e in rejected)
