"""Circuit breaker: stop calling a backend that keeps failing, then probe it back.

The decision core is a small state machine with a permission API —
:meth:`CircuitBreaker.try_acquire` before a call, :meth:`CircuitBreaker.on_result` after
it — shared by a thin sync executor and a thin async executor. Calls never run under the
breaker's lock, and listeners are told of transitions after the lock is released.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._validate import ErrorFilter, Seconds, error_predicate, integer, number, seconds
from ..clock import SYSTEM_CLOCK, Clock
from ..context import CallContext
from ..errors import CircuitOpenError, IsolatedCircuitError
from ..events import Event, Listener, emit
from ..outcome import Outcome
from ..policy import AsyncNext, Policy, SyncNext
from .windows import CountWindow, TimeWindow

__all__ = [
    "CircuitBreaker",
    "CircuitMetrics",
    "CircuitPermit",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "SharedCircuitState",
]

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED


class CircuitState(enum.Enum):
    """The states of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls pass; outcomes are counted."""
    OPEN = "open"
    """Calls are rejected until the break ends."""
    HALF_OPEN = "half_open"
    """A few probe calls pass; their outcomes decide between closing and opening again."""
    ISOLATED = "isolated"
    """Opened by hand (:meth:`CircuitBreaker.isolate`): every call is rejected until :meth:`~CircuitBreaker.reset`."""


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_ISOLATED = CircuitState.ISOLATED


@dataclass(frozen=True, slots=True)
class CircuitStateChanged(Event):
    """The breaker moved from ``old`` to ``new``.

    ``reason`` is one of ``"failure_threshold"``, ``"failure_rate"``, ``"slow_call_rate"``
    (closed to open), ``"break_elapsed"`` (open to half-open), ``"probe_failed"``,
    ``"probe_slow"``, ``"probes_succeeded"`` (out of half-open), ``"isolate"``, ``"reset"``
    (by hand) and ``"remote"`` (applied from a :class:`SharedCircuitState`). ``context`` is
    the call that caused it, or ``None``.
    """

    old: CircuitState
    new: CircuitState
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitRejected(Event):
    """The breaker turned a call away in ``state``; ``retry_after`` is the rest of the break, when known."""

    state: CircuitState
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class CircuitMetrics:
    """A snapshot of a breaker (see :meth:`CircuitBreaker.metrics`).

    Attributes:
        state: the state now.
        calls: calls in the sliding window (0 in consecutive mode).
        failures: failed calls in the window.
        slow_calls: slow calls in the window.
        failure_rate: ``failures / calls`` (0.0 when empty).
        slow_call_rate: ``slow_calls / calls`` (0.0 when empty).
        consecutive_failures: failures in a row (consecutive mode only, else 0).
        probes_in_flight: half-open probes running now.
        retry_after: seconds until the break ends (0.0 unless open).
    """

    state: CircuitState
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    consecutive_failures: int
    probes_in_flight: int
    retry_after: float


class CircuitPermit:
    """What :meth:`CircuitBreaker.try_acquire` hands out; give it back to :meth:`~CircuitBreaker.on_result`.

    A permit belongs to one period of one state (one closed period, one half-open period):
    an outcome reported after that period ended counts for nothing.
    """

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe

    def __repr__(self) -> str:
        return f"CircuitPermit(probe={self.probe})"


_NEVER = CircuitPermit(False)  # matches no live permit: disables the executors' fast path


@runtime_checkable
class SharedCircuitState(Protocol):
    """A backend that shares one breaker's transitions with other processes.

    :meth:`attach` is called once by the breaker's constructor. :meth:`notify` is called
    after every local transition, from whatever thread made it: it must return at once and
    never raise. The backend reads the state to publish with :meth:`CircuitBreaker.export_state`
    and applies others' decisions with :meth:`CircuitBreaker.apply_remote`.
    """

    def attach(self, breaker: CircuitBreaker) -> None: ...

    def notify(self) -> None: ...


_Change = tuple[CircuitState, CircuitState, str]


class CircuitBreaker(Policy):
    """Rejects calls to a backend that keeps failing, for a while, then lets a few probes through.

    **Modes.** Without a window (the default) it opens after ``failure_threshold``
    consecutive failures. With ``window_size`` (the last N calls) or ``window_duration``
    (the calls of the last T seconds) it opens when, over at least ``minimum_calls`` calls
    in the window, the failure rate reaches ``failure_rate`` or — with
    ``slow_call_duration`` set — the share of calls slower than that reaches
    ``slow_call_rate``. A slow call counts as slow whether it succeeded or failed. The
    check is made when a failed or slow call is recorded.

    **Open and half-open.** An open breaker rejects every call with
    :class:`~resilience.CircuitOpenError` (its ``retry_after`` is the rest of the break). The
    first call after the break moves it to half-open: up to ``half_open_max_calls`` probes
    may be in flight at once, other calls are rejected. ``success_threshold`` successful
    probes close it; one failed (or slow) probe opens it again. Each open in a row lasts
    ``break_multiplier`` times longer than the previous one, up to ``max_break_duration``;
    a close resets the break to ``break_duration``. The move from open to half-open is made
    by the first call after the break: until then :attr:`state` still says open.

    **What is a failure.** An outcome the call's classifier calls ``IGNORED`` (the caller's
    fault, the library's own rejections, a cancellation) counts as neither success nor
    failure; an ignored probe frees its slot. Otherwise, without ``failure_on``, the
    classifier decides (by default any exception is a failure). With ``failure_on``, an
    error it matches is a failure and any other error a success (the backend did answer).
    Results are successes unless ``failure_if_result`` or the classifier says otherwise.
    Outcomes of calls admitted before a transition (a slow call still running when the
    breaker opened) are not counted.

    **By hand.** :meth:`isolate` rejects every call with :class:`~resilience.IsolatedCircuitError`
    until :meth:`reset`, which closes the breaker and clears its counts.

    **Events.** Every transition emits a :class:`CircuitStateChanged` to the pipeline's
    listeners when a call caused it, and always to the breaker's own ``listeners``;
    rejections emit :class:`CircuitRejected` to the pipeline's listeners.

    **Shared state.** With ``shared=`` (e.g. ``RedisBreakerState`` from
    ``resilience.shared.redis_breaker``) the breaker publishes its transitions and applies
    those of other processes: see that module.

    The breaker is thread-safe and may serve sync and async pipelines at once. In the
    closed state, consecutive mode, a successful call takes no lock and reads no clock.

    Args:
        failure_threshold: consecutive failures that open the breaker, in [1, 1_000_000]
            (default 5). Consecutive mode only.
        window_size: size of a count-based sliding window, in [1, 1_000_000] (default: none).
        window_duration: span of a time-based sliding window, in seconds > 0 (default: none).
        window_buckets: buckets of the time-based window, in [1, 1000] (default 10).
        failure_rate: the failure rate that opens the breaker, in (0, 1] (default 0.5).
            Window modes only.
        minimum_calls: calls needed in the window before a rate counts, >= 1 and, for a
            count window, <= ``window_size`` (default ``min(10, window_size)``).
        slow_call_duration: a call that takes longer is slow, seconds > 0 (default: no
            slow-call tracking). Window modes only.
        slow_call_rate: the slow-call rate that opens the breaker, in (0, 1] (default 1.0).
        break_duration: how long the breaker stays open, seconds > 0 (default 30).
        break_multiplier: growth of the break on each open in a row, in [1, 1000]
            (default 1: constant).
        max_break_duration: the longest break, seconds >= ``break_duration`` (default
            ``max(300, break_duration)``).
        half_open_max_calls: probes allowed in flight at once in half-open, in [1, 10_000] (default 1).
        success_threshold: successful probes that close the breaker, in [1, 10_000] (default 1).
        failure_on: exception types, or a predicate, that are failures (default: the classifier decides).
        failure_if_result: a predicate on results that marks failures (default: none).
        listeners: listeners told of every transition, in or out of a call (default: none).
        shared: a :class:`SharedCircuitState` backend (default: none).
        clock: the time source for what happens outside a call: :meth:`metrics`,
            :meth:`export_state`, :meth:`apply_remote` (default: the real clock). Give the
            pipeline's clock.
        name: the policy's name in events (default ``"circuitbreaker"``).

    Raises:
        ValueError: an option is out of range, or options of different modes are mixed.
    """

    __slots__ = (
        "_closed_permit",
        "_failure_on",
        "_failures",
        "_fast_permit",
        "_lock",
        "_next_break",
        "_open_until",
        "_probe_permit",
        "_probe_successes",
        "_probes",
        "_result_failure",
        "_shared",
        "_slow",
        "_state",
        "_timed",
        "_window",
        "break_duration",
        "break_multiplier",
        "clock",
        "failure_rate",
        "failure_threshold",
        "half_open_max_calls",
        "listeners",
        "max_break_duration",
        "minimum_calls",
        "slow_call_rate",
        "success_threshold",
    )

    def __init__(
        self,
        *,
        failure_threshold: int | None = None,
        window_size: int | None = None,
        window_duration: Seconds | None = None,
        window_buckets: int = 10,
        failure_rate: float | None = None,
        minimum_calls: int | None = None,
        slow_call_duration: Seconds | None = None,
        slow_call_rate: float = 1.0,
        break_duration: Seconds = 30.0,
        break_multiplier: float = 1.0,
        max_break_duration: Seconds | None = None,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        failure_on: ErrorFilter | None = None,
        failure_if_result: Callable[[Any], bool] | None = None,
        listeners: Iterable[Listener] = (),
        shared: SharedCircuitState | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if window_size is not None and window_duration is not None:
            raise ValueError(
                f"give window_size or window_duration, not both, got window_size={window_size!r} "
                f"and window_duration={window_duration!r}"
            )
        window: CountWindow | TimeWindow | None = None
        if window_size is not None:
            window = CountWindow(window_size)
        elif window_duration is not None:
            window = TimeWindow(window_duration, window_buckets)
        self._window = window
        if window is None:
            for option, value in (
                ("failure_rate", failure_rate),
                ("minimum_calls", minimum_calls),
                ("slow_call_duration", slow_call_duration),
            ):
                if value is not None:
                    raise ValueError(
                        f"{option} needs a sliding window (window_size or window_duration), got {option}={value!r}"
                    )
            self.failure_threshold = integer(
                "failure_threshold", 5 if failure_threshold is None else failure_threshold, minimum=1, maximum=1_000_000
            )
            self.failure_rate = 1.0
            self.minimum_calls = 1
        else:
            if failure_threshold is not None:
                raise ValueError(
                    "failure_threshold counts consecutive failures and cannot be combined with a window, "
                    f"got failure_threshold={failure_threshold!r}; use failure_rate"
                )
            self.failure_threshold = 0
            self.failure_rate = number(
                "failure_rate", 0.5 if failure_rate is None else failure_rate, low=0.0, high=1.0, low_open=True
            )
            if isinstance(window, CountWindow):
                default_min = min(10, window.size)
                self.minimum_calls = integer(
                    "minimum_calls",
                    default_min if minimum_calls is None else minimum_calls,
                    minimum=1,
                    maximum=window.size,
                )
            else:
                self.minimum_calls = integer(
                    "minimum_calls", 10 if minimum_calls is None else minimum_calls, minimum=1, maximum=1_000_000
                )
        self._slow: float | None = (
            None if slow_call_duration is None else seconds("slow_call_duration", slow_call_duration)
        )
        self.slow_call_rate = number("slow_call_rate", slow_call_rate, low=0.0, high=1.0, low_open=True)
        self.break_duration = seconds("break_duration", break_duration)
        self.break_multiplier = number("break_multiplier", break_multiplier, low=1.0, high=1000.0)
        if max_break_duration is None:
            self.max_break_duration = max(300.0, self.break_duration)
        else:
            self.max_break_duration = seconds("max_break_duration", max_break_duration)
            if self.max_break_duration < self.break_duration:
                raise ValueError(
                    f"max_break_duration must be >= break_duration ({self.break_duration:g}), "
                    f"got {max_break_duration!r}"
                )
        self.half_open_max_calls = integer("half_open_max_calls", half_open_max_calls, minimum=1, maximum=10_000)
        self.success_threshold = integer("success_threshold", success_threshold, minimum=1, maximum=10_000)
        self._failure_on = None if failure_on is None else error_predicate("failure_on", failure_on)
        if failure_if_result is not None and not callable(failure_if_result):
            raise TypeError(f"failure_if_result must be a callable or None, got {failure_if_result!r}")
        self._result_failure = failure_if_result
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self.clock = clock
        # Whether a closed-state call needs the time: for slow calls, or a time window.
        self._timed = self._slow is not None or isinstance(window, TimeWindow)

        self._lock = threading.Lock()
        self._state = _CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._next_break = self.break_duration
        self._probes = 0
        self._probe_successes = 0
        self._probe_permit = CircuitPermit(True)
        self._closed_permit = CircuitPermit(False)
        self._fast_permit = self._closed_permit if window is None else _NEVER
        self._shared: SharedCircuitState | None = None
        if shared is not None:
            if not isinstance(shared, SharedCircuitState):
                raise TypeError(f"shared must be a SharedCircuitState (attach, notify), got {shared!r}")
            shared.attach(self)
            self._shared = shared

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The state now (an open breaker whose break has ended reads open until the next call)."""
        return self._state

    @property
    def shared(self) -> SharedCircuitState | None:
        """The shared-state backend, if any."""
        return self._shared

    def metrics(self, now: float | None = None) -> CircuitMetrics:
        """A snapshot of the counts, as seen at ``now`` (default: ``clock.monotonic()``)."""
        if now is None:
            now = self.clock.monotonic()
        with self._lock:
            calls, failures, slow = self._window.totals(now) if self._window is not None else (0, 0, 0)
            state = self._state
            return CircuitMetrics(
                state=state,
                calls=calls,
                failures=failures,
                slow_calls=slow,
                failure_rate=failures / calls if calls else 0.0,
                slow_call_rate=slow / calls if calls else 0.0,
                consecutive_failures=self._failures,
                probes_in_flight=self._probes if state is _HALF_OPEN else 0,
                retry_after=max(0.0, self._open_until - now) if state is _OPEN else 0.0,
            )

    # -- transitions (caller holds the lock) -------------------------------------------------

    def _open(self, now: float, reason: str) -> _Change:
        old = self._state
        self._state = _OPEN
        self._open_until = now + self._next_break
        self._next_break = min(self.max_break_duration, self._next_break * self.break_multiplier)
        self._failures = 0
        return old, _OPEN, reason

    def _half_open(self) -> _Change:
        self._state = _HALF_OPEN
        self._probe_permit = CircuitPermit(True)
        self._probes = 0
        self._probe_successes = 0
        return _OPEN, _HALF_OPEN, "break_elapsed"

    def _close(self, reason: str) -> _Change:
        old = self._state
        self._state = _CLOSED
        self._closed_permit = CircuitPermit(False)
        self._fast_permit = self._closed_permit if self._window is None else _NEVER
        self._failures = 0
        if self._window is not None:
            self._window.reset()
        self._next_break = self.break_duration
        self._probes = 0
        return old, _CLOSED, reason

    def _announce(self, change: _Change, ctx: CallContext | None, local: bool = True) -> None:
        """Tell listeners (and the shared backend) of a transition; the lock is not held."""
        if (ctx is not None and ctx.listeners) or self.listeners:
            event = CircuitStateChanged(self.name, ctx, *change)
            if ctx is not None and ctx.listeners:
                emit(ctx.listeners, event)
            if self.listeners:
                emit(self.listeners, event)
        if local and self._shared is not None:
            self._shared.notify()

    # -- the permission API ----------------------------------------------------------------

    def try_acquire(self, now: float, ctx: CallContext | None = None) -> CircuitPermit:
        """Ask to make a call at ``now``.

        Returns:
            the permit to give back to :meth:`on_result` when the call ends.

        Raises:
            CircuitOpenError: the breaker is open (``retry_after``: the rest of the break),
                or half-open with every probe slot taken.
            IsolatedCircuitError: the breaker is isolated.
        """
        change: _Change | None = None
        retry_after: float | None = None
        with self._lock:
            state = self._state
            if state is _CLOSED:
                return self._closed_permit
            if state is _OPEN:
                if now < self._open_until:
                    retry_after = self._open_until - now
                else:
                    change = self._half_open()
                    state = _HALF_OPEN
            permit: CircuitPermit | None = None
            if state is _HALF_OPEN and self._probes < self.half_open_max_calls:
                self._probes += 1
                permit = self._probe_permit
        if change is not None:
            self._announce(change, ctx)
        if permit is not None:
            return permit
        raise self._rejected(ctx, state, retry_after)

    def on_result(
        self,
        permit: CircuitPermit,
        outcome: Outcome,
        duration: float,
        now: float,
        ctx: CallContext | None = None,
    ) -> None:
        """Report how the call admitted with ``permit`` ended, ``duration`` seconds after it began, at ``now``."""
        slow = outcome is not _IGNORED and self._slow is not None and duration > self._slow
        change: _Change | None = None
        with self._lock:
            state = self._state
            if permit is self._closed_permit and state is _CLOSED:
                if outcome is _IGNORED:
                    return
                failed = outcome is _FAILURE
                window = self._window
                if window is None:
                    if failed:
                        self._failures += 1
                        if self._failures >= self.failure_threshold:
                            change = self._open(now, "failure_threshold")
                    else:
                        self._failures = 0
                else:
                    window.record(failed, slow, now)
                    if failed or slow:
                        calls, failures, slow_calls = window.totals(now)
                        if calls >= self.minimum_calls:
                            if failures >= self.failure_rate * calls:
                                change = self._open(now, "failure_rate")
                            elif self._slow is not None and slow_calls >= self.slow_call_rate * calls:
                                change = self._open(now, "slow_call_rate")
            elif permit is self._probe_permit and state is _HALF_OPEN:
                self._probes -= 1
                if outcome is _FAILURE:
                    change = self._open(now, "probe_failed")
                elif slow:
                    change = self._open(now, "probe_slow")
                elif outcome is _SUCCESS:
                    self._probe_successes += 1
                    if self._probe_successes >= self.success_threshold:
                        change = self._close("probes_succeeded")
        if change is not None:
            self._announce(change, ctx)

    def _rejected(self, ctx: CallContext | None, state: CircuitState, retry_after: float | None) -> CircuitOpenError:
        if ctx is not None and ctx.listeners:
            emit(ctx.listeners, CircuitRejected(self.name, ctx, state, retry_after))
        if state is _ISOLATED:
            return IsolatedCircuitError(f"{self.name}: the circuit is isolated", context=ctx)
        if retry_after is not None:
            message = f"{self.name}: the circuit is open, retry in {retry_after:.3f}s"
        else:
            message = f"{self.name}: the circuit is half-open and all {self.half_open_max_calls} probe slots are taken"
        return CircuitOpenError(message, context=ctx, retry_after=retry_after)

    # -- by hand, and from other processes ------------------------------------------------

    def isolate(self) -> None:
        """Reject every call with :class:`~resilience.IsolatedCircuitError` until :meth:`reset`."""
        with self._lock:
            old = self._state
            self._state = _ISOLATED
        if old is not _ISOLATED:
            self._announce((old, _ISOLATED, "isolate"), None)

    def reset(self) -> None:
        """Close the breaker and forget every count (also ends an isolation)."""
        with self._lock:
            change = self._close("reset")
        if change[0] is not _CLOSED:
            self._announce(change, None)

    def export_state(self, now: float | None = None) -> tuple[CircuitState, float]:
        """The state to publish to other processes and, when open, the seconds left in the break."""
        if now is None:
            now = self.clock.monotonic()
        with self._lock:
            state = self._state
            return state, max(0.0, self._open_until - now) if state is _OPEN else 0.0

    def apply_remote(self, state: CircuitState, remaining: float = 0.0, now: float | None = None) -> bool:
        """Apply another process's decision; ``True`` if it changed anything.

        ``OPEN`` opens for ``remaining`` more seconds (not over an isolation); ``CLOSED``
        closes and clears the counts; ``ISOLATED`` isolates; ``HALF_OPEN`` is only
        informative and changes nothing (each process probes when its own break ends).
        Nothing is published back.
        """
        if now is None:
            now = self.clock.monotonic()
        change: _Change | None = None
        with self._lock:
            old = self._state
            if state is _OPEN:
                if remaining <= 0 or old is _ISOLATED:
                    return False
                self._open_until = now + remaining
                if old is not _OPEN:
                    self._state = _OPEN
                    change = (old, _OPEN, "remote")
            elif state is _CLOSED:
                if old is _CLOSED:
                    return False
                change = self._close("remote")
            elif state is _ISOLATED:
                if old is _ISOLATED:
                    return False
                self._state = _ISOLATED
                change = (old, _ISOLATED, "remote")
            else:
                return False
        if change is not None:
            self._announce(change, None, local=False)
        return True

    # -- outcomes ---------------------------------------------------------------------------

    def _error_outcome(self, ctx: CallContext, exc: BaseException) -> Outcome:
        outcome = ctx.classifier.error(exc)
        if self._failure_on is None or outcome is _IGNORED:
            return outcome
        return _FAILURE if self._failure_on(exc) else _SUCCESS

    def _result_outcome(self, ctx: CallContext, result: object) -> Outcome:
        outcome = ctx.classifier.result(result) if ctx.classifier.checks_results else _SUCCESS
        if self._result_failure is None or outcome is _IGNORED:
            return outcome
        return _FAILURE if self._result_failure(result) else _SUCCESS

    def _finish(self, ctx: CallContext, permit: CircuitPermit, outcome: Outcome, start: float) -> None:
        # The time is only read when something may need it: a failure may open the breaker.
        now = ctx.clock.monotonic() if self._timed or outcome is _FAILURE else 0.0
        self.on_result(permit, outcome, now - start if self._slow is not None else 0.0, now, ctx)

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        acquire = self.try_acquire

        def circuit_breaker_sync(ctx: CallContext) -> Any:
            if self._state is _CLOSED:
                permit = self._closed_permit
                start = ctx.clock.monotonic() if self._timed else 0.0
            else:
                start = ctx.clock.monotonic()
                permit = acquire(start, ctx)
            try:
                result = next(ctx)
            except BaseException as exc:
                self._finish(ctx, permit, self._error_outcome(ctx, exc), start)
                raise
            if self._result_failure is None and not ctx.classifier.checks_results:
                if permit is self._fast_permit and not self._failures:
                    return result  # closed, consecutive mode, nothing to reset: nothing to do
                self._finish(ctx, permit, _SUCCESS, start)
            else:
                self._finish(ctx, permit, self._result_outcome(ctx, result), start)
            return result

        return circuit_breaker_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        acquire = self.try_acquire

        async def circuit_breaker_async(ctx: CallContext) -> Any:
            if self._state is _CLOSED:
                permit = self._closed_permit
                start = ctx.clock.monotonic() if self._timed else 0.0
            else:
                start = ctx.clock.monotonic()
                permit = acquire(start, ctx)
            try:
                result = await next(ctx)
            except BaseException as exc:
                self._finish(ctx, permit, self._error_outcome(ctx, exc), start)
                raise
            if self._result_failure is None and not ctx.classifier.checks_results:
                if permit is self._fast_permit and not self._failures:
                    return result
                self._finish(ctx, permit, _SUCCESS, start)
            else:
                self._finish(ctx, permit, self._result_outcome(ctx, result), start)
            return result

        return circuit_breaker_async

    def __repr__(self) -> str:
        if self._window is None:
            mode = f"failure_threshold={self.failure_threshold}"
        else:
            mode = f"window={self._window!r}, failure_rate={self.failure_rate:g}"
        return f"CircuitBreaker({mode}, break_duration={self.break_duration:g}, state={self._state.value})"
