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
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..context import CallContext
from ..errors import ConcurrencyLimitError
from ..events import Event, Listener, emit
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from ..permit import GateMixin, Permit, Rejection
from ..policy import Policy
from .limit_algorithms import AIMD, FixedLimit, Gradient2, LimitAlgorithm, LimitState, _algorithm

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

    def __repr__(self) -> str:
        return f"ConcurrencyLimit({self._options.algorithm!r}, limit={self._state.limit})"
