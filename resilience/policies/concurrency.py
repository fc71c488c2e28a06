"""ConcurrencyLimit: a bulkhead whose limit follows the latency it observes.

The idea of Netflix's concurrency-limits, after TCP congestion control: nobody knows the
right number of calls in flight for a backend (or for a server), so it is measured. When
latency stays low the limit grows; when calls slow down, fail or time out, it shrinks.
Calls over the limit are rejected at once (no queue), which is also what a server wants
for load shedding: :meth:`ConcurrencyLimit.try_acquire` and :meth:`ConcurrencyLimit.release`
work without a pipeline.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._validate import Seconds, integer, number, seconds
from ..context import CallContext
from ..errors import ConcurrencyLimitError
from ..events import Event, Listener, emit
from ..outcome import Outcome
from ..policy import AsyncNext, Policy, SyncNext

__all__ = [
    "AIMD",
    "ConcurrencyLimit",
    "ConcurrencyLimitRejected",
    "ConcurrencyPermit",
    "FixedLimit",
    "Gradient2",
    "LimitAlgorithm",
    "LimitChanged",
]


@dataclass(frozen=True, slots=True)
class LimitChanged(Event):
    """The concurrency limit moved from ``old`` to ``new``."""

    old: int
    new: int


@dataclass(frozen=True, slots=True)
class ConcurrencyLimitRejected(Event):
    """A call was turned away: ``inflight`` calls were running against a limit of ``limit``."""

    limit: int
    inflight: int


class LimitAlgorithm(ABC):
    """How the limit moves: fed one sample per finished call, returns the new limit.

    An algorithm holds its own state (``limit``, averages) and is used by one
    :class:`ConcurrencyLimit` only, which calls :meth:`update` under its lock.

    Args:
        initial_limit: the limit before any sample, in [min_limit, max_limit].
        min_limit: the lowest limit, in [1, 1_000_000].
        max_limit: the highest limit, in [min_limit, 1_000_000].
    """

    __slots__ = ("initial_limit", "limit", "max_limit", "min_limit")

    def __init__(self, initial_limit: int, min_limit: int, max_limit: int) -> None:
        self.min_limit = integer("min_limit", min_limit, minimum=1, maximum=1_000_000)
        self.max_limit = integer("max_limit", max_limit, minimum=self.min_limit, maximum=1_000_000)
        self.initial_limit = integer("initial_limit", initial_limit, minimum=self.min_limit, maximum=self.max_limit)
        self.limit = self.initial_limit

    @abstractmethod
    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        """Take one sample and return the new limit, within ``[min_limit, max_limit]``.

        Args:
            rtt: the call's duration, in seconds.
            inflight: calls in flight when it started, itself included.
            dropped: it failed or timed out (it still has an ``rtt``).
            now: the time it ended, on the pipeline's clock.
        """

    def _clamp(self, value: int) -> int:
        return max(self.min_limit, min(self.max_limit, value))


class FixedLimit(LimitAlgorithm):
    """A limit that never moves: a plain bulkhead without a queue.

    Args:
        limit: the limit, in [1, 1_000_000].
    """

    __slots__ = ()

    def __init__(self, limit: int) -> None:
        limit = integer("limit", limit, minimum=1, maximum=1_000_000)
        super().__init__(limit, limit, limit)

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        return self.limit

    def __repr__(self) -> str:
        return f"FixedLimit({self.limit})"


class AIMD(LimitAlgorithm):
    """Additive increase, multiplicative decrease: the client-side choice.

    A call that failed, timed out, or took longer than ``timeout`` multiplies the limit by
    ``backoff_ratio`` (rounded down). A call that succeeded in time while the limit was in
    use — at least half of it taken when the call started (``2 * inflight >= limit``) —
    adds one. A call made while most of the limit sat idle says nothing about it.

    Args:
        initial_limit: the starting limit, in [min_limit, max_limit] (default 20).
        min_limit: the lowest limit, in [1, 1_000_000] (default 1).
        max_limit: the highest limit, in [min_limit, 1_000_000] (default 200).
        backoff_ratio: the factor on a drop, in [0.5, 1) (default 0.9).
        timeout: a call longer than this many seconds counts as a drop, > 0, or ``None``
            for no such bound (default ``None``).
    """

    __slots__ = ("backoff_ratio", "timeout")

    def __init__(
        self,
        initial_limit: int = 20,
        *,
        min_limit: int = 1,
        max_limit: int = 200,
        backoff_ratio: float = 0.9,
        timeout: Seconds | None = None,
    ) -> None:
        super().__init__(initial_limit, min_limit, max_limit)
        self.backoff_ratio = number("backoff_ratio", backoff_ratio, low=0.5, high=1.0, high_open=True)
        self.timeout = seconds("timeout", timeout, allow_none=True)

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        limit = self.limit
        if dropped or rtt > self.timeout:
            limit = self._clamp(int(limit * self.backoff_ratio))
        elif 2 * inflight >= limit:
            limit = self._clamp(limit + 1)
        self.limit = limit
        return limit

    def __repr__(self) -> str:
        return (
            f"AIMD(limit={self.limit}, min_limit={self.min_limit}, max_limit={self.max_limit}, "
            f"backoff_ratio={self.backoff_ratio!r})"
        )


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

    Args:
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

    __slots__ = (
        "_estimate",
        "_long",
        "_samples",
        "long_window",
        "queue_size",
        "rtt_tolerance",
        "smoothing",
        "warmup",
    )

    def __init__(
        self,
        initial_limit: int = 20,
        *,
        min_limit: int = 1,
        max_limit: int = 200,
        smoothing: float = 0.2,
        rtt_tolerance: float = 1.5,
        long_window: int = 600,
        warmup: int = 10,
        queue_size: float | Callable[[float], float] = 4,
    ) -> None:
        super().__init__(initial_limit, min_limit, max_limit)
        self.smoothing = number("smoothing", smoothing, low=0.0, high=1.0, low_open=True)
        self.rtt_tolerance = number("rtt_tolerance", rtt_tolerance, low=1.0, high=100.0)
        self.long_window = integer("long_window", long_window, minimum=1, maximum=1_000_000)
        self.warmup = integer("warmup", warmup, minimum=1, maximum=1_000_000)
        if not callable(queue_size):
            queue_size = number("queue_size", queue_size, low=0.0, high=1_000_000.0)
        self.queue_size = queue_size
        self._estimate = float(self.initial_limit)
        self._long = 0.0
        self._samples = 0

    @property
    def long_rtt(self) -> float:
        """The long-term RTT average now (0 before any sample)."""
        return self._long

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        estimate = self._estimate
        queue = self.queue_size(estimate) if callable(self.queue_size) else self.queue_size
        short = rtt
        self._samples += 1
        if self._samples <= self.warmup:
            self._long += (rtt - self._long) / self._samples
        else:
            self._long += (rtt - self._long) * 2.0 / (self.long_window + 1)
        if short > 0 and self._long > 2 * short:
            self._long *= 0.95
        if 2 * inflight >= estimate:  # otherwise the limit is not in use: nothing learnt
            gradient = 1.0 if short <= 0 else max(0.5, min(1.0, self.rtt_tolerance * self._long / short))
            target = estimate * gradient + queue
            estimate = estimate * (1 - self.smoothing) + target * self.smoothing
            estimate = max(float(self.min_limit), min(float(self.max_limit), estimate))
            self._estimate = estimate
        self.limit = self._clamp(int(estimate))
        return self.limit

    def __repr__(self) -> str:
        return (
            f"Gradient2(limit={self.limit}, min_limit={self.min_limit}, max_limit={self.max_limit}, "
            f"smoothing={self.smoothing!r}, rtt_tolerance={self.rtt_tolerance!r})"
        )


class ConcurrencyPermit:
    """A call admitted by :meth:`ConcurrencyLimit.try_acquire`; give it back to :meth:`~ConcurrencyLimit.release`."""

    __slots__ = ("inflight", "start")

    def __init__(self, start: float, inflight: int) -> None:
        self.start = start
        self.inflight = inflight

    def __repr__(self) -> str:
        return f"ConcurrencyPermit(start={self.start!r}, inflight={self.inflight})"


class ConcurrencyLimit(Policy):
    """Admits calls while fewer than the current limit are in flight; the limit adapts.

    A call that finds ``inflight >= limit`` is rejected at once with
    :class:`~resilience.ConcurrencyLimitError` (no queue). Each admitted call's duration,
    measured on the pipeline's clock, and its outcome feed the ``algorithm``: a success is a
    sample, a failure (the classifier's ``FAILURE``, which includes timeouts) a drop, and an
    ignored outcome (the caller's fault, a cancellation, a rejection further in) leaves the
    limit alone. :class:`LimitChanged` is emitted whenever the limit moves.

    Outside a pipeline (a server interceptor shedding load, say), use :meth:`try_acquire`
    and :meth:`release` directly; one instance serves threads and tasks alike.

    Args:
        algorithm: how the limit moves (default: ``AIMD()``: from 20, within [1, 200]);
            an ``int`` means a :class:`FixedLimit` of that size. One algorithm object per
            policy.
        listeners: receive :class:`LimitChanged` for every move, including those made
            through :meth:`release` without a context (default none).
        name: the policy's name in events (default ``"concurrencylimit"``).
    """

    __slots__ = ("_inflight", "_limit", "_lock", "algorithm", "listeners")

    def __init__(
        self,
        algorithm: LimitAlgorithm | int | None = None,
        *,
        listeners: Iterable[Listener] = (),
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if algorithm is None:
            algorithm = AIMD()
        elif isinstance(algorithm, int) and not isinstance(algorithm, bool):
            algorithm = FixedLimit(algorithm)
        if not isinstance(algorithm, LimitAlgorithm):
            raise TypeError(f"algorithm must be a LimitAlgorithm (AIMD, Gradient2, ...) or an int, got {algorithm!r}")
        self.algorithm = algorithm
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        self._lock = threading.Lock()
        self._limit = algorithm.limit
        self._inflight = 0

    @property
    def limit(self) -> int:
        """The limit now."""
        return self._limit

    @property
    def inflight(self) -> int:
        """Calls admitted and not yet released."""
        return self._inflight

    # -- the decision core ---------------------------------------------------------------

    def try_acquire(self, now: float) -> ConcurrencyPermit | None:
        """Admit one call at ``now``: a permit, or ``None`` when the limit is reached."""
        with self._lock:
            inflight = self._inflight
            if inflight >= self._limit:
                return None
            self._inflight = inflight = inflight + 1
        return ConcurrencyPermit(now, inflight)

    def release(self, permit: ConcurrencyPermit, outcome: Outcome, now: float, ctx: CallContext | None = None) -> None:
        """The admitted call ended at ``now`` with ``outcome``; call exactly once per permit.

        ``ctx`` (optional) is the call's context: its listeners receive :class:`LimitChanged`
        too, besides the policy's own.
        """
        with self._lock:
            self._inflight -= 1
            if outcome is Outcome.IGNORED:
                return
            old = self._limit
            self._limit = new = self.algorithm.update(
                now - permit.start, permit.inflight, outcome is Outcome.FAILURE, now
            )
        if new != old:
            if ctx is not None and ctx.listeners:
                emit(ctx.listeners, LimitChanged(self.name, ctx, old, new))
            if self.listeners:
                emit(self.listeners, LimitChanged(self.name, ctx, old, new))

    def _rejected(self, ctx: CallContext) -> ConcurrencyLimitError:
        limit, inflight = self._limit, self._inflight
        if ctx.listeners:
            emit(ctx.listeners, ConcurrencyLimitRejected(self.name, ctx, limit, inflight))
        return ConcurrencyLimitError(f"{self.name}: {inflight} calls in flight reach the limit of {limit}", context=ctx)

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        def concurrency_limit_sync(ctx: CallContext) -> Any:
            clock = ctx.clock
            permit = self.try_acquire(clock.monotonic())
            if permit is None:
                raise self._rejected(ctx)
            try:
                result = next(ctx)
            except BaseException as exc:
                self.release(permit, ctx.classifier.error(exc), clock.monotonic(), ctx)
                raise
            classifier = ctx.classifier
            outcome = classifier.result(result) if classifier.checks_results else Outcome.SUCCESS
            self.release(permit, outcome, clock.monotonic(), ctx)
            return result

        return concurrency_limit_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        async def concurrency_limit_async(ctx: CallContext) -> Any:
            clock = ctx.clock
            permit = self.try_acquire(clock.monotonic())
            if permit is None:
                raise self._rejected(ctx)
            try:
                result = await next(ctx)
            except BaseException as exc:
                self.release(permit, ctx.classifier.error(exc), clock.monotonic(), ctx)
                raise
            classifier = ctx.classifier
            outcome = classifier.result(result) if classifier.checks_results else Outcome.SUCCESS
            self.release(permit, outcome, clock.monotonic(), ctx)
            return result

        return concurrency_limit_async

    def __repr__(self) -> str:
        return f"ConcurrencyLimit({self.algorithm!r})"
