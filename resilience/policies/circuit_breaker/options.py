"""The circuit breaker's options: frozen, validated, with their defaults and ranges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..._validate import ErrorFilter, error_predicate, integer, number, seconds, window_span
from ...options import Options

__all__ = ["CircuitBreakerOptions"]


@dataclass(frozen=True, slots=True)
class CircuitBreakerOptions(Options):
    """How a :class:`~resilience.CircuitBreaker` decides; see the breaker for the modes.

    Attributes:
        failure_threshold: consecutive failures that open the breaker, in [1, 1_000_000]
            (default 5). Consecutive mode only (no window).
        window_size: size of a count-based sliding window, in [1, 1_000_000] (default: none).
        window_duration: span of a time-based sliding window, in seconds > 0 (default: none).
        window_buckets: buckets of the time-based window, in [1, 1000] (default 10).
        failure_rate: the failure rate that opens the breaker, in (0, 1] (default 0.5).
            Window modes only.
        minimum_calls: calls needed in the window before a rate counts, >= 1 and, for a
            count window, <= ``window_size`` (default ``min(10, window_size)``, or 10).
        slow_call_duration: a call that takes longer is slow, seconds > 0 (default: no
            slow-call tracking). Window modes only.
        slow_call_rate: the slow-call rate that opens the breaker, in (0, 1] (default 1.0).
        break_duration: how long the breaker stays open, seconds > 0 (default 30).
        break_multiplier: growth of the break on each open in a row, in [1, 1000] (default 1).
        max_break_duration: the longest break, seconds >= ``break_duration`` (default
            ``max(300, break_duration)``).
        half_open_max_calls: probes in flight at once in half-open, in [1, 10_000] (default 1).
        half_open_max_wait: seconds the breaker stays half-open with every probe slot
            taken before it opens again, > 0 and at most ``threading.TIMEOUT_MAX``
            (default 60): a probe that never returns cannot hold it half-open for good.
        success_threshold: successful probes that close the breaker, in [1, 10_000] (default 1).
        failure_on: exception types, or a predicate, that are failures (default: the
            classifier decides).
        failure_if_result: a predicate on results that marks failures (default: none).

    Durations are seconds; a ``timedelta`` is accepted too and stored as seconds.

    Raises:
        ValueError: an option is out of range, or options of different modes are mixed.
        TypeError: an option has the wrong type.
    """

    failure_threshold: int | None = None
    window_size: int | None = None
    window_duration: float | None = None
    window_buckets: int = 10
    failure_rate: float | None = None
    minimum_calls: int | None = None
    slow_call_duration: float | None = None
    slow_call_rate: float = 1.0
    break_duration: float = 30.0
    break_multiplier: float = 1.0
    max_break_duration: float | None = None
    half_open_max_calls: int = 1
    half_open_max_wait: float = 60.0
    success_threshold: int = 1
    failure_on: ErrorFilter | None = None
    failure_if_result: Callable[[Any], bool] | None = None
    failure_predicate: Callable[[BaseException], bool] | None = field(
        init=False, default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.window_size is not None and self.window_duration is not None:
            raise ValueError(
                f"give window_size or window_duration, not both, got window_size={self.window_size!r} "
                f"and window_duration={self.window_duration!r}"
            )
        if self.window_size is not None:
            self.set("window_size", integer("window_size", self.window_size, minimum=1, maximum=1_000_000))
        if self.window_duration is not None:
            self.set("window_duration", window_span("window_duration", self.window_duration, self.window_buckets))
        self.set("window_buckets", integer("window_buckets", self.window_buckets, minimum=1, maximum=1000))
        if not self.windowed:
            for option in ("failure_rate", "minimum_calls", "slow_call_duration"):
                value = getattr(self, option)
                if value is not None:
                    raise ValueError(
                        f"{option} needs a sliding window (window_size or window_duration), got {option}={value!r}"
                    )
            threshold = 5 if self.failure_threshold is None else self.failure_threshold
            self.set("failure_threshold", integer("failure_threshold", threshold, minimum=1, maximum=1_000_000))
        else:
            if self.failure_threshold is not None:
                raise ValueError(
                    "failure_threshold counts consecutive failures and cannot be combined with a window, "
                    f"got failure_threshold={self.failure_threshold!r}; use failure_rate"
                )
            rate = 0.5 if self.failure_rate is None else self.failure_rate
            self.set("failure_rate", number("failure_rate", rate, low=0.0, high=1.0, low_open=True))
            if self.window_size is not None:
                default_min, most = min(10, self.window_size), self.window_size
            else:
                default_min, most = 10, 1_000_000
            minimum = default_min if self.minimum_calls is None else self.minimum_calls
            self.set("minimum_calls", integer("minimum_calls", minimum, minimum=1, maximum=most))
        if self.slow_call_duration is not None:
            self.set("slow_call_duration", seconds("slow_call_duration", self.slow_call_duration))
        self.set("slow_call_rate", number("slow_call_rate", self.slow_call_rate, low=0.0, high=1.0, low_open=True))
        self.set("break_duration", seconds("break_duration", self.break_duration))
        self.set("break_multiplier", number("break_multiplier", self.break_multiplier, low=1.0, high=1000.0))
        if self.max_break_duration is None:
            self.set("max_break_duration", max(300.0, float(self.break_duration)))
        else:
            longest = seconds("max_break_duration", self.max_break_duration)
            if longest < float(self.break_duration):
                raise ValueError(
                    f"max_break_duration must be >= break_duration ({float(self.break_duration):g}), "
                    f"got {self.max_break_duration!r}"
                )
            self.set("max_break_duration", longest)
        self.set(
            "half_open_max_calls", integer("half_open_max_calls", self.half_open_max_calls, minimum=1, maximum=10_000)
        )
        self.set("half_open_max_wait", seconds("half_open_max_wait", self.half_open_max_wait, bounded=True))
        self.set("success_threshold", integer("success_threshold", self.success_threshold, minimum=1, maximum=10_000))
        if self.failure_on is not None:
            self.set("failure_predicate", error_predicate("failure_on", self.failure_on))
        if self.failure_if_result is not None and not callable(self.failure_if_result):
            raise TypeError(f"failure_if_result must be a callable or None, got {self.failure_if_result!r}")

    @property
    def windowed(self) -> bool:
        """Whether the breaker counts over a sliding window (else: consecutive failures)."""
        return self.window_size is not None or self.window_duration is not None

    def window_shape(self) -> tuple[object, ...]:
        """What identifies the window: equal shapes can keep their counts across a reconfigure."""
        return (self.window_size, self.window_duration, self.window_buckets if self.window_duration else None)
