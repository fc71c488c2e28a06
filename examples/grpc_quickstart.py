"""gRPC quickstart: a flaky local server, a client that rides it out.

Run: ``.venv/bin/python examples/grpc_quickstart.py``

It starts a server on 127.0.0.1 that fails every other call with UNAVAILABLE and sheds
load past 50 calls per second (RESOURCE_EXHAUSTED with a ``grpc-retry-pushback-ms`` hint),
then calls it through a plain channel with the resilience interceptor, and through the
discovery-aware channel over two server instances. It exits 1 unless every call succeeded.
"""

from __future__ import annotations

import itertools
from concurrent import futures

import grpc

from interceptors.grpc import GrpcPolicies, MethodPolicy, ResilienceInterceptor
from interceptors.grpc_channel import resilient_channel
from interceptors.grpc_server import ServerResilienceInterceptor
from resilience import (
    CircuitBreaker,
    ExponentialJitter,
    Pipeline,
    Retry,
    RoundRobin,
    StaticDiscovery,
    Timeout,
    TokenBucket,
)

METHOD = "/demo.Greeter/SayHello"


def start_server() -> tuple[grpc.Server, str]:
    """A server whose every other call fails, behind a rate limit that sheds with pushback."""
    counter = itertools.count()

    def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        if next(counter) % 2 == 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "flaky on purpose")
        return b"hello, " + request

    handler = grpc.method_handlers_generic_handler(
        "demo.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
    )
    guard = ServerResilienceInterceptor(Pipeline(TokenBucket(50.0, burst=10)))  # sheds past 50 calls/s
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[guard])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def main() -> None:
    # Client policies, outermost first: 2 s for the whole call, up to 4 attempts with backoff
    # (or the server's pushback), a breaker per process.
    pipeline = Pipeline(Timeout(2.0), Retry(4, backoff=ExponentialJitter(0.02, 2.0, 0.5)), CircuitBreaker())
    policies = GrpcPolicies(MethodPolicy(pipeline, idempotent=True))  # SayHello is safe to repeat

    server_a, address_a = start_server()
    server_b, address_b = start_server()
    try:
        # 1. Any existing channel: add the interceptor.
        channel = grpc.intercept_channel(grpc.insecure_channel(address_a), ResilienceInterceptor(policies))
        say_hello = channel.unary_unary(METHOD)
        answers = [say_hello(f"call {i}".encode(), timeout=5) for i in range(3)]
        print("interceptor:", answers)
        assert answers == [b"hello, call 0", b"hello, call 1", b"hello, call 2"]  # every failure retried
        channel.close()

        # 2. The discovery-aware channel: one sub-channel per endpoint, retries go elsewhere.
        discovery = StaticDiscovery({"greeter": [address_a, address_b]})
        with resilient_channel("greeter", discovery, RoundRobin(), policies) as balanced:
            say_hello = balanced.unary_unary(METHOD)
            answers = [say_hello(f"balanced {i}".encode(), timeout=5) for i in range(3)]
            print("channel:", answers)
            assert answers == [b"hello, balanced 0", b"hello, balanced 1", b"hello, balanced 2"]
    finally:
        server_a.stop(None)
        server_b.stop(None)


if __name__ == "__main__":
    main()
