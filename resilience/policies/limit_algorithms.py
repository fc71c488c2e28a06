"""How an adaptive concurrency limit moves: the algorithms (frozen options) and what they learn.

Netflix's concurrency-limits, after TCP congestion control: :class:`AIMD` for clients,
:class:`Gradient2` following latency, :class:`FixedLimit` that never moves. An algorithm
is options only; what it learns lives in a :class:`LimitState` owned by the policy, so one
algorithm object may serve several policies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from .._validate import integer, number, seconds
from ..options import Options

__all__ = ["AIMD", "FixedLimit", "Gradient2", "LimitAlgorithm", "LimitState"]


class LimitState:
    """What a :class:`ConcurrencyLimit` has learnt; its algorithm updates it under the policy's lock.

    Attributes:
        limit: the limit now.
        estimate: the unrounded limit (:class:`Gradient2`; else ``float(limit)``).
        long_rtt: the long-term RTT average in seconds (:class:`Gradient2`; 0 before any sample).
        samples: samples taken into ``long_rtt``.
    """

    __slots__ = ("estimate", "limit", "long_rtt", "samples")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.estimate = float(limit)
        self.long_rtt = 0.0
        self.samples = 0

    def __repr__(self) -> str:
        return f"LimitState(limit={self.limit}, estimate={self.estimate:g}, long_rtt={self.long_rtt:g})"


class LimitAlgorithm(Options, ABC):
    """How the limit moves: frozen options, fed one sample per finished call.

    Subclasses are frozen dataclasses with (at least) ``initial_limit``, ``min_limit`` and
    ``max_limit``, checked by :meth:`_check_limits`: ``min_limit`` in [1, 1_000_000],
    ``max_limit`` in [min_limit, 1_000_000], ``initial_limit`` in [min_limit, max_limit].
    What the algorithm learns lives in a :class:`LimitState` (see :meth:`start`).
    """

    __slots__ = ()

    initial_limit: int
    min_limit: int
    max_limit: int

    def _check_limits(self) -> None:
        low = integer("min_limit", self.min_limit, minimum=1, maximum=1_000_000)
        high = integer("max_limit", self.max_limit, minimum=low, maximum=1_000_000)
        self.set("min_limit", low)
        self.set("max_limit", high)
        self.set("initial_limit", integer("initial_limit", self.initial_limit, minimum=low, maximum=high))

    def start(self) -> LimitState:
        """The state before any sample: the limit at ``initial_limit``."""
        return LimitState(self.initial_limit)

    def clamp(self, limit: int) -> int:
        """``limit`` brought within ``[min_limit, max_limit]``."""
        return max(self.min_limit, min(self.max_limit, limit))

    @abstractmethod
    def update(self, state: LimitState, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        """Take one sample into ``state`` and return the new limit (also ``state.limit``),
        within ``[min_limit, max_limit]``.

        Args:
            state: what the policy has learnt so far; updated in place.
            rtt: the call's duration, in seconds.
            inflight: calls in flight when it started, itself included.
            dropped: it failed or timed out (it still has an ``rtt``).
            now: the time it ended, on the pipeline's clock.
        """


@dataclass(frozen=True, slots=True, repr=False)
class FixedLimit(LimitAlgorithm):
    """A limit that never moves: a plain bulkhead without a queue.

    Attributes:
        limit: the limit, in [1, 1_000_000] (``initial_limit``, ``min_limit`` and
            ``max_limit`` all equal it).
    """

    limit: int
    initial_limit: int = field(init=False, default=1, compare=False)
    min_limit: int = field(init=False, default=1, compare=False)
    max_limit: int = field(init=False, default=1, compare=False)

    def __post_init__(self) -> None:
        limit = integer("limit", self.limit, minimum=1, maximum=1_000_000)
        for name in ("limit", "initial_limit", "min_limit", "max_limit"):
            self.set(name, limit)

    def update(self, state: LimitState, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        return state.limit

    def __repr__(self) -> str:
        return f"FixedLimit({self.limit})"


@dataclass(frozen=True, slots=True)
class AIMD(LimitAlgorithm):
    """Additive increase, multiplicative decrease: the client-side choice.

    A call that failed, timed out, or took longer than ``timeout`` multiplies the limit by
    ``backoff_ratio`` (rounded down). A call that succeeded in time while the limit was in
    use — at least half of it taken when the call started (``2 * inflight >= limit``) —
    adds one. A call made while most of the limit sat idle says nothing about it.

    Attributes:
        initial_limit: the starting limit, in [min_limit, max_limit] (default 20).
        min_limit: the lowest limit, in [1, 1_000_000] (default 1).
        max_limit: the highest limit, in [min_limit, 1_000_000] (default 200).
        backoff_ratio: the factor on a drop, in [0.5, 1) (default 0.9).
        timeout: a call longer than this many seconds counts as a drop, > 0, or ``None``
            for no such bound (default ``None``); a ``timedelta`` is stored as seconds.
    """

    initial_limit: int = 20
    _: KW_ONLY
    min_limit: int = 1
    max_limit: int = 200
    backoff_ratio: float = 0.9
    timeout: float | None = None

    def __post_init__(self) -> None:
        self._check_limits()
        self.set("backoff_ratio", number("backoff_ratio", self.backoff_ratio, low=0.5, high=1.0, high_open=True))
        if self.timeout is not None:
            self.set("timeout", seconds("timeout", self.timeout))

    def update(self, state: LimitState, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        limit = state.limit
        timeout = self.timeout
        if dropped or (timeout is not None and rtt > timeout):
            limit = max(self.min_limit, min(self.max_limit, int(limit * self.backoff_ratio)))
        elif 2 * inflight >= limit:
            limit = min(self.max_limit, limit + 1)
        state.limit = limit
        return limit


@dataclass(frozen=True, slots=True)
class Gradient2(LimitAlgorithm):
    """Follows the ratio of long-term to short-term latency (Netflix's Gradient2).

    It keeps a long-term average of the RTT (the mean of the first ``warmup`` samples,
    then an exponential average over about ``long_window`` samples) and takes each call's
    RTT as the short-term one. Their ratio, ``gradient = clamp(rtt_tolerance * long / short,
    0.5, 1)``, is 1 while latency holds and drops as queues build. Each sample made while at
    least half the limit was in use moves the limit towards ``limit * gradient +
    queue_size``, by the ``smoothing`` share. When the long average sits at more than twice
    the current RTT (load has passed), it decays by 5% per sample so that it catches up.

    The growth term ``queue_size`` lets the limit probe upwards while latency holds; the
    floor of 0.5 on the gradient keeps one outlier from halving it. A dropped call only
    contributes its RTT (a timeout's is long, so it pulls the limit down).

    Attributes:
        initial_limit: the starting limit, in [min_limit, max_limit] (default 20).
        min_limit: the lowest limit, in [1, 1_000_000] (default 1).
        max_limit: the highest limit, in [min_limit, 1_000_000] (default 200).
        smoothing: the share of each new estimate taken, in (0, 1] (default 0.2).
        rtt_tolerance: latency growth tolerated before the limit shrinks, in [1, 100]
            (default 1.5).
        long_window: samples in the long-term average, in [1, 1_000_000] (default 600).
        warmup: samples averaged plainly before the exponential average starts, in
            [1, 1_000_000] (default 10).
        queue_size: the growth term, a number in [0, 1_000_000] or a function of the current
            limit (default 4).
    """

    initial_limit: int = 20
    _: KW_ONLY
    min_limit: int = 1
    max_limit: int = 200
    smoothing: float = 0.2
    rtt_tolerance: float = 1.5
    long_window: int = 600
    warmup: int = 10
    queue_size: float | Callable[[float], float] = 4

    def __post_init__(self) -> None:
        self._check_limits()
        self.set("smoothing", number("smoothing", self.smoothing, low=0.0, high=1.0, low_open=True))
        self.set("rtt_tolerance", number("rtt_tolerance", self.rtt_tolerance, low=1.0, high=100.0))
        self.set("long_window", integer("long_window", self.long_window, minimum=1, maximum=1_000_000))
        self.set("warmup", integer("warmup", self.warmup, minimum=1, maximum=1_000_000))
        if not callable(self.queue_size):
            self.set("queue_size", number("queue_size", self.queue_size, low=0.0, high=1_000_000.0))

    def update(self, state: LimitState, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        estimate = state.estimate
        queue_size = self.queue_size
        queue = queue_size(estimate) if callable(queue_size) else queue_size
        short = rtt
        state.samples = samples = state.samples + 1
        long = state.long_rtt
        if samples <= self.warmup:
            long += (rtt - long) / samples
        else:
            long += (rtt - long) * 2.0 / (self.long_window + 1)
        if short > 0 and long > 2 * short:
            long *= 0.95
        state.long_rtt = long
        if 2 * inflight >= estimate:  # otherwise the limit is not in use: nothing learnt
            gradient = 1.0 if short <= 0 else max(0.5, min(1.0, self.rtt_tolerance * long / short))
            target = estimate * gradient + queue
            estimate = estimate * (1 - self.smoothing) + target * self.smoothing
            state.estimate = max(float(self.min_limit), min(float(self.max_limit), estimate))
        state.limit = limit = self.clamp(int(state.estimate))
        return limit


def _algorithm(value: object) -> LimitAlgorithm:
    if isinstance(value, int) and not isinstance(value, bool):
        return FixedLimit(value)
    if not isinstance(value, LimitAlgorithm):
        raise TypeError(f"algorithm must be a LimitAlgorithm (AIMD, Gradient2, ...) or an int, got {value!r}")
    return value
