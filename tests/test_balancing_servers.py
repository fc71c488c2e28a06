"""P2C and outlier ejection against real servers on 127.0.0.1: a dead, a slow and a healthy replica.

Through the adapters as they stand (gRPC ``ResilientChannel`` and ``AioResilientChannel``, the
httpx transports) with static discovery. The balancer carries the ejection, so the adapters
need no argument of their own. The pipelines run on the real clock (durations must be real
for the EWMA), the loops are bounded in count and time, and nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest

from interceptors._grpc_common import MethodPolicy
from interceptors.grpc_channel import AioResilientChannel, ResilientChannel
from interceptors.httpx import AsyncResilientTransport, ResilientTransport
from resilience import (
    EndpointEjected,
    EndpointReturned,
    Event,
    OutlierEjection,
    PeakEwma,
    Pipeline,
    Retry,
    StaticDiscovery,
)
from resilience.balancing.pool import EndpointPool
from resilience.balancing.state import EndpointState
from resilience.outcome import Outcome
from resilience.policies.backoff import Constant

from ._grpc_service import UNARY, EchoService, Fault, Running, callables, start
from ._http_server import HttpServer, Reply, _Handler, _TCPServer

SLOW = 0.1
CALLS = 100  # at least this many calls before the first check
LIMIT = 30.0  # seconds any loop may run, at most


class _Watched(PeakEwma):
    """A :class:`PeakEwma` that tells the fleet of each sample it learns from."""

    def __init__(self, fleet: Fleet, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fleet = fleet

    def observe(self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float) -> None:
        super().observe(state, outcome, duration, now)
        self.fleet.saw(state.address, outcome, duration, self.cost(state))


class Fleet:
    """What the scenario needs to know of three replicas, whatever the protocol.

    The first phase is judged over a window of calls during which the healthy replica was
    the cheaper one in the balancer's view. On a shared machine the healthy replica may
    itself answer slowly once (a scheduling stall): P2C then rightly prefers the slow one
    until the peak has decayed, and the window starts again once the healthy one is
    cheaper again. The loops stay bounded by ``LIMIT``.
    """

    def __init__(self, dead: str, slow: str, healthy: str, counts: Callable[[], Counter[str]]) -> None:
        self.dead, self.slow, self.healthy = dead, slow, healthy
        self.counts = counts
        self.events: list[Event] = []
        self.costs: dict[str, float | None] = {}
        self.blips = 0  # samples of the healthy replica slower than the slow one's half, or failed
        self._blips_seen = 0
        self._recovering = False
        self.baseline: Counter[str] = Counter()
        self.window = 0  # calls in the current window

    def balancer(self) -> PeakEwma:
        ejection = OutlierEjection(
            consecutive_failures=2, base_ejection_time=0.5, max_ejection_percent=34, listeners=[self.events.append]
        )
        return _Watched(self, ejection=ejection)

    def saw(self, address: str, outcome: Outcome, duration: float, cost: float | None) -> None:
        self.costs[address] = cost
        if address == self.healthy and (outcome is Outcome.FAILURE or duration >= SLOW / 2):
            self.blips += 1

    def step(self) -> None:
        """One call of the first phase has returned."""
        if self.blips != self._blips_seen:
            self._blips_seen, self._recovering = self.blips, True
        if self._recovering:
            healthy, slow = self.costs.get(self.healthy), self.costs.get(self.slow)
            if healthy is None or slow is None or healthy >= slow:
                return
            self._recovering = False
            self.baseline, self.window = self.counts(), 0  # this call is before the window
            return
        self.window += 1

    def first_phase_done(self) -> bool:
        return self.window >= CALLS and self.ejected()

    def of(self, kind: type[EndpointEjected | EndpointReturned], address: str) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and e.address == address]

    def ejected(self) -> bool:
        return bool(self.of(EndpointEjected, self.dead))

    def check_first_phase(self, pool: EndpointPool[Any]) -> None:
        counts = self.counts() - self.baseline
        calls = self.window
        seen = (counts, self.window, f"{self.blips} slow samples of the healthy replica")
        assert calls >= CALLS, seen
        # P2C steers away from the dead one after its first failure; its probes (about one a
        # second) fail too, and a few in a row eject it.
        assert self.ejected(), self.events
        assert pool.outliers is not None and pool.outliers.ejected() in ([self.dead], [])
        # P2C: the slow one gets its first attempt and its probes, nothing more.
        assert counts[self.slow] <= max(6, calls // 10), seen
        assert counts[self.healthy] >= calls - counts[self.slow], seen

    def back(self) -> bool:
        return bool(self.of(EndpointReturned, self.dead)) and self.counts()[self.dead] >= 3


def _pipeline() -> Pipeline:
    return Pipeline(Retry(3, backoff=Constant(0.001), budget=None))


def _free_port() -> int:
    server = start()
    port = server.port
    server.stop()
    return port  # nothing listens there now: connections are refused


# -- gRPC ----------------------------------------------------------------------------------


class GrpcAt(Running):
    """A sync server of the test service on a given loopback port (to bring a dead replica back)."""

    def __init__(self, port: int) -> None:
        self.service = EchoService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((self.service.handler(),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port == port
        self.service.port = port
        self.address = f"127.0.0.1:{port}"
        self.server.start()


@pytest.fixture
def grpc_fleet() -> Iterator[tuple[Fleet, list[Running], int]]:
    dead_port = _free_port()
    slow, healthy = start(), start()
    slow.service.script(UNARY, *[Fault(delay=SLOW)] * 1000)
    servers: list[Running] = [slow, healthy]

    def counts() -> Counter[str]:
        return Counter({s.address: s.service.count(UNARY) for s in servers})

    fleet = Fleet(f"127.0.0.1:{dead_port}", slow.address, healthy.address, counts)
    try:
        yield fleet, servers, dead_port
    finally:
        for server in servers:
            server.stop()


# Reconnect soon after the replica comes back (gRPC's default backoff starts at 1 s).
_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)]


def test_grpc_p2c_avoids_the_slow_replica_and_ejects_the_dead_one_until_it_recovers(
    grpc_fleet: tuple[Fleet, list[Running], int],
) -> None:
    fleet, servers, dead_port = grpc_fleet
    discovery = StaticDiscovery({"echo": [fleet.dead, fleet.slow, fleet.healthy]})
    policy = MethodPolicy(_pipeline(), idempotent=True)
    with ResilientChannel("echo", discovery, fleet.balancer(), policy, options=_OPTIONS) as channel:
        unary = callables(channel)[UNARY]
        end = time.monotonic() + LIMIT
        while not fleet.first_phase_done() and time.monotonic() < end:
            assert unary(b"x", timeout=5) == b"x"
            fleet.step()
            time.sleep(0.002)
        fleet.check_first_phase(channel.pool)
        servers.append(GrpcAt(dead_port))  # the dead replica recovers
        end = time.monotonic() + LIMIT
        while not fleet.back() and time.monotonic() < end:
            assert unary(b"x", timeout=5) == b"x"
            time.sleep(0.01)
        assert fleet.back(), (fleet.counts(), fleet.events)
        assert set(channel.inflight().values()) == {0}


async def test_grpc_aio_p2c_avoids_the_slow_replica_and_ejects_the_dead_one_until_it_recovers(
    grpc_fleet: tuple[Fleet, list[Running], int],
) -> None:
    fleet, servers, dead_port = grpc_fleet
    discovery = StaticDiscovery({"echo": [fleet.dead, fleet.slow, fleet.healthy]})
    policy = MethodPolicy(_pipeline(), idempotent=True)
    async with AioResilientChannel("echo", discovery, fleet.balancer(), policy, options=_OPTIONS) as channel:
        unary = callables(channel)[UNARY]
        end = time.monotonic() + LIMIT
        while not fleet.first_phase_done() and time.monotonic() < end:
            assert await unary(b"x", timeout=5) == b"x"
            fleet.step()
            await asyncio.sleep(0.002)
        fleet.check_first_phase(channel.pool)
        servers.append(GrpcAt(dead_port))
        end = time.monotonic() + LIMIT
        while not fleet.back() and time.monotonic() < end:
            assert await unary(b"x", timeout=5) == b"x"
            await asyncio.sleep(0.01)
        assert fleet.back(), (fleet.counts(), fleet.events)


# -- HTTP ----------------------------------------------------------------------------------


class HttpAt(HttpServer):
    """An :class:`HttpServer` on a given loopback port (to bring a dead replica back)."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._at = port

    def start(self) -> HttpAt:
        server = _TCPServer.__new__(_TCPServer)
        server.owner = self
        socketserver.ThreadingTCPServer.__init__(server, ("127.0.0.1", self._at), _Handler)
        self._server = server
        self.port = self._at
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self


