"""One of the processes sharing a Redis-backed RateLimit (see test_rate_limit.py).

Usage: python _rate_limit_worker.py REDIS_URL NAME START_AT DURATION

Waits until the wall-clock time START_AT, then calls as fast as it can through a
``RateLimit("100/second", strategy="moving-window")`` in reject mode for DURATION seconds,
and prints ``{"admitted": n, "rejected": m, "late": seconds started after START_AT}`` as JSON.
"""

from __future__ import annotations

import json
import sys
import time

from resilience import Pipeline, RateLimitedError
from resilience.policies.rate_limit import RateLimit


def main() -> None:
    url, name, start_at, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    limit = RateLimit("100/second", strategy="moving-window", storage=url, name=name, fail_open=False)
    pipeline = Pipeline(limit)
    limit.remaining("warm-up")  # connect before the start
    while (delay := start_at - time.time()) > 0:
        time.sleep(min(delay, 0.05))
    late = time.time() - start_at
    end = start_at + duration
    admitted = rejected = 0
    while time.time() < end:
        try:
            pipeline.call(int)
            admitted += 1
        except RateLimitedError:
            rejected += 1
    limit.close()
    print(json.dumps({"admitted": admitted, "rejected": rejected, "late": late}))


if __name__ == "__main__":
    main()
