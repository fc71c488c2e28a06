"""What the resilient httpx transports add to a request, sync and async, in one run.

Run: ``.venv/bin/python benchmarks/httpx_transport.py [--quick]``.

Two backends:

- ``httpx.MockTransport`` answering at once: shows the transport's own cost in isolation
  (the bare figure is httpx's client machinery alone).
- a real HTTP/1.1 server on 127.0.0.1, in a separate process (so its work does not share
  our GIL), answering ``200 ok`` on keep-alive connections: the figure the goal is about
  (at most 5% added to a real loopback request).

Each case runs the bare client and the resilient client in alternation, several rounds;
the figure kept for each is the best round (µs per request), the least disturbed on a
shared machine. The pipeline is a full one: Timeout(total) + Retry + CircuitBreaker +
TokenBucket + Bulkhead + Timeout(attempt), with the policies that exist in the tree.
Nothing here is asserted; the table is for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from interceptors.httpx import AsyncResilientTransport, ResilientTransport
from resilience.discovery.static import StaticDiscovery
from resilience.pipeline import Pipeline
from resilience.policies.bulkhead import Bulkhead
from resilience.policies.retry import Retry
from resilience.policies.timeout import Timeout
from resilience.policy import Policy

# -- the loopback server (run in a child process) ----------------------------------------------

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class _Http(asyncio.Protocol):
    """Answers each request head (GETs, no body) with the same small response."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]
            self.transport.write(_RESPONSE * count)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Serve until the parent closes our stdin.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


class LoopbackServer:
    def __enter__(self) -> LoopbackServer:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}/items"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the pipeline ------------------------------------------------------------------------------


def full_pipeline() -> tuple[Pipeline, list[str]]:
    policies: list[Policy] = [Timeout(30.0), Retry(3)]
    names = ["Timeout", "Retry"]
    try:
        from resilience.policies.circuit_breaker import CircuitBreaker

        policies.append(CircuitBreaker(failure_threshold=5))
        names.append("CircuitBreaker")
    except ImportError:
        pass
    try:
        from resilience.policies.token_bucket import TokenBucket

        policies.append(TokenBucket(rate=1e9, burst=1_000_000))
        names.append("TokenBucket")
    except ImportError:
        pass
    policies += [Bulkhead(64), Timeout(10.0)]
    names += ["Bulkhead", "Timeout"]
    return Pipeline(*policies), names


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


# -- timing ------------------------------------------------------------------------------------


def time_sync(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n / 1000


async def time_async(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        await fn()
    return (time.perf_counter_ns() - start) / n / 1000


def compare_sync(bare: Callable[[], Any], resilient: Callable[[], Any], n: int, rounds: int) -> tuple[float, float]:
    time_sync(bare, n // 10)  # warm up: connections, caches
    time_sync(resilient, n // 10)
    best_bare = best_res = float("inf")
    for _ in range(rounds):
        best_bare = min(best_bare, time_sync(bare, n))
        best_res = min(best_res, time_sync(resilient, n))
    return best_bare, best_res


async def compare_async(
    bare: Callable[[], Awaitable[Any]], resilient: Callable[[], Awaitable[Any]], n: int, rounds: int
) -> tuple[float, float]:
    await time_async(bare, n // 10)
    await time_async(resilient, n // 10)
    best_bare = best_res = float("inf")
    for _ in range(rounds):
        best_bare = min(best_bare, await time_async(bare, n))
        best_res = min(best_res, await time_async(resilient, n))
    return best_bare, best_res


Row = tuple[str, float, float]


def run_sync(url: str | None, n: int, rounds: int) -> list[Row]:
    pipeline, _ = full_pipeline()
    rows: list[Row] = []
    if url is None:
        target = "http://backend.test/items"
        bare = httpx.Client(transport=httpx.MockTransport(ok))
        res = httpx.Client(transport=ResilientTransport(httpx.MockTransport(ok), pipeline=pipeline))
        discovery = StaticDiscovery({"backend": ["10.0.0.1:80", "10.0.0.2:80"]})
        disc = httpx.Client(
            transport=ResilientTransport(httpx.MockTransport(ok), pipeline=pipeline, discovery=discovery)
        )
        with bare, res, disc:
            b, r = compare_sync(lambda: bare.get(target), lambda: res.get(target), n, rounds)
            rows.append(("sync, MockTransport", b, r))
            b, r = compare_sync(lambda: bare.get(target), lambda: disc.get("http://backend/items"), n, rounds)
            rows.append(("sync, MockTransport, discovery", b, r))
        return rows
    with (
        httpx.Client(transport=httpx.HTTPTransport()) as bare,
        httpx.Client(transport=ResilientTransport(pipeline=pipeline)) as res,
    ):
        b, r = compare_sync(lambda: bare.get(url), lambda: res.get(url), n, rounds)
        rows.append(("sync, loopback server", b, r))
    return rows


async def run_async(url: str | None, n: int, rounds: int) -> list[Row]:
    pipeline, _ = full_pipeline()
    rows: list[Row] = []
    if url is None:
        target = "http://backend.test/items"
        discovery = StaticDiscovery({"backend": ["10.0.0.1:80", "10.0.0.2:80"]})
        async with (
            httpx.AsyncClient(transport=httpx.MockTransport(ok)) as bare,
            httpx.AsyncClient(transport=AsyncResilientTransport(httpx.MockTransport(ok), pipeline=pipeline)) as res,
            httpx.AsyncClient(
                transport=AsyncResilientTransport(httpx.MockTransport(ok), pipeline=pipeline, discovery=discovery)
            ) as disc,
        ):
            b, r = await compare_async(lambda: bare.get(target), lambda: res.get(target), n, rounds)
            rows.append(("async, MockTransport", b, r))
            b, r = await compare_async(lambda: bare.get(target), lambda: disc.get("http://backend/items"), n, rounds)
            rows.append(("async, MockTransport, discovery", b, r))
        return rows
    async with (
        httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as bare,
        httpx.AsyncClient(transport=AsyncResilientTransport(pipeline=pipeline)) as res,
    ):
        b, r = await compare_async(lambda: bare.get(url), lambda: res.get(url), n, rounds)
        rows.append(("async, loopback server", b, r))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    n_mock, n_real, rounds = (2000, 500, 3) if args.quick else (10000, 2000, 7)
    _, names = full_pipeline()
    rows: list[Row] = []
    rows += run_sync(None, n_mock, rounds)
    rows += asyncio.run(run_async(None, n_mock, rounds))
    with LoopbackServer() as server:
        rows += run_sync(server.url, n_real, rounds)
        rows += asyncio.run(run_async(server.url, n_real, rounds))

    print(f"httpx {httpx.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"pipeline: {' + '.join(names)}; best of {rounds} rounds; µs per request")
    print()
    print(f"{'case':34s} {'bare':>9s} {'resilient':>10s} {'ratio':>7s} {'added':>9s} {'added %':>8s}")
    for name, bare_us, res_us in rows:
        added = res_us - bare_us
        print(
            f"{name:34s} {bare_us:9.1f} {res_us:10.1f} {res_us / bare_us:7.3f} {added:9.1f} {added / bare_us * 100:7.1f}%"
        )


if __name__ == "__main__":
    main()
