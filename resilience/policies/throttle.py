"""Adaptive throttling: the client rejects calls itself when the backend stops accepting them.

From Google's SRE book ("Handling Overload", client-side throttling). Over a rolling
window the client counts ``requests`` (every call it wanted to make, including those it
rejected itself) and ``accepts`` (calls the backend accepted). Each new call is rejected
locally with probability::

    p = max(0, (requests - k * accepts) / (requests + 1))

While the backend accepts everything, ``p`` is 0. When it starts refusing, the client
sheds load in proportion, before it reaches the wire, yet keeps sending enough to notice
the recovery. ``k`` sets how much more than the accepted load is still sent: 2 lets
through about twice what the backend accepts.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
from dataclasses import dataclass

from .._validate import Seconds, as_seconds, integer, number, window_span
from ..context import CallContext
from ..errors import RejectedError, ThrottledError
from ..events import Event, emit
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from ..permit import GateMixin, Permit, Rejection
from ..policy import Policy

__all__ = [
    "AdaptiveThrottle",
    "AdaptiveThrottleOptions",
    "ThrottleRejected",
]

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED


def rejection_probability(requests: float, accepts: float, k: float) -> float:
    """``max(0, (requests - k * accepts) / (requests + 1))``: in ``[0, 1)`` for ``requests >= 0``."""
    excess = requests - k * accepts
    return excess / (requests + 1.0) if excess > 0.0 else 0.0


@dataclass(frozen=True, slots=True)
class ThrottleRejected(Event):
    """Adaptive throttling rejected a call locally, with probability ``probability``.

    ``requests`` and ``accepts`` are the window's counts the decision was made on.
    """

    probability: float
    requests: int
    accepts: int


@dataclass(frozen=True, slots=True)
class AdaptiveThrottleOptions(Options):
    """How an :class:`AdaptiveThrottle` sheds load.

    Attributes:
        k: the multiplier on accepts, in [1, 1000] (default 2.0). Lower sheds sooner.
        window: the span of the counts in seconds, > 0 (default 10); a ``timedelta`` is
            accepted too and stored as seconds.
        buckets: how many buckets the window is cut into, in [1, 10_000] (default 40).

    Raises:
        ValueError: an option is out of range.
        TypeError: an option has the wrong type.
    """

    k: float = 2.0
    window: float = 10.0
    buckets: int = 40

    def __post_init__(self) -> None:
        self.set("k", number("k", self.k, low=1.0, high=1000.0))
        self.set("window", window_span("window", self.window, self.buckets))
        self.set("buckets", integer("buckets", self.buckets, minimum=1, maximum=10_000))


class ThrottlePermit(Permit):
    """A call admitted by :meth:`AdaptiveThrottle.acquire`: the bucket its request is counted in.

    Permits are shared by the calls of one bucket (they carry nothing else), so admitting
    a call allocates nothing but once per bucket.
    """

    __slots__ = ("generation", "tick")

    def __init__(self, tick: int, generation: int) -> None:
        self.tick = tick
        self.generation = generation

    def __repr__(self) -> str:
        return f"ThrottlePermit(tick={self.tick})"


class AdaptiveThrottle(GateMixin, Reconfigurable[AdaptiveThrottleOptions], Policy):
    """Client-side adaptive throttling (Google SRE): sheds calls a failing backend would refuse.

    Counts are kept in ``buckets`` time buckets covering ``window`` seconds (memory is
    bounded: two integers per bucket). A call is counted as a request when it asks to
    pass, admitted or not. When it ends it counts as an *accept* if the backend accepted
    it: a success, or an outcome that is not the backend's fault but came from the backend
    (a 4xx, ``NOT_FOUND``: the classifier's ``IGNORED`` for a non-rejection error). A call
    rejected by another of our own policies further in (a :class:`~resilience.RejectedError`)
    or cancelled counts as neither: its request is taken back. A failure counts as a
    request only.

    A call rejected here raises :class:`~resilience.ThrottledError` (a
    :class:`~resilience.RejectedError`, so outer policies do not count it against the
    backend), and a :class:`ThrottleRejected` event goes to the listeners.

    **Permit protocol.** :meth:`acquire` counts the request and decides: a
    :class:`ThrottlePermit`, or ``Rejection("throttled")`` whose ``detail`` is
    ``(p, requests, accepts)``. :meth:`release` reads the outcome the throttle's way, which
    is what :meth:`judge_error` and :meth:`judge_result` give: ``SUCCESS`` is an accept
    (a caller's-fault error the backend answered is judged ``SUCCESS``), ``FAILURE`` a
    refusal (a request only), ``IGNORED`` takes the request back (our own rejections,
    cancellations, a classifier that raised). An accept is counted without the lock while
    its bucket is the current one.

    **Options and reconfigure.** The keywords build an :class:`AdaptiveThrottleOptions`
    (defaults and ranges there); ``options=`` takes one whole. :meth:`reconfigure` keeps
    the counts when ``window`` and ``buckets`` are unchanged (a new ``k`` applies to them
    at once); a new ``window`` or ``buckets`` starts new, empty counts, and the calls
    admitted before it then count for nothing when they end.

    Args:
        k, window, buckets: see :class:`AdaptiveThrottleOptions`.
        options: the whole options object (instead of the three above).
        rng: the random source for the rejection draws (default: a private ``random.Random``).
        name: the policy's name in events (default ``"adaptivethrottle"``).
    """

    __slots__ = (
        "_accept",
        "_accepts",
        "_accepts_seen",
        "_accepts_total",
        "_generation",
        "_live_end",
        "_lock",
        "_n",
        "_options",
        "_permit",
        "_requests",
        "_requests_total",
        "_tick",
        "_width",
        "rng",
    )

    options_type = AdaptiveThrottleOptions

    def __init__(
        self,
        k: float = 2.0,
        *,
        options: AdaptiveThrottleOptions | None = None,
        window: Seconds = 10.0,
        buckets: int = 40,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            options = AdaptiveThrottleOptions(k=k, window=as_seconds(window), buckets=buckets)
        elif not isinstance(options, AdaptiveThrottleOptions):
            raise TypeError(f"options must be AdaptiveThrottleOptions, got {options!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random or None, got {rng!r}")
        self.rng = rng if rng is not None else random.Random()
        self._options = options
        self._lock = threading.Lock()
        # Accepts of the current bucket are counted without the lock (an itertools.count
        # step is atomic) and filed under the lock when the bucket moves or counts are read.
        self._accept = itertools.count().__next__
        self._generation = 0
        self._start_counts(options)

    def _start_counts(self, options: AdaptiveThrottleOptions) -> None:
        """Empty counts of ``options``' shape; the lock is held (or nobody else has the policy)."""
        self._n = options.buckets
        self._width = options.window / options.buckets
        self._requests = [0] * options.buckets
        self._accepts = [0] * options.buckets
        self._requests_total = 0
        self._accepts_total = 0
        self._accepts_seen = self._accept() + 1
        self._tick = -(1 << 62)
        self._live_end = -math.inf
        self._generation += 1
        self._permit = ThrottlePermit(self._tick, self._generation)

    # -- options ---------------------------------------------------------------------------

    def _reconfigure(self, options: AdaptiveThrottleOptions) -> None:
        with self._lock:
            old = self._options
            if (options.window, options.buckets) != (old.window, old.buckets):
                self._start_counts(options)
            self._options = options

    @property
    def k(self) -> float:
        """The multiplier on accepts."""
        return self._options.k

    @property
    def window(self) -> float:
        """The span of the counts, in seconds."""
        return self._options.window

    @property
    def buckets(self) -> int:
        """How many buckets the window is cut into."""
        return self._options.buckets

    # -- the counts (the lock is held) ------------------------------------------------------

    def _file_accepts(self) -> int:
        """Move the accepts counted without the lock into the current bucket; how many."""
        mark = self._accept()
        pending = mark - self._accepts_seen
        self._accepts_seen = mark + 1
        if pending:
            self._accepts[self._tick % self._n] += pending
            self._accepts_total += pending
        return pending

    def _advance(self, tick: int) -> int:
        """Move the window to ``tick``, clearing buckets that fell out; the current tick."""
        last = self._tick
        if tick <= last:
            return last  # a late caller with an older ``now`` counts in the current bucket
        self._file_accepts()
        requests, accepts, n = self._requests, self._accepts, self._n
        if tick - last >= n:
            for i in range(n):
                requests[i] = accepts[i] = 0
            self._requests_total = self._accepts_total = 0
        else:
            for t in range(last + 1, tick + 1):
                slot = t % n
                self._requests_total -= requests[slot]
                self._accepts_total -= accepts[slot]
                requests[slot] = accepts[slot] = 0
        self._tick = tick
        self._live_end = (tick + 1) * self._width
        return tick

    # -- the permit protocol ----------------------------------------------------------------

    def acquire(self, ctx: CallContext | None, now: float) -> ThrottlePermit | Rejection:
        """Count a request at ``now`` and decide: a permit, or ``Rejection("throttled")``."""
        k = self._options.k
        with self._lock:
            tick = int(now // self._width)
            if tick != self._tick:
                tick = self._advance(tick)
            requests, accepts = self._requests_total, self._accepts_total
            self._requests[tick % self._n] += 1
            self._requests_total = requests + 1
            if requests > k * accepts:
                # Only now do the accepts counted without the lock matter.
                accepts += self._file_accepts()
                excess = requests - k * accepts
                if excess > 0.0:
                    p = excess / (requests + 1.0)
                    if self.rng.random() < p:
                        return Rejection("throttled", detail=(p, requests, accepts))
            permit = self._permit
            if permit.tick != tick:
                permit = self._permit = ThrottlePermit(tick, self._generation)
        return permit

    def release(
        self, permit: Permit, outcome: Outcome, duration: float, now: float, ctx: CallContext | None = None
    ) -> None:
        """The call of ``permit`` ended at ``now``: ``SUCCESS`` an accept, ``FAILURE`` a refusal,
        ``IGNORED`` neither (its request is taken back)."""
        if outcome is _FAILURE:
            return
        if permit.generation != self._generation:  # type: ignore[attr-defined]
            return  # admitted under counts of another shape
        if outcome is _SUCCESS and now < self._live_end:
            self._accept()
            return
        tick = int(now // self._width)
        with self._lock:
            if permit.generation != self._generation:  # type: ignore[attr-defined]
                return
            if tick != self._tick:
                tick = self._advance(tick)
            n = self._n
            if outcome is _SUCCESS:
                self._accepts[tick % n] += 1
                self._accepts_total += 1
            elif tick - permit.tick < n:  # type: ignore[attr-defined]  # the request is still in the window
                self._requests[permit.tick % n] -= 1  # type: ignore[attr-defined]
                self._requests_total -= 1

    def rejected(self, ctx: CallContext, rejection: Rejection) -> ThrottledError:
        """The error for a call rejected locally (and its :class:`ThrottleRejected` event)."""
        p, requests, accepts = rejection.detail
        if ctx is not None and ctx.listeners:
            emit(ctx.listeners, ThrottleRejected(self.name, ctx, p, requests, accepts))
        return ThrottledError(
            f"{self.name}: throttled locally (p={p:.3f}: {accepts} of "
            f"{requests} recent requests accepted, k={self._options.k:g})",
            context=ctx,
        )

    def judge_error(self, ctx: CallContext, exc: BaseException) -> Outcome:
        """``SUCCESS`` when the backend accepted the call (it answered, even a caller's-fault
        error), ``FAILURE`` when it refused it, ``IGNORED`` when it never saw it (our own
        rejection, a cancellation)."""
        outcome = ctx.classifier.error(exc)
        if outcome is not _IGNORED:
            return outcome
        if isinstance(exc, RejectedError) or not isinstance(exc, Exception):
            return _IGNORED
        return _SUCCESS

    def judge_result(self, ctx: CallContext, result: object) -> Outcome:
        """A returned value was accepted unless the classifier calls it a failure."""
        classifier = ctx.classifier
        if classifier.checks_results and classifier.result(result) is _FAILURE:
            return _FAILURE
        return _SUCCESS

    # -- reading the counts -----------------------------------------------------------------

    def counts(self, now: float) -> tuple[int, int]:
        """``(requests, accepts)`` in the window at ``now``."""
        with self._lock:
            self._advance(int(now // self._width))
            self._file_accepts()
            return self._requests_total, self._accepts_total

    def probability(self, now: float) -> float:
        """The probability that a call at ``now`` is rejected locally."""
        requests, accepts = self.counts(now)
        return rejection_probability(requests, accepts, self._options.k)

    # -- executors ------------------------------------------------------------------------

    def __repr__(self) -> str:
        o = self._options
        return f"AdaptiveThrottle(k={o.k!r}, window={o.window!r}, buckets={o.buckets})"
