"""Traces of real gRPC calls that retry once and hedge once (issue 12, item 2): the plain interceptors
(sync and grpc.aio) and the discovery channels (sync and aio), each attempt's trace context seen by the
server, and no second span per attempt with opentelemetry-instrumentation-grpc on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient
from opentelemetry.trace import SpanKind, StatusCode

from interceptors._grpc_common import MethodPolicy
from interceptors.grpc import ResilienceInterceptor
from interceptors.grpc_aio import aio_interceptors
from interceptors.grpc_channel import aio_resilient_channel, resilient_channel
from resilience import Constant, Pipeline, Retry, StaticDiscovery
from resilience.policies.hedge import Hedge
from tests._grpc_service import SERVER_STREAM, STREAM_LEN, UNARY, Attempt, Fault, Running, callables, start
from tests._telemetry import Recorder, events, foreign, traceparent
from tests.test_grpc_channel import FirstUntried

S = grpc.StatusCode


@pytest.fixture
def rec() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def servers() -> Iterator[tuple[Running, Running]]:
    a, b = start(), start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def contrib(rec: Recorder) -> Iterator[None]:
    """opentelemetry-instrumentation-grpc on (sync and aio clients), recording to ``rec``.

    Its sync client takes the global tracer provider whatever ``instrument()`` is given, so
    ``rec``'s is made the global one for the test (and the API's global put back after).
    """
    saved = trace._TRACER_PROVIDER  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = rec.tracer_provider  # type: ignore[attr-defined]
    sync, aio = GrpcInstrumentorClient(), GrpcAioInstrumentorClient()
    sync.instrument(tracer_provider=rec.tracer_provider)
    aio.instrument(tracer_provider=rec.tracer_provider)
    try:
        yield
    finally:
        sync.uninstrument()
        aio.uninstrument()
        trace._TRACER_PROVIDER = saved  # type: ignore[attr-defined]


def policy(rec: Recorder) -> MethodPolicy:
    """Retry once after a failed round; hedge after 50 ms."""
    pipeline = Pipeline(Retry(2, backoff=Constant(0.01)), Hedge(delay=0.05), listeners=[rec.listener])
    return MethodPolicy(pipeline, idempotent=True)


def script(first: Running, second: Running) -> None:
    """The primary fails slowly (so the hedge starts), the hedge fails at once, the retry succeeds."""
    first.service.script(UNARY, Fault(S.UNAVAILABLE, delay=0.3))
    second.service.script(UNARY, Fault(S.UNAVAILABLE))


def check(rec: Recorder, seen: list[Attempt], ports: list[int]) -> None:
    """One call span; attempts (1, 0) and (1, 1) failed, (2, 0) answered; each attempt's span
    is what its server saw as the parent; no span of the contrib instrumentation per attempt."""
    call = rec.call()
    assert (call.kind, call.name) == (SpanKind.INTERNAL, "test.Echo/Unary")
    assert call.attributes is not None and call.attributes["resilience.outcome"] == "success"
    assert call.attributes["resilience.policies"] == "retry,hedge"
    names = [n for n, _ in events(call)]
    assert "resilience.hedge" in names and "resilience.retry" in names
    retry = dict(events(call))["resilience.retry"]
    assert (retry["resilience.attempt"], retry["resilience.retry.delay"]) == (1, 0.01)
    assert retry["error.type"] == "UNAVAILABLE"  # the status name, as on the attempt's span
    attempts = rec.attempts()
    keys = [(s.attributes["resilience.attempt"], s.attributes["resilience.hedge"]) for s in attempts]  # type: ignore[index]
    assert keys == [(1, 0), (1, 1), (2, 0)]
    codes = [s.attributes["rpc.response.status_code"] for s in attempts]  # type: ignore[index]
    assert codes == ["UNAVAILABLE", "UNAVAILABLE", "OK"]
    for span, port in zip(attempts, ports, strict=True):
        attributes = span.attributes
        assert attributes is not None
        assert span.kind is SpanKind.CLIENT and span.name == "test.Echo/Unary"
        assert span.parent is not None and span.parent.span_id == call.context.span_id
        assert attributes["rpc.system.name"] == "grpc" and attributes["rpc.method"] == "test.Echo/Unary"
        assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", port)
    assert attempts[0].attributes["error.type"] == "UNAVAILABLE"  # type: ignore[index]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert "error.type" not in attempts[2].attributes  # type: ignore[operator]
    assert sorted(a.metadata["traceparent"] for a in seen) == sorted(traceparent(s) for s in attempts)
    assert [s for s in foreign(rec.spans()) if s.kind is SpanKind.CLIENT] == []


def test_plain_interceptor_with_contrib_instrumentation_on(rec: Recorder, contrib: None) -> None:
    server = start()
    try:
        script(server, server)
        interceptor = ResilienceInterceptor(policy(rec), target=server.address)
        with grpc.insecure_channel(server.address) as plain:  # instrumented by the contrib package
            channel = grpc.intercept_channel(plain, interceptor)
            assert callables(channel)[UNARY](b"hi", timeout=5) == b"hi"
        check(rec, server.service.of(UNARY), [server.port] * 3)
    finally:
        server.stop()


def test_without_our_listener_the_contrib_instrumentation_traces_as_before(rec: Recorder, contrib: None) -> None:
    server = start()
    try:
        pipeline = Pipeline(Retry(2, backoff=Constant(0.01)))
        with grpc.insecure_channel(server.address) as plain:
            channel = grpc.intercept_channel(plain, ResilienceInterceptor(MethodPolicy(pipeline, idempotent=True)))
            server.service.script(UNARY, Fault(S.UNAVAILABLE))
            assert callables(channel)[UNARY](b"hi", timeout=5) == b"hi"
        theirs = [s for s in foreign(rec.spans()) if s.kind is SpanKind.CLIENT]
        assert len(theirs) == 2 and rec.attempts() == []
        assert sorted(a.metadata["traceparent"] for a in server.service.of(UNARY)) == sorted(
            traceparent(s) for s in theirs
        )
    finally:
        server.stop()


def test_a_server_stream_attempt_ends_with_the_stream(rec: Recorder, contrib: None) -> None:
    server = start()
    try:
        server.service.script(SERVER_STREAM, Fault(S.UNAVAILABLE))
        with grpc.insecure_channel(server.address) as plain:
            channel = grpc.intercept_channel(plain, ResilienceInterceptor(policy(rec)))
            stream = callables(channel)[SERVER_STREAM](b"s", timeout=5)
            assert len(list(stream)) == STREAM_LEN
        first, second = rec.attempts()
        assert first.attributes is not None and second.attributes is not None
        assert first.attributes["rpc.response.status_code"] == "UNAVAILABLE"
        assert second.attributes["rpc.response.status_code"] == "OK"
        assert "server.address" not in second.attributes  # no target= given
        assert rec.call().attributes["resilience.outcome"] == "success"  # type: ignore[index]
        assert [s for s in foreign(rec.spans()) if s.kind is SpanKind.CLIENT] == []
    finally:
        server.stop()


async def test_aio_interceptor(rec: Recorder) -> None:
    server = start()
    try:
        script(server, server)
        interceptors = aio_interceptors(policy(rec), target=server.address)
        async with grpc.aio.insecure_channel(server.address, interceptors=interceptors) as channel:
            assert await callables(channel)[UNARY](b"hi", timeout=5) == b"hi"
        check(rec, server.service.of(UNARY), [server.port] * 3)
    finally:
        server.stop()


async def test_aio_interceptor_under_the_contrib_aio_instrumentation(rec: Recorder, contrib: None) -> None:
    """GrpcAioInstrumentorClient puts its interceptors before ours: its one span covers the call."""
    server = start()
    try:
        server.service.script(UNARY, Fault(S.UNAVAILABLE))
        async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policy(rec))) as channel:
            assert await callables(channel)[UNARY](b"hi", timeout=5) == b"hi"
        (theirs,) = [s for s in foreign(rec.spans()) if s.kind is SpanKind.CLIENT]
        call = rec.call()
        assert call.parent is not None and call.parent.span_id == theirs.context.span_id
        attempts = rec.attempts()
        assert len(attempts) == 2  # one span per attempt is still ours alone
        seen = server.service.of(UNARY)
        assert sorted(a.metadata["traceparent"] for a in seen) == sorted(traceparent(s) for s in attempts)
    finally:
        server.stop()


def test_discovery_channel(rec: Recorder, contrib: None, servers: tuple[Running, Running]) -> None:
    a, b = servers
    script(a, b)
    discovery = StaticDiscovery({"echo": [a.address, b.address]})
    with resilient_channel("echo", discovery, FirstUntried(), policy(rec)) as channel:
        assert callables(channel)[UNARY](b"hi", timeout=5) == b"hi"
        rec.listener.watch(channel)
        endpoints = {a["resilience.endpoint.state"]: n for a, n in rec.points("resilience.endpoints")}
        assert endpoints == {"healthy": 2, "ejected": 0}
    check(rec, a.service.of(UNARY) + b.service.of(UNARY), [a.port, b.port, a.port])


async def test_aio_discovery_channel(rec: Recorder, contrib: None, servers: tuple[Running, Running]) -> None:
    a, b = servers
    script(a, b)
    discovery = StaticDiscovery({"echo": [a.address, b.address]})
    async with aio_resilient_channel("echo", discovery, FirstUntried(), policy(rec)) as channel:
        assert await callables(channel)[UNARY](b"hi", timeout=5) == b"hi"
    check(rec, a.service.of(UNARY) + b.service.of(UNARY), [a.port, b.port, a.port])


def test_future_calls_are_traced_on_their_helper_thread(rec: Recorder) -> None:
    server = start()
    try:
        server.service.script(UNARY, Fault(S.UNAVAILABLE))
        with grpc.insecure_channel(server.address) as plain:
            channel = grpc.intercept_channel(plain, ResilienceInterceptor(policy(rec)))
            future: Any = callables(channel)[UNARY].future(b"hi", timeout=5)
            assert future.result(timeout=5) == b"hi"
        for _ in range(100):  # the call span ends on the helper thread, after the result is out
            if rec.calls():
                break
            asyncio.run(asyncio.sleep(0.01))
        assert [s.attributes["rpc.response.status_code"] for s in rec.attempts()] == ["UNAVAILABLE", "OK"]  # type: ignore[index]
    finally:
        server.stop()
