"""The gRPC client interceptors (sync and grpc.aio) against a real server with scripted faults."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from interceptors._grpc_common import (
    GrpcClassifier,
    GrpcPolicies,
    MethodPolicy,
    parse_pushback,
)
from interceptors.grpc import ResilienceInterceptor
from interceptors.grpc_aio import aio_interceptors
from resilience.clock import FakeClock
from resilience.errors import BulkheadFullError, DeadlineExceededError
from resilience.outcome import Outcome
from resilience.pipeline import Pipeline
from resilience.policies.backoff import Constant
from resilience.policies.bulkhead import Bulkhead
from resilience.policies.hedge import Hedge
from resilience.policies.retry import Retry
from resilience.policies.timeout import Timeout

from ._grpc_service import BIDI, CLIENT_STREAM, SERVER_STREAM, UNARY, Fault, Running, callables, start

S = grpc.StatusCode
KINDS = [UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI]
ATTEMPTS_KEY = "x-grpc-previous-rpc-attempts"


@pytest.fixture
def server() -> Iterator[Running]:
    running = start()
    try:
        yield running
    finally:
        running.stop()


def _policy(pipeline: Pipeline, **kwargs: Any) -> MethodPolicy:
    kwargs.setdefault("idempotent", True)
    return MethodPolicy(pipeline, **kwargs)


def _sync_call(c: dict[str, Any], kind: str, payload: bytes = b"a", **kw: Any) -> Any:
    if kind == UNARY:
        return c[UNARY](payload, **kw)
    if kind == SERVER_STREAM:
        return list(c[SERVER_STREAM](payload, **kw))
    if kind == CLIENT_STREAM:
        return c[CLIENT_STREAM](iter([payload, b"b"]), **kw)
    return list(c[BIDI](iter([payload, b"b"]), **kw))


async def _aio_call(c: dict[str, Any], kind: str, payload: bytes = b"a", **kw: Any) -> Any:
    async def requests() -> AsyncIterator[bytes]:
        yield payload
        yield b"b"

    if kind == UNARY:
        return await c[UNARY](payload, **kw)
    if kind == SERVER_STREAM:
        return [m async for m in c[SERVER_STREAM](payload, **kw)]
    if kind == CLIENT_STREAM:
        return await c[CLIENT_STREAM](requests(), **kw)
    return [m async for m in c[BIDI](requests(), **kw)]


EXPECTED = {UNARY: b"a", SERVER_STREAM: [b"a0", b"a1", b"a2"], CLIENT_STREAM: b"a|b", BIDI: [b"a", b"b"]}


class SyncClient:
    """The sync interceptor on a channel to ``server``."""

    def __init__(self, server: Running, policies: Any) -> None:
        self.channel = grpc.intercept_channel(grpc.insecure_channel(server.address), ResilienceInterceptor(policies))
        self.c = callables(self.channel)

    def call(self, kind: str, payload: bytes = b"a", **kw: Any) -> Any:
        return _sync_call(self.c, kind, payload, **kw)

    def close(self) -> None:
        self.channel.close()


# -- retries: all four kinds, sync and aio --------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sync_retries_each_kind_before_the_first_message(server: Running, kind: str) -> None:
    clock = FakeClock()
    client = SyncClient(server, _policy(Pipeline(Retry(3, backoff=Constant(0.5)), clock=clock)))
    try:
        server.service.script(kind, Fault(S.UNAVAILABLE), Fault(S.UNAVAILABLE))
        assert client.call(kind, timeout=5) == EXPECTED[kind]
    finally:
        client.close()
    attempts = server.service.of(kind)
    assert [a.metadata.get(ATTEMPTS_KEY) for a in attempts] == [None, "1", "2"]
    assert clock.sleeps == [0.5, 0.5]
    if kind in (CLIENT_STREAM, BIDI):
        assert [a.requests for a in attempts][-1] == [b"a", b"b"]  # the request stream was replayed
    if kind == CLIENT_STREAM:
        assert all(a.requests == [b"a", b"b"] for a in attempts)


@pytest.mark.parametrize("kind", KINDS)
async def test_aio_retries_each_kind_before_the_first_message(server: Running, kind: str) -> None:
    clock = FakeClock()
    policies = _policy(Pipeline(Retry(3, backoff=Constant(0.5)), clock=clock))
    server.service.script(kind, Fault(S.UNAVAILABLE), Fault(S.UNAVAILABLE))
    async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policies)) as channel:
        assert await _aio_call(callables(channel), kind, timeout=5) == EXPECTED[kind]
    attempts = server.service.of(kind)
    assert [a.metadata.get(ATTEMPTS_KEY) for a in attempts] == [None, "1", "2"]
    assert clock.sleeps == [0.5, 0.5]
    if kind == CLIENT_STREAM:
        assert all(a.requests == [b"a", b"b"] for a in attempts)


@pytest.mark.parametrize("kind", [SERVER_STREAM, BIDI])
def test_sync_stream_is_not_retried_after_its_first_message(server: Running, kind: str) -> None:
    client = SyncClient(server, _policy(Pipeline(Retry(3, backoff=Constant(0.5)), clock=FakeClock())))
    try:
        server.service.script(kind, Fault(S.UNAVAILABLE, after=1))
        received: list[bytes] = []
        stream = client.c[kind](b"a" if kind == SERVER_STREAM else iter([b"a", b"b"]), timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            received.extend(stream)
        assert info.value.code() is S.UNAVAILABLE
        assert received == [b"a0"] if kind == SERVER_STREAM else received == [b"a"]
    finally:
        client.close()
    assert server.service.count(kind) == 1


async def test_aio_stream_is_not_retried_after_its_first_message(server: Running) -> None:
    policies = _policy(Pipeline(Retry(3, backoff=Constant(0.5)), clock=FakeClock()))
    server.service.script(SERVER_STREAM, Fault(S.UNAVAILABLE, after=1))
    received: list[bytes] = []
    async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policies)) as channel:
        stream = callables(channel)[SERVER_STREAM](b"a", timeout=5)
        with pytest.raises(grpc.RpcError) as info:  # noqa: PT012 - the error comes from the iteration
            async for message in stream:
                received.append(message)
    assert info.value.code() is S.UNAVAILABLE
    assert received == [b"a0"]
    assert server.service.count(SERVER_STREAM) == 1


async def test_aio_stream_read_api_and_metadata_after_a_retry(server: Running) -> None:
    policies = _policy(Pipeline(Retry(2, backoff=Constant(0.1)), clock=FakeClock()))
    server.service.script(SERVER_STREAM, Fault(S.UNAVAILABLE))
    server.service.script(UNARY, Fault(S.UNAVAILABLE))
    async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policies)) as channel:
        c = callables(channel)
        call = c[SERVER_STREAM](b"r", timeout=5)
        assert [await call.read() for _ in range(3)] == [b"r0", b"r1", b"r2"]
        assert await call.read() is grpc.aio.EOF
        unary = c[UNARY](b"u", timeout=5)
        assert await unary == b"u"
        assert await unary.code() is S.OK


async def test_aio_write_style_stream_goes_through_without_policies(server: Running) -> None:
    policies = _policy(Pipeline(Retry(3, backoff=Constant(0.1)), clock=FakeClock()))
    async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policies)) as channel:
        call = callables(channel)[CLIENT_STREAM](timeout=5)
        await call.write(b"w1")
        await call.write(b"w2")
        await call.done_writing()
        assert await call == b"w1|w2"


# -- idempotency, classification, pushback ----------------------------------------------------


def test_non_idempotent_methods_are_not_retried_unless_opted_in(server: Running) -> None:
    table = GrpcPolicies(
        MethodPolicy(Pipeline(Retry(3, backoff=Constant(0.1)), clock=FakeClock())),  # idempotent defaults to False
        methods={"test.Echo/ClientStream": MethodPolicy(idempotent=True)},
    )
    client = SyncClient(server, table)
    try:
        server.service.script(UNARY, Fault(S.UNAVAILABLE))
        with pytest.raises(grpc.RpcError):
            client.call(UNARY)
        assert server.service.count(UNARY) == 1
        server.service.script(CLIENT_STREAM, Fault(S.UNAVAILABLE))
        assert client.call(CLIENT_STREAM) == b"a|b"  # declared idempotent in the table
        assert server.service.count(CLIENT_STREAM) == 2
    finally:
        client.close()
    opted = SyncClient(
        server, MethodPolicy(Pipeline(Retry(3, backoff=Constant(0.1), retry_non_idempotent=True), clock=FakeClock()))
    )
    try:
        server.service.script(UNARY, Fault(S.UNAVAILABLE))
        assert opted.call(UNARY) == b"a"
        assert server.service.count(UNARY) == 3
    finally:
        opted.close()


@pytest.mark.parametrize("code", [S.INVALID_ARGUMENT, S.NOT_FOUND, S.PERMISSION_DENIED, S.INTERNAL])
def test_codes_that_are_not_retryable_end_the_call(server: Running, code: grpc.StatusCode) -> None:
    client = SyncClient(server, _policy(Pipeline(Retry(3, backoff=Constant(0.1)), clock=FakeClock())))
    try:
        server.service.script(UNARY, Fault(code))
        with pytest.raises(grpc.RpcError) as info:
            client.call(UNARY)
        assert info.value.code() is code
    finally:
        client.close()
    assert server.service.count(UNARY) == 1


def test_retryable_codes_are_configurable_per_method(server: Running) -> None:
    table = GrpcPolicies(
        _policy(Pipeline(Retry(3, backoff=Constant(0.1)), clock=FakeClock())),
        methods={"/test.Echo/Unary": MethodPolicy(retryable_codes=["ABORTED", S.UNAVAILABLE])},
    )
    client = SyncClient(server, table)
    try:
        server.service.script(UNARY, Fault(S.ABORTED))
        assert client.call(UNARY) == b"a"
        server.service.script(SERVER_STREAM, Fault(S.ABORTED))
        with pytest.raises(grpc.RpcError):
            client.call(SERVER_STREAM)
    finally:
        client.close()
    assert server.service.count(UNARY) == 2
    assert server.service.count(SERVER_STREAM) == 1


def test_server_pushback_is_the_retry_delay(server: Running) -> None:
    clock = FakeClock()
    client = SyncClient(server, _policy(Pipeline(Retry(3, backoff=Constant(5.0)), clock=clock)))
    try:
        server.service.script(UNARY, Fault(S.UNAVAILABLE, pushback="250"))
        assert client.call(UNARY) == b"a"
        assert clock.sleeps == [0.25]
        # RESOURCE_EXHAUSTED is retried only when the server says when: with pushback...
        server.service.script(UNARY, Fault(S.RESOURCE_EXHAUSTED, pushback="40"))
        assert client.call(UNARY) == b"a"
        assert clock.sleeps == [0.25, 0.04]
        # ... and not without.
        server.service.script(UNARY, Fault(S.RESOURCE_EXHAUSTED))
        with pytest.raises(grpc.RpcError):
            client.call(UNARY)
    finally:
        client.close()
    assert server.service.count(UNARY) == 5


@pytest.mark.parametrize("pushback", ["-1", "soon"])
def test_negative_or_malformed_pushback_stops_retries(server: Running, pushback: str) -> None:
    clock = FakeClock()
    client = SyncClient(server, _policy(Pipeline(Retry(3, backoff=Constant(0.1)), clock=clock)))
    try:
        server.service.script(UNARY, Fault(S.UNAVAILABLE, pushback=pushback))
        with pytest.raises(grpc.RpcError) as info:
            client.call(UNARY)
        assert info.value.code() is S.UNAVAILABLE
    finally:
        client.close()
    assert server.service.count(UNARY) == 1
    assert clock.sleeps == []


async def test_aio_pushback_and_negative_pushback(server: Running) -> None:
    clock = FakeClock()
    policies = _policy(Pipeline(Retry(3, backoff=Constant(5.0)), clock=clock))
    async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policies)) as channel:
        c = callables(channel)
        server.service.script(UNARY, Fault(S.RESOURCE_EXHAUSTED, pushback="120"))
        assert await c[UNARY](b"a") == b"a"
        assert clock.sleeps == [0.12]
        server.service.script(UNARY, Fault(S.UNAVAILABLE, pushback="-5"))
        with pytest.raises(grpc.RpcError):
            await c[UNARY](b"a")
    assert server.service.count(UNARY) == 3


# -- deadlines ---------------------------------------------------------------------------------


def test_one_deadline_over_all_attempts(server: Running) -> None:
    client = SyncClient(server, _policy(Pipeline(Retry(3, backoff=Constant(0.15)))))
    try:
        server.service.script(UNARY, Fault(S.UNAVAILABLE), Fault(S.UNAVAILABLE))
        assert client.call(UNARY, timeout=3.0) == b"a"
        remaining = [a.time_remaining for a in server.service.of(UNARY)]
        assert all(r is not None and r <= 3.05 for r in remaining)  # grpc-timeout is rounded up
        assert remaining[0] - remaining[1] >= 0.14  # attempt 2 got what was left after the backoff
        assert remaining[1] - remaining[2] >= 0.14
        # A backoff that would pass the deadline is not taken: the last error ends the call.
        server.service.script(UNARY, Fault(S.UNAVAILABLE))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.call(UNARY, timeout=0.1)
        assert info.value.code() is S.UNAVAILABLE
        assert time.monotonic() - started < 1.0
    finally:
        client.close()
    assert server.service.count(UNARY) == 4


def test_attempt_timeout_deadline_exceeded_is_retried_when_configured(server: Running) -> None:
    pipeline = Pipeline(Retry(3, backoff=Constant(0.01)), Timeout(0.2))
    client = SyncClient(server, _policy(pipeline, retryable_codes=["UNAVAILABLE", "DEADLINE_EXCEEDED"]))
    try:
        server.service.script(UNARY, Fault(delay=0.6))
        started = time.monotonic()
        assert client.call(UNARY, timeout=5) == b"a"
        assert time.monotonic() - started < 0.6
        assert server.service.of(UNARY)[0].time_remaining is not None
        # grpc carries deadlines with coarse precision: the server may see a hair over 0.2 s.
        assert server.service.of(UNARY)[0].time_remaining <= 0.21  # type: ignore[operator]
    finally:
        client.close()
    assert server.service.count(UNARY) == 2


async def test_aio_attempt_timeout_and_total_deadline(server: Running) -> None:
    pipeline = Pipeline(Retry(3, backoff=Constant(0.01)), Timeout(0.2))
    policies = _policy(pipeline, retryable_codes=["UNAVAILABLE", "DEADLINE_EXCEEDED"])
    async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policies)) as channel:
        c = callables(channel)
        server.service.script(UNARY, Fault(delay=0.6))
        assert await c[UNARY](b"a", timeout=5) == b"a"
        server.service.script(UNARY, Fault(delay=0.6), Fault(delay=0.6), Fault(delay=0.6))
        with pytest.raises(grpc.RpcError) as info:
            await c[UNARY](b"a", timeout=0.3)  # the call's deadline cuts the retries short
        assert info.value.code() is S.DEADLINE_EXCEEDED  # whichever deadline ended it
    assert server.service.count(UNARY) in (3, 4)


def test_rejection_from_a_policy_reaches_the_caller(server: Running) -> None:
    bulkhead = Bulkhead(1)
    client = SyncClient(server, _policy(Pipeline(bulkhead)))
    try:
        server.service.release.clear()
        import threading

        first = threading.Thread(target=lambda: client.call(UNARY, timeout=5))
        first.start()
        for _ in range(200):
            if bulkhead.active:
                break
            time.sleep(0.01)
        with pytest.raises(BulkheadFullError):
            client.call(UNARY, timeout=5)
        server.service.release.set()
        first.join(5)
        assert not first.is_alive()
    finally:
        server.service.release.set()
        client.close()


# -- hedging -------------------------------------------------------------------------------------


def test_sync_hedge_answers_with_the_fast_attempt(server: Running) -> None:
    with Hedge(0.05, budget=None) as hedge:
        client = SyncClient(server, _policy(Pipeline(hedge)))
        try:
            server.service.script(UNARY, Fault(delay=1.0))
            started = time.monotonic()
            assert client.call(UNARY, timeout=5) == b"a"
            assert time.monotonic() - started < 0.8
        finally:
            client.close()
    attempts = server.service.of(UNARY)
    assert len(attempts) == 2
    assert attempts[1].metadata.get(ATTEMPTS_KEY) == "1"


async def test_aio_hedge_answers_with_the_fast_attempt(server: Running) -> None:
    policies = _policy(Pipeline(Hedge(0.05, budget=None)))
    async with grpc.aio.insecure_channel(server.address, interceptors=aio_interceptors(policies)) as channel:
        server.service.script(UNARY, Fault(delay=1.0))
        started = time.monotonic()
        assert await callables(channel)[UNARY](b"a", timeout=5) == b"a"
        assert time.monotonic() - started < 0.8
    assert server.service.count(UNARY) == 2


# -- pure parts ------------------------------------------------------------------------------------


class _Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


def test_classifier_outcomes_and_retryability() -> None:
    c = GrpcClassifier()
    for code in (S.UNAVAILABLE, S.RESOURCE_EXHAUSTED, S.ABORTED, S.DEADLINE_EXCEEDED, S.INTERNAL):
        assert c.error(_Err(code)) is Outcome.FAILURE
    for code in (S.INVALID_ARGUMENT, S.NOT_FOUND, S.ALREADY_EXISTS, S.PERMISSION_DENIED, S.UNAUTHENTICATED):
        assert c.error(_Err(code)) is Outcome.IGNORED
    assert c.error(_Err(S.FAILED_PRECONDITION)) is Outcome.IGNORED
    assert c.error(_Err(S.CANCELLED)) is Outcome.IGNORED
    assert c.retryable_error(_Err(S.UNAVAILABLE))
    assert not c.retryable_error(_Err(S.ABORTED))
    assert not c.retryable_error(_Err(S.RESOURCE_EXHAUSTED))
    assert c.retryable_error(_Err(S.RESOURCE_EXHAUSTED, (("grpc-retry-pushback-ms", "10"),)))
    assert not c.retryable_error(_Err(S.RESOURCE_EXHAUSTED, (("grpc-retry-pushback-ms", "-1"),)))
    assert not c.retryable_error(DeadlineExceededError("x"))
    assert GrpcClassifier(retryable_codes=[4]).retryable_error(DeadlineExceededError("x"))
    assert GrpcClassifier(failure_codes=[]).error(_Err(S.UNAVAILABLE)) is Outcome.IGNORED


def test_parse_pushback() -> None:
    assert parse_pushback(None) is None
    assert parse_pushback((("other", "1"),)) is None
    assert parse_pushback((("grpc-retry-pushback-ms", "1500"),)) == 1.5
    assert parse_pushback((("grpc-retry-pushback-ms", b"0"),)) == 0.0
    assert parse_pushback((("grpc-retry-pushback-ms", "-3"),)) == -1.0
    assert parse_pushback((("grpc-retry-pushback-ms", "1.5"),)) == -1.0


def test_policy_table_resolution_and_validation() -> None:
    default, orders = Pipeline(), Pipeline()
    table = GrpcPolicies(
        MethodPolicy(default, idempotent=False, tags={"team": "a"}),
        methods={
            "shop.Orders": MethodPolicy(orders, idempotent=True),
            "/shop.Orders/Create": MethodPolicy(idempotent=False),
        },
    )
    get = table.resolve("/shop.Orders/Get")
    assert (get.pipeline, get.idempotent, get.service, get.method) == (orders, True, "shop.Orders", "Get")
    create = table.resolve("/shop.Orders/Create")
    assert (create.pipeline, create.idempotent) == (orders, False)
    other = table.resolve("/shop.Users/Get")
    assert (other.pipeline, other.idempotent, other.tags) == (default, False, {"team": "a"})
    assert table.resolve("/shop.Orders/Get") is get  # cached
    ctx = get.context(2.0)
    assert ctx.deadline is not None
    assert ctx.classifier is get.classifier
    with pytest.raises(ValueError, match=r"retryable_codes must hold gRPC status codes.*'BOGUS'"):
        MethodPolicy(retryable_codes=["BOGUS"])
    with pytest.raises(TypeError, match="string"):
        MethodPolicy(retryable_codes="UNAVAILABLE")
    with pytest.raises(ValueError, match="max_buffered_requests must be in"):
        MethodPolicy(max_buffered_requests=-1)
    with pytest.raises(TypeError, match="pipeline must be"):
        MethodPolicy(pipeline="nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policies must be"):
        ResilienceInterceptor(42)


def test_request_buffer_limit_commits_the_call(server: Running) -> None:
    policies = _policy(Pipeline(Retry(3, backoff=Constant(0.1)), clock=FakeClock()), max_buffered_requests=1)
    client = SyncClient(server, policies)
    try:
        server.service.script(CLIENT_STREAM, Fault(S.UNAVAILABLE))
        with pytest.raises(grpc.RpcError):
            client.call(CLIENT_STREAM)  # two requests, one kept: no retry is possible
    finally:
        client.close()
    assert server.service.count(CLIENT_STREAM) == 1


def test_methods_without_a_pipeline_pass_straight_through(server: Running) -> None:
    client = SyncClient(server, None)
    try:
        assert [client.call(kind) for kind in KINDS] == [EXPECTED[k] for k in KINDS]
        assert client.c[UNARY].future(b"f").result() == b"f"
    finally:
        client.close()
