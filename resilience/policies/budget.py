"""The retry budget: retries may add at most a fixed share to the load."""

from __future__ import annotations

import math
import threading

from .._validate import Seconds, number, seconds

__all__ = ["RetryBudget"]

_BUCKETS = 10


class RetryBudget:
    """Caps retries at ``ratio`` of requests plus ``min_per_second``, over a sliding window.

    Every logical call deposits one request; every retry withdraws one. Within the last
    ``window`` seconds, retries may number at most ``ratio * requests + min_per_second *
    window``. A retry is withdrawn when it is decided, before its backoff, so retries that
    are still waiting count too: a full outage cannot multiply the load beyond the budget.

    One budget is usually shared by every call to a backend (pass the same instance to
    each :class:`~resilience.Retry`). It is thread-safe; time comes from the caller.

    Args:
        ratio: retries allowed per request, in [0, 1000] (default 0.2: 20%).
        min_per_second: retries always allowed per second, >= 0 (default 10), so that
            a quiet client can still retry.
        window: how long deposits and withdrawals count, in seconds, > 0 (default 10).
    """

    __slots__ = (
        "_live_end",
        "_live_requests",
        "_live_tick",
        "_lock",
        "_requests",
        "_retries",
        "_stamps",
        "_width",
        "min_per_second",
        "ratio",
        "window",
    )

    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0, window: Seconds = 10.0) -> None:
        self.ratio = number("ratio", ratio, low=0.0, high=1000.0)
        self.min_per_second = number("min_per_second", min_per_second, low=0.0, high=1e9)
        self.window = seconds("window", window)
        self._width = self.window / _BUCKETS
        self._lock = threading.Lock()
        self._stamps = [-1] * _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        # Requests of the current bucket are counted apart, without the lock: deposit() runs
        # on every call. Two threads racing on the increment can lose one count, which only
        # makes the budget a hair stricter; retries (withdrawals) are always counted exactly.
        self._live_tick = -1
        self._live_end = -math.inf
        self._live_requests = 0

    def _roll(self, now: float) -> int:
        """Move the live count into its bucket and start the bucket of ``now``; caller holds the lock."""
        tick = int(now // self._width)
        if self._live_tick >= 0 and self._live_requests:
            self._slot(self._live_tick)
            self._requests[self._live_tick % _BUCKETS] += self._live_requests
        self._live_requests = 0
        if tick > self._live_tick:
            self._live_tick = tick
            self._live_end = (tick + 1) * self._width
        return tick

    def _slot(self, tick: int) -> int:
        # Caller holds the lock. A bucket whose stamp is stale is reused from zero.
        slot = tick % _BUCKETS
        if self._stamps[slot] != tick:
            self._stamps[slot] = tick
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def _totals(self, tick: int) -> tuple[int, int]:
        requests = retries = 0
        for i in range(_BUCKETS):
            if tick - self._stamps[i] < _BUCKETS:
                requests += self._requests[i]
                retries += self._retries[i]
        return requests, retries

    def deposit(self, now: float) -> None:
        """Count one request made at ``now``."""
        if now >= self._live_end:
            with self._lock:
                if now >= self._live_end:
                    self._roll(now)
        self._live_requests += 1

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget at ``now``; ``False`` when none is left."""
        with self._lock:
            tick = self._roll(now)
            requests, retries = self._totals(tick)
            if retries + 1 > self.ratio * requests + self.min_per_second * self.window:
                return False
            self._retries[self._slot(tick)] += 1
            return True

    def available(self, now: float) -> float:
        """How many more retries the budget allows at ``now``."""
        with self._lock:
            requests, retries = self._totals(self._roll(now))
            return max(0.0, self.ratio * requests + self.min_per_second * self.window - retries)

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio!r}, min_per_second={self.min_per_second!r}, window={self.window!r})"
