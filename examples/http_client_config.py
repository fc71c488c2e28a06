"""An httpx client whose policies come from ``examples/http_client_config.yaml``, reloaded live.

Run: ``.venv/bin/python examples/http_client_config.py``

It starts two small local backends of service ``orders`` (one of them fails one request in
three), puts their addresses in the environment (the config reads ``${ORDERS_1}`` and
``${ORDERS_2}``), and then:

1. loads the config and builds everything from it: a sync and an async httpx client;
2. calls the service by name; reads are retried past the failures, the POST is not;
3. watches a copy of the file, changes it (4 attempts, a longer deadline) and calls again:
   the new settings are in force, the breaker and the balancer kept their state;
4. writes a bad copy: it is refused with its errors, and the config in force stays.

It exits 1 if any of that did not happen.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from resilience import CircuitBreaker, Retry
from resilience.config import ReloadResult, Setup, load

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "http_client_config.yaml"


class Orders(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    flaky = False
    calls = itertools.count()

    def do_GET(self) -> None:
        if self.flaky and next(self.calls) % 3 == 0:
            self._answer(503, b"busy\n")
        else:
            self._answer(200, f"orders from port {self.server.server_address[1]}\n".encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(201, b"created\n")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Flaky(Orders):
    flaky = True


def start(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def retry_attempts(setup: Setup) -> int:
    return next(p for p in setup.pipeline("default").policies if isinstance(p, Retry)).options.attempts


def replace(path: Path, text: str) -> None:
    """Write ``text`` aside, then rename it over ``path``, as editors do (never half-written)."""
    aside = path.with_suffix(".new")
    aside.write_text(text)
    aside.replace(path)


def main() -> None:
    backends = [start(Orders), start(Flaky)]
    for i, server in enumerate(backends, 1):
        os.environ[f"ORDERS_{i}"] = f"127.0.0.1:{server.server_address[1]}"
    workdir = Path(tempfile.mkdtemp(prefix="resilience-example-"))
    path = workdir / "resilience.yaml"
    shutil.copy(CONFIG, path)
    try:
        # 1. The whole set-up: load the config, wrap the clients.
        setup = load(path).setup()
        print("config in force:\n" + setup.config.summary())
        with setup, setup.httpx_client() as client:
            # 2. Calls by service name; a third of the flaky backend's answers are 503, retried.
            statuses = [client.get("http://orders/orders").status_code for _ in range(6)]
            print("sync GETs:", statuses)
            assert statuses == [200] * 6
            posted = client.post("http://orders/orders", json={"item": 1}).status_code
            print("sync POST:", posted)
            assert posted == 201

            async def async_calls() -> list[int]:
                async with setup.httpx_client(async_=True) as aclient:
                    responses = await asyncio.gather(*(aclient.get("http://orders/orders") for _ in range(6)))
                    return [r.status_code for r in responses]

            statuses = asyncio.run(async_calls())
            print("async GETs:", statuses)
            assert statuses == [200] * 6

            # 3. Hot reload: the watcher applies a changed file; the breaker is the same object.
            breaker = next(p for p in setup.pipeline("default").policies if isinstance(p, CircuitBreaker))
            results: queue.Queue[ReloadResult] = queue.Queue()  # what the watcher did with each change
            setup.watch_file(path, interval=0.05, on_reload=results.put)
            text = path.read_text().replace("attempts: 3", "attempts: 4").replace("timeout: 5s", "timeout: 8s")
            replace(path, text)
            assert results.get(timeout=10).applied
            same = next(p for p in setup.pipeline("default").policies if isinstance(p, CircuitBreaker)) is breaker
            print(f"reloaded: retry attempts {retry_attempts(setup)}, same breaker: {same}")
            assert retry_attempts(setup) == 4
            assert same
            statuses = [client.get("http://orders/orders").status_code for _ in range(3)]
            print("after the reload:", statuses)
            assert statuses == [200] * 3

            # 4. A bad file is refused, with every error; the config in force stays.
            replace(path, text.replace("attempts: 4", "attempts: 0").replace("window_size: 50", "window_sise: 50"))
            assert not results.get(timeout=10).applied
            print(f"bad file refused: retry attempts still {retry_attempts(setup)}, generation {setup.generation}")
            assert (retry_attempts(setup), setup.generation) == (4, 2)
    finally:
        for server in backends:
            server.shutdown()
            server.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
