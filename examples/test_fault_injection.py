"""Fault injection in your own tests: does my client ride out a flaky or slow backend?

Run: ``.venv/bin/python -m pytest -q examples/test_fault_injection.py``

``FaultInjection`` placed innermost in a pipeline stands for the backend: with probability
``rate`` a call gets a fault (here an HTTP 503, or added latency) instead of, or before,
the real answer; the policies around it see the fault as they would see a real one.
Given a ``seed`` the same calls meet the same faults, so a failing run replays exactly.

The tests below check an application's client (``make_client``) against a small real
HTTP server on 127.0.0.1, and a deadline against injected latency on a fake clock (no
real waiting).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from interceptors.httpx import ResilientTransport
from resilience import Constant, DeadlineExceededError, FakeClock, FaultInjection, Pipeline, Retry, Timeout


def make_client(base_url: str, faults: FaultInjection | None = None) -> httpx.Client:
    """The application's client, as it ships: 3 attempts per read. Tests may add faults."""
    policies = [Timeout(5.0), Retry(3, backoff=Constant(0.01))]
    if faults is not None:
        policies.append(faults)  # innermost: between the retries and the backend
    return httpx.Client(base_url=base_url, transport=ResilientTransport(pipeline=Pipeline(*policies)))


class Prices(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"42")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[str]:
    """A real HTTP server on a free loopback port; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Prices)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_reads_ride_out_a_fifth_of_attempts_failing(backend: str) -> None:
    faults = FaultInjection(rate=0.2, http_status=503, seed=7)
    with make_client(backend, faults) as client:
        statuses = [client.get("/price").status_code for _ in range(20)]
    assert statuses == [200] * 20  # every injected 503 was retried away
    assert faults.injected > 0  # and there were some
    print(f"{faults.injected} faults injected in {faults.calls} attempts")


def test_a_seeded_run_replays_exactly(backend: str) -> None:
    def run(seed: int) -> list[int]:
        faults = FaultInjection(rate=0.5, http_status=503, seed=seed)
        seen: list[int] = []
        with make_client(backend, faults) as client:
            for _ in range(10):
                before = faults.injected
                client.get("/price")
                seen.append(faults.injected - before)  # faults met by this call
        return seen

    assert run(seed=3) == run(seed=3)
    assert run(seed=3) != run(seed=4)


def test_a_slow_backend_meets_the_deadline_on_a_fake_clock() -> None:
    clock = FakeClock()  # sleeps cost no real time
    slow = FaultInjection(rate=1.0, delay=30.0, seed=1)  # every call 30 s late
    pipeline = Pipeline(Timeout(2.0), slow, clock=clock)

    async def get_price() -> str:
        return "42"

    with pytest.raises(DeadlineExceededError):
        asyncio.run(pipeline.acall(get_price))  # asyncio: the timeout cancels the wait
    assert clock.monotonic() == pytest.approx(2.0)  # given up at the deadline, not after 30 s
