"""Server interceptors cover a streaming handler for its whole life (issue 9, item 13, second half).

The permits of the server pipeline (a concurrency limit's slot, a breaker's verdict) are held
until the handler's response stream ends: read to the end, failed, cancelled by the client, or
cut by its deadline; the outcome recorded is that end. Real servers on 127.0.0.1:0, sync and aio.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from interceptors._grpc_common import GrpcPolicies
from interceptors.grpc_server import AioServerResilienceInterceptor, ServerResilienceInterceptor
from resilience.pipeline import Pipeline
from resilience.policies.circuit_breaker import CircuitBreaker
from resilience.policies.concurrency import AIMD, ConcurrencyLimit

from ._grpc_service import BIDI, CLIENT_STREAM, SERVER_STREAM, Fault, Running, callables

S = grpc.StatusCode
SERVICE = "t.Streams"
HOLD = f"/{SERVICE}/Hold"
CHAT = f"/{SERVICE}/Chat"
BIG = f"/{SERVICE}/Big"
FAIL = f"/{SERVICE}/Fail"
COLLECT = f"/{SERVICE}/Collect"
BIG_MESSAGE = 256 * 1024
BIG_COUNT = 256  # 64 MiB: far more than the flow-control windows hold, so the server waits to send
WAIT = 10.0  # the most a test waits for anything
HANDLER_WAIT = 3 * WAIT  # the most a handler waits for its gate (the servers open every gate when they stop)


def _until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` for at most ``WAIT`` seconds."""
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"still waiting for {what}")


