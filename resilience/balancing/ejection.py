"""Outlier ejection: endpoints that fail far more than the others leave the picks for a while.

After Envoy's outlier detection and gRPC's A50. An :class:`OutlierEjection` holds the
options and the listeners; each :class:`~resilience.balancing.EndpointPool` keeps an
:class:`OutlierTracker` of its own with the counts of its endpoints, so one ejection
object (or one balancer carrying it) serves any number of pools.

**When an endpoint is ejected.**

- ``consecutive_failures`` failed attempts in a row: at once, when the last one is released.
- At the end of each ``interval``, among the endpoints not ejected that had at least
  ``min_requests`` attempts in it, when there are at least ``min_hosts`` of them:
  a success rate below ``mean - success_rate_stdev * stdev`` of theirs (the worst
  first); a failure percentage above ``failure_percentage``; a mean latency of its
  successes above ``latency_factor`` * the median of theirs.

Only successes and failures count; ignored outcomes (the caller's fault, cancellations,
local rejections) do not.

**Small fleets.** With the defaults (``min_hosts=5``) a fleet of fewer than five endpoints
is judged by ``consecutive_failures`` alone. Lowering ``min_hosts`` does not make the
success-rate check work there: one outlier among ``n`` endpoints lies at most
``sqrt(n - 1)`` standard deviations below the mean, so with ``k = 1.9`` it is never ejected
among four or fewer. For three or four replicas use ``failure_percentage`` instead.

**How long.** The ``n``-th ejection lasts ``min(base_ejection_time * n, max_ejection_time)``.
``n`` drops by one at the end of each interval that the endpoint spent wholly in the pool
with at least one success and no ejection, so good behaviour brings it back to the base.

**How many.** At most ``max_ejection_percent`` of the endpoints (rounded down) are ejected
at once, but one may always be when there are two or more (as Envoy does), and never all.
An ejection that would pass the bound does not happen. Should every endpoint still in the
picks be rejected by its health gates, the pool tries the ejected ones rather than fail.

**The clock.** Nothing runs in the background: the picks and releases of the pool drive
the tracker with their ``now`` (the injected clock). An endpoint returns at the first pick
or release after its ejection ends, and the interval's analysis runs at the first one
after the interval ends. A pool with no traffic can be driven by calling
:meth:`OutlierTracker.tick` from a scheduler.

**Events.** :class:`~resilience.EndpointEjected` and :class:`~resilience.EndpointReturned`
go to the ejection's ``listeners`` and to those of the call whose pick or release caused
them, after the tracker's lock is released.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import Seconds, as_seconds, integer, number, seconds
from ..context import CallContext
from ..events import EndpointEjected, EndpointReturned, Event, Listener, emit
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from .state import EndpointState

__all__ = ["OutlierEjection", "OutlierEjectionOptions", "OutlierTracker"]

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE


@dataclass(frozen=True, slots=True)
class OutlierEjectionOptions(Options):
    """When endpoints are ejected, for how long, how many (see :mod:`resilience.balancing.ejection`).

    Attributes:
        consecutive_failures: failures in a row that eject at once, in [1, 1_000_000], or
            ``None`` to turn this off (default 5).
        success_rate_stdev: ``k`` in ``mean - k * stdev`` for the success-rate check, in
            (0, 100], or ``None`` to turn it off (default 1.9).
        failure_percentage: the failure percentage of an interval above which an endpoint
            is ejected, in [0, 100), or ``None`` (default: off).
        latency_factor: eject an endpoint whose mean latency in an interval exceeds this
            many times the median of the others', in (1, 1000], or ``None`` (default: off).
        min_hosts: endpoints with enough attempts needed for the interval checks, in
            [1, 1_000_000] (default 5).
        min_requests: attempts in an interval an endpoint needs to be judged by the
            interval checks, in [1, 1_000_000_000] (default 100).
        interval: seconds between two analyses, > 0 (default 10).
        base_ejection_time: the first ejection's length, seconds > 0 (default 30).
        max_ejection_time: the longest ejection, seconds >= ``base_ejection_time``
            (default ``max(300, base_ejection_time)``).
        max_ejection_percent: the largest share of endpoints ejected at once, a
            percentage in (0, 100] (default 10; one may always be, never all).

    Durations are seconds; a ``timedelta`` is accepted too.

    Raises:
        TypeError, ValueError: an option has the wrong type or is out of range.
    """

    consecutive_failures: int | None = 5
    success_rate_stdev: float | None = 1.9
    failure_percentage: float | None = None
    latency_factor: float | None = None
    min_hosts: int = 5
    min_requests: int = 100
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float | None = None
    max_ejection_percent: float = 10.0

    def __post_init__(self) -> None:
        if self.consecutive_failures is not None:
            value = integer("consecutive_failures", self.consecutive_failures, minimum=1, maximum=1_000_000)
            self.set("consecutive_failures", value)
        if self.success_rate_stdev is not None:
            k = number("success_rate_stdev", self.success_rate_stdev, low=0.0, high=100.0, low_open=True)
            self.set("success_rate_stdev", k)
        if self.failure_percentage is not None:
            pct = number("failure_percentage", self.failure_percentage, low=0.0, high=100.0, high_open=True)
            self.set("failure_percentage", pct)
        if self.latency_factor is not None:
            factor = number("latency_factor", self.latency_factor, low=1.0, high=1000.0, low_open=True)
            self.set("latency_factor", factor)
        self.set("min_hosts", integer("min_hosts", self.min_hosts, minimum=1, maximum=1_000_000))
        self.set("min_requests", integer("min_requests", self.min_requests, minimum=1, maximum=1_000_000_000))
        self.set("interval", seconds("interval", self.interval, bounded=True))
        self.set("base_ejection_time", seconds("base_ejection_time", self.base_ejection_time))
        base = float(self.base_ejection_time)
        if self.max_ejection_time is None:
            self.set("max_ejection_time", max(300.0, base))
        else:
            longest = seconds("max_ejection_time", self.max_ejection_time)
            if longest < base:
                raise ValueError(
                    f"max_ejection_time must be >= base_ejection_time ({base:g}), got {self.max_ejection_time!r}"
                )
            self.set("max_ejection_time", longest)
        pct = number("max_ejection_percent", self.max_ejection_percent, low=0.0, high=100.0, low_open=True)
        self.set("max_ejection_percent", pct)

    def ejection_time(self, ejections: int) -> float:
        """How long the ``ejections``-th ejection in a row lasts."""
        longest = self.max_ejection_time
        assert longest is not None
        return min(self.base_ejection_time * ejections, longest)

    def most_ejected(self, endpoints: int) -> int:
        """How many of ``endpoints`` may be ejected at once."""
        if endpoints < 2:
            return 0
        share = math.floor(endpoints * self.max_ejection_percent / 100.0 + 1e-9)
        return min(endpoints - 1, max(1, share))


class OutlierEjection(Reconfigurable[OutlierEjectionOptions]):
    """Ejects outlier endpoints from the picks of the pools it serves (see the module's docstring).

    Give it to a pool (``EndpointPool(..., ejection=...)``) or to a balancer
    (``PeakEwma(ejection=...)``), which hands it to each pool it serves.

    Args:
        options: the whole options object (instead of the keywords below).
        consecutive_failures, success_rate_stdev, failure_percentage, latency_factor,
        min_hosts, min_requests, interval, base_ejection_time, max_ejection_time,
        max_ejection_percent: see :class:`OutlierEjectionOptions`.
        listeners: receive every :class:`~resilience.EndpointEjected` and
            :class:`~resilience.EndpointReturned` (default none).
        name: the policy name in events (default ``"outlierejection"``).

    :meth:`reconfigure` keeps every count and ejection; the new options apply from the
    next attempt, and ejections in force keep their end.
    """

    options_type = OutlierEjectionOptions

    def __init__(
        self,
        *,
        options: OutlierEjectionOptions | None = None,
        consecutive_failures: int | None = 5,
        success_rate_stdev: float | None = 1.9,
        failure_percentage: float | None = None,
        latency_factor: float | None = None,
        min_hosts: int = 5,
        min_requests: int = 100,
        interval: Seconds = 10.0,
        base_ejection_time: Seconds = 30.0,
        max_ejection_time: Seconds | None = None,
        max_ejection_percent: float = 10.0,
        listeners: Iterable[Listener] = (),
        name: str | None = None,
    ) -> None:
        if options is None:
            options = OutlierEjectionOptions(
                consecutive_failures=consecutive_failures,
                success_rate_stdev=success_rate_stdev,
                failure_percentage=failure_percentage,
                latency_factor=latency_factor,
                min_hosts=min_hosts,
                min_requests=min_requests,
                interval=as_seconds(interval),
                base_ejection_time=as_seconds(base_ejection_time),
                max_ejection_time=as_seconds(max_ejection_time),
                max_ejection_percent=max_ejection_percent,
            )
        elif not isinstance(options, OutlierEjectionOptions):
            raise TypeError(f"options must be OutlierEjectionOptions, got {options!r}")
        self._options = options
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        for i, listener in enumerate(self.listeners):
            if not callable(listener):
                raise TypeError(f"listeners[{i}] must be callable, got {listener!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name or "outlierejection"

    def tracker(self, service: str, states: Callable[[], Sequence[EndpointState[Any]]]) -> OutlierTracker:
        """The counts of one pool: ``service`` for events, ``states()`` its endpoints now."""
        return OutlierTracker(self, service, states)

    def __repr__(self) -> str:
        return f"OutlierEjection({self._options!r})"


class _Record:
    """One endpoint's counts: in the current interval, in a row, and its ejections."""

    __slots__ = ("consecutive", "ejected_at", "ejections", "failures", "latency", "returned_at", "successes", "until")

    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0
        self.latency = 0.0
        self.consecutive = 0
        self.ejections = 0
        self.until = 0.0
        self.ejected_at = 0.0
        self.returned_at = -math.inf


def _record(state: EndpointState[Any]) -> _Record:
    record = state.outlier
    if record is None:
        record = state.outlier = _Record()
    assert isinstance(record, _Record)
    return record


class OutlierTracker:
    """The outlier counts of one pool's endpoints, and who is ejected (see the module's docstring).

    Attributes:
        due: the time of the next thing to do (a return, an analysis): the pool calls
            :meth:`tick` once ``now`` reaches it.
    """

    __slots__ = ("_ejected", "_interval_start", "_lock", "_next_analysis", "_states", "due", "ejection", "service")

    def __init__(
        self, ejection: OutlierEjection, service: str, states: Callable[[], Sequence[EndpointState[Any]]]
    ) -> None:
        self.ejection = ejection
        self.service = service
        self._states = states
        self._lock = threading.Lock()
        self._ejected: set[EndpointState[Any]] = set()
        self._next_analysis: float | None = None
        self._interval_start = -math.inf
        self.due = -math.inf

    def ejected(self) -> list[str]:
        """The addresses ejected now."""
        with self._lock:
            return sorted(s.address for s in self._ejected if not s.removed)

    @property
    def any_ejected(self) -> bool:
        """Whether some endpoint is ejected (a cheap check for the pool's pick)."""
        return bool(self._ejected)

    def record(
        self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float, ctx: CallContext | None
    ) -> None:
        """An attempt on ``state`` ended: count it, eject on a run of failures, run what is due."""
        event: Event | None = None
        if outcome is _SUCCESS or outcome is _FAILURE:
            options = self.ejection.options
            with self._lock:
                record = _record(state)
                if outcome is _SUCCESS:
                    record.successes += 1
                    record.consecutive = 0
                    if duration > 0:
                        record.latency += duration
                else:
                    record.failures += 1
                    record.consecutive += 1
                    limit = options.consecutive_failures
                    if limit is not None and record.consecutive >= limit and not state.ejected:
                        event = self._eject(state, record, "consecutive_failures", now, options, ctx)
        if event is not None:
            self._emit([event], ctx)
        if now >= self.due:
            self.tick(now, ctx)

    def tick(self, now: float, ctx: CallContext | None = None) -> None:
        """Return the endpoints whose ejection ended and run the interval's analysis, if due at ``now``."""
        events: list[Event] = []
        options = self.ejection.options
        with self._lock:
            if now < self.due:
                return
            if self._next_analysis is None:  # the first use: the first interval starts now
                self._next_analysis = now + options.interval
                self._interval_start = now
            for state in list(self._ejected):
                record = _record(state)
                if state.removed or now >= record.until:
                    self._ejected.discard(state)
                    state.ejected = False
                    record.consecutive = 0
                    record.returned_at = now
                    if not state.removed:
                        after = now - record.ejected_at
                        events.append(EndpointReturned(self.ejection.name, ctx, self.service, state.address, after))
            if now >= self._next_analysis:
                events.extend(self._analyse(now, ctx, options))
                self._next_analysis = now + options.interval
                self._interval_start = now
            soonest = min((_record(s).until for s in self._ejected), default=math.inf)
            self.due = min(self._next_analysis, soonest)
        if events:
            self._emit(events, ctx)

    # -- under the lock --------------------------------------------------------------------

    def _may_eject(self, options: OutlierEjectionOptions) -> bool:
        states = self._states()
        live = sum(1 for s in self._ejected if not s.removed)
        return live < options.most_ejected(len(states))

    def _eject(
        self,
        state: EndpointState[Any],
        record: _Record,
        reason: str,
        now: float,
        options: OutlierEjectionOptions,
        ctx: CallContext | None,
    ) -> Event | None:
        if state.removed or not self._may_eject(options):
            return None
        record.ejections += 1
        length = options.ejection_time(record.ejections)
        record.until = now + length
        record.ejected_at = now
        state.ejected = True
        self._ejected.add(state)
        if record.until < self.due:
            self.due = record.until
        return EndpointEjected(self.ejection.name, ctx, self.service, state.address, reason, record.ejections, length)

    def _analyse(self, now: float, ctx: CallContext | None, options: OutlierEjectionOptions) -> list[Event]:
        states = self._states()
        judged: list[tuple[EndpointState[Any], _Record]] = []
        for state in states:
            record = state.outlier
            enough = isinstance(record, _Record) and record.successes + record.failures >= options.min_requests
            if enough and not state.ejected:
                judged.append((state, record))
        verdicts: list[tuple[EndpointState[Any], _Record, str]] = []
        if len(judged) >= options.min_hosts:
            rates = [r.successes / (r.successes + r.failures) for _, r in judged]
            if options.success_rate_stdev is not None:
                floor = statistics.fmean(rates) - options.success_rate_stdev * statistics.pstdev(rates)
                worst_first = sorted(zip(rates, range(len(judged)), strict=True))
                verdicts += [(*judged[i], "success_rate") for rate, i in worst_first if rate < floor]
            if options.failure_percentage is not None:
                limit = options.failure_percentage
                for (state, record), rate in zip(judged, rates, strict=True):
                    if 100.0 * (1.0 - rate) > limit:
                        verdicts.append((state, record, "failure_percentage"))
            if options.latency_factor is not None:
                timed = [(s, r, r.latency / r.successes) for s, r in judged if r.successes]
                if len(timed) >= options.min_hosts:
                    bound = options.latency_factor * statistics.median(m for _, _, m in timed)
                    verdicts += [(s, r, "latency") for s, r, mean in timed if mean > bound]
        events: list[Event] = []
        for state, record, reason in verdicts:
            if not state.ejected:
                event = self._eject(state, record, reason, now, options, ctx)
                if event is not None:
                    events.append(event)
        start = self._interval_start
        for state in states:
            record = state.outlier
            if not isinstance(record, _Record):
                continue
            if record.ejections and not state.ejected and record.returned_at <= start and record.successes:
                record.ejections -= 1  # a whole interval in the picks, with successes
            record.successes = record.failures = 0
            record.latency = 0.0
        return events

    def _emit(self, events: list[Event], ctx: CallContext | None) -> None:
        listeners = self.ejection.listeners
        for event in events:
            if listeners:
                emit(listeners, event)
            if ctx is not None and ctx.listeners:
                emit(ctx.listeners, event)

    def __repr__(self) -> str:
        return f"OutlierTracker({self.service!r}, ejected={self.ejected()})"
