"""Cost of the gRPC adapters on loopback unary calls: bare channel vs interceptors vs the discovery channel.

Run: ``.venv/bin/python benchmarks/grpc_interceptors.py [--calls N] [--rounds R]``.

One in-process server (sync, 127.0.0.1:0) answers every call with its request. For each
client (sync and grpc.aio) the script times N calls per round, alternating the variants
round by round so that a noisy neighbour hits all of them alike, and keeps each variant's
best round (µs per call). The pipeline is the full one: Timeout + Retry + CircuitBreaker +
TokenBucket + Bulkhead, all on the success path (nothing is retried or rejected).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
import grpc.aio

from interceptors.grpc import MethodPolicy, ResilienceInterceptor
from interceptors.grpc_aio import aio_interceptors
from interceptors.grpc_channel import AioResilientChannel, ResilientChannel
from resilience import Bulkhead, CircuitBreaker, Pipeline, Retry, StaticDiscovery, Timeout, TokenBucket

METHOD = "/bench.Echo/Unary"


def _identity(value: bytes) -> bytes:
    return value


class _PassThrough(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Does nothing: what grpc's interception machinery costs by itself."""

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(client_call_details, request)


class _AioPassThrough(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(client_call_details, request)


def _policy() -> MethodPolicy:
    pipeline = Pipeline(Timeout(5.0), Retry(3), CircuitBreaker(), TokenBucket(1e9, burst=1_000_000), Bulkhead(256))
    return MethodPolicy(pipeline, idempotent=True)


def _start_server() -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: r, _identity, _identity)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _time_sync(call: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


async def _time_aio(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls * 1e6


def bench_sync(address: str, calls: int, rounds: int) -> dict[str, list[float]]:
    bare = grpc.insecure_channel(address)
    passthrough = grpc.intercept_channel(grpc.insecure_channel(address), _PassThrough())
    intercepted = grpc.intercept_channel(grpc.insecure_channel(address), ResilienceInterceptor(_policy()))
    resilient = ResilientChannel("bench", StaticDiscovery({"bench": [address]}), None, _policy())
    variants = {
        "bare channel": bare.unary_unary(METHOD, _identity, _identity),
        "no-op interceptor (grpc alone)": passthrough.unary_unary(METHOD, _identity, _identity),
        "interceptor + pipeline": intercepted.unary_unary(METHOD, _identity, _identity),
        "discovery channel + pipeline": resilient.unary_unary(METHOD, _identity, _identity),
    }
    try:
        for fn in variants.values():  # warm up connections and caches
            _time_sync(lambda fn=fn: fn(b"x", timeout=5), 200)
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                runs[name].append(_time_sync(lambda fn=fn: fn(b"x", timeout=5), calls))
        return runs
    finally:
        bare.close()
        passthrough.close()
        intercepted.close()
        resilient.close()


async def bench_aio(address: str, calls: int, rounds: int) -> dict[str, list[float]]:
    bare = grpc.aio.insecure_channel(address)
    passthrough = grpc.aio.insecure_channel(address, interceptors=[_AioPassThrough()])
    intercepted = grpc.aio.insecure_channel(address, interceptors=aio_interceptors(_policy()))
    resilient = AioResilientChannel("bench", StaticDiscovery({"bench": [address]}), None, _policy())
    variants = {
        "bare channel": bare.unary_unary(METHOD, _identity, _identity),
        "no-op interceptor (grpc alone)": passthrough.unary_unary(METHOD, _identity, _identity),
        "interceptors + pipeline": intercepted.unary_unary(METHOD, _identity, _identity),
        "discovery channel + pipeline": resilient.unary_unary(METHOD, _identity, _identity),
    }
    try:
        for fn in variants.values():
            await _time_aio(lambda fn=fn: fn(b"x", timeout=5), 200)
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                runs[name].append(await _time_aio(lambda fn=fn: fn(b"x", timeout=5), calls))
        return runs
    finally:
        await bare.close()
        await passthrough.close()
        await intercepted.close()
        await resilient.close()


def _table(title: str, runs: dict[str, list[float]]) -> None:
    # Each round times every variant back to back, so a round's ratio to the bare channel
    # is little moved by a neighbour's load; the median of those ratios is the figure.
    bare = runs["bare channel"]
    print(f"\n{title}")
    print(f"{'variant':32} {'best µs':>8} {'median ratio':>13} {'added':>8}")
    for name, values in runs.items():
        ratio = statistics.median(v / b for v, b in zip(values, bare, strict=True))
        print(f"{name:32} {min(values):8.1f} {ratio:13.3f} {100 * (ratio - 1):7.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls per variant per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()
    calls = max(1, min(args.calls, 100_000))
    rounds = max(1, min(args.rounds, 50))
    server, address = _start_server()
    try:
        sync = bench_sync(address, calls, rounds)
        aio = asyncio.run(bench_aio(address, calls, rounds))
    finally:
        server.stop(None)
    print(f"gRPC loopback unary calls, {calls} calls x {rounds} rounds; Python {sys.version.split()[0]}")
    print("pipeline: Timeout + Retry + CircuitBreaker + TokenBucket + Bulkhead (success path)")
    _table("sync (grpc)   goal: <= 5% added", sync)
    _table("asyncio (grpc.aio)   goal: <= 10% added", aio)


if __name__ == "__main__":
    main()
