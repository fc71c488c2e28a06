"""Sliding windows of call outcomes for the circuit breaker.

Two shapes, one interface: :class:`CountWindow` keeps the last ``size`` outcomes in a
ring buffer; :class:`TimeWindow` keeps per-bucket totals over the last ``duration``
seconds. Either one's memory is fixed by its size, whatever the call rate. Neither is
thread-safe on its own: the breaker calls them under its lock.
"""

from __future__ import annotations

import math
from typing import Protocol

from .._validate import Seconds, integer, seconds

__all__ = ["CountWindow", "OutcomeWindow", "TimeWindow"]  # the breaker's: not in resilience.__all__

_FAILED = 1
_SLOW = 2


class OutcomeWindow(Protocol):
    """What the breaker needs of a window."""

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Add one call that ended at ``now``."""
        ...

    def totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow_calls)`` in the window as seen at ``now``."""
        ...

    def reset(self) -> None:
        """Forget every outcome."""
        ...


class CountWindow:
    """The last ``size`` calls.

    A ring buffer of one byte per call plus three running totals: recording and reading
    are O(1); ``now`` is ignored.

    Args:
        size: how many of the latest calls count, in [1, 1_000_000].
    """

    __slots__ = ("_calls", "_failures", "_next", "_ring", "_slow", "size")

    def __init__(self, size: int) -> None:
        self.size = integer("window_size", size, minimum=1, maximum=1_000_000)
        self._ring = bytearray(self.size)
        self._next = 0
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def record(self, failed: bool, slow: bool, now: float = 0.0) -> None:
        i = self._next
        if self._calls == self.size:
            old = self._ring[i]
            self._failures -= old & _FAILED
            self._slow -= (old & _SLOW) >> 1
        else:
            self._calls += 1
        self._ring[i] = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._failures += failed
        self._slow += slow
        self._next = i + 1 if i + 1 < self.size else 0

    def totals(self, now: float = 0.0) -> tuple[int, int, int]:
        return self._calls, self._failures, self._slow

    def reset(self) -> None:
        self._ring = bytearray(self.size)
        self._next = self._calls = self._failures = self._slow = 0

    def __repr__(self) -> str:
        return f"CountWindow(size={self.size})"


class TimeWindow:
    """The calls of the last ``duration`` seconds, in ``buckets`` buckets.

    Time is cut in buckets of ``duration / buckets`` seconds; the window is the current
    bucket and the ``buckets - 1`` before it. An outcome is therefore forgotten between
    ``duration - duration / buckets`` and ``duration`` seconds after it was recorded (never
    later). Buckets that fall out are subtracted from running totals, so recording and
    reading cost O(1) amortised.

    Args:
        duration: the span in seconds (or a ``timedelta``), > 0.
        buckets: how many buckets, in [1, 1000] (default 10).
    """

    __slots__ = ("_calls", "_failures", "_slow", "_tick", "_totals", "_width", "buckets", "duration")

    def __init__(self, duration: Seconds, buckets: int = 10) -> None:
        self.duration = seconds("window_duration", duration)
        self.buckets = integer("window_buckets", buckets, minimum=1, maximum=1000)
        self._width = self.duration / self.buckets
        self._calls = [0] * self.buckets
        self._failures = [0] * self.buckets
        self._slow = [0] * self.buckets
        self._totals = [0, 0, 0]
        self._tick: int | None = None

    def _advance(self, now: float) -> int:
        """Move the window to ``now``, dropping the buckets that fell out; the current slot."""
        tick = math.floor(now / self._width)
        last = self._tick
        if last is None or tick - last >= self.buckets:
            if last is not None:
                self.reset()
            self._tick = tick
        elif tick > last:
            totals, calls, failures, slow = self._totals, self._calls, self._failures, self._slow
            for t in range(last + 1, tick + 1):
                i = t % self.buckets
                totals[0] -= calls[i]
                totals[1] -= failures[i]
                totals[2] -= slow[i]
                calls[i] = failures[i] = slow[i] = 0
            self._tick = tick
        # A time before the current bucket (a clock that went back) counts in the current one.
        return self._tick % self.buckets  # type: ignore[operator]

    def record(self, failed: bool, slow: bool, now: float) -> None:
        i = self._advance(now)
        self._calls[i] += 1
        self._failures[i] += failed
        self._slow[i] += slow
        totals = self._totals
        totals[0] += 1
        totals[1] += failed
        totals[2] += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        calls, failures, slow = self._totals
        return calls, failures, slow

    def reset(self) -> None:
        n = self.buckets
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._totals = [0, 0, 0]
        self._tick = None

    def __repr__(self) -> str:
        return f"TimeWindow(duration={self.duration!r}, buckets={self.buckets})"