@pytest.fixture
def http_fleet() -> Iterator[tuple[Fleet, list[HttpServer], int]]:
    probe = HttpServer().start()
    dead_port = probe.port
    probe.stop()
    slow, healthy = HttpServer().start(), HttpServer().start()
    slow.default = Reply(delay=SLOW)
    servers = [slow, healthy]

    def counts() -> Counter[str]:
        return Counter({s.address: len(s.requests) for s in servers})

    fleet = Fleet(f"127.0.0.1:{dead_port}", slow.address, healthy.address, counts)
    try:
        yield fleet, servers, dead_port
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_httpx_p2c_avoids_the_slow_replica_and_ejects_the_dead_one_until_it_recovers(
    http_fleet: tuple[Fleet, list[HttpServer], int], mode: str
) -> None:
    fleet, servers, dead_port = http_fleet
    discovery = StaticDiscovery({"echo": [fleet.dead, fleet.slow, fleet.healthy]})
    balancer = fleet.balancer()

    def scenario(get: Callable[[], None], pool: Callable[[], EndpointPool[Any]]) -> Iterator[None]:
        end = time.monotonic() + LIMIT
        while not fleet.first_phase_done() and time.monotonic() < end:
            get()
            yield
            fleet.step()
        fleet.check_first_phase(pool())
        servers.append(HttpAt(dead_port).start())
        end = time.monotonic() + LIMIT
        while not fleet.back() and time.monotonic() < end:
            get()
            yield
        assert fleet.back(), (fleet.counts(), fleet.events)

    if mode == "sync":
        transport = ResilientTransport(pipeline=_pipeline(), discovery=discovery, balancer=balancer)
        with httpx.Client(transport=transport) as client:

            def get() -> None:
                assert client.get("http://echo/x", timeout=5).status_code == 200
                time.sleep(0.002)

            for _ in scenario(get, lambda: transport._router.pool("echo")):
                pass
        return

    async def main() -> None:
        transport = AsyncResilientTransport(pipeline=_pipeline(), discovery=discovery, balancer=balancer)
        async with httpx.AsyncClient(transport=transport) as client:
            pending: list[Awaitable[httpx.Response]] = []

            def get() -> None:
                pending.append(client.get("http://echo/x", timeout=5))

            for _ in scenario(get, lambda: transport._router.pool("echo")):
                response = await pending.pop()
                assert response.status_code == 200
                await asyncio.sleep(0.002)

    asyncio.run(main())
