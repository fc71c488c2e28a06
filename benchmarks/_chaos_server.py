"""One replica of the chaos benchmark: a gRPC server and an HTTP server in a process of its own.

Run by ``benchmarks/chaos.py`` (``python benchmarks/_chaos_server.py``), never by hand. The
process listens on two loopback ports, ``grpc.aio`` for ``/chaos.Echo/Unary`` (bytes in,
the same bytes out) and a small asyncio HTTP/1.1 server (keep-alive, ``GET`` answered
``200 ok``), prints ``{"grpc": PORT, "http": PORT}`` on one line, then obeys commands read
from stdin, one JSON object a line, answering each with one line:

- ``{"op": "set", "slow_share": 0.2, "slow_delay": 0.3, "error_share": 0.5, "fail_until": T,
  "seed": 1}``: how later requests are served, and the arrivals recorded so far are dropped.
  Each arrival, in this order: before ``fail_until`` (a ``time.monotonic()`` reading, which
  on Linux is the same clock in every process) it fails; else with probability
  ``error_share`` it fails; else with probability ``slow_share`` it waits ``slow_delay``
  seconds (an ``asyncio.sleep``) and succeeds; else it succeeds at once. To fail is
  ``UNAVAILABLE`` for gRPC and ``503`` for HTTP, at once.
- ``{"op": "stats"}``: ``{"grpc": [t, ...], "http": [t, ...]}``, the monotonic time of each
  arrival since the last ``set``.

The process ends when stdin closes (its parent is gone) or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from typing import Any

import grpc
import grpc.aio

METHOD = "/chaos.Echo/Unary"

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nunavailable"


class Behaviour:
    """What the next arrivals meet, and the record of arrivals."""

    def __init__(self) -> None:
        self.slow_share = 0.0
        self.slow_delay = 0.0
        self.error_share = 0.0
        self.fail_until = 0.0
        self.rng = random.Random(0)
        self.arrivals: dict[str, list[float]] = {"grpc": [], "http": []}

    def set(self, command: dict[str, Any]) -> None:
        self.slow_share = float(command.get("slow_share", 0.0))
        self.slow_delay = float(command.get("slow_delay", 0.0))
        self.error_share = float(command.get("error_share", 0.0))
        self.fail_until = float(command.get("fail_until") or 0.0)
        self.rng = random.Random(command.get("seed", 0))
        self.arrivals = {"grpc": [], "http": []}

    def arrive(self, protocol: str) -> float | None:
        """Record an arrival: ``None`` to fail it, else the seconds to wait before answering."""
        now = time.monotonic()
        self.arrivals[protocol].append(now)
        if now < self.fail_until:
            return None
        rng = self.rng
        if self.error_share and rng.random() < self.error_share:
            return None
        if self.slow_share and rng.random() < self.slow_share:
            return self.slow_delay
        return 0.0


BEHAVIOUR = Behaviour()


# -- gRPC -------------------------------------------------------------------------------------


def _identity(value: bytes) -> bytes:
    return value


async def _unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    wait = BEHAVIOUR.arrive("grpc")
    if wait is None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure")
    elif wait:
        await asyncio.sleep(wait)
    return request


async def _grpc_server() -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "chaos.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(_unary, _identity, _identity)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


# -- HTTP/1.1 ---------------------------------------------------------------------------------


class _Http(asyncio.Protocol):
    """Answers each request head in order; a slow answer holds back the ones after it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.pending: list[list[bytes | None]] = []  # answers in request order; None: not ready

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.buffer[:end], self.buffer[end + 4 :]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or b"0")
            if len(rest) < length:
                return  # the body is not all here yet
            self.buffer = rest[length:]
            wait = BEHAVIOUR.arrive("http")
            slot: list[bytes | None] = [None]
            self.pending.append(slot)
            if wait is None:
                slot[0] = _UNAVAILABLE
            elif wait == 0.0:
                slot[0] = _OK
            else:
                loop.call_later(wait, self._ready, slot)
                continue
            self._flush()

    def _ready(self, slot: list[bytes | None]) -> None:
        slot[0] = _OK
        self._flush()

    def _flush(self) -> None:
        while self.pending and self.pending[0][0] is not None:
            answer = self.pending.pop(0)[0]
            assert answer is not None
            if not self.transport.is_closing():
                self.transport.write(answer)


# -- the process ------------------------------------------------------------------------------


async def main() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server, grpc_port = await _grpc_server()
    http = await loop.create_server(_Http, "127.0.0.1", 0)
    http_port = http.sockets[0].getsockname()[1]
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sys.stdout.write(json.dumps({"grpc": grpc_port, "http": http_port}) + "\n")
    sys.stdout.flush()

    async def commands() -> None:
        while True:
            line = await reader.readline()
            if not line:
                return  # the parent is gone
            command = json.loads(line)
            if command["op"] == "set":
                BEHAVIOUR.set(command)
                answer: dict[str, Any] = {"ok": True}
            elif command["op"] == "stats":
                answer = BEHAVIOUR.arrivals
            else:
                answer = {"error": f"unknown op {command['op']!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()

    reading = asyncio.create_task(commands())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    reading.cancel()
    stopping.cancel()
    http.close()
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(main())
