"""A gRPC client whose policies come from ``examples/grpc_client_config.toml``, reloaded live.

Run: ``.venv/bin/python examples/grpc_client_config.py``

It starts two local ``demo.Greeter`` servers that fail the first attempt of every request
with UNAVAILABLE (an attempt sent again succeeds, on either server),
puts their addresses in the environment (the config reads ``${GREETER_1}`` and
``${GREETER_2}``), and then:

1. loads the config and calls through the interceptor on a plain channel, through the
   discovery-aware channel over both servers, and through ``grpc.aio``: ``SayHello`` is
   idempotent (retried past the failures), ``CreateOrder`` is not (its failure reaches the caller);
2. reloads a changed file that makes ``CreateOrder`` idempotent under the default set: the
   same channel and the same stub now retry it.

It exits 1 if any of that did not happen.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc

from resilience.config import load

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "grpc_client_config.toml"
SAY_HELLO = "/demo.Greeter/SayHello"
CREATE_ORDER = "/demo.Greeter/CreateOrder"


_seen: set[tuple[str, bytes]] = set()  # shared by both servers: a request's first attempt fails
_seen_lock = threading.Lock()


def start_server() -> tuple[grpc.Server, str]:
    """A server that fails the first attempt of each request with UNAVAILABLE."""

    def handler(name: str, answer: bytes) -> grpc.RpcMethodHandler:
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            with _seen_lock:
                first = (name, request) not in _seen
                _seen.add((name, request))
            if first:
                context.abort(grpc.StatusCode.UNAVAILABLE, "flaky on purpose")
            return answer + request

        return grpc.unary_unary_rpc_method_handler(call)

    generic = grpc.method_handlers_generic_handler(
        "demo.Greeter", {"SayHello": handler("SayHello", b"hello, "), "CreateOrder": handler("CreateOrder", b"order ")}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def create(stub: grpc.UnaryUnaryMultiCallable, request: bytes) -> str:
    try:
        return stub(request, timeout=5).decode()
    except grpc.RpcError as exc:
        return f"failed: {exc.code().name}"


def main() -> None:
    servers = [start_server(), start_server()]
    for i, (_, address) in enumerate(servers, 1):
        os.environ[f"GREETER_{i}"] = address
    workdir = Path(tempfile.mkdtemp(prefix="resilience-example-"))
    path = workdir / "resilience.toml"
    shutil.copy(CONFIG, path)
    try:
        with load(path).setup() as setup:
            print("config in force:\n" + setup.config.summary())
            # 1a. Any channel: add the interceptor.
            plain = grpc.intercept_channel(grpc.insecure_channel(servers[0][1]), setup.grpc_interceptor())
            with plain:
                say_hello = plain.unary_unary(SAY_HELLO)
                answers = [say_hello(f"call {i}".encode(), timeout=5).decode() for i in range(3)]
                print("interceptor:", answers)
                assert answers == [f"hello, call {i}" for i in range(3)]
            # 1b. The discovery channel of service "greeter": its balancer, its endpoints.
            with setup.grpc_channel("greeter") as channel:
                say_hello = channel.unary_unary(SAY_HELLO)
                create_order = channel.unary_unary(CREATE_ORDER)
                answers = [say_hello(f"balanced {i}".encode(), timeout=5).decode() for i in range(3)]
                print("channel:", answers)
                assert answers == [f"hello, balanced {i}" for i in range(3)]
                orders = [create(create_order, b"1"), create(create_order, b"2")]
                print("CreateOrder (not idempotent):", orders)
                assert orders == ["failed: UNAVAILABLE"] * 2  # not retried

                # 1c. grpc.aio, through its interceptors.
                async def aio_calls() -> list[str]:
                    interceptors = setup.grpc_aio_interceptors()
                    async with grpc.aio.insecure_channel(servers[1][1], interceptors=interceptors) as aio:
                        call = aio.unary_unary(SAY_HELLO)
                        return [(await call(f"aio {i}".encode(), timeout=5)).decode() for i in range(3)]

                answers = asyncio.run(aio_calls())
                print("aio:", answers)
                assert answers == [f"hello, aio {i}" for i in range(3)]

                # 2. A reload: CreateOrder becomes idempotent under the default set.
                text = path.read_text().replace("idempotent = false           # never sent twice", "idempotent = true")
                path.write_text(text.replace('policy = "writes"', 'policy = "default"'))
                result = setup.reload(path)
                print("reloaded:", result.applied, "; ".join(result.changes) or "(method settings)")
                assert result.applied
                orders = [create(create_order, b"3"), create(create_order, b"4")]
                print("CreateOrder (now retried):", orders)
                assert orders == ["order 3", "order 4"]
    finally:
        for server, _ in servers:
            server.stop(None)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
