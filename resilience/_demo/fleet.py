"""The demo's embedded fleet: HTTP and gRPC replicas on loopback, with seeded faults.

Every server runs on one event loop in a thread of its own (:class:`Fleet`): a small
HTTP/1.1 server (keep-alive, ``GET`` answered with the replica's name) and a ``grpc.aio``
server of ``demo.Echo/Unary`` (bytes in, the replica's name out; generic handlers, no
generated code). Each request meets its replica's :class:`Behaviour`: the project's own
:class:`~resilience.FaultInjection` policies, seeded, decide whether it fails at once (``503``,
``UNAVAILABLE``), waits (the slow tail) or answers at once.
:meth:`Fleet.kill` closes a replica's port (new connections are refused, open ones cut) and
:meth:`Fleet.revive` listens on the same port again.

Each request names its client (header ``x-demo-client``, metadata ``x-demo-client``), so the
replicas count what each client sent them: the shares shown are the servers' own counts.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio

from ..clock import Clock
from ..pipeline import Pipeline
from ..policies.fault import FaultInjection

__all__ = ["GRPC_METHOD", "GRPC_SERVICE", "Behaviour", "Fleet", "InjectedFailure", "Replica"]

GRPC_SERVICE = "demo.Echo"
GRPC_METHOD = f"/{GRPC_SERVICE}/Unary"
CLIENT_HEADER = "x-demo-client"

T = TypeVar("T")


class InjectedFailure(Exception):
    """The fault a flaky replica's :class:`Behaviour` injects: answered as ``503`` or ``UNAVAILABLE``."""


async def _answer() -> None:
    return None


@dataclass
class Behaviour:
    """How a replica answers: ``FaultInjection`` policies in front of its handler, seeded.

    A request first meets the errors (``error_share`` of them fail at once), then, if it did
    not fail, the slow tail (``slow_share`` of them wait ``slow_delay`` on the pipeline's
    clock): two :class:`~resilience.FaultInjection` policies in one :class:`~resilience.Pipeline`,
    drawing from one generator seeded with ``seed``, so a run replays exactly.

    Attributes:
        error_share: the share of requests that fail at once (0..1).
        slow_share: the share of the others that wait ``slow_delay`` seconds (0..1).
        slow_delay: seconds a slow answer waits, drawn uniformly from the pair.
        seed: the seed of the draws.
        clock: the pipeline's clock (default the real one; a FakeClock in tests).
    """

    error_share: float = 0.0
    slow_share: float = 0.0
    slow_delay: tuple[float, float] = (0.3, 0.6)
    seed: int = 0
    clock: Clock | None = field(default=None, repr=False)
    faults: tuple[FaultInjection, ...] = field(init=False, repr=False)
    pipeline: Pipeline | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("error_share", "slow_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value!r}")
        low, high = self.slow_delay
        if not 0.0 <= low <= high:
            raise ValueError(f"slow_delay must be a pair 0 <= low <= high, got {self.slow_delay!r}")
        rng = random.Random(self.seed)
        faults: list[FaultInjection] = []
        if self.error_share:
            faults.append(FaultInjection(self.error_share, error=InjectedFailure, rng=rng, name="errors"))
        if self.slow_share:
            faults.append(FaultInjection(self.slow_share, delay=self.slow_delay, rng=rng, name="slow tail"))
        self.faults = tuple(faults)
        if not faults:
            self.pipeline = None  # healthy: answered at once, without a task
        elif self.clock is None:
            self.pipeline = Pipeline(*faults)
        else:
            self.pipeline = Pipeline(*faults, clock=self.clock)

    async def meet(self) -> bool:
        """Meets this request's faults: ``False`` if it is to fail, ``True`` once it may be answered."""
        if self.pipeline is None:
            return True
        try:
            await self.pipeline.acall(_answer)
        except InjectedFailure:
            return False
        return True


@dataclass
class Replica:
    """One replica: its name, protocol, behaviour, port and what it received."""

    name: str
    protocol: str  # "http" or "grpc"
    role: str  # "healthy", "slow tail", "flaky"
    behaviour: Behaviour
    port: int = 0
    up: bool = False
    arrivals: Counter[str] = field(default_factory=Counter)  # per client
    failed: Counter[str] = field(default_factory=Counter)  # per client, the failures it served
    server: Any = field(default=None, repr=False)
    connections: set[asyncio.Transport] = field(default_factory=set, repr=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)  # HTTP answers being delayed

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, client: str) -> bool:
        """Counts a request of ``client`` and meets the replica's faults: ``False`` to fail it."""
        self.arrivals[client] += 1
        ok = await self.behaviour.meet()
        if not ok:
            self.failed[client] += 1
        return ok


_OK_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n"
_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nunavailable"


