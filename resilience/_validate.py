"""Option checks shared by the policies: each error names the option, the value and the range."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

Seconds = float | int | timedelta

ErrorFilter = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
"""Exception types, or a predicate, selecting errors."""


def error_predicate(name: str, value: ErrorFilter) -> Callable[[BaseException], bool]:
    """``value`` (exception types or a predicate) as a predicate; ``Exception`` gives a constant one."""
    if isinstance(value, type) and issubclass(value, BaseException):
        types: tuple[type[BaseException], ...] = (value,)
    elif isinstance(value, tuple) and all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
        types = value
    elif callable(value):
        return cast(Callable[[BaseException], bool], value)
    else:
        raise TypeError(f"{name} must be an exception type, a tuple of them, or a predicate, got {value!r}")
    if types in ((Exception,), (BaseException,)):
        return _always
    return lambda exc: isinstance(exc, types)


def _always(exc: BaseException) -> bool:
    return True


def as_seconds(value: Seconds | None) -> Any:
    """``value`` passed on to an options object, which checks it and stores it as seconds."""
    return value


def seconds(
    name: str, value: object, *, allow_zero: bool = False, allow_none: bool = False, bounded: bool = False
) -> float:
    """``value`` as seconds (a number or a ``timedelta``), checked to be finite and > 0 (or >= 0).

    ``bounded``: also at most ``threading.TIMEOUT_MAX``, for durations that become a wait or
    a timer.
    """
    if value is None and allow_none:
        return math.inf
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or a timedelta, got {value!r}")
    v = float(value)
    bound = ">= 0" if allow_zero else "> 0"
    if math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    if bounded and v > threading.TIMEOUT_MAX:
        raise ValueError(
            f"{name} must be at most {threading.TIMEOUT_MAX:g} seconds (threading.TIMEOUT_MAX), got {value!r}"
        )
    return v


def window_span(name: str, value: object, buckets: object) -> float:
    """A sliding window's span in seconds, checked to leave each of its ``buckets`` a usable width."""
    span = seconds(name, value)
    if isinstance(buckets, int) and not isinstance(buckets, bool) and buckets >= 1 and span / buckets < 1e-6:
        raise ValueError(
            f"{name} must leave each of its {buckets} buckets at least a microsecond, got {name}={value!r}"
        )
    return span


def integer(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """``value`` checked to be an int in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def number(
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` checked to be a real number within the given interval."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    bad = math.isnan(v) or (v <= low if low_open else v < low) or (v >= high if high_open else v > high)
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open or math.isinf(high) else "]"
        high_s = "inf" if math.isinf(high) else f"{high:g}"
        raise ValueError(f"{name} must be in {left}{low:g}, {high_s}{right}, got {value!r}")
    return v
