"""The discovery-aware channels: balancing, retries and hedges elsewhere, live endpoint changes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest

from interceptors._grpc_common import MethodPolicy
from interceptors.grpc_channel import AioResilientChannel, ResilientChannel, aio_resilient_channel, resilient_channel
from resilience.balancing.base import Balancer, NoEndpointError, RoundRobin, untried
from resilience.balancing.pool import EndpointState
from resilience.clock import FakeClock
from resilience.context import CallContext
from resilience.discovery.static import StaticDiscovery
from resilience.outcome import Outcome
from resilience.pipeline import Pipeline
from resilience.policies.backoff import Constant
from resilience.policies.hedge import Hedge
from resilience.policies.retry import Retry

from ._grpc_service import BIDI, CLIENT_STREAM, SERVER_STREAM, UNARY, Fault, Running, callables, start

S = grpc.StatusCode


class FirstUntried(Balancer):
    """Always the first endpoint not tried yet: a deterministic primary and hedge."""

    def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
        return untried(candidates, ctx)[0]


class RecordingRoundRobin(RoundRobin):
    def __init__(self) -> None:
        super().__init__()
        self.released: list[tuple[str, Outcome]] = []

    def observe(self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float) -> None:
        self.released.append((state.address, outcome))


@pytest.fixture
def servers() -> Iterator[tuple[Running, Running]]:
    a, b = start(), start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _retry(attempts: int = 3) -> MethodPolicy:
    return MethodPolicy(Pipeline(Retry(attempts, backoff=Constant(0.2)), clock=FakeClock()), idempotent=True)


def test_calls_are_balanced_and_every_kind_works(servers: tuple[Running, Running]) -> None:
    a, b = servers
    discovery = StaticDiscovery({"echo": [a.address, b.address]})
    balancer = RecordingRoundRobin()
    with resilient_channel("echo", discovery, balancer, _retry()) as channel:
        c = callables(channel)
        assert [c[UNARY](b"x", timeout=5) for _ in range(4)] == [b"x"] * 4
        assert list(c[SERVER_STREAM](b"s", timeout=5)) == [b"s0", b"s1", b"s2"]
        assert c[CLIENT_STREAM](iter([b"1", b"2"]), timeout=5) == b"1|2"
        assert list(c[BIDI](iter([b"q", b"r"]), timeout=5)) == [b"q", b"r"]
        response, call = c[UNARY].with_call(b"w", timeout=5)
        assert response == b"w"
        assert call.code() is S.OK
        assert c[UNARY].future(b"f", timeout=5).result() == b"f"
        stub_style = channel.unary_unary(UNARY, _registered_method=True)
        assert stub_style(b"g", timeout=5) == b"g"
        assert set(channel.inflight().values()) == {0}
    assert sorted([a.service.count(UNARY), b.service.count(UNARY)]) == [3, 4]  # 7 calls in turn
    assert {outcome for _, outcome in balancer.released} == {Outcome.SUCCESS}


def test_a_retry_goes_to_another_endpoint(servers: tuple[Running, Running]) -> None:
    a, b = servers
    discovery = StaticDiscovery({"echo": [a.address, b.address]})
    balancer = RecordingRoundRobin()
    with ResilientChannel("echo", discovery, balancer, _retry()) as channel:
        a.service.script(UNARY, Fault(S.UNAVAILABLE))
        b.service.script(UNARY, Fault(S.UNAVAILABLE))
        assert callables(channel)[UNARY](b"x", timeout=5) == b"x"
    attempts = sorted(
        x.metadata.get("x-grpc-previous-rpc-attempts", "0") for x in a.service.of(UNARY) + b.service.of(UNARY)
    )
    assert attempts == ["0", "1", "2"]
    first, second = balancer.released[0][0], balancer.released[1][0]
    assert first != second  # the retry went elsewhere
    assert [outcome for _, outcome in balancer.released] == [Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS]


def test_a_hedge_goes_to_another_endpoint(servers: tuple[Running, Running]) -> None:
    a, b = servers
    discovery = StaticDiscovery({"echo": [a.address, b.address]})
    a.service.script(UNARY, Fault(delay=1.0))
    with Hedge(0.05, budget=None) as hedge:
        policy = MethodPolicy(Pipeline(hedge), idempotent=True)
        with ResilientChannel("echo", discovery, FirstUntried(), policy) as channel:
            started = time.monotonic()
            assert callables(channel)[UNARY](b"x", timeout=5) == b"x"
            assert time.monotonic() - started < 0.8
    assert a.service.count(UNARY) == 1  # the slow primary
    assert b.service.count(UNARY) == 1  # the hedge, elsewhere
    assert b.service.of(UNARY)[0].metadata.get("x-grpc-previous-rpc-attempts") == "1"


def test_live_endpoint_change_keeps_calls_in_flight(servers: tuple[Running, Running]) -> None:
    a, b = servers
    discovery = StaticDiscovery({"echo": [a.address]})
    with ResilientChannel("echo", discovery, RoundRobin(), _retry(), drain_timeout=10) as channel:
        unary = callables(channel)[UNARY]
        a.service.release.clear()
        results: list[bytes] = []
        workers = [threading.Thread(target=lambda: results.append(unary(b"old", timeout=10))) for _ in range(3)]
        for worker in workers:
            worker.start()
        for _ in range(500):
            if channel.inflight().get(a.address) == 3:
                break
            time.sleep(0.01)
        assert channel.inflight() == {a.address: 3}
        discovery.set("echo", [b.address])
        assert [e.address for e in channel.endpoints] == [b.address]
        assert [unary(b"new", timeout=5) for _ in range(3)] == [b"new"] * 3
        assert b.service.count(UNARY) == 3
        a.service.release.set()
        for worker in workers:
            worker.join(5)
        assert results == [b"old"] * 3  # nothing dropped by the change
        assert a.address not in channel.inflight()
    assert a.service.count(UNARY) == 3


def test_drain_timeout_closes_a_removed_endpoint_with_stuck_calls(servers: tuple[Running, Running]) -> None:
    a, b = servers
    discovery = StaticDiscovery({"echo": [a.address]})
    with ResilientChannel("echo", discovery, RoundRobin(), None, drain_timeout=0.1) as channel:
        unary = callables(channel)[UNARY]
        a.service.release.clear()
        errors: list[BaseException] = []

        def call() -> None:
            try:
                unary(b"stuck", timeout=10)
            except grpc.RpcError as exc:
                errors.append(exc)

        worker = threading.Thread(target=call)
        worker.start()
        for _ in range(500):
            if channel.inflight().get(a.address):
                break
            time.sleep(0.01)
        discovery.set("echo", [b.address])
        worker.join(5)
        assert not worker.is_alive()
        assert len(errors) == 1  # closed after the grace period
    a.service.release.set()


def test_no_endpoint_is_a_rejection() -> None:
    with ResilientChannel("echo", StaticDiscovery(), None, _retry()) as channel, pytest.raises(NoEndpointError):
        callables(channel)[UNARY](b"x")


# -- aio -------------------------------------------------------------------------------------------


async def test_aio_balancing_retry_elsewhere_and_every_kind(servers: tuple[Running, Running]) -> None:
    a, b = servers
    discovery = StaticDiscovery({"echo": [a.address, b.address]})
    balancer = RecordingRoundRobin()
    async with aio_resilient_channel("echo", discovery, balancer, _retry()) as channel:
        c = callables(channel)
        assert [await c[UNARY](b"x", timeout=5) for _ in range(4)] == [b"x"] * 4
        assert (a.service.count(UNARY), b.service.count(UNARY)) == (2, 2)
        a.service.script(UNARY, Fault(S.UNAVAILABLE))
        b.service.script(UNARY, Fault(S.UNAVAILABLE))
        balancer.released.clear()
        call = c[UNARY](b"r", timeout=5)
        assert await call == b"r"
        assert await call.code() is S.OK
        assert balancer.released[0][0] != balancer.released[1][0]
        assert [m async for m in c[SERVER_STREAM](b"s", timeout=5)] == [b"s0", b"s1", b"s2"]
        stream = c[SERVER_STREAM](b"t", timeout=5)
        assert [await stream.read() for _ in range(4)] == [b"t0", b"t1", b"t2", grpc.aio.EOF]
        assert await c[CLIENT_STREAM](iter([b"1", b"2"]), timeout=5) == b"1|2"
        assert [m async for m in c[BIDI](iter([b"q"]), timeout=5)] == [b"q"]
        assert set(channel.inflight().values()) == {0}


async def test_aio_live_endpoint_change_and_hedge(servers: tuple[Running, Running]) -> None:
    import asyncio

    a, b = servers
    discovery = StaticDiscovery({"echo": [a.address]})
    policy: Any = MethodPolicy(Pipeline(Hedge(0.05, budget=None)), idempotent=True)
    async with AioResilientChannel("echo", discovery, FirstUntried(), policy) as channel:
        unary = callables(channel)[UNARY]
        a.service.release.clear()
        old = [asyncio.ensure_future(unary(b"old", timeout=10)) for _ in range(2)]
        for _ in range(500):
            if a.service.count(UNARY) >= 2:
                break
            await asyncio.sleep(0.01)
        discovery.set("echo", [b.address])
        assert await unary(b"new", timeout=5) == b"new"
        a.service.release.set()
        assert await asyncio.gather(*old) == [b"old", b"old"]
        assert a.address not in channel.inflight()
        # Two endpoints, a slow one: the hedge answers from the other.
        discovery.set("echo", [a.address, b.address])
        a.service.script(UNARY, Fault(delay=1.0))
        started = time.monotonic()
        assert await unary(b"h", timeout=5) == b"h"
        assert time.monotonic() - started < 0.8
        assert b.service.of(UNARY)[-1].metadata.get("x-grpc-previous-rpc-attempts") == "1"


def _free_port_address() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"  # closed again: nothing listens there


def test_a_call_that_reached_no_server_is_retried_for_any_method(servers: tuple[Running, Running]) -> None:
    """Issue 9, item 12: a refused connection is retried even for a method not marked idempotent."""
    a, _ = servers
    discovery = StaticDiscovery({"echo": [_free_port_address(), a.address]})
    not_idempotent = MethodPolicy(Pipeline(Retry(3, backoff=Constant(0.2)), clock=FakeClock()), idempotent=False)
    with ResilientChannel("echo", discovery, FirstUntried(), not_idempotent) as channel:
        assert callables(channel)[UNARY](b"x", timeout=5) == b"x"
        assert a.service.count(UNARY) == 1
        # Once a server answered, a method not marked idempotent is not retried.
        a.service.script(UNARY, Fault(S.UNAVAILABLE))
        discovery.set("echo", [a.address])
        with pytest.raises(grpc.RpcError) as info:
            callables(channel)[UNARY](b"y", timeout=5)
        assert info.value.code() is S.UNAVAILABLE
        assert a.service.count(UNARY) == 2  # one attempt only
