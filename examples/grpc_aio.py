"""grpc.aio: the same policies on asyncio channels, through interceptors or a discovery channel.

Run: ``.venv/bin/python examples/grpc_aio.py``

It starts two small ``grpc.aio`` servers on free 127.0.0.1 ports; each fails every other
call with UNAVAILABLE. Then:

1. a plain ``grpc.aio`` channel to the first server, with the resilience interceptors:
   every call succeeds, each after one retry;
2. an ``AioResilientChannel`` over both servers (service ``greeter``, static discovery):
   calls are balanced, a failed attempt is retried on the other server.

It exits 1 if a call fails or a server was never used.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

from interceptors.grpc import MethodPolicy
from interceptors.grpc_aio import aio_interceptors
from interceptors.grpc_channel_aio import AioResilientChannel
from resilience import Constant, Pipeline, Retry, RoundRobin, StaticDiscovery, Timeout

METHOD = "/demo.Greeter/SayHello"


class Greeter:
    """A toy ``demo.Greeter`` server that fails every other call, and counts them."""

    def __init__(self) -> None:
        self.calls = 0
        self.server = grpc.aio.server()
        self.address = ""

    async def say_hello(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.calls += 1
        if self.calls % 2 == 1:  # the 1st, 3rd, 5th... call fails
            await context.abort(grpc.StatusCode.UNAVAILABLE, "flaky on purpose")
        return b"hello, " + request

    async def start(self) -> Greeter:
        handler = grpc.unary_unary_rpc_method_handler(self.say_hello)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("demo.Greeter", {"SayHello": handler}),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()
        return self


async def main() -> None:
    # 2 s for the whole call, up to 3 attempts 10 ms apart; SayHello is safe to repeat.
    policy = MethodPolicy(Pipeline(Timeout(2.0), Retry(3, backoff=Constant(0.01))), idempotent=True)
    a, b = await Greeter().start(), await Greeter().start()
    try:
        # 1. Any grpc.aio channel: pass the interceptors (one per call kind) when making it.
        async with grpc.aio.insecure_channel(a.address, interceptors=aio_interceptors(policy)) as channel:
            say_hello = channel.unary_unary(METHOD)
            answers = [await say_hello(f"call {i}".encode(), timeout=5) for i in range(3)]
        print("interceptors:", answers, f"({a.calls} attempts for 3 calls)")
        assert answers == [b"hello, call 0", b"hello, call 1", b"hello, call 2"]
        assert a.calls == 6  # each call failed once and was retried

        # 2. The discovery-aware channel: one sub-channel per endpoint of "greeter".
        discovery = StaticDiscovery({"greeter": [a.address, b.address]})
        before = a.calls
        async with AioResilientChannel("greeter", discovery, RoundRobin(), policy) as balanced:
            say_hello = balanced.unary_unary(METHOD)
            answers = [await say_hello(f"balanced {i}".encode(), timeout=5) for i in range(4)]
        print("channel:", answers, f"(attempts: {a.calls - before} on a, {b.calls} on b)")
        assert answers == [f"hello, balanced {i}".encode() for i in range(4)]
        assert a.calls > before
        assert b.calls > 0
    finally:
        await asyncio.gather(a.server.stop(1), b.server.stop(1))  # with a grace: connections end cleanly


if __name__ == "__main__":
    asyncio.run(main())
