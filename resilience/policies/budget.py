"""The retry budget: retries may add at most a fixed share to the load."""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._validate import Seconds, as_seconds, number, window_span
from ..errors import RejectedError
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from ..permit import GateMixin, Permit, Rejection

if TYPE_CHECKING:
    from ..context import CallContext

__all__ = ["RetryBudget", "RetryBudgetOptions"]

_BUCKETS = 10
_FILE_EVERY = 16
"""Requests counted without a clock reading before one is due (see :meth:`RetryBudget.stamp`)."""


@dataclass(frozen=True, slots=True)
class RetryBudgetOptions(Options):
    """How much a :class:`RetryBudget` allows.

    Attributes:
        ratio: retries allowed per request, in [0, 1000] (default 0.2: 20%).
        min_per_second: retries always allowed per second, in [0, 1e9] (default 10), so
            that a quiet client can still retry.
        window: how long deposits and withdrawals count, in seconds, > 0 (default 10); a
            ``timedelta`` is accepted too and stored as seconds.

    Raises:
        ValueError: an option is out of range.
        TypeError: an option has the wrong type.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0

    def __post_init__(self) -> None:
        self.set("ratio", number("ratio", self.ratio, low=0.0, high=1000.0))
        self.set("min_per_second", number("min_per_second", self.min_per_second, low=0.0, high=1e9))
        self.set("window", window_span("window", self.window, 10))


class _BudgetPermit(Permit):
    """The one permit every granted withdrawal shares: releasing it gives nothing back."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BudgetPermit()"


_GRANTED = _BudgetPermit()


