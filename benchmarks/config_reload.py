"""How long a config put in etcd takes to be the policy in use: put -> applied -> seen by a call.

Run: ``.venv/bin/python benchmarks/config_reload.py [--puts 50] [--etcd URL]``.

Without ``--etcd`` the script starts Debian's etcd on free loopback ports with a temporary
data directory (the test fixture's server) and stops it at the end. A
:class:`~resilience.config.Setup` watches one key (``Setup.watch_etcd``); each round puts a
config whose retry ``attempts`` differs from the one in force (a ``reconfigure``: the
common reload), and every fifth round also adds or removes a ``hedge`` (a new chain swapped
into the pipeline). From just before the put is sent it times:

- ``put -> applied``: the ``on_reload`` callback, on the watch thread, once the config was
  read, checked, built and committed;
- ``put -> in use``: the moment a probe thread, calling through the pipeline in a loop
  (each call reads the chain and the retry's options once, as every call does), first runs
  a call under the new ``attempts``.

Rounds are sequential. The config is small and realistic (three policy sets, a service, an
HTTP host with a route, gRPC settings), YAML. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resilience import ResilienceError, Retry
from resilience.config import Setup, load
from resilience.discovery.etcd import EtcdClient

KEY = "/config/bench"
BOUND = 5.0


def config(attempts: int, hedge: bool) -> dict[str, Any]:
    default: dict[str, Any] = {
        "timeout": "5s",
        "retry": {"attempts": attempts, "backoff": {"kind": "exponential_jitter", "base": "50ms", "cap": "1s"}},
        "circuit_breaker": {"window_size": 50, "failure_rate": 0.5, "minimum_calls": 20, "break_duration": "30s"},
        "token_bucket": {"rate": 100_000, "burst": 1000},
        "bulkhead": {"max_concurrent": 64, "max_queue": 32, "max_wait": "500ms"},
    }
    if hedge:
        default["hedge"] = {"delay": "50ms"}
    return {
        "policies": {
            "default": default,
            "writes": {"timeout": "2s", "circuit_breaker": {"failure_threshold": 5}},
            "reads": {"retry": {"attempts": 2}, "attempt_timeout": "500ms"},
        },
        "services": {"orders": {"discovery": ["127.0.0.1:8081", "127.0.0.1:8082"], "balancer": "peak_ewma",
                                "ejection": {"consecutive_failures": 5}}},
        "grpc": {"policy": "default", "services": {"shop.Orders": {"idempotent": True,
                                                                   "methods": {"Create": {"policy": "writes"}}}}},
        "http": {"policy": "default", "hosts": {"api.example.com": {"routes": [
            {"path": "/orders/*", "methods": ["POST"], "policy": "writes"}]}}},
    }  # fmt: skip


class Probe:
    """Calls through the pipeline in a loop; stamps the first call that runs under ``want`` attempts."""

    def __init__(self, setup: Setup) -> None:
        self.pipeline = setup.pipeline("default")
        self.want = 0
        self.seen_at: float | None = None
        self.seen = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        pipeline = self.pipeline

        def attempts() -> int:
            retry = next(p for p in pipeline.policies if isinstance(p, Retry))
            return retry.options.attempts

        while not self.stop.is_set():
            try:
                got = pipeline.call(attempts)
            except ResilienceError:  # a limit of the pipeline said no: the next call looks again
                continue
            if got == self.want and not self.seen.is_set():
                self.seen_at = time.perf_counter()
                self.seen.set()
            time.sleep(0.0001)


def _percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{name:<18} p50 {_percentile(ms, 50):7.2f} ms   p99 {_percentile(ms, 99):7.2f} ms   max {max(ms):7.2f} ms"


def measure(url: str, puts: int) -> tuple[list[float], list[float], int]:
    applied_at: list[float] = []
    applied = threading.Event()

    def on_reload(result: Any) -> None:
        if result.applied:
            applied_at.append(time.perf_counter())
            applied.set()

    with EtcdClient(url) as client:
        client.put(KEY, yaml.safe_dump(config(3, False)))
        with Setup(load(config(3, False))) as setup:
            setup.watch_etcd(url, KEY, on_reload=on_reload)
            probe = Probe(setup)
            probe.thread.start()
            to_applied: list[float] = []
            to_use: list[float] = []
            lost = 0
            try:
                for n in range(puts):
                    attempts = 4 + n % 5
                    hedge = (n // 5) % 2 == 1
                    text = yaml.safe_dump(config(attempts, hedge))
                    applied.clear()
                    probe.seen.clear()
                    probe.want = attempts
                    start = time.perf_counter()
                    client.put(KEY, text)
                    if not (applied.wait(BOUND) and probe.seen.wait(BOUND)):
                        lost += 1
                        continue
                    to_applied.append(applied_at[-1] - start)
                    assert probe.seen_at is not None
                    to_use.append(probe.seen_at - start)
                    time.sleep(0.005)
            finally:
                probe.stop.set()
                probe.thread.join(5)
    return to_applied, to_use, lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--puts", type=int, default=50, help="configs put (default 50)")
    parser.add_argument("--etcd", metavar="URL", help="an etcd to use (default: start one)")
    args = parser.parse_args()
    server = None
    url = args.etcd
    if url is None:
        from tests.servers import EtcdServer

        server = EtcdServer()
        server.start()
        url = f"etcd://127.0.0.1:{server.port}"
    try:
        to_applied, to_use, lost = measure(url, args.puts)
    finally:
        if server is not None:
            server.close()
    print(f"config reload from etcd: {args.puts} puts, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(_line("put -> applied", to_applied))
    print(_line("put -> in use", to_use))
    if lost:
        print(f"{lost} puts not seen within {BOUND:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
