"""The circuit breaker's state machine, behind the permit protocol.

:meth:`CircuitBreaker.acquire` before a call, :meth:`CircuitBreaker.release` after it; the
shared executors run it in pipelines. Calls never run under the breaker's lock, and
listeners are told of transitions after the lock is released.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..._validate import ErrorFilter, Seconds, as_seconds
from ...clock import SYSTEM_CLOCK, Clock
from ...context import CallContext
from ...errors import CircuitOpenError, IsolatedCircuitError
from ...events import Listener, emit
from ...options import Reconfigurable
from ...outcome import Outcome, error_outcome
from ...permit import GateMixin, Permit, Rejection
from ...policy import Policy
from ..windows import CountWindow, TimeWindow
from .options import CircuitBreakerOptions
from .states import (
    CircuitMetrics,
    CircuitPermit,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
    SharedCircuitState,
)

__all__ = ["CircuitBreaker"]

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED
_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_ISOLATED = CircuitState.ISOLATED

_NEVER = CircuitPermit(False)  # matches no live permit: disables the release fast path
_Change = tuple[CircuitState, CircuitState, str]


def _new_window(options: CircuitBreakerOptions) -> CountWindow | TimeWindow | None:
    if options.window_size is not None:
        return CountWindow(options.window_size)
    if options.window_duration is not None:
        return TimeWindow(options.window_duration, options.window_buckets)
    return None


class CircuitBreaker(GateMixin, Reconfigurable[CircuitBreakerOptions], Policy):
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
    A ``failure_on`` or ``failure_if_result`` predicate that raises makes the outcome
    ``IGNORED`` (a probe frees its slot) and its error reaches the caller. Outcomes of
    calls admitted before a transition are not counted.

    **By hand.** :meth:`isolate` rejects every call with :class:`~resilience.IsolatedCircuitError`
    until :meth:`reset`, which closes the breaker and clears its counts.

    **Options and reconfigure.** The keywords build a :class:`CircuitBreakerOptions`
    (their defaults and ranges are documented there); ``options=`` takes one whole.
    :meth:`reconfigure` keeps the state (closed, open with the rest of its break,
    half-open with its probes), the consecutive-failure count, and the window's counts
    when the window keeps its shape (same kind, size, duration and buckets). A window of
    another shape starts empty, and calls admitted before such a change count for nothing.
    The next break is brought within the new ``[break_duration, max_break_duration]``.

    **Events.** Every transition emits a :class:`CircuitStateChanged` to the pipeline's
    listeners when a call caused it, and always to the breaker's own ``listeners``;
    rejections emit :class:`CircuitRejected` to the pipeline's listeners.

    **Shared state.** With ``shared=`` (e.g. ``RedisBreakerState`` from
    ``resilience.shared.redis_breaker``) the breaker publishes its transitions and applies
    those of other processes: see that module.

    The breaker is thread-safe and may serve sync and async pipelines at once. In the
    closed state, consecutive mode, a successful call takes no lock.

    Args:
        options: the whole options object (instead of the keywords below).
        failure_threshold, window_size, window_duration, window_buckets, failure_rate,
        minimum_calls, slow_call_duration, slow_call_rate, break_duration,
        break_multiplier, max_break_duration, half_open_max_calls, half_open_max_wait,
        success_threshold,
        failure_on, failure_if_result: see :class:`CircuitBreakerOptions`.
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
        "_failures",
        "_fast_permit",
        "_half_open_since",
        "_lock",
        "_next_break",
        "_open_until",
        "_options",
        "_probe_permit",
        "_probe_successes",
        "_probes",
        "_shared",
        "_state",
        "_window",
        "clock",
        "clocked",
        "judges_results",
        "listeners",
        "quiet_success",
    )

    options_type = CircuitBreakerOptions

    def __init__(
        self,
        *,
        options: CircuitBreakerOptions | None = None,
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
        half_open_max_wait: Seconds = 60.0,
        success_threshold: int = 1,
        failure_on: ErrorFilter | None = None,
        failure_if_result: Callable[[Any], bool] | None = None,
        listeners: Iterable[Listener] = (),
        shared: SharedCircuitState | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            options = CircuitBreakerOptions(
                failure_threshold=failure_threshold,
                window_size=window_size,
                window_duration=as_seconds(window_duration),
                window_buckets=window_buckets,
                failure_rate=failure_rate,
                minimum_calls=minimum_calls,
                slow_call_duration=as_seconds(slow_call_duration),
                slow_call_rate=slow_call_rate,
                break_duration=as_seconds(break_duration),
                break_multiplier=break_multiplier,
                max_break_duration=as_seconds(max_break_duration),
                half_open_max_calls=half_open_max_calls,
                half_open_max_wait=as_seconds(half_open_max_wait),
                success_threshold=success_threshold,
                failure_on=failure_on,
                failure_if_result=failure_if_result,
            )
        elif not isinstance(options, CircuitBreakerOptions):
            raise TypeError(f"options must be CircuitBreakerOptions, got {options!r}")
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        for i, listener in enumerate(self.listeners):
            if not callable(listener):
                raise TypeError(f"listeners[{i}] must be callable, got {listener!r}")
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self.clock = clock
        self._options = options
        self.judges_results = options.failure_if_result is not None
        self._lock = threading.Lock()
        self._window = _new_window(options)
        self._state = _CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._next_break = options.break_duration
        self._probes = 0
        self._probe_successes = 0
        self._half_open_since = 0.0
        self._probe_permit = CircuitPermit(True)
        self._closed_permit = CircuitPermit(False)
        self._fast_permit = self._closed_permit if self._window is None else _NEVER
        self.clocked = self._closed_needs_time()
        self.quiet_success = self._window is None and not self.clocked
        self._shared: SharedCircuitState | None = None
        if shared is not None:
            if not isinstance(shared, SharedCircuitState):
                raise TypeError(f"shared must be a SharedCircuitState (attach, notify), got {shared!r}")
            shared.attach(self)
            self._shared = shared

    # -- options ---------------------------------------------------------------------------

    def _closed_needs_time(self) -> bool:
        """Whether a call in the closed state needs the time: a time window, or slow calls."""
        options = self._options
        return options.window_duration is not None or options.slow_call_duration is not None

    def _reconfigure(self, options: CircuitBreakerOptions) -> None:
        with self._lock:
            old = self._options
            if options.window_shape() != old.window_shape():
                self._window = _new_window(options)
                if self._state is _CLOSED:
                    self._closed_permit = CircuitPermit(False)
                self._failures = 0
            self._fast_permit = self._closed_permit if self._window is None else _NEVER
            longest = options.max_break_duration or math.inf
            self._next_break = min(longest, max(options.break_duration, self._next_break))
            self.judges_results = options.failure_if_result is not None
            self._options = options
            if self._state is _CLOSED:
                self.clocked = self._closed_needs_time()
                self.quiet_success = self._window is None and not self.clocked and not self._failures

    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that open the breaker (0 in a window mode)."""
        return self._options.failure_threshold or 0

    @property
    def break_duration(self) -> float:
        """How long the breaker stays open, in seconds."""
        return self._options.break_duration

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
        self.clocked = True
        self.quiet_success = False
        self._state = _OPEN
        self._open_until = now + self._next_break
        options = self._options
        self._next_break = min(options.max_break_duration or math.inf, self._next_break * options.break_multiplier)
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
        self.clocked = self._closed_needs_time()
        self.quiet_success = self._window is None and not self.clocked
        self._closed_permit = CircuitPermit(False)
        self._fast_permit = self._closed_permit if self._window is None else _NEVER
        self._failures = 0
        if self._window is not None:
            self._window.reset()
        self._next_break = self._options.break_duration
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

    # -- the permit protocol ----------------------------------------------------------------

    def acquire(self, ctx: CallContext | None, now: float) -> CircuitPermit | Rejection:
        """Ask to make a call at ``now``: a permit, or a :class:`~resilience.permit.Rejection`
        (``"open"`` with the rest of the break, ``"half_open"`` with every probe slot taken,
        or ``"isolated"``)."""
        if self._state is _CLOSED:
            return self._closed_permit
        if not now:  # the executor saw the breaker closed: the time is needed after all
            now = (ctx.clock if ctx is not None else self.clock).monotonic()
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
                    self._half_open_since = now
                    state = _HALF_OPEN
            permit: CircuitPermit | None = None
            if state is _HALF_OPEN:
                if self._probes < self._options.half_open_max_calls:
                    self._probes += 1
                    permit = self._probe_permit
                elif now - self._half_open_since >= self._options.half_open_max_wait:
                    # Probes that never came back: open again rather than stay half-open,
                    # rejecting everything, for good. Their late outcomes count for nothing.
                    change = self._open(now, "half_open_timeout")
                    state = _OPEN
                    retry_after = self._open_until - now
        if change is not None:
            self._announce(change, ctx)
        if permit is not None:
            return permit
        if state is _ISOLATED:
            return Rejection("isolated")
        return Rejection("open" if retry_after is not None else "half_open", retry_after)

    def release(
        self, permit: Permit, outcome: Outcome, duration: float, now: float, ctx: CallContext | None = None
    ) -> None:
        """The call admitted with ``permit`` ended with ``outcome``, ``duration`` seconds after it began, at ``now``."""
        if outcome is _SUCCESS and permit is self._fast_permit and not self._failures:
            return  # closed, consecutive mode, nothing to reset
        options = self._options
        slow_after = options.slow_call_duration
        slow = outcome is not _IGNORED and slow_after is not None and duration > slow_after
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
                        self.quiet_success = False  # the next success must reset the count
                        if self._failures >= (options.failure_threshold or 1):
                            change = self._open(now, "failure_threshold")
                    else:
                        self._failures = 0
                        self.quiet_success = not self.clocked
                else:
                    window.record(failed, slow, now)
                    if failed or slow:
                        calls, failures, slow_calls = window.totals(now)
                        if calls >= (options.minimum_calls or 1):
                            if failures >= (options.failure_rate or 1.0) * calls:
                                change = self._open(now, "failure_rate")
                            elif slow_after is not None and slow_calls >= options.slow_call_rate * calls:
                                change = self._open(now, "slow_call_rate")
            elif permit is self._probe_permit and state is _HALF_OPEN:
                self._probes -= 1
                if outcome is _FAILURE:
                    change = self._open(now, "probe_failed")
                elif slow:
                    change = self._open(now, "probe_slow")
                elif outcome is _SUCCESS:
                    self._probe_successes += 1
                    if self._probe_successes >= options.success_threshold:
                        change = self._close("probes_succeeded")
        if change is not None:
            self._announce(change, ctx)

    def rejected(self, ctx: CallContext, rejection: Rejection) -> CircuitOpenError:
        """The error for a call this breaker turned away (and its :class:`CircuitRejected` event)."""
        state = {"isolated": _ISOLATED, "open": _OPEN}.get(rejection.reason, _HALF_OPEN)
        retry_after = rejection.retry_after
        if ctx is not None and ctx.listeners:
            emit(ctx.listeners, CircuitRejected(self.name, ctx, state, retry_after))
        if state is _ISOLATED:
            return IsolatedCircuitError(f"{self.name}: the circuit is isolated", context=ctx)
        if retry_after is not None:
            message = f"{self.name}: the circuit is open, retry in {retry_after:.3f}s"
        else:
            message = (
                f"{self.name}: the circuit is half-open and all "
                f"{self._options.half_open_max_calls} probe slots are taken"
            )
        return CircuitOpenError(message, context=ctx, retry_after=retry_after)

    def judge_error(self, ctx: CallContext, exc: BaseException) -> Outcome:
        outcome = error_outcome(ctx, exc)
        predicate = self._options.failure_predicate
        if predicate is None or outcome is _IGNORED or not isinstance(exc, Exception):
            return outcome
        return _FAILURE if predicate(exc) else _SUCCESS

    def judge_result(self, ctx: CallContext, result: object) -> Outcome:
        outcome = ctx.classifier.result(result) if ctx.classifier.checks_results else _SUCCESS
        predicate = self._options.failure_if_result
        if predicate is None or outcome is _IGNORED:
            return outcome
        return _FAILURE if predicate(result) else _SUCCESS

    # -- by hand, and from other processes ------------------------------------------------

    def isolate(self) -> None:
        """Reject every call with :class:`~resilience.IsolatedCircuitError` until :meth:`reset`."""
        with self._lock:
            old = self._state
            self._state = _ISOLATED
            self.clocked = True
            self.quiet_success = False
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
                    self.clocked = True
                    self.quiet_success = False
                    change = (old, _OPEN, "remote")
            elif state is _CLOSED:
                if old is _CLOSED:
                    return False
                change = self._close("remote")
            elif state is _ISOLATED:
                if old is _ISOLATED:
                    return False
                self._state = _ISOLATED
                self.clocked = True
                self.quiet_success = False
                change = (old, _ISOLATED, "remote")
            else:
                return False
        if change is not None:
            self._announce(change, None, local=False)
        return True

    # -- executors ------------------------------------------------------------------------

    def __repr__(self) -> str:
        options = self._options
        if self._window is None:
            mode = f"failure_threshold={options.failure_threshold}"
        else:
            mode = f"window={self._window!r}, failure_rate={options.failure_rate:g}"
        return f"CircuitBreaker({mode}, break_duration={options.break_duration:g}, state={self._state.value})"
