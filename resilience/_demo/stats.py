"""What the demo counts: calls per client and protocol, over a recent window and in total."""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass

__all__ = ["Snapshot", "Stats", "percentile"]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by the nearest rank, ``None`` when empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, got {q!r}")
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Snapshot:
    """Calls over a span of time: how many, how many succeeded, latency percentiles, attempts."""

    calls: int
    ok: int
    p50: float | None
    p99: float | None
    attempts: int

    @property
    def success(self) -> float | None:
        """The share of calls that succeeded (0..1), ``None`` with no call."""
        return self.ok / self.calls if self.calls else None

    @property
    def attempts_per_call(self) -> float | None:
        return self.attempts / self.calls if self.calls else None


class Stats:
    """Call records of one client and protocol: the last ``window`` seconds, and the totals.

    :meth:`add` takes the time the call ended (any monotonic clock), whether it succeeded,
    its latency and the attempts it sent; :meth:`recent` and :meth:`total` summarise. Safe
    to share between threads.
    """

    def __init__(self, window: float = 5.0) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self.window = window
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, bool, float, int]] = deque()
        self._latencies: list[float] = []
        self._calls = 0
        self._ok = 0
        self._attempts = 0
        self.errors: Counter[str] = Counter()

    def add(self, now: float, ok: bool, latency: float, attempts: int = 1, error: str | None = None) -> None:
        with self._lock:
            self._recent.append((now, ok, latency, attempts))
            self._latencies.append(latency)
            self._calls += 1
            self._ok += ok
            self._attempts += attempts
            if error is not None:
                self.errors[error] += 1
            self._prune(now)

    def attempted(self, n: int = 1) -> None:
        """Count attempts apart from :meth:`add` (those a listener sees)."""
        with self._lock:
            self._attempts += n

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        recent = self._recent
        while recent and recent[0][0] < horizon:
            recent.popleft()

    def recent(self, now: float) -> Snapshot:
        """The calls that ended in the last ``window`` seconds before ``now``."""
        with self._lock:
            self._prune(now)
            rows = list(self._recent)
        latencies = [r[2] for r in rows]
        return Snapshot(
            len(rows),
            sum(1 for r in rows if r[1]),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            sum(r[3] for r in rows),
        )

    def total(self) -> Snapshot:
        with self._lock:
            latencies = list(self._latencies)
            calls, ok, attempts = self._calls, self._ok, self._attempts
        return Snapshot(calls, ok, percentile(latencies, 0.5), percentile(latencies, 0.99), attempts)
