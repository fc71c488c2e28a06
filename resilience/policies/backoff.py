"""Backoff curves: how long to wait before the next attempt.

A backoff is a pure function of the attempt number that just failed (1 for the first),
the previous delay and a random source; it never sleeps. Every curve is capped.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from random import Random

from .._validate import Seconds, number, seconds

__all__ = ["Backoff", "Constant", "DecorrelatedJitter", "Exponential", "ExponentialJitter", "ExponentialPlusJitter"]


class Backoff(ABC):
    """Base of the backoff curves."""

    __slots__ = ()

    @abstractmethod
    def delay(self, attempt: int, previous: float, rng: Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based); ``previous`` is the last delay (0 at first)."""


class Constant(Backoff):
    """The same delay every time.

    Args:
        delay: seconds between attempts, >= 0 (default 0.1).
    """

    __slots__ = ("_delay",)

    def __init__(self, delay: Seconds = 0.1) -> None:
        self._delay = seconds("delay", delay, allow_zero=True, bounded=True)

    def delay(self, attempt: int, previous: float, rng: Random) -> float:
        return self._delay

    def __repr__(self) -> str:
        return f"Constant({self._delay!r})"


class Exponential(Backoff):
    """``base * multiplier ** (attempt - 1)``, capped, without jitter.

    Args:
        base: the first delay in seconds, > 0 (default 0.1).
        multiplier: growth per attempt, >= 1 (default 2).
        cap: the largest delay in seconds, >= base (default 10).
    """

    __slots__ = ("_base", "_cap", "_multiplier")

    def __init__(self, base: Seconds = 0.1, multiplier: float = 2.0, cap: Seconds = 10.0) -> None:
        self._base = seconds("base", base)
        self._multiplier = number("multiplier", multiplier, low=1.0, high=1e6)
        self._cap = seconds("cap", cap, bounded=True)
        if self._cap < self._base:
            raise ValueError(f"cap must be >= base ({self._base!r}), got {cap!r}")

    def _ceiling(self, attempt: int) -> float:
        # Work in logs so that a large attempt number cannot overflow.
        exponent = max(0, attempt - 1)
        if self._multiplier == 1.0:
            return self._base
        if exponent * math.log(self._multiplier) > math.log(self._cap / self._base) + 1:
            return self._cap
        return min(self._cap, self._base * self._multiplier**exponent)

    def delay(self, attempt: int, previous: float, rng: Random) -> float:
        return self._ceiling(attempt)

    def __repr__(self) -> str:
        return f"Exponential(base={self._base!r}, multiplier={self._multiplier!r}, cap={self._cap!r})"


class ExponentialJitter(Exponential):
    """Full jitter: uniform in ``[0, min(cap, base * multiplier ** (attempt - 1))]``.

    Spreads retries of many clients evenly (the scheme of gRPC's retry design).
    Same arguments as :class:`Exponential`.
    """

    __slots__ = ()

    def delay(self, attempt: int, previous: float, rng: Random) -> float:
        return rng.random() * self._ceiling(attempt)

    def __repr__(self) -> str:
        return f"ExponentialJitter(base={self._base!r}, multiplier={self._multiplier!r}, cap={self._cap!r})"


class ExponentialPlusJitter(Exponential):
    """``base * multiplier ** (attempt - 1) + uniform(0, jitter)``, capped.

    The curve of tenacity's ``wait_exponential_jitter``: the exponential delay plus up to
    ``jitter`` seconds of noise, never more than ``cap``. Unlike full jitter
    (:class:`ExponentialJitter`) a delay never drops below the exponential curve.

    Args:
        base: the first delay in seconds, > 0 (default 1, as tenacity's ``initial``).
        multiplier: growth per attempt, >= 1 (default 2, tenacity's ``exp_base``).
        cap: the largest delay in seconds, >= base (default 60, tenacity's ``max``).
        jitter: the most noise added, in seconds, >= 0 (default 1).
    """

    __slots__ = ("_jitter",)

    def __init__(
        self, base: Seconds = 1.0, multiplier: float = 2.0, cap: Seconds = 60.0, jitter: Seconds = 1.0
    ) -> None:
        super().__init__(base, multiplier, cap)
        self._jitter = seconds("jitter", jitter, allow_zero=True, bounded=True)

    def delay(self, attempt: int, previous: float, rng: Random) -> float:
        return min(self._cap, self._ceiling(attempt) + rng.random() * self._jitter)

    def __repr__(self) -> str:
        return (
            f"ExponentialPlusJitter(base={self._base!r}, multiplier={self._multiplier!r}, cap={self._cap!r}, "
            f"jitter={self._jitter!r})"
        )


class DecorrelatedJitter(Backoff):
    """Decorrelated jitter that keeps spreading at the cap.

    Each delay is drawn uniformly from ``[base, min(cap, 3 * previous)]`` (at least
    ``base``). The well-known form ``min(cap, uniform(base, 3 * previous))`` piles up at
    the cap once ``previous`` gets there, so that clients retry in step again; clamping
    the upper bound *before* drawing keeps delays spread over ``[base, cap]``.

    Args:
        base: the smallest delay in seconds, > 0 (default 0.1).
        cap: the largest delay in seconds, >= base (default 10).
    """

    __slots__ = ("_base", "_cap")

    def __init__(self, base: Seconds = 0.1, cap: Seconds = 10.0) -> None:
        self._base = seconds("base", base)
        self._cap = seconds("cap", cap, bounded=True)
        if self._cap < self._base:
            raise ValueError(f"cap must be >= base ({self._base!r}), got {cap!r}")

    def delay(self, attempt: int, previous: float, rng: Random) -> float:
        upper = min(self._cap, max(self._base, 3.0 * previous))
        return self._base + rng.random() * (upper - self._base)

    def __repr__(self) -> str:
        return f"DecorrelatedJitter(base={self._base!r}, cap={self._cap!r})"
