"""grpc.aio semantics through the adapters (issue 9, items 7, 9, 10, 11 and 16), against real servers.

Both aio clients: the interceptors on a plain ``grpc.aio`` channel, and the discovery channel
(:class:`AioResilientChannel` over a :class:`StaticDiscovery`).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import pytest

from interceptors._grpc_common import MethodPolicy
from interceptors.grpc_aio import aio_interceptors
from interceptors.grpc_channel_aio import AioResilientChannel
from resilience.balancing.base import NoEndpointError, RoundRobin
from resilience.balancing.pool import EndpointState
from resilience.clock import FakeClock
from resilience.discovery.static import StaticDiscovery
from resilience.errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    IsolatedCircuitError,
)
from resilience.outcome import Outcome
from resilience.pipeline import Pipeline
from resilience.policies.backoff import Constant
from resilience.policies.bulkhead import Bulkhead
from resilience.policies.circuit_breaker import CircuitBreaker
from resilience.policies.hedge import Hedge
from resilience.policies.retry import Retry
from resilience.policies.timeout import Timeout

from ._grpc_service import BIDI, CLIENT_STREAM, SERVER_STREAM, UNARY, Fault, Running, callables, start

S = grpc.StatusCode
KINDS = [UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI]
STREAMS = [SERVER_STREAM, BIDI]
CLIENTS = ["interceptor", "channel"]
EXPECTED = {UNARY: b"a", SERVER_STREAM: [b"a0", b"a1", b"a2"], CLIENT_STREAM: b"a|b", BIDI: [b"a", b"b"]}


@pytest.fixture
def server() -> Iterator[Running]:
    running = start()
    try:
        yield running
    finally:
        running.stop()


class RecordingRoundRobin(RoundRobin):
    """Round robin that records every outcome the pool reports."""

    def __init__(self) -> None:
        super().__init__()
        self.released: list[tuple[str, Outcome]] = []

    def observe(self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float) -> None:
        self.released.append((state.address, outcome))


def _policy(*policies: Any, clock: FakeClock | None = None, idempotent: bool = True) -> MethodPolicy:
    return MethodPolicy(Pipeline(*policies, clock=clock or FakeClock()), idempotent=idempotent)


@asynccontextmanager
async def _client(how: str, server: Running, policies: Any, **channel_kw: Any) -> AsyncIterator[dict[str, Any]]:
    """The four callables of ``test.Echo`` through the aio interceptors or the aio discovery channel."""
    if how == "interceptor":
        async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policies)) as channel:
            yield callables(channel)
    else:
        discovery = StaticDiscovery({"echo": [server.address]})
        async with AioResilientChannel(
            "echo", discovery, channel_kw.pop("balancer", None), policies, **channel_kw
        ) as ch:
            yield callables(ch)


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def _start(c: dict[str, Any], kind: str, **kw: Any) -> Any:
    if kind in (UNARY, SERVER_STREAM):
        return c[kind](b"a", **kw)
    return c[kind](_requests(b"a", b"b"), **kw)


async def _finish(call: Any, kind: str) -> Any:
    if kind in (UNARY, CLIENT_STREAM):
        return await call
    return [m async for m in call]


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- item 7: deadlines and rejections end as grpc.RpcError ---------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", CLIENTS)
async def test_a_timeout_policy_ends_as_deadline_exceeded(server: Running, how: str, kind: str) -> None:
    clock = FakeClock()
    server.service.release.clear()  # the server holds every attempt
    async with _client(how, server, _policy(Timeout(5.0), clock=clock)) as c:
        call = _start(c, kind, timeout=60)
        outcome = asyncio.ensure_future(_finish(call, kind))
        await _until(lambda: server.service.count(kind) == 1, "the attempt")
        clock.advance(5.0)
        with pytest.raises(grpc.RpcError) as info:
            await outcome
        error: Any = info.value
        assert isinstance(error, grpc.aio.AioRpcError)
        assert isinstance(error, DeadlineExceededError)
        assert error.code() is S.DEADLINE_EXCEEDED
        assert error.details().startswith("timeout:")
        assert await call.code() is S.DEADLINE_EXCEEDED
    server.service.release.set()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", CLIENTS)
async def test_a_pushback_past_the_calls_deadline_ends_as_deadline_exceeded(
    server: Running, how: str, kind: str
) -> None:
    """The call's own ``timeout=`` leaves no room for the retry the server asked for."""
    server.service.script(kind, Fault(S.RESOURCE_EXHAUSTED, pushback="3000"))
    async with _client(how, server, _policy(Retry(3, backoff=Constant(0.1)))) as c:
        with pytest.raises(grpc.RpcError) as info:
            await _finish(_start(c, kind, timeout=1.0), kind)
    error: Any = info.value
    assert isinstance(error, DeadlineExceededError)
    assert error.code() is S.DEADLINE_EXCEEDED
    assert server.service.count(kind) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", CLIENTS)
