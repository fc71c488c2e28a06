"""Sync gRPC adapters keep grpc's semantics (issue 9, items 7, 8, 11): errors existing code
catches, call objects that behave, streams judged at their end.

Every test runs against real loopback servers, through the interceptor
(``grpc.intercept_channel``) and the discovery channel (``ResilientChannel``) alike.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from interceptors._grpc_common import MethodPolicy
from interceptors.grpc import ResilienceInterceptor
from interceptors.grpc_channel import ResilientChannel
from resilience.balancing.base import NoEndpointError, RoundRobin
from resilience.balancing.pool import EndpointState
from resilience.clock import FakeClock
from resilience.discovery.static import StaticDiscovery
from resilience.errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    RateLimitedError,
)
from resilience.outcome import Outcome
from resilience.pipeline import Pipeline
from resilience.policies.backoff import Constant
from resilience.policies.bulkhead import Bulkhead
from resilience.policies.circuit_breaker import CircuitBreaker, CircuitState
from resilience.policies.fallback import Fallback
from resilience.policies.retry import Retry
from resilience.policies.timeout import Timeout
from resilience.policies.token_bucket import TokenBucket

from ._grpc_service import BIDI, CLIENT_STREAM, SERVER_STREAM, UNARY, EchoService, Fault, Running, callables, start

S = grpc.StatusCode
VIAS = ["interceptor", "channel"]
KINDS = [UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI]
STREAMS = [SERVER_STREAM, BIDI]
UNARY_RESPONSE = [UNARY, CLIENT_STREAM]


@pytest.fixture
def server() -> Iterator[Running]:
    running = start()
    try:
        yield running
    finally:
        running.stop()


class RecordingRoundRobin(RoundRobin):
    def __init__(self) -> None:
        super().__init__()
        self.released: list[Outcome] = []

    def observe(self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float) -> None:
        self.released.append(outcome)


@contextlib.contextmanager
def open_channel(via: str, server: Running | None, policies: Any, **kwargs: Any) -> Iterator[Any]:
    """A channel to ``server`` through the interceptor or the discovery channel."""
    if via == "interceptor":
        assert server is not None
        channel: Any = grpc.intercept_channel(grpc.insecure_channel(server.address), ResilienceInterceptor(policies))
    else:
        addresses = [server.address] if server is not None else []
        balancer = kwargs.pop("balancer", None)
        channel = ResilientChannel("echo", StaticDiscovery({"echo": addresses}), balancer, policies, **kwargs)
    try:
        yield channel
    finally:
        channel.close()


def _policy(*policies: Any, clock: Any = None) -> MethodPolicy:
    pipeline = Pipeline(*policies, clock=clock) if clock is not None else Pipeline(*policies)
    return MethodPolicy(pipeline, idempotent=True)


def _request(kind: str, payload: bytes = b"a") -> Any:
    return payload if kind in (UNARY, SERVER_STREAM) else iter([payload, b"b"])


def _consume(c: dict[str, Any], kind: str, **kw: Any) -> Any:
    """Make the call and read it whole; a stream's error is raised from its iteration."""
    result = c[kind](_request(kind), **kw)
    return list(result) if kind in STREAMS else result


def _raised(c: dict[str, Any], kind: str, **kw: Any) -> Any:
    """The error a call ends with (for a stream: its call object must report it too)."""
    if kind in STREAMS:
        call = c[kind](_request(kind), **kw)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert call.code() is info.value.code()
        assert call.details() == info.value.details()
        return info.value
    with pytest.raises(grpc.RpcError) as info:
        c[kind](_request(kind), **kw)
    return info.value


