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
import functools
import os
import platform
import statistics
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


Row = tuple[str, float, float, float]  # name, best bare, best resilient, median ratio
Case = tuple[str, Callable[[], Any]]


def compare_sync(backend: str, bare: Callable[[], Any], cases: list[Case], n: int, rounds: int) -> list[Row]:
    """Time the bare call and each case in turn, ``rounds`` times (see :func:`_rows`)."""
    for fn in [bare] + [fn for _, fn in cases]:
        time_sync(fn, n // 10)  # warm up: connections, caches
    bares: list[float] = []
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):
        bares.append(time_sync(bare, n))
        for i, (_, fn) in enumerate(cases):
            times[i].append(time_sync(fn, n))
    return _rows(f"sync, {backend}", cases, bares, times)


def _rows(prefix: str, cases: list[Any], bares: list[float], times: list[list[float]]) -> list[Row]:
    # A round times the bare call and every case back to back: its ratios are little moved by
    # a neighbour's load, and the median of the rounds' ratios is the figure reported.
    return [
        (
            f"{prefix}, {label}",
            min(bares),
            min(values),
            statistics.median(v / b for v, b in zip(values, bares, strict=True)),
        )
        for (label, _), values in zip(cases, times, strict=True)
    ]


async def compare_async(
    backend: str,
    bare: Callable[[], Awaitable[Any]],
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]],
    n: int,
    rounds: int,
) -> list[Row]:
    for fn in [bare] + [fn for _, fn in cases]:
        await time_async(fn, n // 10)
    bares: list[float] = []
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):
        bares.append(await time_async(bare, n))
        for i, (_, fn) in enumerate(cases):
            times[i].append(await time_async(fn, n))
    return _rows(f"async, {backend}", cases, bares, times)


def pipelines() -> list[tuple[str, Pipeline]]:
    full, _ = full_pipeline()
    return [
        ("no policy", Pipeline()),
        ("Timeout+Retry+Bulkhead", Pipeline(Timeout(30.0), Retry(3), Bulkhead(64))),
        ("full pipeline", full),
    ]


_DISCOVERY = {"backend": ["10.0.0.1:80", "10.0.0.2:80"]}


def run_sync(url: str | None, n: int, rounds: int) -> list[Row]:
    clients: list[tuple[str, httpx.Client, str]] = []
    if url is None:
        backend, target = "MockTransport", "http://backend.test/items"
        bare = httpx.Client(transport=httpx.MockTransport(ok))
        for label, pipeline in pipelines():
            transport = ResilientTransport(httpx.MockTransport(ok), pipeline=pipeline)
            clients.append((label, httpx.Client(transport=transport), target))
        transport = ResilientTransport(
            httpx.MockTransport(ok), pipeline=full_pipeline()[0], discovery=StaticDiscovery(_DISCOVERY)
        )
        clients.append(("full + discovery", httpx.Client(transport=transport), "http://backend/items"))
    else:
        backend, target = "loopback", url
        bare = httpx.Client(transport=httpx.HTTPTransport())
        # Control: a second bare client timed like the cases. What it shows as "added" is the
        # bias of the method itself (order in the round, the server's share of the 2 cores).
        clients.append(("control: another bare client", httpx.Client(transport=httpx.HTTPTransport()), url))
        for label, pipeline in pipelines():
            clients.append((label, httpx.Client(transport=ResilientTransport(pipeline=pipeline)), url))
    try:
        cases: list[Case] = [(label, functools.partial(c.get, u)) for label, c, u in clients]
        return compare_sync(backend, functools.partial(bare.get, target), cases, n, rounds)
    finally:
        bare.close()
        for _, client, _ in clients:
            client.close()


async def run_async(url: str | None, n: int, rounds: int) -> list[Row]:
    clients: list[tuple[str, httpx.AsyncClient, str]] = []
    if url is None:
        backend, target = "MockTransport", "http://backend.test/items"
        bare = httpx.AsyncClient(transport=httpx.MockTransport(ok))
        for label, pipeline in pipelines():
            transport = AsyncResilientTransport(httpx.MockTransport(ok), pipeline=pipeline)
            clients.append((label, httpx.AsyncClient(transport=transport), target))
        transport = AsyncResilientTransport(
            httpx.MockTransport(ok), pipeline=full_pipeline()[0], discovery=StaticDiscovery(_DISCOVERY)
        )
        clients.append(("full + discovery", httpx.AsyncClient(transport=transport), "http://backend/items"))
    else:
        backend, target = "loopback", url
        bare = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport())
        clients.append(("control: another bare client", httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()), url))
        for label, pipeline in pipelines():
            clients.append((label, httpx.AsyncClient(transport=AsyncResilientTransport(pipeline=pipeline)), url))
    try:
        cases = [(label, functools.partial(c.get, u)) for label, c, u in clients]
        return await compare_async(backend, functools.partial(bare.get, target), cases, n, rounds)
    finally:
        await bare.aclose()
        for _, client, _ in clients:
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    n_mock, n_real, rounds = (2000, 500, 3) if args.quick else (5000, 1000, 15)
    _, names = full_pipeline()
    rows: list[Row] = []
    rows += run_sync(None, n_mock, rounds)
    rows += asyncio.run(run_async(None, n_mock, rounds))
    with LoopbackServer() as server:
        rows += run_sync(server.url, n_real, rounds)
        rows += asyncio.run(run_async(server.url, n_real, rounds))

    print(f"httpx {httpx.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"full pipeline: {' + '.join(names)}; {rounds} rounds")
    print("µs per request: best round; ratio: median over rounds of resilient / bare in the same round")
    print()
    print(f"{'case':48s} {'bare µs':>9s} {'resilient µs':>13s} {'ratio':>7s} {'added %':>8s}")
    for name, bare_us, res_us, ratio in rows:
        print(f"{name:48s} {bare_us:9.1f} {res_us:13.1f} {ratio:7.3f} {(ratio - 1) * 100:7.1f}%")


if __name__ == "__main__":
    main()
