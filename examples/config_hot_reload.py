"""Policies from a config file, hot reloaded: edit the file, the new policy is in use, state is kept.

Run: ``.venv/bin/python examples/config_hot_reload.py``

It starts a small local HTTP backend of service ``shop`` (on a free 127.0.0.1 port) whose
``/orders/<n>`` fails the first two attempts of each order with 503, and whose
``/reports`` always fails. It writes the config below to a temporary ``resilience.yaml``,
builds an httpx client from it and watches the file. Then:

1. ``/orders/1`` gets 2 attempts (``attempts: 2``): it fails; two failed ``/reports``
   open the breaker of the ``reports`` policy set;
2. the script edits the file (``attempts: 3``), as you would in an editor; the watcher
   applies it within ``interval`` seconds;
3. ``/orders/2`` now gets 3 attempts and succeeds, while ``/reports`` is still refused
   by its breaker, which stayed open across the reload (it never reached the backend).

It exits 1 if any of that did not happen.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from resilience import CircuitOpenError
from resilience.config import ReloadResult, load

CONFIG = """\
version: 1
policies:
  default:
    retry: {attempts: 2, backoff: {kind: constant, delay: 10ms}}
  reports:
    circuit_breaker: {failure_threshold: 2, break_duration: 60s}
services:
  shop:
    discovery: ["${SHOP_ADDRESS}"]
http:
  policy: default
  hosts:
    shop:
      routes:
        - {path: /reports, policy: reports}
"""


class Shop(BaseHTTPRequestHandler):
    attempts: Counter[str] = Counter()  # requests seen, by path

    def do_GET(self) -> None:
        self.attempts[self.path] += 1
        failing = self.path == "/reports" or self.attempts[self.path] <= 2
        body = b"busy\n" if failing else b"ok\n"
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Shop)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    os.environ["SHOP_ADDRESS"] = f"127.0.0.1:{backend.server_address[1]}"  # the config reads it
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "resilience.yaml"
        path.write_text(CONFIG)
        try:
            with load(path).setup() as setup, setup.httpx_client() as client:
                reloaded = threading.Event()

                def on_reload(result: ReloadResult) -> None:  # called on the watcher's thread
                    if result.applied:
                        reloaded.set()

                setup.watch_file(path, interval=0.05, on_reload=on_reload)

                # 1. The config as written: 2 attempts; the reports breaker opens after 2 failures.
                status = client.get("http://shop/orders/1").status_code
                print(f"before: /orders/1 -> {status} after {Shop.attempts['/orders/1']} attempts")
                assert (status, Shop.attempts["/orders/1"]) == (503, 2)
                for _ in range(2):
                    client.get("http://shop/reports")

                # 2. Edit the file (written aside, then renamed over it, as editors do); the
                #    watcher sees the new content and applies it.
                edited = path.with_suffix(".new")
                edited.write_text(CONFIG.replace("attempts: 2", "attempts: 3"))
                edited.replace(path)
                assert reloaded.wait(10), "the edit was not applied"
                print(f"reloaded: generation {setup.generation}")

                # 3. The new retry policy is in use; the breaker kept its state (open).
                status = client.get("http://shop/orders/2").status_code
                print(f"after:  /orders/2 -> {status} after {Shop.attempts['/orders/2']} attempts")
                assert (status, Shop.attempts["/orders/2"]) == (200, 3)
                try:
                    client.get("http://shop/reports")
                    raise AssertionError("the reports breaker should still be open")
                except CircuitOpenError as exc:
                    print("after:  /reports refused:", type(exc).__name__)
                assert Shop.attempts["/reports"] == 2  # the refused call never reached the backend
        finally:
            backend.shutdown()
            backend.server_close()


if __name__ == "__main__":
    main()
