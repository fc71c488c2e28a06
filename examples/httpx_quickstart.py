"""httpx quickstart: one transport gives an httpx client retries, deadlines, a breaker and balancing.

Run: ``.venv/bin/python examples/httpx_quickstart.py``

It starts two small local HTTP servers (on free 127.0.0.1 ports) that fail now and then,
then calls them through ``httpx.Client`` and ``httpx.AsyncClient`` with a resilient
transport, by their service name ``orders``. It exits 1 unless every call succeeded and
both backends served.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from interceptors.httpx import AsyncResilientTransport, ResilientTransport, Route
from resilience import (
    Bulkhead,
    CircuitBreaker,
    ExponentialJitter,
    Pipeline,
    ResilienceError,
    Retry,
    StaticDiscovery,
    Timeout,
)


def policies(service: str) -> Pipeline:
    """Each service gets its own pipeline (its own breaker and bulkhead)."""
    return Pipeline(
        Timeout(5.0),  # the whole call, retries included; becomes httpx's timeout per attempt
        Retry(3, backoff=ExponentialJitter(0.05, 2.0, 1.0)),  # GET/PUT/DELETE..., or an Idempotency-Key
        CircuitBreaker(failure_threshold=5, break_duration=10.0),  # 5xx, 429 and network errors count; 4xx not
        Bulkhead(32),
    )


# -- two toy backends ---------------------------------------------------------------------------


class Orders(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    calls = itertools.count()
    ports: set[int] = set()  # the backends that answered a GET

    def do_GET(self) -> None:
        if next(self.calls) % 3 == 0:  # every third request fails: the retry hides it
            self._answer(503, b"busy\n", {"Retry-After": "0"})
        else:
            self.ports.add(self.server.server_address[1])
            self._answer(200, f"order list from port {self.server.server_address[1]}\n".encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(201, b"created\n")

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_backends(count: int) -> list[ThreadingHTTPServer]:
    servers = []
    for _ in range(count):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Orders)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


# -- the clients ----------------------------------------------------------------------------------


def sync_demo(discovery: StaticDiscovery) -> None:
    transport = ResilientTransport(
        pipeline=policies,  # the default policy set: a factory, one pipeline per service
        discovery=discovery,  # http://orders/... goes to the endpoints of "orders", round robin
        routes=[Route(path="/orders", methods=["POST"], name="create-order", timeout=2.0)],
    )
    with httpx.Client(transport=transport) as client:
        for _ in range(4):
            response = client.get("http://orders/orders")
            print("sync GET  ->", response.status_code, response.text.strip())
            assert response.status_code == 200  # the 503s were retried away
        # POST is not retried unless the request says it is safe to repeat:
        response = client.post("http://orders/orders", json={"item": 1}, headers={"Idempotency-Key": "order-1"})
        print("sync POST ->", response.status_code, response.text.strip())
        assert response.status_code == 201


async def async_demo(discovery: StaticDiscovery) -> None:
    transport = AsyncResilientTransport(pipeline=policies, discovery=discovery)
    async with httpx.AsyncClient(transport=transport) as client:
        responses = await asyncio.gather(*(client.get("http://orders/orders") for _ in range(4)))
        for response in responses:
            print("async GET ->", response.status_code, response.text.strip())
            assert response.status_code == 200
        # Per-request options: a tighter deadline, and an opt-in retry of a POST.
        options = {"resilience": {"timeout": 1.0, "idempotent": True}}
        response = await client.post("http://orders/orders", json={"item": 2}, extensions=options)
        print("async POST ->", response.status_code, response.text.strip())
        assert response.status_code == 201


def main() -> None:
    servers = start_backends(2)
    discovery = StaticDiscovery({"orders": [f"127.0.0.1:{s.server_address[1]}" for s in servers]})
    try:
        sync_demo(discovery)
        asyncio.run(async_demo(discovery))
    except ResilienceError as exc:  # an open breaker, a full bulkhead, a deadline...
        raise SystemExit(f"gave up: {exc}") from exc
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    served = {server.server_address[1] for server in servers}
    assert Orders.ports == served, f"only {Orders.ports} of {served} served"  # balanced over both


if __name__ == "__main__":
    main()