async def test_an_open_circuit_ends_as_unavailable(server: Running, how: str, kind: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    breaker.isolate()
    async with _client(how, server, _policy(Retry(3, backoff=Constant(0.1)), breaker)) as c:
        call = _start(c, kind, timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            await _finish(call, kind)
        error: Any = info.value
        assert isinstance(error, IsolatedCircuitError)
        assert isinstance(error, CircuitOpenError)
        assert error.code() is S.UNAVAILABLE
        assert error.details().startswith(f"{breaker.name}:")
        assert error.context is not None  # still the library's error, with its context
        assert await call.code() is S.UNAVAILABLE
        assert (await call.details()).startswith(f"{breaker.name}:")
    assert server.service.count(kind) == 0


@pytest.mark.parametrize("kind", [UNARY, BIDI])
@pytest.mark.parametrize("how", CLIENTS)
async def test_a_full_bulkhead_ends_as_resource_exhausted(server: Running, how: str, kind: str) -> None:
    bulkhead = Bulkhead(1)
    server.service.release.clear()
    async with _client(how, server, _policy(bulkhead)) as c:
        held = asyncio.ensure_future(_finish(_start(c, kind, timeout=10), kind))
        await _until(lambda: server.service.count(kind) == 1, "the first call")
        with pytest.raises(grpc.RpcError) as info:
            await _finish(_start(c, kind, timeout=5), kind)
        error: Any = info.value
        assert isinstance(error, BulkheadFullError)
        assert error.code() is S.RESOURCE_EXHAUSTED
        assert error.details().startswith(f"{bulkhead.name}:")
        server.service.release.set()
        assert await held == EXPECTED[kind]


async def test_no_endpoint_ends_as_unavailable() -> None:
    async with AioResilientChannel("echo", StaticDiscovery(), None, _policy(Retry(2))) as channel:
        call = callables(channel)[UNARY](b"x", timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            await call
        assert isinstance(info.value, NoEndpointError)
        assert info.value.code() is S.UNAVAILABLE
        assert await call.code() is S.UNAVAILABLE


# -- item 9: the aio channel's call objects ---------------------------------------------------------


@asynccontextmanager
async def _channel(server: Running, policies: Any = None, **kw: Any) -> AsyncIterator[AioResilientChannel]:
    async with AioResilientChannel("echo", StaticDiscovery({"echo": [server.address]}), None, policies, **kw) as ch:
        yield ch


async def test_channel_calls_are_grpc_aio_calls(server: Running) -> None:
    async with _channel(server, _policy(Retry(2))) as channel:
        c = callables(channel)
        calls = [_start(c, kind, timeout=5) for kind in KINDS]
        expected = (
            grpc.aio.UnaryUnaryCall,
            grpc.aio.UnaryStreamCall,
            grpc.aio.StreamUnaryCall,
            grpc.aio.StreamStreamCall,
        )
        for call, kind, cls in zip(calls, KINDS, expected, strict=True):
            assert isinstance(call, cls)
            assert await _finish(call, kind) == EXPECTED[kind]


@pytest.mark.parametrize("kind", KINDS)
async def test_awaiting_a_channel_call_twice_sends_it_once(server: Running, kind: str) -> None:
    async with _channel(server, _policy(Retry(2))) as channel:
        call = _start(callables(channel), kind, timeout=5)
        if kind in (UNARY, CLIENT_STREAM):
            assert await call == EXPECTED[kind]
            assert await call == EXPECTED[kind]
        else:
            assert [m async for m in call] == EXPECTED[kind]
            assert [m async for m in call] == []  # one stream, read once, as with grpc.aio
        assert await call.code() is S.OK
    assert server.service.count(kind) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_channel_call_status_and_metadata_before_the_first_await(server: Running, kind: str) -> None:
    async with _channel(server, _policy(Retry(2))) as channel:
        call = _start(callables(channel), kind, timeout=5)
        assert await call.initial_metadata() is not None
        if kind in (UNARY, CLIENT_STREAM):
            # As on a plain channel, a stream's status comes once its messages are read.
            assert await call.code() is S.OK
            assert await call.details() == ""
            assert await call.trailing_metadata() is not None
            assert call.done()
        assert await _finish(call, kind) == EXPECTED[kind]
        assert await call.code() is S.OK
    assert server.service.count(kind) == 1


async def test_channel_write_style_calls_are_retried(server: Running) -> None:
    """A request-streaming call made without a request iterator: the caller writes; a retry
    sends the writes again."""
    server.service.script(CLIENT_STREAM, Fault(S.UNAVAILABLE))
    async with _channel(server, _policy(Retry(3, backoff=Constant(0.1)))) as channel:
        call = callables(channel)[CLIENT_STREAM](timeout=5)
        await call.write(b"1")
        await call.write(b"2")
        await call.done_writing()
        await call.done_writing()  # idempotent
        assert await call == b"1|2"
        assert await call.code() is S.OK
    assert [a.requests for a in server.service.of(CLIENT_STREAM)] == [[b"1", b"2"], [b"1", b"2"]]


async def test_channel_bidi_ping_pong(server: Running) -> None:
    async with _channel(server, _policy(Retry(2))) as channel:
        call = callables(channel)[BIDI](timeout=5)
        for ping in (b"p1", b"p2", b"p3"):
            await call.write(ping)
            assert await asyncio.wait_for(call.read(), 5) == ping
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is S.OK
        with pytest.raises(asyncio.InvalidStateError):
            await call.write(b"late")  # half closed


async def test_channel_write_misuse_is_refused(server: Running) -> None:
    async with _channel(server, _policy(Retry(2))) as channel:
        c = callables(channel)
        with_iterator = c[CLIENT_STREAM](_requests(b"a"), timeout=5)
        with pytest.raises(grpc.aio.UsageError):
            await with_iterator.write(b"x")
        assert await with_iterator == b"a"
        finished = c[BIDI](timeout=5)
        await finished.write(b"x")
        assert await finished.read() == b"x"
        finished.cancel()
        with pytest.raises(asyncio.CancelledError):
            await finished.read()
        with pytest.raises(asyncio.InvalidStateError):
            await finished.write(b"y")


async def test_channel_done_callbacks_and_time_remaining(server: Running) -> None:
    clock = FakeClock()
    seen: list[Any] = []
    async with _channel(server, _policy(Retry(2), clock=clock)) as channel:
        c = callables(channel)
        call = c[UNARY](b"a", timeout=5)
        assert call.time_remaining() == 5.0
        clock.advance(1.0)
        assert call.time_remaining() == 4.0
        call.add_done_callback(seen.append)
        assert await call == b"a"
        assert seen == [call]
        call.add_done_callback(seen.append)  # already done: at once
        assert seen == [call, call]
        assert c[UNARY](b"a").time_remaining() is None
        stream = c[BIDI](timeout=5)
        stream.add_done_callback(seen.append)
        await stream.write(b"s")
        assert await stream.read() == b"s"
        assert len(seen) == 2  # the stream is still open
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF
        await _until(lambda: len(seen) == 3, "the stream's done callback")
        assert seen[2] is stream


async def test_channel_wait_for_connection(server: Running) -> None:
    async with _channel(server, _policy(Retry(2))) as channel:
        call = callables(channel)[BIDI](timeout=5)
        await asyncio.wait_for(call.wait_for_connection(), 5)  # before any write or response
        await call.write(b"w")
        assert await call.read() == b"w"
        await call.done_writing()
    dead = _free_port_address()
    async with AioResilientChannel("echo", StaticDiscovery({"echo": [dead]}), None, _policy()) as channel:
        call = callables(channel)[UNARY](b"x", timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            await call.wait_for_connection()
        assert info.value.code() is S.UNAVAILABLE


def _free_port_address() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"  # closed again: nothing listens there


async def test_channel_cancel_before_the_call_sends_nothing(server: Running) -> None:
    async with _channel(server, _policy(Retry(2))) as channel:
        c = callables(channel)
        call = c[UNARY](b"never", timeout=5)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled()
        assert call.done()
        assert await call.code() is S.CANCELLED
        assert not call.cancel()
        assert await c[UNARY](b"sent", timeout=5) == b"sent"
    assert [a.method for a in server.service.attempts] == [UNARY]


async def test_channel_cancel_during_the_call(server: Running) -> None:
    balancer = RecordingRoundRobin()
    discovery = StaticDiscovery({"echo": [server.address]})
    async with AioResilientChannel("echo", discovery, balancer, _policy(Retry(2))) as channel:
        c = callables(channel)
        server.service.release.clear()
        call = c[UNARY](b"a", timeout=10)
        await _until(lambda: server.service.count(UNARY) == 1, "the attempt")
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled()
        assert await call.code() is S.CANCELLED
        server.service.release.set()
        # A stream cancelled after its first message.
        stream = c[BIDI](timeout=10)
        await stream.write(b"x")
        assert await stream.read() == b"x"
        assert stream.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stream.read()
        assert await stream.code() is S.CANCELLED
        await _until(lambda: len(balancer.released) == 2, "the stream's release")
        assert channel.inflight() == {server.address: 0}
    assert balancer.released == [(server.address, Outcome.IGNORED), (server.address, Outcome.IGNORED)]


# -- item 10: a hedged stream is the winner's call ---------------------------------------------------


async def _hedged(server: Running, c: dict[str, Any], kind: str, clock: FakeClock, request: Any) -> Any:
    """Start a hedged call whose primary and hedge both reach the server, then let them answer."""
    server.service.release.clear()
    call = c[kind](request, timeout=5)
    await _until(lambda: server.service.count(kind) == 1, "the primary")
    clock.advance(0.05)
    await _until(lambda: server.service.count(kind) == 2, "the hedge")
    server.service.release.set()
    return call


@pytest.mark.parametrize("winner", ["primary", "hedge"])
@pytest.mark.parametrize("how", CLIENTS)
async def test_a_hedged_stream_is_the_winners_call(server: Running, how: str, winner: str) -> None:
    clock = FakeClock()
    slow, fast = Fault(delay=1.0), Fault()
    server.service.script(SERVER_STREAM, *((fast, slow) if winner == "primary" else (slow, fast)))
    async with _client(how, server, _policy(Hedge(0.05, budget=None), clock=clock)) as c:
        call = await _hedged(server, c, SERVER_STREAM, clock, b"h")
        assert [m async for m in call] == [b"h0", b"h1", b"h2"]
        assert await call.code() is S.OK  # not the loser's CANCELLED
        assert await call.details() == ""
        assert not call.cancelled()
    attempts = server.service.of(SERVER_STREAM)
    assert attempts[1].metadata.get("x-grpc-previous-rpc-attempts") == "1"


@pytest.mark.parametrize("how", CLIENTS)
async def test_cancel_reaches_the_winning_hedged_stream(server: Running, how: str) -> None:
    clock = FakeClock()
    server.service.script(BIDI, Fault(), Fault(delay=1.0))  # the primary wins
    more = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield b"first"
        await more.wait()  # keeps the stream open

    async with _client(how, server, _policy(Hedge(0.05, budget=None), clock=clock)) as c:
        call = await _hedged(server, c, BIDI, clock, requests())
        messages = call.__aiter__()
        assert await asyncio.wait_for(messages.__anext__(), 5) == b"first"
        assert not call.done()
        assert call.cancel()  # reaches the live stream, not the cancelled hedge
        with pytest.raises(asyncio.CancelledError):
            await messages.__anext__()
        assert call.cancelled()
        assert await call.code() is S.CANCELLED
        more.set()


# -- item 11: streams judged at their end -------------------------------------------------------------


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("how", CLIENTS)
async def test_a_stream_failing_after_its_first_message_opens_the_breaker(server: Running, how: str, kind: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    server.service.script(kind, Fault(S.UNAVAILABLE, after=1))
    async with _client(how, server, _policy(Retry(3, backoff=Constant(0.1)), breaker)) as c:
        received: list[bytes] = []
        with pytest.raises(grpc.RpcError) as info:  # noqa: PT012 - the error comes from the iteration
            async for message in _start(c, kind, timeout=5):
                received.append(message)
        assert info.value.code() is S.UNAVAILABLE
        assert received == [EXPECTED[kind][0]]  # type: ignore[index]
        assert server.service.count(kind) == 1  # not retried
        with pytest.raises(CircuitOpenError):
            await _finish(_start(c, kind, timeout=5), kind)
    assert server.service.count(kind) == 1


@pytest.mark.parametrize("how", CLIENTS)
async def test_a_stream_holds_its_bulkhead_slot_until_it_ends(server: Running, how: str) -> None:
    bulkhead = Bulkhead(1)
    async with _client(how, server, _policy(bulkhead)) as c:
        more = asyncio.Event()

        async def requests() -> AsyncIterator[bytes]:
            yield b"x"
            await more.wait()

        call = c[BIDI](requests(), timeout=10)
        messages = call.__aiter__()
        assert await messages.__anext__() == b"x"
        assert bulkhead.active == 1  # the stream is still open
        with pytest.raises(BulkheadFullError):
            await c[UNARY](b"u", timeout=5)
        more.set()
        assert [m async for m in messages] == []
        await _until(lambda: bulkhead.active == 0, "the slot's release")
        assert await c[UNARY](b"u", timeout=5) == b"u"
        # A stream the consumer cancels gives its slot back too.
        stream = c[SERVER_STREAM](b"s", timeout=10)
        assert await stream.read() == b"s0"
        stream.cancel()
        await _until(lambda: bulkhead.active == 0, "the cancelled stream's release")


@pytest.mark.parametrize("how", CLIENTS)
async def test_a_dropped_stream_gives_its_slot_back(server: Running, how: str) -> None:
    """A consumer that stops reading and drops the call. The channel's call is cancelled when
    collected; grpc.aio keeps an intercepted call alive until it ends, here at its deadline.
    Either way the stream's end gives the slot back."""
    bulkhead = Bulkhead(1)
    async with _client(how, server, _policy(bulkhead)) as c:
        call = c[SERVER_STREAM](b"s", timeout=30 if how == "channel" else 1)
        assert await call.read() == b"s0"
        assert bulkhead.active == 1  # the rest is unread: the call has not ended
        del call
        gc.collect()
        await _until(lambda: bulkhead.active == 0, "the dropped stream's release")


async def test_the_channel_judges_a_stream_endpoint_at_the_end(server: Running) -> None:
    balancer = RecordingRoundRobin()
    discovery = StaticDiscovery({"echo": [server.address]})
    async with AioResilientChannel("echo", discovery, balancer, _policy(Retry(2))) as channel:
        c = callables(channel)
        stream = c[BIDI](timeout=10)
        await stream.write(b"1")
        assert await stream.read() == b"1"
        assert balancer.released == []  # open: not judged yet
        assert channel.inflight() == {server.address: 1}
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF
        await _until(lambda: len(balancer.released) == 1, "the release")
        assert balancer.released == [(server.address, Outcome.SUCCESS)]
        server.service.script(SERVER_STREAM, Fault(S.UNAVAILABLE, after=1))
        failing = c[SERVER_STREAM](b"f", timeout=10)
        assert await failing.read() == b"f0"
        with pytest.raises(grpc.RpcError):
            await failing.read()
        await _until(lambda: len(balancer.released) == 2, "the failed stream's release")
        assert balancer.released[1] == (server.address, Outcome.FAILURE)
        assert channel.inflight() == {server.address: 0}


# -- item 16: an attempt cut by an outer Timeout fails its endpoint ---------------------------------------


async def test_an_attempt_cut_by_a_timeout_fails_its_endpoint(server: Running) -> None:
    clock = FakeClock()
    balancer = RecordingRoundRobin()
    discovery = StaticDiscovery({"echo": [server.address]})
    policies = _policy(Timeout(5.0), clock=clock)
    health = lambda endpoint: CircuitBreaker(failure_threshold=1, clock=clock)  # noqa: E731
    async with AioResilientChannel("echo", discovery, balancer, policies, endpoint_health=health) as channel:
        c = callables(channel)
        server.service.release.clear()
        call = asyncio.ensure_future(c[UNARY](b"slow", timeout=60))
        await _until(lambda: server.service.count(UNARY) == 1, "the attempt")
        clock.advance(5.0)
        with pytest.raises(DeadlineExceededError):
            await call
        assert balancer.released == [(server.address, Outcome.FAILURE)]
        server.service.release.set()
        # The endpoint's own breaker counted it: the endpoint is out.
        with pytest.raises(grpc.RpcError) as info:
            await c[UNARY](b"next", timeout=5)
        assert isinstance(info.value, NoEndpointError)
        assert info.value.code() is S.UNAVAILABLE
    assert server.service.count(UNARY) == 1