def _eventually(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _helper_threads_done() -> None:
    _eventually(
        lambda: not any(t.name == "resilience-grpc-call" and t.is_alive() for t in threading.enumerate()),
        "the call's helper thread to end",
    )


# -- item 7: errors existing handlers catch --------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("via", VIAS)
def test_a_timeout_policy_ends_as_deadline_exceeded(server: Running, via: str, kind: str) -> None:
    timeout = Timeout(0.2)
    with open_channel(via, server, _policy(timeout)) as channel:
        server.service.script(kind, Fault(delay=0.6))
        error = _raised(callables(channel), kind, timeout=5)
    assert error.code() is S.DEADLINE_EXCEEDED
    if isinstance(error, DeadlineExceededError):  # the policy's verdict: its name in the details
        assert error.details().startswith(timeout.name)
        assert error.context is not None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("via", VIAS)
def test_the_calls_own_deadline_ends_as_deadline_exceeded(server: Running, via: str, kind: str) -> None:
    retry = Retry(3, backoff=Constant(0.01))
    with open_channel(via, server, _policy(retry, clock=FakeClock())) as channel:
        c = callables(channel)
        # The server asks for a retry in 10 s; the call has 2 s: the retry policy's deadline verdict.
        server.service.script(kind, Fault(S.UNAVAILABLE, pushback="10000"))
        error = _raised(c, kind, timeout=2)
        assert isinstance(error, DeadlineExceededError)
        assert error.code() is S.DEADLINE_EXCEEDED
        assert error.details().startswith(retry.name)
        # A deadline that grpc itself enforces stays grpc's error.
        server.service.script(kind, Fault(delay=0.6))
        assert _raised(c, kind, timeout=0.2).code() is S.DEADLINE_EXCEEDED


def _open_breaker(c: dict[str, Any], server: Running, breaker: CircuitBreaker) -> None:
    server.service.script(UNARY, Fault(S.UNAVAILABLE))
    with pytest.raises(grpc.RpcError):
        c[UNARY](b"trip", timeout=5)
    assert breaker.state is CircuitState.OPEN


@pytest.mark.parametrize("via", VIAS)
def test_an_open_circuit_is_unavailable_and_a_circuit_open_error(server: Running, via: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1, break_duration=60)
    with open_channel(via, server, _policy(breaker)) as channel:
        c = callables(channel)
        _open_breaker(c, server, breaker)
        for kind in KINDS:
            error = _raised(c, kind, timeout=5)
            assert isinstance(error, CircuitOpenError), kind
            assert error.code() is S.UNAVAILABLE
            assert error.details().startswith(f"{breaker.name}: ")
            assert error.retry_after is not None
        future = c[UNARY].future(b"f", timeout=5)
        assert isinstance(future.exception(timeout=5), CircuitOpenError)
        assert future.code() is S.UNAVAILABLE
        assert future.details().startswith(f"{breaker.name}: ")
    assert server.service.count(UNARY) == 1  # only the call that tripped it was sent


@pytest.mark.parametrize("via", VIAS)
def test_a_full_bulkhead_is_resource_exhausted_and_a_bulkhead_full_error(server: Running, via: str) -> None:
    bulkhead = Bulkhead(1)
    with open_channel(via, server, _policy(bulkhead)) as channel:
        c = callables(channel)
        server.service.release.clear()
        held = c[UNARY].future(b"held", timeout=10)  # holds the only slot while the server waits
        try:
            _eventually(lambda: bulkhead.active == 1, "the held call to take the slot")
            for kind in KINDS:
                error = _raised(c, kind, timeout=5)
                assert isinstance(error, BulkheadFullError), kind
                assert error.code() is S.RESOURCE_EXHAUSTED
                assert error.details().startswith(f"{bulkhead.name}: ")
        finally:
            server.service.release.set()
        assert held.result(timeout=5) == b"held"


@pytest.mark.parametrize("via", VIAS)
def test_a_rate_limit_is_resource_exhausted_and_a_rate_limited_error(server: Running, via: str) -> None:
    limit = TokenBucket(rate=0.001, burst=1)
    with open_channel(via, server, _policy(limit, clock=FakeClock())) as channel:
        c = callables(channel)
        assert c[UNARY](b"x", timeout=5) == b"x"
        error = _raised(c, SERVER_STREAM, timeout=5)
        assert isinstance(error, RateLimitedError)
        assert error.code() is S.RESOURCE_EXHAUSTED
        assert error.details().startswith(f"{limit.name}: ")


def test_no_endpoint_is_unavailable_and_a_no_endpoint_error() -> None:
    for policies in (None, _policy(Retry(3, backoff=Constant(0.01)), clock=FakeClock())):
        with open_channel("channel", None, policies) as channel:
            c = callables(channel)
            for kind in KINDS:
                error = _raised(c, kind, timeout=5)
                assert isinstance(error, NoEndpointError), kind
                assert error.code() is S.UNAVAILABLE
            future = c[UNARY].future(b"f", timeout=5)
            assert isinstance(future.exception(timeout=5), NoEndpointError)
            assert future.code() is S.UNAVAILABLE


@pytest.mark.parametrize("via", VIAS)
def test_a_fallbacks_answer_reaches_future_and_stream_callers(server: Running, via: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1, break_duration=60)
    fallback = Fallback(handler=lambda given: [b"fallback"] if "Stream" in given.context.method else b"fallback")
    with open_channel(via, server, _policy(fallback, breaker)) as channel:
        c = callables(channel)
        server.service.script(UNARY, Fault(S.UNAVAILABLE))
        assert c[UNARY](b"trip", timeout=5) == b"fallback"
        assert breaker.state is CircuitState.OPEN
        response, call = c[UNARY].with_call(b"w", timeout=5)
        assert (response, call.code()) == (b"fallback", S.OK)
        future = c[UNARY].future(b"f", timeout=5)
        assert future.result(timeout=5) == b"fallback"
        assert future.code() is S.OK
        assert list(c[SERVER_STREAM](b"s", timeout=5)) == [b"fallback"]


# -- item 8: call objects ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", UNARY_RESPONSE)
@pytest.mark.parametrize("via", VIAS)
def test_future_returns_at_once_and_cancel_stops_the_call(server: Running, via: str, kind: str) -> None:
    policies = _policy(Retry(3, backoff=Constant(0.01)), clock=FakeClock())
    with open_channel(via, server, policies) as channel:
        c = callables(channel)
        server.service.release.clear()  # the server holds every call
        try:
            future = c[kind].future(_request(kind), timeout=10)
            assert not future.done()  # it did not wait for the call
            assert future.running()
            assert future.is_active()
            with pytest.raises(grpc.FutureTimeoutError):
                future.result(timeout=0.01)
            seen: list[Any] = []
            future.add_done_callback(seen.append)
            _eventually(lambda: server.service.count(kind) == 1, "the attempt to reach the server")
            assert future.cancel()
            assert future.cancelled()
            assert future.done()
            assert not future.cancel()  # once
            assert seen == [future]
            with pytest.raises(grpc.FutureCancelledError):
                future.result()
            with pytest.raises(grpc.FutureCancelledError):
                future.exception()
            assert future.code() is S.CANCELLED
        finally:
            server.service.release.set()
        _helper_threads_done()
    assert server.service.count(kind) == 1  # the cancelled call was not retried


@pytest.mark.parametrize("via", VIAS)
def test_future_cancelled_between_attempts_sends_no_further_attempt(server: Running, via: str) -> None:
    clock = FakeClock()
    gate = threading.Event()
    slept = threading.Event()
    real_sleep = clock.sleep

    def sleep(seconds: float) -> None:  # the backoff waits until the test has cancelled
        slept.set()
        gate.wait(5)
        real_sleep(seconds)

    clock.sleep = sleep  # type: ignore[method-assign]
    with open_channel(via, server, _policy(Retry(3, backoff=Constant(1.0)), clock=clock)) as channel:
        server.service.script(UNARY, Fault(S.UNAVAILABLE))
        future = callables(channel)[UNARY].future(b"x", timeout=10)
        assert slept.wait(5)  # the first attempt failed; the retry is waiting its backoff
        assert future.cancel()
        gate.set()
        _helper_threads_done()
        assert future.code() is S.CANCELLED
    assert server.service.count(UNARY) == 1


@pytest.mark.parametrize("kind", UNARY_RESPONSE)
@pytest.mark.parametrize("via", VIAS)
def test_future_success_is_a_call(server: Running, via: str, kind: str) -> None:
    policies = _policy(Retry(3, backoff=Constant(0.01)), clock=FakeClock())
    with open_channel(via, server, policies) as channel:
        server.service.script(kind, Fault(S.UNAVAILABLE))
        future = callables(channel)[kind].future(_request(kind, b"f"), timeout=5)
        expected = b"f" if kind == UNARY else b"f|b"
        assert future.result(timeout=5) == expected
        assert future.exception() is None
        assert future.code() is S.OK
        assert future.done() and not future.cancelled()
        assert not future.cancel()
        assert future.trailing_metadata() is not None
        called: list[Any] = []
        future.add_done_callback(called.append)
        assert called == [future]
    assert server.service.count(kind) == 2  # retried before it answered


@pytest.mark.parametrize("kind", UNARY_RESPONSE)
@pytest.mark.parametrize("via", VIAS)
def test_a_failed_future_reports_the_servers_status_details_and_trailers(server: Running, via: str, kind: str) -> None:
    policies = _policy(Retry(3, backoff=Constant(0.01)), clock=FakeClock())
    with open_channel(via, server, policies) as channel:
        server.service.script(kind, Fault(S.NOT_FOUND, pushback="7"))
        future = callables(channel)[kind].future(_request(kind), timeout=5)
        error = future.exception(timeout=5)
        assert isinstance(error, grpc.RpcError)
        for call in (error, future):
            assert call.code() is S.NOT_FOUND
            assert call.details() == "scripted NOT_FOUND"
            assert ("grpc-retry-pushback-ms", "7") in tuple(call.trailing_metadata())
        with pytest.raises(grpc.RpcError) as info:
            future.result()
        assert info.value is error
        assert future.traceback() is not None


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
@pytest.mark.parametrize("via", VIAS)
def test_a_failed_stream_reports_the_servers_status_and_trailers(
    server: Running, via: str, kind: str, retry: bool
) -> None:
    policies = _policy(Retry(3, backoff=Constant(0.01)), clock=FakeClock()) if retry else _policy(Bulkhead(4))
    with open_channel(via, server, policies) as channel:
        server.service.script(kind, Fault(S.NOT_FOUND, pushback="7"))
        call = callables(channel)[kind](_request(kind), timeout=5)
        assert call.code() is S.NOT_FOUND
        assert call.details() == "scripted NOT_FOUND"
        assert ("grpc-retry-pushback-ms", "7") in tuple(call.trailing_metadata())
        assert call.initial_metadata() is not None
        assert not call.is_active()
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() is S.NOT_FOUND


class PingPong:
    """A client that writes each request only after it read the previous response."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue()

    def requests(self) -> Iterator[bytes]:
        for _ in range(20):
            item = self.queue.get(timeout=5)
            if item is None:
                return
            yield item

    def play(self, call: Any, rounds: int = 3) -> list[bytes]:
        answers = []
        for i in range(rounds):
            self.queue.put(b"p%d" % i)
            answers.append(next(call))
        self.queue.put(None)
        assert list(call) == []
        return answers


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
@pytest.mark.parametrize("via", VIAS)
def test_bidi_ping_pong(server: Running, via: str, retry: bool) -> None:
    clock = FakeClock()
    policies = _policy(Retry(3, backoff=Constant(0.01)), clock=clock) if retry else _policy(Bulkhead(4), clock=clock)
    with open_channel(via, server, policies) as channel:
        client = PingPong()
        call = callables(channel)[BIDI](client.requests(), timeout=5)  # returns before any request is written
        assert client.play(call) == [b"p0", b"p1", b"p2"]
        assert call.code() is S.OK
    assert server.service.count(BIDI) == 1


class FirstBidiFails(EchoService):
    """The first bidi attempt reads one request and fails UNAVAILABLE; later ones echo."""

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        _, attempt = self._begin(BIDI, context)
        if self.count(BIDI) == 1:
            attempt.requests.append(next(requests))
            context.abort(S.UNAVAILABLE, "first attempt fails after one request")
        for request in requests:
            attempt.requests.append(request)
            yield request


@pytest.mark.parametrize("via", VIAS)
def test_bidi_ping_pong_retried_before_the_first_response(via: str) -> None:
    running = Running(FirstBidiFails())
    try:
        policies = _policy(Retry(3, backoff=Constant(0.01)), clock=FakeClock())
        with open_channel(via, running, policies) as channel:
            client = PingPong()
            call = callables(channel)[BIDI](client.requests(), timeout=5)
            assert client.play(call) == [b"p0", b"p1", b"p2"]
            assert call.code() is S.OK
        first, second = running.service.of(BIDI)
        assert first.requests == [b"p0"]
        assert second.requests == [b"p0", b"p1", b"p2"]  # the retry sent the recorded request again
        assert second.metadata.get("x-grpc-previous-rpc-attempts") == "1"
    finally:
        running.stop()


@pytest.mark.parametrize("via", VIAS)
def test_bidi_cancelled_before_its_first_response(server: Running, via: str) -> None:
    policies = _policy(Retry(3, backoff=Constant(0.01)), clock=FakeClock())
    with open_channel(via, server, policies) as channel:
        server.service.release.clear()
        try:
            client = PingPong()
            call = callables(channel)[BIDI](client.requests(), timeout=10)
            client.queue.put(b"p0")
            _eventually(lambda: server.service.count(BIDI) == 1, "the attempt to reach the server")
            assert call.is_active()
            assert call.cancel()
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            assert info.value.code() is S.CANCELLED
            assert call.code() is S.CANCELLED
            assert call.cancelled()
            client.queue.put(None)
        finally:
            server.service.release.set()
        _helper_threads_done()
    assert server.service.count(BIDI) == 1


# -- item 11: streams judged at their end -------------------------------------------------------


def _mid_stream_failure(c: dict[str, Any], kind: str, server: Running) -> None:
    server.service.script(kind, Fault(S.UNAVAILABLE, after=1))
    call = c[kind](_request(kind), timeout=5)
    assert next(call) in (b"a0", b"a")
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() is S.UNAVAILABLE
    assert call.code() is S.UNAVAILABLE


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("via", VIAS)
def test_a_stream_failing_after_its_first_message_counts_for_the_breaker(
    server: Running, via: str, kind: str, retry: bool
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, break_duration=60)
    policies = (Retry(3, backoff=Constant(0.01)), breaker) if retry else (breaker,)
    with open_channel(via, server, _policy(*policies, clock=FakeClock())) as channel:
        c = callables(channel)
        _mid_stream_failure(c, kind, server)
        assert server.service.count(kind) == 1  # not retried once a message was read
        _eventually(lambda: breaker.state is CircuitState.OPEN, "the breaker to see the stream's failure")
        with pytest.raises(CircuitOpenError):
            list(c[kind](_request(kind), timeout=5))


@pytest.mark.parametrize("via", VIAS)
def test_a_stream_the_consumer_cancels_does_not_count_against_the_server(server: Running, via: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1, break_duration=60)
    with open_channel(via, server, _policy(breaker, clock=FakeClock())) as channel:
        c = callables(channel)
        client = PingPong()
        call = c[BIDI](client.requests(), timeout=5)
        client.queue.put(b"p0")
        assert next(call) == b"p0"
        assert call.cancel()
        client.queue.put(None)
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() is S.CANCELLED
        assert breaker.state is CircuitState.CLOSED
        assert c[UNARY](b"after", timeout=5) == b"after"


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
@pytest.mark.parametrize("kind", STREAMS)
def test_the_channel_releases_a_streams_endpoint_with_the_streams_end(server: Running, kind: str, retry: bool) -> None:
    balancer = RecordingRoundRobin()
    policies = _policy(Retry(3, backoff=Constant(0.01)), clock=FakeClock()) if retry else None
    with open_channel("channel", server, policies, balancer=balancer) as channel:
        c = callables(channel)

        def released(n: int) -> None:
            _eventually(lambda: len(balancer.released) == n, f"{n} releases")
            assert set(channel.inflight().values()) == {0}

        assert _consume(c, kind, timeout=5) in ([b"a0", b"a1", b"a2"], [b"a", b"b"])
        released(1)
        _mid_stream_failure(c, kind, server)
        released(2)
        call = c[kind](_request(kind), timeout=5)
        next(call)
        assert balancer.released == [Outcome.SUCCESS, Outcome.FAILURE]  # not released before the end
        call.cancel()
        released(3)
        assert balancer.released[2] is Outcome.IGNORED  # the consumer's cancellation


@pytest.mark.parametrize("via", VIAS)
def test_a_dropped_stream_is_cancelled_and_releases_its_permits(server: Running, via: str) -> None:
    bulkhead = Bulkhead(1)
    balancer = RecordingRoundRobin()
    kwargs = {"balancer": balancer} if via == "channel" else {}
    with open_channel(via, server, _policy(bulkhead), **kwargs) as channel:
        server.service.release.clear()  # the stream stays open until the caller drops it
        call = callables(channel)[SERVER_STREAM](b"a", timeout=10)
        _eventually(lambda: server.service.count(SERVER_STREAM) == 1, "the stream to start")
        assert bulkhead.active == 1  # held for the stream's whole life
        del call  # as with a plain channel, a dropped call is cancelled
        gc.collect()
        _eventually(lambda: bulkhead.active == 0, "the dropped stream's slot to be released")
        if via == "channel":
            assert balancer.released == [Outcome.IGNORED]
            assert set(channel.inflight().values()) == {0}
        server.service.release.set()
        assert list(callables(channel)[SERVER_STREAM](b"b", timeout=5)) == [b"b0", b"b1", b"b2"]


def test_a_mid_stream_failure_counts_for_the_endpoints_health(server: Running) -> None:
    health: list[CircuitBreaker] = []

    def endpoint_health(endpoint: Any) -> CircuitBreaker:
        breaker = CircuitBreaker(failure_threshold=1, break_duration=60)
        health.append(breaker)
        return breaker

    with open_channel("channel", server, None, endpoint_health=endpoint_health) as channel:
        c = callables(channel)
        _mid_stream_failure(c, SERVER_STREAM, server)
        assert [b.state for b in health] == [CircuitState.OPEN]
        error = _raised(c, UNARY, timeout=5)  # the only endpoint is out: nothing to send to
        assert isinstance(error, NoEndpointError)
        assert error.code() is S.UNAVAILABLE
