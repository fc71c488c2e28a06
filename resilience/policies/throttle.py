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

import random
import threading
from dataclasses import dataclass
from typing import Any

from .._validate import Seconds, integer, number, seconds
from ..context import CallContext
from ..errors import RejectedError, ThrottledError
from ..events import Event, emit
from ..outcome import Outcome
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["AdaptiveThrottle", "ThrottleRejected", "rejection_probability"]


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


class _Rejected:
    """What :meth:`AdaptiveThrottle.try_acquire` returns for a locally rejected call."""

    __slots__ = ("accepts", "probability", "requests")

    def __init__(self, probability: float, requests: int, accepts: int) -> None:
        self.probability = probability
        self.requests = requests
        self.accepts = accepts


class AdaptiveThrottle(Policy):
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

    Args:
        k: the multiplier on accepts, >= 1 (default 2.0). Lower sheds sooner.
        window: the span of the counts in seconds, > 0 (default 10).
        buckets: how many buckets the window is cut into, in [1, 10_000] (default 40).
        rng: the random source for the rejection draws (default: a private ``random.Random``).
        name: the policy's name in events (default ``"adaptivethrottle"``).
    """

    __slots__ = (
        "_accepts",
        "_accepts_total",
        "_lock",
        "_requests",
        "_requests_total",
        "_tick",
        "_width",
        "buckets",
        "k",
        "rng",
        "window",
    )

    def __init__(
        self,
        k: float = 2.0,
        *,
        window: Seconds = 10.0,
        buckets: int = 40,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.k = number("k", k, low=1.0)
        self.window = seconds("window", window)
        self.buckets = integer("buckets", buckets, minimum=1, maximum=10_000)
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random or None, got {rng!r}")
        self.rng = rng if rng is not None else random.Random()
        self._width = self.window / self.buckets
        self._lock = threading.Lock()
        self._requests = [0] * self.buckets
        self._accepts = [0] * self.buckets
        self._requests_total = 0
        self._accepts_total = 0
        self._tick = -(1 << 62)

    # -- the decision core ---------------------------------------------------------------

    def _advance(self, tick: int) -> int:
        """Move the window to ``tick``, clearing buckets that fell out; the current tick. Lock held."""
        last = self._tick
        if tick <= last:
            return last  # a late caller with an older ``now`` counts in the current bucket
        n = self.buckets
        if tick - last >= n:
            for i in range(n):
                self._requests[i] = self._accepts[i] = 0
            self._requests_total = self._accepts_total = 0
        else:
            requests, accepts = self._requests, self._accepts
            for t in range(last + 1, tick + 1):
                slot = t % n
                self._requests_total -= requests[slot]
                self._accepts_total -= accepts[slot]
                requests[slot] = accepts[slot] = 0
        self._tick = tick
        return tick

    def try_acquire(self, now: float) -> int | _Rejected:
        """Count a request at ``now`` and decide: a permit (an ``int``) to pass back to
        :meth:`record`, or a rejection (not an ``int``)."""
        tick = int(now // self._width)
        with self._lock:
            if tick != self._tick:
                tick = self._advance(tick)
            requests, accepts = self._requests_total, self._accepts_total
            self._requests[tick % self.buckets] += 1
            self._requests_total = requests + 1
            excess = requests - self.k * accepts
            if excess > 0.0:
                p = excess / (requests + 1.0)
                if self.rng.random() < p:
                    return _Rejected(p, requests, accepts)
        return tick

    def record(self, permit: int, accepted: bool | None, now: float) -> None:
        """Record how the call of ``permit`` ended: accepted by the backend (``True``),
        refused or failed (``False``), or neither (``None``: its request is taken back)."""
        if accepted is False:
            return
        tick = int(now // self._width)
        with self._lock:
            if tick != self._tick:
                tick = self._advance(tick)
            if accepted:
                self._accepts[tick % self.buckets] += 1
                self._accepts_total += 1
            elif tick - permit < self.buckets:  # the request is still in the window
                self._requests[permit % self.buckets] -= 1
                self._requests_total -= 1

    def counts(self, now: float) -> tuple[int, int]:
        """``(requests, accepts)`` in the window at ``now``."""
        with self._lock:
            self._advance(int(now // self._width))
            return self._requests_total, self._accepts_total

    def probability(self, now: float) -> float:
        """The probability that a call at ``now`` is rejected locally."""
        requests, accepts = self.counts(now)
        return rejection_probability(requests, accepts, self.k)

    @staticmethod
    def _accepted_error(ctx: CallContext, exc: BaseException) -> bool | None:
        outcome = ctx.classifier.error(exc)
        if outcome is Outcome.FAILURE:
            return False
        if outcome is Outcome.SUCCESS:
            return True
        # IGNORED: our own rejection or a cancellation never reached the backend (as far as
        # we know); anything else is the caller's fault, which the backend did accept.
        if isinstance(exc, RejectedError) or not isinstance(exc, Exception):
            return None
        return True

    @staticmethod
    def _accepted_result(ctx: CallContext, result: object) -> bool:
        return not ctx.classifier.checks_results or ctx.classifier.result(result) is not Outcome.FAILURE

    def _rejected(self, ctx: CallContext, rejected: _Rejected) -> ThrottledError:
        if ctx.listeners:
            emit(
                ctx.listeners,
                ThrottleRejected(self.name, ctx, rejected.probability, rejected.requests, rejected.accepts),
            )
        return ThrottledError(
            f"{self.name}: throttled locally (p={rejected.probability:.3f}: {rejected.accepts} of "
            f"{rejected.requests} recent requests accepted, k={self.k:g})",
            context=ctx,
        )

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        acquire, record = self.try_acquire, self.record

        def throttle_sync(ctx: CallContext) -> Any:
            clock = ctx.clock
            permit = acquire(clock.monotonic())
            if type(permit) is not int:
                assert isinstance(permit, _Rejected)
                raise self._rejected(ctx, permit)
            try:
                result = next(ctx)
            except BaseException as exc:
                record(permit, self._accepted_error(ctx, exc), clock.monotonic())
                raise
            record(permit, self._accepted_result(ctx, result), clock.monotonic())
            return result

        return throttle_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        acquire, record = self.try_acquire, self.record

        async def throttle_async(ctx: CallContext) -> Any:
            clock = ctx.clock
            permit = acquire(clock.monotonic())
            if type(permit) is not int:
                assert isinstance(permit, _Rejected)
                raise self._rejected(ctx, permit)
            try:
                result = await next(ctx)
            except BaseException as exc:
                record(permit, self._accepted_error(ctx, exc), clock.monotonic())
                raise
            record(permit, self._accepted_result(ctx, result), clock.monotonic())
            return result

        return throttle_async

    def __repr__(self) -> str:
        return f"AdaptiveThrottle(k={self.k!r}, window={self.window!r}, buckets={self.buckets})"
