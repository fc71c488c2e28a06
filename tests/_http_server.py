"""A real HTTP/1.1 server on 127.0.0.1 whose answers a test scripts.

Each request takes the next :class:`Reply` of the script (:meth:`HttpServer.script`), else
asks :attr:`HttpServer.handler`, else gets :attr:`HttpServer.default`. A reply can wait,
hang up without answering, send ``Retry-After``, or stream its body in chunks and hang up
half way. The server records every request and counts its open connections, so tests can
check that retried responses leak nothing.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any

__all__ = ["HttpServer", "Reply", "Seen"]

_REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


@dataclass
class Reply:
    """What the server does with one request.

    Attributes:
        status: the status code.
        body: the body.
        headers: extra headers.
        delay: seconds to wait before answering.
        drop: hang up without answering.
        chunks: when > 0, send the body chunked in this many pieces (no Content-Length).
        chunk_delay: seconds between chunks.
        drop_after: hang up after this many chunks (a body broken half way).
    """

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    chunks: int = 0
    chunk_delay: float = 0.0
    drop_after: int | None = None


@dataclass(frozen=True)
class Seen:
    """A request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    port: int
    connection: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _TCPServer

    def setup(self) -> None:
        super().setup()
        self.conn_id = self.server.owner._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        owner = self.server.owner
        body = self._read_body()
        seen = Seen(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            owner.port,
            self.conn_id,
        )
        reply = owner._reply(seen)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        payload = b"" if self.command == "HEAD" else reply.body
        if reply.chunks:
            head.append("Transfer-Encoding: chunked")
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
            size = max(1, -(-len(payload) // reply.chunks))
            for i in range(reply.chunks):
                if reply.drop_after is not None and i >= reply.drop_after:
                    self.close_connection = True
                    return
                piece = payload[i * size : (i + 1) * size]
                if piece:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                if reply.chunk_delay:
                    time.sleep(reply.chunk_delay)
            self.wfile.write(b"0\r\n\r\n")
            return
        head.append(f"Content-Length: {len(reply.body)}")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, owner: HttpServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # the client went away first (a cancelled hedge, a timeout): expected here
        super().handle_error(request, client_address)


class HttpServer:
    """A threaded HTTP/1.1 server on a free loopback port; use as a context manager."""

    def __init__(self) -> None:
        self.default = Reply()
        self.handler: Callable[[Seen], Reply | None] | None = None
        self.requests: list[Seen] = []
        self.connections_total = 0
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._open: dict[socket.socket, threading.Thread] = {}
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- control -------------------------------------------------------------------------

    def script(self, *replies: Reply | int) -> None:
        """Queue replies (a bare int is a status) for the next requests, in order."""
        with self._lock:
            self._script.extend(Reply(r) if isinstance(r, int) else r for r in replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
        self.default = Reply()
        self.handler = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def wait_connections(self, at_most: int, timeout: float = 2.0) -> int:
        """Wait until at most ``at_most`` connections are open; the count at the end."""
        end = time.monotonic() + timeout
        while self.open_connections > at_most and time.monotonic() < end:
            time.sleep(0.005)
        return self.open_connections

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> HttpServer:
        self._server = _TCPServer(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"http-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            opened = list(self._open.items())
        for conn, _ in opened:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in opened:
            thread.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- called by the handler threads ---------------------------------------------------------

    def _opened(self, conn: socket.socket) -> int:
        with self._lock:
            self._open[conn] = threading.current_thread()
            self.connections_total += 1
            return self.connections_total

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.pop(conn, None)

    def _reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            if self._script:
                return self._script.popleft()
        if self.handler is not None:
            reply = self.handler(seen)
            if reply is not None:
                return reply
        return self.default
