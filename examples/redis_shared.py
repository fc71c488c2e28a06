"""A rate limit and a circuit breaker shared through Redis by two clients.

Run (with a Redis at hand)::

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python examples/redis_shared.py

``REDIS_URL`` defaults to ``redis://127.0.0.1:6379/0``. The script's keys carry a fresh
name of their own, so runs do not meet; it deletes them at the end.

It starts a small local HTTP backend with two services, ``search`` (answers) and
``payments`` (always 503), and two httpx clients, ``A`` and ``B``, each with policies of
its own, as two processes (or two hosts) would have, meeting only in Redis:

1. ``search`` is limited to 5 calls a minute over both clients: A makes 3 calls, B makes
   3, and B's third is refused (``RateLimitedError``);
2. ``payments`` has a breaker per client on one shared state: A's breaker opens after 3
   failures, and B's, which saw none, opens too: B's call is refused without reaching
   the backend (``CircuitOpenError``).

It exits 1 if either did not happen.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import redis

from interceptors.httpx import ResilientTransport
from resilience import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Pipeline,
    RateLimit,
    RateLimitedError,
    RedisBreakerState,
    StaticDiscovery,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = uuid.uuid4().hex[:8]  # this run's names in Redis


class Backend(BaseHTTPRequestHandler):
    requests: Counter[str] = Counter()  # by path

    def do_GET(self) -> None:
        self.requests[self.path] += 1
        status = 503 if self.path == "/charge" else 200  # payments always fails
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def make_client(stack: ExitStack, address: str) -> tuple[httpx.Client, CircuitBreaker]:
    """One client with its own policies; what they share lives in Redis under the same names."""
    # Clients sharing a limit must give it the same name, rate and strategy.
    limit = RateLimit("5/minute", storage=REDIS_URL, name=f"search-{RUN}")
    shared = stack.enter_context(RedisBreakerState(REDIS_URL, key=f"payments-{RUN}"))
    breaker = CircuitBreaker(failure_threshold=3, break_duration=30, shared=shared)
    stack.callback(limit.close)
    pipelines = {"search": Pipeline(limit), "payments": Pipeline(breaker)}
    policies: Callable[[str], Pipeline] = pipelines.__getitem__  # a pipeline per service
    discovery = StaticDiscovery({"search": [address], "payments": [address]})  # one backend for both
    transport = ResilientTransport(pipeline=policies, discovery=discovery)
    return stack.enter_context(httpx.Client(transport=transport)), breaker


def main() -> None:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{backend.server_address[1]}"
    try:
        with ExitStack() as stack:
            a, breaker_a = make_client(stack, address)
            b, breaker_b = make_client(stack, address)

            # 1. One limit over both clients: 5 calls a minute in all.
            for client in (a, a, a, b, b):
                assert client.get("http://search/items").status_code == 200
            try:
                b.get("http://search/items")
                raise AssertionError("B's third call should have been refused")
            except RateLimitedError as exc:
                print(f"search: A 3 calls, B 2 calls, then B refused (retry after {exc.retry_after:.0f} s)")
            assert Backend.requests["/items"] == 5

            # 2. A's failures open the breaker; B follows through Redis (within a tick).
            for _ in range(3):
                a.get("http://payments/charge")
            assert breaker_a.state is CircuitState.OPEN
            deadline = time.monotonic() + 5
            while breaker_b.state is not CircuitState.OPEN and time.monotonic() < deadline:
                time.sleep(0.02)
            print(f"payments: A's breaker {breaker_a.state.name}, B's breaker {breaker_b.state.name}")
            try:
                b.get("http://payments/charge")
                raise AssertionError("B's breaker should be open")
            except CircuitOpenError:
                print("payments: B refused without calling the backend")
            assert Backend.requests == {"/items": 5, "/charge": 3}
    finally:
        backend.shutdown()
        backend.server_close()
        with redis.Redis.from_url(REDIS_URL) as r:  # tidy up: this run's keys
            keys = list(r.scan_iter(match=f"*{RUN}*"))
            if keys:
                r.delete(*keys)


if __name__ == "__main__":
    main()