class _HttpProtocol(asyncio.Protocol):
    """Answers each request in order (a slow answer holds back the pipelined ones behind it)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.buffer = b""
        self.pending: list[list[bytes | None]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.replica.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.replica.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, rest = self.buffer[:end], self.buffer[end + 4 :]
            length, client = 0, "?"
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                key = name.strip().lower()
                if key == b"content-length":
                    length = int(value.strip() or b"0")
                elif key == CLIENT_HEADER.encode():
                    client = value.strip().decode("latin-1")
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            slot: list[bytes | None] = [None]
            self.pending.append(slot)
            if self.replica.behaviour.pipeline is None:  # no faults: at once
                self.replica.arrivals[client] += 1
                slot[0] = self._ok()
                self._flush()
                continue
            task = loop.create_task(self._answer(slot, client))
            self.replica.tasks.add(task)
            task.add_done_callback(self.replica.tasks.discard)

    def _ok(self) -> bytes:
        body = self.replica.name.encode()
        return _OK_HEAD.format(len(body)).encode() + body

    async def _answer(self, slot: list[bytes | None], client: str) -> None:
        slot[0] = self._ok() if await self.replica.serve(client) else _UNAVAILABLE
        self._flush()

    def _flush(self) -> None:
        while self.pending and self.pending[0][0] is not None:
            answer = self.pending.pop(0)[0]
            if self.transport is not None and not self.transport.is_closing() and answer is not None:
                self.transport.write(answer)


def _identity(value: bytes) -> bytes:
    return value


class Fleet:
    """The replicas and the event loop thread that serves them.

    ``Fleet(replicas).start()`` binds every replica to a free loopback port (chosen by the
    OS) and serves it; :meth:`stop` closes every server and connection and ends the thread.
    """

    def __init__(self, replicas: list[Replica]) -> None:
        names = [r.name for r in replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique, got {names!r}")
        for r in replicas:
            if r.protocol not in ("http", "grpc"):
                raise ValueError(f"protocol must be 'http' or 'grpc', got {r.protocol!r}")
        self.replicas = replicas
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __getitem__(self, name: str) -> Replica:
        for r in self.replicas:
            if r.name == name:
                return r
        raise KeyError(f"no replica {name!r}; the fleet has {[r.name for r in self.replicas]}")

    def of(self, protocol: str) -> list[Replica]:
        return [r for r in self.replicas if r.protocol == protocol]

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        if self._loop is None:
            raise RuntimeError("the fleet is not started")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def start(self) -> Fleet:
        """Serve every replica; returns once each one listens."""
        if self._loop is not None:
            raise RuntimeError("the fleet is started already")
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="demo-fleet", daemon=True)
        self._thread.start()
        try:
            for replica in self.replicas:
                self._run(self._listen(replica))
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, name: str) -> None:
        """Close a replica's port and cut its connections (connections are refused)."""
        self._run(self._close(self[name]))

    def revive(self, name: str) -> None:
        """Listen again on the replica's port."""
        replica = self[name]
        if not replica.up:
            self._run(self._listen(replica))

    def stop(self) -> None:
        """Close every server and connection and end the loop's thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            for replica in self.replicas:
                if thread is not None and thread.is_alive():
                    self._run(self._close(replica))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(10)
            loop.close()
            self._loop = None
            self._thread = None

    async def _listen(self, replica: Replica) -> None:
        if replica.protocol == "http":
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: _HttpProtocol(replica), "127.0.0.1", replica.port, reuse_address=True
            )
            replica.port = server.sockets[0].getsockname()[1]
            replica.server = server
        else:
            grpc_server = grpc.aio.server()
            grpc_server.add_generic_rpc_handlers((self._grpc_handler(replica),))
            port = grpc_server.add_insecure_port(f"127.0.0.1:{replica.port}")
            if port == 0:
                raise OSError(f"gRPC replica {replica.name} could not bind 127.0.0.1:{replica.port}")
            replica.port = port
            await grpc_server.start()
            replica.server = grpc_server
        replica.up = True

    async def _close(self, replica: Replica) -> None:
        server, replica.server, replica.up = replica.server, None, False
        if server is None:
            return
        if replica.protocol == "http":
            server.close()
            for transport in list(replica.connections):
                transport.abort()
            replica.connections.clear()
            for task in list(replica.tasks):
                task.cancel()
            await server.wait_closed()
        else:
            await server.stop(None)

    @staticmethod
    def _grpc_handler(replica: Replica) -> grpc.GenericRpcHandler[Any, Any]:
        name = replica.name.encode()

        async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            client = "?"
            for key, value in context.invocation_metadata() or ():
                if key == CLIENT_HEADER and isinstance(value, str):
                    client = value
            if not await replica.serve(client):
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{replica.name} failed this call")
            return name

        handler: Callable[..., Any] = unary
        return grpc.method_handlers_generic_handler(
            GRPC_SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(handler, _identity, _identity)}
        )