class RetryBudget(GateMixin, Reconfigurable[RetryBudgetOptions]):
    """Caps retries at ``ratio`` of requests plus ``min_per_second``, over a sliding window.

    Every logical call deposits one request; every retry withdraws one. Within the last
    ``window`` seconds, retries may number at most ``ratio * requests + min_per_second *
    window``. A retry is withdrawn when it is decided, before its backoff, so retries that
    are still waiting count too: a full outage cannot multiply the load beyond the budget.

    One budget is usually shared by every call to a backend (pass the same instance to
    each :class:`~resilience.Retry`, or a :class:`~resilience.Hedge`). It is thread-safe;
    time comes from the caller.

    **The permit protocol.** :meth:`acquire` withdraws one retry: a permit (one shared
    object: there is nothing to give back, :meth:`release` does nothing) or a
    ``Rejection("budget")``. :meth:`try_withdraw` is the same as a ``bool``.

    **Counting requests.** Deposits take no lock (but once per bucket) and lose no count.
    :meth:`deposit` files the request in the bucket of its ``now``. The retry executors
    count theirs without a clock reading (:attr:`tally`) and read the clock for one
    request in 16 (:meth:`stamp`): the requests before such a reading are filed in their
    own bucket; the few after the last one (fewer than 16, a few more with threads
    racing) are filed at the next reading, in its bucket, and so may count for a while
    after their own window (a quiet client's next reading may come late). Withdrawals
    are counted exactly, under the lock, and file every request counted before them.

    **Options and reconfigure.** The arguments build a :class:`RetryBudgetOptions`
    (defaults and ranges there); ``options=`` takes one whole. :meth:`reconfigure` keeps
    the counts of requests and retries when the ``window`` is unchanged (a new ``ratio``
    or ``min_per_second`` applies to them at once); a new ``window`` starts empty counts.

    Args:
        options: the whole options object (instead of the three below).
        ratio, min_per_second, window: see :class:`RetryBudgetOptions`.
    """

    __slots__ = (
        "_checked",
        "_live_end",
        "_live_tick",
        "_lock",
        "_options",
        "_requests",
        "_retries",
        "_stamps",
        "_tally_seen",
        "_timed",
        "_timed_seen",
        "_width",
        "due",
        "tally",
    )

    options_type = RetryBudgetOptions
    name: str = "retrybudget"

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: Seconds = 10.0,
        *,
        options: RetryBudgetOptions | None = None,
    ) -> None:
        if options is None:
            options = RetryBudgetOptions(ratio=ratio, min_per_second=min_per_second, window=as_seconds(window))
        elif not isinstance(options, RetryBudgetOptions):
            raise TypeError(f"options must be RetryBudgetOptions, got {options!r}")
        self._options = options
        self._lock = threading.Lock()
        # Two lock-free counters (an itertools.count's step is atomic): requests deposited
        # with their time, which belong to the live bucket, and requests tallied without a
        # clock reading, filed at the next reading. Each filing reads a counter too, and
        # the ``*_seen`` marks tell which numbers were requests.
        self._timed = itertools.count().__next__
        self.tally = itertools.count().__next__
        self._start_counts(options.window)

    def _start_counts(self, window: float) -> None:
        """Empty buckets for ``window``; requests counted and not yet filed are dropped."""
        self._width = window / _BUCKETS
        self._stamps = [-1] * _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._live_tick = -1
        self._live_end = -math.inf
        self._timed_seen = self._timed() + 1
        self._tally_seen = self.tally() + 1
        self._checked = 0
        self.due = 0  # when tally() reaches it, a clock reading is due: stamp()

    # -- options ---------------------------------------------------------------------------

    def _reconfigure(self, options: RetryBudgetOptions) -> None:
        with self._lock:
            if options.window != self._options.window:
                self._start_counts(options.window)
            self._options = options

    @property
    def ratio(self) -> float:
        """Retries allowed per request."""
        return self._options.ratio

    @property
    def min_per_second(self) -> float:
        """Retries always allowed per second."""
        return self._options.min_per_second

    @property
    def window(self) -> float:
        """How long deposits and withdrawals count, in seconds."""
        return self._options.window

    # -- the counts (the lock is held) ------------------------------------------------------

    def _file(self, now: float) -> int:
        """File the requests counted since the last filing, and move to the bucket of ``now``; its tick.

        Timed deposits go to the live bucket (they were made before it ended); so do the
        tallied requests before the last :meth:`stamp` that found the live bucket still
        running. The few tallied after it go to the bucket of ``now``, the first clock
        reading after them. The live bucket's slot is always claimed, so that it can be
        indexed directly.
        """
        mark = self._timed()
        timed = mark - self._timed_seen
        self._timed_seen = mark + 1
        mark = self.tally()
        seen = self._tally_seen
        tallied = mark - seen
        self._tally_seen = mark + 1
        self.due = mark + _FILE_EVERY
        live = self._live_tick
        tick = int(now // self._width)
        if tick <= live:  # the usual case; an older ``now`` counts in the live bucket too
            self._requests[live % _BUCKETS] += timed + tallied
            return live
        known = min(max(0, self._checked + 1 - seen), tallied)
        if live >= 0:
            self._requests[live % _BUCKETS] += timed + known
        self._requests[self._slot(tick)] += tallied - known
        self._live_tick = tick
        self._live_end = (tick + 1) * self._width
        return tick

    def _slot(self, tick: int) -> int:
        # A bucket whose stamp is stale is reused from zero.
        slot = tick % _BUCKETS
        if self._stamps[slot] != tick:
            self._stamps[slot] = tick
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def _totals(self, tick: int) -> tuple[int, int]:
        requests = retries = 0
        for i in range(_BUCKETS):
            if tick - self._stamps[i] < _BUCKETS:
                requests += self._requests[i]
                retries += self._retries[i]
        return requests, retries

    # -- deposits and withdrawals ------------------------------------------------------------

    def deposit(self, now: float) -> None:
        """Count one request made at ``now``."""
        if now >= self._live_end:
            with self._lock:
                if now >= self._live_end:
                    self._file(now)
        self._timed()

    def stamp(self, now: float, mark: int) -> None:
        """Tell the budget the time: ``now``, read after ``tally()`` returned ``mark``.

        The retry executors' deposit is ``mark = budget.tally()``, then ``if mark >=
        budget.due: budget.stamp(clock.monotonic(), mark)``: a request costs a counter
        step, and one request in 16 a clock reading. Only the first reading past the live
        bucket takes the lock (to file the requests counted in it).
        """
        if now < self._live_end:
            # Every request tallied before ``mark`` was made in the live bucket. Two threads
            # may race here: either value is a request of the live bucket.
            self._checked = mark
            self.due = mark + _FILE_EVERY
            return
        with self._lock:
            self._file(now)

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget at ``now``; ``False`` when none is left."""
        options = self._options
        with self._lock:
            tick = self._file(now)
            requests, retries = self._totals(tick)
            if retries + 1 > options.ratio * requests + options.min_per_second * options.window:
                return False
            self._retries[tick % _BUCKETS] += 1  # the live bucket's slot
            return True

    def available(self, now: float) -> float:
        """How many more retries the budget allows at ``now``."""
        options = self._options
        with self._lock:
            requests, retries = self._totals(self._file(now))
            return max(0.0, options.ratio * requests + options.min_per_second * options.window - retries)

    # -- the permit protocol ----------------------------------------------------------------

    def acquire(self, ctx: CallContext | None, now: float) -> Permit | Rejection:
        """Withdraw one retry at ``now``: a permit, or ``Rejection("budget")`` when none is left."""
        return _GRANTED if self.try_withdraw(now) else Rejection("budget")

    def release(
        self, permit: Permit, outcome: Outcome, duration: float, now: float, ctx: CallContext | None = None
    ) -> None:
        """Nothing to give back: a withdrawn retry stays spent, whatever it did."""

    def rejected(self, ctx: CallContext, rejection: Rejection) -> RejectedError:
        """The error for a retry the budget had no room for (:class:`~resilience.Retry` raises its own)."""
        return RejectedError(f"{self.name}: the retry budget is exhausted", context=ctx)

    def __repr__(self) -> str:
        o = self._options
        return f"RetryBudget(ratio={o.ratio!r}, min_per_second={o.min_per_second!r}, window={o.window!r})"
