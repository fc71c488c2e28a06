"""Server-side interceptors: shedding with pushback (seen and honoured by our client), authentication."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from interceptors._grpc_common import GrpcPolicies, MethodPolicy
from interceptors.grpc import ResilienceInterceptor
from interceptors.grpc_aio import aio_interceptors
from interceptors.grpc_server import AioServerResilienceInterceptor, ServerResilienceInterceptor, current_principal
from resilience.pipeline import Pipeline
from resilience.policies.backoff import Constant
from resilience.policies.concurrency import ConcurrencyLimit
from resilience.policies.retry import Retry
from resilience.policies.token_bucket import TokenBucket

from ._grpc_service import SERVER_STREAM, UNARY, Running, callables

S = grpc.StatusCode


def _keys(metadata: Any, method: str) -> Any:
    key = dict(metadata).get("x-api-key")
    return f"user:{key}" if key in ("k1", "k2") else None


def test_rate_limited_call_is_rejected_with_pushback_and_our_client_waits_it_out() -> None:
    guard = ServerResilienceInterceptor(GrpcPolicies(methods={UNARY: Pipeline(TokenBucket(10.0, burst=1))}))
    server = Running(_service(), (guard,))
    bare = grpc.insecure_channel(server.address)
    retrying = grpc.intercept_channel(
        grpc.insecure_channel(server.address),
        ResilienceInterceptor(MethodPolicy(Pipeline(Retry(3, backoff=Constant(5.0))), idempotent=True)),
    )
    try:
        unary = callables(bare)[UNARY]
        assert unary(b"a") == b"a"
        with pytest.raises(grpc.RpcError) as info:
            unary(b"b")
        assert info.value.code() is S.RESOURCE_EXHAUSTED
        pushback = dict(info.value.trailing_metadata())["grpc-retry-pushback-ms"]
        assert 0 < int(pushback) <= 100
        started = time.monotonic()
        assert callables(retrying)[UNARY](b"c", timeout=5) == b"c"  # rejected, waits the pushback, passes
        elapsed = time.monotonic() - started
        assert 0.03 <= elapsed < 2.0  # the pushback (<= 0.1 s), not the 5 s backoff
    finally:
        bare.close()
        retrying.close()
        server.stop()
    assert server.service.count(UNARY) == 2  # rejected calls never reach the handler


def test_concurrency_limit_sheds_with_the_default_pushback() -> None:
    limit = ConcurrencyLimit(1)
    guard = ServerResilienceInterceptor(Pipeline(limit), default_pushback=0.02)
    service = _service()
    server = Running(service, (guard,))
    channel = grpc.insecure_channel(server.address)
    try:
        unary = callables(channel)[UNARY]
        service.release.clear()
        results: list[bytes] = []
        first = threading.Thread(target=lambda: results.append(unary(b"slow", timeout=5)))
        first.start()
        for _ in range(500):
            if limit.inflight:
                break
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            unary(b"b", timeout=5)
        assert info.value.code() is S.RESOURCE_EXHAUSTED
        assert dict(info.value.trailing_metadata())["grpc-retry-pushback-ms"] == "20"
        service.release.set()
        first.join(5)
        assert results == [b"slow"]
        assert limit.inflight == 0
        assert list(callables(channel)[SERVER_STREAM](b"s", timeout=5)) == [b"s0", b"s1", b"s2"]
    finally:
        service.release.set()
        channel.close()
        server.stop()


def test_authentication_hook() -> None:
    seen: list[Any] = []

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(current_principal())
        return request

    guard = ServerResilienceInterceptor(authenticate=_keys)
    server = grpc.server(_pool(), interceptors=(guard,))
    server.add_generic_rpc_handlers((_generic({"Me": grpc.unary_unary_rpc_method_handler(handler)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        me = channel.unary_unary("/test.Who/Me")
        assert me(b"x", metadata=(("x-api-key", "k1"),), timeout=5) == b"x"
        for metadata in ((("x-api-key", "nope"),), None):
            with pytest.raises(grpc.RpcError) as info:
                me(b"x", metadata=metadata, timeout=5)
            assert info.value.code() is S.UNAUTHENTICATED
    finally:
        channel.close()
        server.stop(None)
    assert seen == ["user:k1"]
    assert current_principal() is None


def test_a_failing_hook_rejects_and_bad_options_are_refused() -> None:
    def broken(metadata: Any, method: str) -> Any:
        raise RuntimeError("backend down")

    server = Running(_service(), (ServerResilienceInterceptor(authenticate=broken),))
    channel = grpc.insecure_channel(server.address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            list(callables(channel)[SERVER_STREAM](b"s", timeout=5))
        assert info.value.code() is S.UNAUTHENTICATED
    finally:
        channel.close()
        server.stop()
    with pytest.raises(TypeError, match="authenticate must be"):
        ServerResilienceInterceptor(authenticate="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="default_pushback"):
        ServerResilienceInterceptor(default_pushback=-1)


# -- grpc.aio server -----------------------------------------------------------------------------


async def _aio_unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request + str(current_principal()).encode()


async def _aio_stream(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    for i in range(2):
        yield request + str(i).encode()


async def test_aio_server_sheds_authenticates_and_our_aio_client_honours_pushback() -> None:
    async def authenticate(metadata: Any, method: str) -> Any:
        await asyncio.sleep(0)
        return _keys(metadata, method)

    guard = AioServerResilienceInterceptor(
        GrpcPolicies(methods={"test.Who": Pipeline(TokenBucket(10.0, burst=1))}), authenticate=authenticate
    )
    server = grpc.aio.server(interceptors=(guard,))
    server.add_generic_rpc_handlers(
        (
            _generic(
                {
                    "Me": grpc.unary_unary_rpc_method_handler(_aio_unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(_aio_stream),
                }
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    key = (("x-api-key", "k2"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as bare:
            me = bare.unary_unary("/test.Who/Me")
            assert await me(b"x", metadata=key, timeout=5) == b"xuser:k2"
            with pytest.raises(grpc.RpcError) as info:
                await me(b"x", metadata=key, timeout=5)
            assert info.value.code() is S.RESOURCE_EXHAUSTED
            trailing = info.value.trailing_metadata()
            assert trailing is not None
            assert 0 < int(dict(trailing)["grpc-retry-pushback-ms"]) <= 100
            with pytest.raises(grpc.RpcError) as info:
                await me(b"x", timeout=5)
            assert info.value.code() is S.UNAUTHENTICATED
        policies = MethodPolicy(Pipeline(Retry(3, backoff=Constant(5.0))), idempotent=True)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=aio_interceptors(policies)) as channel:
            started = time.monotonic()
            stream = channel.unary_stream("/test.Who/Stream")
            assert [m async for m in stream(b"s", metadata=key, timeout=5)] == [b"s0", b"s1"]
            assert await channel.unary_unary("/test.Who/Me")(b"y", metadata=key, timeout=5) == b"yuser:k2"
            assert time.monotonic() - started < 2.0
    finally:
        await server.stop(None)


# -- helpers --------------------------------------------------------------------------------------


def _service() -> Any:
    from ._grpc_service import EchoService

    return EchoService()


def _pool() -> Any:
    from concurrent import futures

    return futures.ThreadPoolExecutor(max_workers=4)


def _generic(handlers: dict[str, Any]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("test.Who", handlers)


def test_aborts_for_the_callers_fault_do_not_shrink_an_adaptive_limit() -> None:
    """Issue 9, item 13: 20 bad requests used to take an AIMD limit from 20 to 1."""
    from resilience.policies.concurrency import AIMD

    from ._grpc_service import Fault

    limit = ConcurrencyLimit(AIMD(20, min_limit=1, max_limit=200))
    guard = ServerResilienceInterceptor(GrpcPolicies(methods={UNARY: Pipeline(limit)}))
    server = Running(_service(), (guard,))
    channel = grpc.insecure_channel(server.address)
    try:
        unary = callables(channel)[UNARY]
        for code in [S.INVALID_ARGUMENT, S.NOT_FOUND, S.PERMISSION_DENIED, S.FAILED_PRECONDITION] * 5:
            server.service.script(UNARY, Fault(code))
            with pytest.raises(grpc.RpcError) as info:
                unary(b"bad", timeout=5)
            assert info.value.code() is code  # the caller sees the handler's own status
        assert limit.limit == 20
        # A handler's own failure still counts.
        server.service.script(UNARY, Fault(S.INTERNAL))
        with pytest.raises(grpc.RpcError):
            unary(b"boom", timeout=5)
        assert limit.limit < 20
        assert limit.inflight == 0
    finally:
        channel.close()
        server.stop()


async def test_aio_aborts_for_the_callers_fault_do_not_shrink_an_adaptive_limit() -> None:
    from resilience.policies.concurrency import AIMD

    limit = ConcurrencyLimit(AIMD(20, min_limit=1, max_limit=200))

    class Service:
        async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if request == b"bad":
                await context.abort(S.INVALID_ARGUMENT, "bad request")
            raise RuntimeError("handler bug")

    handler = grpc.unary_unary_rpc_method_handler(Service().unary)
    generic = grpc.method_handlers_generic_handler("t.S", {"U": handler})
    server = grpc.aio.server(
        interceptors=[AioServerResilienceInterceptor(GrpcPolicies(methods={"/t.S/U": Pipeline(limit)}))]
    )
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.S/U")
            for _ in range(20):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(b"bad", timeout=5)
                assert info.value.code() is S.INVALID_ARGUMENT
            assert limit.limit == 20
            with pytest.raises(grpc.aio.AioRpcError):
                await call(b"x", timeout=5)
            assert limit.limit < 20
    finally:
        await server.stop(None)
