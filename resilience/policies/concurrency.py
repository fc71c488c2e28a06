"""ConcurrencyLimit: a bulkhead whose limit follows the latency it observes.

The idea of Netflix's concurrency-limits, after TCP congestion control: nobody knows the
right number of calls in flight for a backend (or for a server), so it is measured. When
latency stays low the limit grows; when calls slow down, fail or time out, it shrinks.
Calls over the limit are rejected at once (no queue), which is also what a server wants
for load shedding: :meth:`ConcurrencyLimit.acquire` and :meth:`ConcurrencyLimit.release`
work without a pipeline.

Options apart from state: an algorithm (:class:`AIMD`, :class:`Gradient2`,
:class:`FixedLimit`) is a frozen options object that says how the limit moves; what it has
learnt (the limit, the averages) is a :class:`LimitState` kept by the policy. One
algorithm object may serve any number of policies, and a reconfigure can swap it while
the policy keeps what it learnt.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field

from .._async_exec import gate_async
from .._sync_exec import gate_sync
from .._validate import integer, number, seconds
from ..context import CallContext
from ..errors import ConcurrencyLimitError
from ..events import Event, Listener, emit
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from ..permit import GateMixin, Permit, Rejection
from ..policy import AsyncNext, Policy, SyncNext

__all__ = [
    "AIMD",
    "ConcurrencyLimit",
    "ConcurrencyLimitOptions",
    "ConcurrencyLimitRejected",
    "FixedLimit",
    "Gradient2",
    "LimitAlgorithm",
    "LimitChanged",
    "LimitState",
]

_IGNORED = Outcome.IGNORED
_FAILURE = Outcome.FAILURE


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


@dataclass(frozen=True, slots=True)
class ConcurrencyLimitOptions(Options):
    """How a :class:`ConcurrencyLimit`'s limit moves.

    Attributes:
        algorithm: a :class:`LimitAlgorithm` (default ``AIMD()``: from 20, within
            [1, 200]); an ``int`` is taken as a :class:`FixedLimit` of that size.

    Raises:
        TypeError: ``algorithm`` is neither a :class:`LimitAlgorithm` nor an int.
        ValueError: an int ``algorithm`` is out of [1, 1_000_000].
    """

    algorithm: LimitAlgorithm = field(default_factory=AIMD)

    def __post_init__(self) -> None:
        self.set("algorithm", _algorithm(self.algorithm))


class ConcurrencyPermit(Permit):
    """A call admitted by :meth:`ConcurrencyLimit.acquire`; give it back to :meth:`~ConcurrencyLimit.release`.

    Attributes:
        start: when it was admitted, on the caller's clock.
        inflight: calls in flight once it was admitted, itself included.
    """

    __slots__ = ("inflight", "start")

    def __init__(self, start: float, inflight: int) -> None:
        self.start = start
        self.inflight = inflight

    def __repr__(self) -> str:
        return f"ConcurrencyPermit(start={self.start!r}, inflight={self.inflight})"


class ConcurrencyLimit(GateMixin, Reconfigurable[ConcurrencyLimitOptions], Policy):
    """Admits calls while fewer than the current limit are in flight; the limit adapts.

    A call that finds ``inflight >= limit`` is rejected at once with
    :class:`~resilience.ConcurrencyLimitError` (no queue). Each admitted call's duration,
    measured on the pipeline's clock, and its outcome feed the ``algorithm``: a success is a
    sample, a failure (the classifier's ``FAILURE``, which includes timeouts) a drop, and an
    ignored outcome (the caller's fault, a cancellation, a rejection further in, a
    classifier that raised) leaves the limit alone. :class:`LimitChanged` is emitted
    whenever the limit moves. Every admitted call is released exactly once, whatever
    happens to it (the shared executors see to it), so ``inflight`` never leaks.

    **Permit protocol.** Outside a pipeline (a server interceptor shedding load, say), use
    :meth:`acquire` — a :class:`ConcurrencyPermit`, or a ``Rejection("limit")`` whose
    ``detail`` is ``(limit, inflight)`` — and :meth:`release`, once per permit, with the
    outcome and the call's duration (``now - permit.start``). One instance serves threads
    and tasks alike.

    **Options and reconfigure.** ``algorithm`` builds a :class:`ConcurrencyLimitOptions`;
    ``options=`` takes one whole. The algorithms are frozen options; what the policy has
    learnt is its :class:`LimitState`. :meth:`reconfigure` keeps the calls in flight (they
    are released as usual, and their samples feed the new algorithm) and the current
    limit, brought within the new algorithm's ``[min_limit, max_limit]`` (its
    ``initial_limit`` only applies to a new policy). An algorithm of the same kind also
    keeps its averages (:class:`Gradient2`'s long-term RTT); one of another kind starts
    them afresh from the kept limit. A limit moved by the clamp emits :class:`LimitChanged`
    to the policy's own listeners.

    Args:
        algorithm: how the limit moves (default: ``AIMD()``: from 20, within [1, 200]);
            an ``int`` means a :class:`FixedLimit` of that size.
        options: the whole options object (instead of ``algorithm``).
        listeners: receive :class:`LimitChanged` for every move, including those made
            through :meth:`release` without a context (default none).
        name: the policy's name in events (default ``"concurrencylimit"``).
    """

    __slots__ = ("_inflight", "_lock", "_options", "_state", "clocked", "listeners")

    options_type = ConcurrencyLimitOptions

    def __init__(
        self,
        algorithm: LimitAlgorithm | int | None = None,
        *,
        options: ConcurrencyLimitOptions | None = None,
        listeners: Iterable[Listener] = (),
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            options = ConcurrencyLimitOptions(AIMD() if algorithm is None else _algorithm(algorithm))
        elif not isinstance(options, ConcurrencyLimitOptions):
            raise TypeError(f"options must be ConcurrencyLimitOptions, got {options!r}")
        self._options = options
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        self._lock = threading.Lock()
        self._state = options.algorithm.start()
        self._inflight = 0
        # A fixed limit needs no durations: the executor skips the clock on success.
        self.clocked = not isinstance(options.algorithm, FixedLimit)

    @property
    def algorithm(self) -> LimitAlgorithm:
        """The algorithm in force now (a frozen options object)."""
        return self._options.algorithm

    @property
    def limit(self) -> int:
        """The limit now."""
        return self._state.limit

    @property
    def inflight(self) -> int:
        """Calls admitted and not yet released."""
        return self._inflight

    @property
    def state(self) -> LimitState:
        """What the policy has learnt (read it as a snapshot: it changes under the policy's lock)."""
        return self._state

    # -- options ---------------------------------------------------------------------------

    def _reconfigure(self, options: ConcurrencyLimitOptions) -> None:
        new = options.algorithm
        with self._lock:
            state = self._state
            old_limit = state.limit
            limit = new.clamp(old_limit)
            if type(new) is not type(self._options.algorithm):
                state = self._state = LimitState(limit)
            else:
                state.limit = limit
                state.estimate = max(float(new.min_limit), min(float(new.max_limit), state.estimate))
            self._options = options
            self.clocked = not isinstance(new, FixedLimit)
        if limit != old_limit and self.listeners:
            emit(self.listeners, LimitChanged(self.name, None, old_limit, limit))

    # -- the permit protocol ----------------------------------------------------------------

    def acquire(self, ctx: CallContext | None, now: float) -> ConcurrencyPermit | Rejection:
        """Admit one call at ``now``: a permit, or ``Rejection("limit", detail=(limit, inflight))``."""
        with self._lock:
            inflight = self._inflight
            limit = self._state.limit
            if inflight < limit:
                self._inflight = inflight = inflight + 1
                return ConcurrencyPermit(now, inflight)
        return Rejection("limit", detail=(limit, inflight))

    def release(
        self, permit: Permit, outcome: Outcome, duration: float, now: float, ctx: CallContext | None = None
    ) -> None:
        """The call of ``permit`` ended at ``now`` with ``outcome`` after ``duration`` seconds; once per permit.

        ``ctx`` (optional) is the call's context: its listeners receive :class:`LimitChanged`
        too, besides the policy's own.
        """
        with self._lock:
            self._inflight -= 1
            if outcome is _IGNORED:
                return
            state = self._state
            old = state.limit
            new = self._options.algorithm.update(
                state,
                duration,
                permit.inflight,  # type: ignore[attr-defined]
                outcome is _FAILURE,
                now,
            )
        if new != old:
            if ctx is not None and ctx.listeners:
                emit(ctx.listeners, LimitChanged(self.name, ctx, old, new))
            if self.listeners:
                emit(self.listeners, LimitChanged(self.name, ctx, old, new))

    def rejected(self, ctx: CallContext, rejection: Rejection) -> ConcurrencyLimitError:
        """The error for a call turned away (and its :class:`ConcurrencyLimitRejected` event)."""
        limit, inflight = rejection.detail
        if ctx is not None and ctx.listeners:
            emit(ctx.listeners, ConcurrencyLimitRejected(self.name, ctx, limit, inflight))
        return ConcurrencyLimitError(f"{self.name}: {inflight} calls in flight reach the limit of {limit}", context=ctx)

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        return gate_sync(self, next)

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        return gate_async(self, next)

    def __repr__(self) -> str:
        return f"ConcurrencyLimit({self._options.algorithm!r}, limit={self._state.limit})"
