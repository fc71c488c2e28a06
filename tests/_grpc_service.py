"""A small gRPC service for the adapter tests, whose faults each test scripts.

Service ``test.Echo`` with bytes messages (no code generation):

- ``Unary``: returns the request;
- ``ServerStream``: yields the request ``STREAM_LEN`` times (``request + b"0"``, ``b"1"``...);
- ``ClientStream``: returns the requests joined with ``b"|"``;
- ``BidiStream``: echoes each request.

:meth:`EchoService.script` queues :class:`Fault` s per method; each attempt that reaches the
server takes the next one (none left: the call succeeds). Every attempt is recorded
with its metadata and the time it had left.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

SERVICE = "test.Echo"
UNARY = f"/{SERVICE}/Unary"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
CLIENT_STREAM = f"/{SERVICE}/ClientStream"
BIDI = f"/{SERVICE}/BidiStream"
STREAM_LEN = 3


def _identity(value: bytes) -> bytes:
    return value


@dataclass(frozen=True)
class Fault:
    """What one attempt meets on the server.

    Attributes:
        code: the status to fail with (``None``: succeed, after ``delay``).
        pushback: the ``grpc-retry-pushback-ms`` trailer to send, as a string.
        delay: seconds to wait before answering (or failing).
        after: for response streams, how many messages to send before failing.
    """

    code: grpc.StatusCode | None = None
    pushback: str | None = None
    delay: float = 0.0
    after: int = 0


@dataclass
class Attempt:
    """One attempt as the server saw it."""

    method: str
    metadata: dict[str, str]
    time_remaining: float | None
    requests: list[bytes] = field(default_factory=list)
    port: int = 0


class EchoService:
    """The handlers of ``test.Echo`` plus the fault script and the record of attempts."""

    def __init__(self, port_hint: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, deque[Fault]] = {}
        self.attempts: list[Attempt] = []
        self.port = port_hint
        self.release = threading.Event()
        self.release.set()

    def script(self, method: str, *faults: Fault) -> None:
        with self._lock:
            self._faults.setdefault(method, deque()).extend(faults)

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for a in self.attempts if a.method == method)

    def of(self, method: str) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.method == method]

    def _begin(self, method: str, context: grpc.ServicerContext) -> tuple[Fault, Attempt]:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        attempt = Attempt(method, metadata, context.time_remaining(), port=self.port)
        with self._lock:
            self.attempts.append(attempt)
            queue = self._faults.get(method)
            fault = queue.popleft() if queue else Fault()
        return fault, attempt

    @staticmethod
    def _fail(fault: Fault, context: grpc.ServicerContext) -> None:
        if fault.code is None:
            return
        if fault.pushback is not None:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", fault.pushback),))
        context.abort(fault.code, f"scripted {fault.code.name}")

    def _wait(self, fault: Fault) -> None:
        self.release.wait(10)
        if fault.delay:
            time.sleep(fault.delay)

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        fault, _ = self._begin(UNARY, context)
        self._wait(fault)
        self._fail(fault, context)
        return request

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        fault, _ = self._begin(SERVER_STREAM, context)
        self._wait(fault)
        for i in range(STREAM_LEN):
            if fault.code is not None and i == fault.after:
                self._fail(fault, context)
            yield request + str(i).encode()
        if fault.code is not None and fault.after >= STREAM_LEN:
            self._fail(fault, context)

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        fault, attempt = self._begin(CLIENT_STREAM, context)
        attempt.requests.extend(requests)
        self._wait(fault)
        self._fail(fault, context)
        return b"|".join(attempt.requests)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        fault, attempt = self._begin(BIDI, context)
        self._wait(fault)
        if fault.code is not None and fault.after == 0:
            # Fail before answering, after reading every request: a client still writing to a
            # stream the server closed may see INTERNAL instead of the code (a grpc.aio race).
            attempt.requests.extend(requests)
            self._fail(fault, context)
        for i, request in enumerate(requests):
            attempt.requests.append(request)
            if fault.code is not None and i == fault.after:
                self._fail(fault, context)
            yield request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, _identity, _identity),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, _identity, _identity),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, _identity, _identity),
                "BidiStream": grpc.stream_stream_rpc_method_handler(self.bidi, _identity, _identity),
            },
        )


class Running:
    """A started sync server on 127.0.0.1 and its service."""

    def __init__(self, service: EchoService, interceptors: tuple[Any, ...] = (), workers: int = 16) -> None:
        self.service = service
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=interceptors)
        self.server.add_generic_rpc_handlers((service.handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        service.port = self.port
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.service.release.set()
        self.server.stop(None)


def start(interceptors: tuple[Any, ...] = (), workers: int = 16) -> Running:
    """Start a fresh service on a free loopback port."""
    return Running(EchoService(), interceptors, workers)


def callables(channel: Any) -> dict[str, Callable[..., Any]]:
    """The four multicallables of ``test.Echo`` on a sync or aio channel."""
    return {
        UNARY: channel.unary_unary(UNARY, _identity, _identity),
        SERVER_STREAM: channel.unary_stream(SERVER_STREAM, _identity, _identity),
        CLIENT_STREAM: channel.stream_unary(CLIENT_STREAM, _identity, _identity),
        BIDI: channel.stream_stream(BIDI, _identity, _identity),
    }
