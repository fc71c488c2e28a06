"""One process of the shared-breaker test: ``python _shared_breaker_worker.py URL KEY ROLE``.

Prints ``ready`` once subscribed, waits for ``go`` on stdin, then either opens the breaker
with failures (``opener``: prints ``opened <wall time>``) or waits to see it opened by
another process (``watcher``: prints ``saw <wall time>``, or ``timeout``). Exits when done.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

from resilience.events import Event
from resilience.pipeline import Pipeline
from resilience.policies.circuit_breaker import CircuitBreaker, CircuitState, CircuitStateChanged
from resilience.shared.redis_breaker import RedisBreakerState


def main() -> int:
    url, key, role = sys.argv[1:4]
    seen = threading.Event()
    seen_at: list[float] = []

    def listener(event: Event) -> None:
        if isinstance(event, CircuitStateChanged) and event.new is CircuitState.OPEN and event.reason == "remote":
            seen_at.append(time.time())
            seen.set()

    shared = RedisBreakerState(url, key=key, poll_interval=0.5, tick=0.02)
    breaker = CircuitBreaker(failure_threshold=3, break_duration=60, shared=shared, listeners=[listener])
    try:
        if not shared.wait_connected(10):
            print("not connected", flush=True)
            return 1
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        if role == "opener":
            pipeline = Pipeline(breaker)

            def fail() -> None:
                raise ConnectionError("backend down")

            for _ in range(3):
                with contextlib.suppress(ConnectionError):
                    pipeline.call(fail)
            assert breaker.state is CircuitState.OPEN
            print(f"opened {time.time():.6f}", flush=True)
        elif seen.wait(10):
            print(f"saw {seen_at[0]:.6f}", flush=True)
        else:
            print("timeout", flush=True)
            return 1
        return 0
    finally:
        shared.close()


if __name__ == "__main__":
    sys.exit(main())