async def _auntil(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still waiting for {what}")


def _rejected(call: Any) -> grpc.StatusCode:
    """The code a sync response stream fails with before its first message."""
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    code: grpc.StatusCode = info.value.code()
    return code


# -- sync server ------------------------------------------------------------------------------


class Streams:
    """Handlers whose streams stay open until the test lets them end.

    ``Hold`` sends ``b"first"``, waits for the gate named by its request, sends ``b"last"``;
    ``Chat`` echoes each request until the client stops writing; ``Big`` sends large messages
    as fast as the client reads them; ``Fail`` sends one message, then fails as its request
    says; ``Collect`` joins the requests.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[bytes, threading.Event] = {}
        self.sent = 0

    def gate(self, name: bytes) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def open_all(self) -> None:
        with self._lock:
            for gate in self._gates.values():
                gate.set()

    def hold(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        self.gate(request).wait(HANDLER_WAIT)
        yield b"last"

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    def big(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in range(BIG_COUNT):
            self.sent += 1
            yield b"x" * BIG_MESSAGE

    def fail(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        if request == b"bug":
            raise RuntimeError("handler bug after the first message")
        context.abort(getattr(S, request.decode()), "scripted")

    def collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"|".join(requests)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Hold": grpc.unary_stream_rpc_method_handler(self.hold),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
                "Big": grpc.unary_stream_rpc_method_handler(self.big),
                "Fail": grpc.unary_stream_rpc_method_handler(self.fail),
                "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
            },
        )


class Server:
    """A sync server of :class:`Streams` behind a guard, and a channel to it."""

    def __init__(self, guard: Any) -> None:
        self.streams = Streams()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=(guard,))
        self.server.add_generic_rpc_handlers((self.streams.handler(),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.streams.open_all()
        self.channel.close()
        self.server.stop(None)


class Requests:
    """A request stream the test writes to; ``close()`` ends it."""

    _END = object()

    def __init__(self, *first: bytes) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        for item in first:
            self._queue.put(item)

    def put(self, item: bytes) -> None:
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                item = self._queue.get(timeout=WAIT)
            except queue.Empty:
                return
            if item is self._END:
                return
            yield item


def _open_sync(server: Server, kind: str, name: bytes) -> tuple[Any, Callable[[], list[bytes]]]:
    """A stream started and read to its first message, and how to let it end (its other messages)."""
    channel = server.channel
    if kind == "unary_stream":
        call = channel.unary_stream(HOLD)(name, timeout=WAIT)
        gate = server.streams.gate(name)

        def finish() -> list[bytes]:
            gate.set()
            return list(call)

    else:
        requests = Requests(name)
        call = channel.stream_stream(CHAT)(iter(requests), timeout=WAIT)

        def finish() -> list[bytes]:
            requests.close()
            return list(call)

    return call, finish


@pytest.mark.parametrize("kind", ["unary_stream", "stream_stream"])
def test_a_concurrency_limit_bounds_a_response_stream_until_it_ends(kind: str) -> None:
    limit = ConcurrencyLimit(2)
    with Server(ServerResilienceInterceptor(Pipeline(limit))) as server:
        a, finish_a = _open_sync(server, kind, b"a")
        b, _ = _open_sync(server, kind, b"b")
        assert next(a) and next(b)  # both streams have sent, and are still open
        assert limit.inflight == 2
        c, _ = _open_sync(server, kind, b"c")
        assert _rejected(c) is S.RESOURCE_EXHAUSTED
        b.cancel()  # a client going away gives its slot back
        _until(lambda: limit.inflight == 1, "the cancelled stream's slot")
        d, finish_d = _open_sync(server, kind, b"d")
        assert next(d) != b""
        assert limit.inflight == 2
        assert finish_a() == ([b"last"] if kind == "unary_stream" else [])
        assert finish_d() == ([b"last"] if kind == "unary_stream" else [])
        _until(lambda: limit.inflight == 0, "the ended streams' slots")
        e, finish_e = _open_sync(server, kind, b"e")
        assert next(e) != b""
        finish_e()
        _until(lambda: limit.inflight == 0, "the last stream's slot")


def test_a_stream_whose_deadline_passes_while_its_handler_waits_gives_its_slot_back() -> None:
    limit = ConcurrencyLimit(1)
    with Server(ServerResilienceInterceptor(Pipeline(limit))) as server:
        call = server.channel.unary_stream(HOLD)(b"slow", timeout=0.5)
        assert next(call) == b"first"
        assert limit.inflight == 1
        # The handler is blocked in its own code (not sending): grpc tells us when the call ends.
        _until(lambda: limit.inflight == 0, "the slot of the stream past its deadline")
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() is S.DEADLINE_EXCEEDED
        server.streams.gate(b"next").set()
        assert list(server.channel.unary_stream(HOLD)(b"next", timeout=WAIT)) == [b"first", b"last"]


def test_a_slow_reader_that_cancels_gives_its_slot_back() -> None:
    limit = ConcurrencyLimit(1)
    with Server(ServerResilienceInterceptor(Pipeline(limit))) as server:
        call = server.channel.unary_stream(BIG)(b"", timeout=WAIT)
        assert len(next(call)) == BIG_MESSAGE
        _until(lambda: server.streams.sent > 1, "the server to send ahead")
        assert _rejected(server.channel.unary_stream(BIG)(b"", timeout=WAIT)) is S.RESOURCE_EXHAUSTED
        assert server.streams.sent < BIG_COUNT  # the handler waits for the reader
        call.cancel()
        _until(lambda: limit.inflight == 0, "the slow reader's slot")
        assert server.streams.sent < BIG_COUNT


@pytest.mark.parametrize("method", [SERVER_STREAM, BIDI])
def test_a_stream_failing_after_its_first_message_counts_as_a_failure(method: str) -> None:
    limit = ConcurrencyLimit(AIMD(20, min_limit=1, max_limit=200))
    server = Running(_echo(), (ServerResilienceInterceptor(GrpcPolicies(methods={method: Pipeline(limit)})),))
    channel = grpc.insecure_channel(server.address)
    call = callables(channel)[method]

    def run(fault: Fault) -> tuple[list[bytes], grpc.StatusCode]:
        server.service.script(method, fault)
        received: list[bytes] = []
        source = b"m" if method == SERVER_STREAM else iter([b"m0", b"m1", b"m2"])
        with pytest.raises(grpc.RpcError) as info:
            received.extend(call(source, timeout=WAIT))
        return received, info.value.code()

    try:
        # The caller's fault, after a message: the limit does not shrink.
        for code in [S.INVALID_ARGUMENT, S.NOT_FOUND, S.FAILED_PRECONDITION, S.OUT_OF_RANGE] * 5:
            received, seen = run(Fault(code, after=1))
            assert (len(received), seen) == (1, code)
        assert limit.limit == 20
        # The server's own failure, after a message: it counts.
        received, seen = run(Fault(S.INTERNAL, after=1))
        assert (len(received), seen) == (1, S.INTERNAL)
        assert limit.limit < 20
        assert limit.inflight == 0
    finally:
        channel.close()
        server.stop()


def test_streams_failing_midway_open_the_server_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=3, break_duration=60.0)
    with Server(ServerResilienceInterceptor(GrpcPolicies(methods={FAIL: Pipeline(breaker)}))) as server:
        fail = server.channel.unary_stream(FAIL)
        for _ in range(5):  # the caller's fault opens nothing
            call = fail(b"INVALID_ARGUMENT", timeout=WAIT)
            assert next(call) == b"first"
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            assert info.value.code() is S.INVALID_ARGUMENT
        assert breaker.state.name == "CLOSED"
        for _ in range(3):
            call = fail(b"bug", timeout=WAIT)
            assert next(call) == b"first"
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            assert info.value.code() is S.UNKNOWN
        assert breaker.state.name == "OPEN"
        assert _rejected(fail(b"bug", timeout=WAIT)) is S.RESOURCE_EXHAUSTED


def test_a_request_stream_is_bounded_until_its_handler_returns() -> None:
    limit = ConcurrencyLimit(1)
    server = Running(_echo(), (ServerResilienceInterceptor(GrpcPolicies(methods={CLIENT_STREAM: Pipeline(limit)})),))
    channel = grpc.insecure_channel(server.address)
    collect = callables(channel)[CLIENT_STREAM]
    requests = Requests(b"a")
    try:
        pending = collect.future(iter(requests), timeout=WAIT)
        _until(lambda: limit.inflight == 1, "the request stream's slot")
        with pytest.raises(grpc.RpcError) as info:
            collect(iter([b"x"]), timeout=WAIT)
        assert info.value.code() is S.RESOURCE_EXHAUSTED
        requests.put(b"b")
        requests.close()
        assert pending.result(WAIT) == b"a|b"
        _until(lambda: limit.inflight == 0, "the slot back")
        assert collect(iter([b"y"]), timeout=WAIT) == b"y"
    finally:
        requests.close()
        channel.close()
        server.stop()


def _echo() -> Any:
    from ._grpc_service import EchoService

    return EchoService()


# -- grpc.aio server --------------------------------------------------------------------------


class AioStreams:
    """The async handlers: ``Hold`` and ``Fail`` as async generators, ``Chat`` with
    ``context.read()``/``context.write()``, ``Big`` and ``Collect`` as in :class:`Streams`."""

    def __init__(self) -> None:
        self._gates: dict[bytes, asyncio.Event] = {}
        self.sent = 0

    def gate(self, name: bytes) -> asyncio.Event:
        return self._gates.setdefault(name, asyncio.Event())

    def open_all(self) -> None:
        for gate in self._gates.values():
            gate.set()

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        yield b"first"
        try:
            await asyncio.wait_for(self.gate(request).wait(), HANDLER_WAIT)
        except TimeoutError:
            return
        yield b"last"

    async def chat(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            await context.write(message)

    async def big(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        for _ in range(BIG_COUNT):
            self.sent += 1
            yield b"x" * BIG_MESSAGE

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        yield b"first"
        if request == b"bug":
            raise RuntimeError("handler bug after the first message")
        await context.abort(getattr(S, request.decode()), "scripted")

    async def collect(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"|".join([r async for r in requests])

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Hold": grpc.unary_stream_rpc_method_handler(self.hold),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
                "Big": grpc.unary_stream_rpc_method_handler(self.big),
                "Fail": grpc.unary_stream_rpc_method_handler(self.fail),
                "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
            },
        )


class AioServer:
    """A grpc.aio server of :class:`AioStreams` behind a guard, and a channel to it."""

    def __init__(self, guard: Any) -> None:
        self.streams = AioStreams()
        self.server = grpc.aio.server(interceptors=(guard,))
        self.server.add_generic_rpc_handlers((self.streams.handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def __aenter__(self) -> AioServer:
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.streams.open_all()
        await self.channel.close()
        await self.server.stop(None)


async def _rest(call: Any) -> list[bytes]:
    """The messages left on an aio call read with ``read()`` (the two styles do not mix)."""
    out: list[bytes] = []
    for _ in range(100):
        message = await call.read()
        if message is grpc.aio.EOF:
            return out
        out.append(message)
    raise AssertionError("a stream longer than expected")


async def _open_aio(server: AioServer, kind: str, name: bytes) -> tuple[Any, Callable[[], Any]]:
    """An aio stream started and read to its first message, and how to let it end."""
    if kind == "unary_stream":
        call = server.channel.unary_stream(HOLD)(name, timeout=WAIT)
        gate = server.streams.gate(name)

        async def finish() -> list[bytes]:
            gate.set()
            return await _rest(call)

    else:
        call = server.channel.stream_stream(CHAT)(timeout=WAIT)
        await call.write(name)

        async def finish() -> list[bytes]:
            await call.done_writing()
            return await _rest(call)

    return call, finish


async def _aio_rejected(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    return info.value.code()


@pytest.mark.parametrize("kind", ["unary_stream", "stream_stream"])
async def test_aio_a_concurrency_limit_bounds_a_response_stream_until_it_ends(kind: str) -> None:
    limit = ConcurrencyLimit(2)
    async with AioServer(AioServerResilienceInterceptor(Pipeline(limit))) as server:
        a, finish_a = await _open_aio(server, kind, b"a")
        b, _ = await _open_aio(server, kind, b"b")
        assert await a.read() != b""
        assert await b.read() != b""
        assert limit.inflight == 2
        c, _ = await _open_aio(server, kind, b"c")
        assert await _aio_rejected(c) is S.RESOURCE_EXHAUSTED
        b.cancel()
        await _auntil(lambda: limit.inflight == 1, "the cancelled stream's slot")
        d, finish_d = await _open_aio(server, kind, b"d")
        assert await d.read() != b""
        assert limit.inflight == 2
        assert await finish_a() == ([b"last"] if kind == "unary_stream" else [])
        assert await finish_d() == ([b"last"] if kind == "unary_stream" else [])
        await _auntil(lambda: limit.inflight == 0, "the ended streams' slots")
        e, finish_e = await _open_aio(server, kind, b"e")
        assert await e.read() != b""
        await finish_e()
        await _auntil(lambda: limit.inflight == 0, "the last stream's slot")


async def test_aio_a_stream_whose_deadline_passes_gives_its_slot_back() -> None:
    limit = ConcurrencyLimit(1)
    async with AioServer(AioServerResilienceInterceptor(Pipeline(limit))) as server:
        call = server.channel.unary_stream(HOLD)(b"slow", timeout=0.5)
        assert await call.read() == b"first"
        assert limit.inflight == 1
        await _auntil(lambda: limit.inflight == 0, "the slot of the stream past its deadline")
        assert await call.code() is S.DEADLINE_EXCEEDED


async def test_aio_a_slow_reader_that_cancels_gives_its_slot_back() -> None:
    limit = ConcurrencyLimit(1)
    async with AioServer(AioServerResilienceInterceptor(Pipeline(limit))) as server:
        call = server.channel.unary_stream(BIG)(b"", timeout=WAIT)
        assert len(await call.read()) == BIG_MESSAGE
        await _auntil(lambda: server.streams.sent > 1, "the server to send ahead")
        assert await _aio_rejected(server.channel.unary_stream(BIG)(b"", timeout=WAIT)) is S.RESOURCE_EXHAUSTED
        assert server.streams.sent < BIG_COUNT  # the handler waits for the reader
        call.cancel()
        await _auntil(lambda: limit.inflight == 0, "the slow reader's slot")
        assert server.streams.sent < BIG_COUNT


async def test_aio_a_stream_failing_after_its_first_message_counts_as_a_failure() -> None:
    limit = ConcurrencyLimit(AIMD(20, min_limit=1, max_limit=200))
    breaker = CircuitBreaker(failure_threshold=3, break_duration=60.0)
    guard = AioServerResilienceInterceptor(GrpcPolicies(methods={FAIL: Pipeline(breaker, limit)}))
    async with AioServer(guard) as server:
        fail = server.channel.unary_stream(FAIL)

        async def run(request: bytes) -> grpc.StatusCode:
            call = fail(request, timeout=WAIT)
            assert await call.read() == b"first"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            return info.value.code()

        for code in [S.INVALID_ARGUMENT, S.NOT_FOUND, S.PERMISSION_DENIED, S.OUT_OF_RANGE] * 5:
            assert await run(code.name.encode()) is code
        assert limit.limit == 20
        assert breaker.state.name == "CLOSED"
        assert await run(b"INTERNAL") is S.INTERNAL
        assert limit.limit < 20
        for _ in range(2):
            assert await run(b"bug") is S.UNKNOWN
        assert breaker.state.name == "OPEN"
        assert await _aio_rejected(fail(b"bug", timeout=WAIT)) is S.RESOURCE_EXHAUSTED
        assert limit.inflight == 0


async def test_aio_a_request_stream_is_bounded_until_its_handler_returns() -> None:
    limit = ConcurrencyLimit(1)
    async with AioServer(AioServerResilienceInterceptor(Pipeline(limit))) as server:
        collect = server.channel.stream_unary(COLLECT)
        call = collect(timeout=WAIT)
        await call.write(b"a")
        await _auntil(lambda: limit.inflight == 1, "the request stream's slot")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(iter([b"x"]), timeout=WAIT)
        assert info.value.code() is S.RESOURCE_EXHAUSTED
        await call.write(b"b")
        await call.done_writing()
        assert await call == b"a|b"
        await _auntil(lambda: limit.inflight == 0, "the slot back")
        assert await collect(iter([b"y"]), timeout=WAIT) == b"y"
