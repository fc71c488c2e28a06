"""The hedge's race core, shared by its two executors: who runs, who won, whether another may start."""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...context import CallContext
from ...events import Event, emit
from ...outcome import Outcome
from ...permit import READY

if TYPE_CHECKING:
    from .policy import Hedge

__all__ = ["HedgeAttemptFailed", "HedgeStarted", "HedgeWon"]

_log = logging.getLogger("resilience")


@dataclass(frozen=True, slots=True)
class HedgeStarted(Event):
    """A hedged attempt started; ``context`` is its own (forked) context.

    Attributes:
        hedge: its number, 1 for the first hedge.
        delay: seconds from the start of the call to the start of this hedge.
    """

    hedge: int
    delay: float


@dataclass(frozen=True, slots=True)
class HedgeWon(Event):
    """A hedged attempt (number ``hedge`` >= 1) gave the answer; ``context`` is the call's."""

    hedge: int


@dataclass(frozen=True, slots=True)
class HedgeAttemptFailed(Event):
    """An attempt's failure was swallowed because another attempt answers the call.

    Attributes:
        hedge: the failed attempt's number (0 for the primary).
        error: its exception, or ``None`` when it returned a result classified as a failure.
    """

    hedge: int
    error: BaseException | None


class LatencyWindow:
    """The last ``size`` latencies, kept sorted too, so that a percentile is one index.

    Adding costs one ``insort`` and, once full, one ``bisect`` + ``del`` on a list of
    ``size`` floats (memmoves of a few kB): about a microsecond at 1000 samples.
    """

    __slots__ = ("_next", "_ring", "_sorted", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring: list[float] = []
        self._sorted: list[float] = []
        self._next = 0

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, value: float) -> None:
        ring, ordered = self._ring, self._sorted
        if len(ring) < self.size:
            ring.append(value)
        else:
            old = ring[self._next]
            ring[self._next] = value
            self._next = (self._next + 1) % self.size
            del ordered[bisect.bisect_left(ordered, old)]
        bisect.insort(ordered, value)

    def newest(self, n: int) -> list[float]:
        """The ``n`` most recent samples, oldest first."""
        ring = self._ring
        ordered = ring[self._next :] + ring[: self._next] if len(ring) == self.size else list(ring)
        return ordered[-n:] if n < len(ordered) else ordered

    def percentile(self, p: float) -> float:
        """The nearest-rank ``p``-quantile (``p`` in (0, 1)); the window must not be empty."""
        ordered = self._sorted
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


# What an attempt's end means for the call (returned by _Race.finish).
WAIT = 0  # others are running (or a hedge was started in its place): keep waiting
WIN = 1  # this attempt answers the call
END = 2  # every attempt failed and no hedge can follow: the call ends with the primary's outcome
LATE = 3  # the call was already decided: this attempt lost


class Race:
    """One hedged call: who runs, who won, whether another hedge may start.

    The decision core shared by both executors. The sync executor calls its methods
    under its condition's lock; the async one from the event loop's thread only.
    """

    __slots__ = (
        "ctx",
        "delay",
        "done",
        "failed_value",
        "final_error",
        "final_value",
        "forks",
        "launched",
        "max_hedges",
        "next_at",
        "percentile",
        "policy",
        "primary_running",
        "running",
        "start",
        "win_latency",
        "win_value",
        "winner",
    )

    def __init__(self, policy: Hedge, ctx: CallContext, delay: float, start: float) -> None:
        self.policy = policy
        options = policy.options  # a call finishes under the options it started with
        self.max_hedges = options.max_hedges
        self.percentile = options.percentile
        self.ctx = ctx
        self.delay = delay
        self.start = start
        self.next_at = start + delay
        self.launched = 0
        self.running = 1
        self.primary_running = True
        self.done = False
        self.winner = -1
        self.win_value: Any = None
        self.win_latency = 0.0
        self.final_error: BaseException | None = None
        self.final_value: Any = None
        self.failed_value = False
        self.forks: list[CallContext] = []

    def _reserve(self) -> bool:
        """The executor's room for one more attempt (a worker thread); async has no bound."""
        return True

    def _unreserve(self) -> None:
        pass

    def want_hedge(self, now: float) -> CallContext | None:
        """Start the next hedge now if allowed: its forked context, else ``None``."""
        policy = self.policy
        if self.done or self.launched >= self.max_hedges or self.ctx.committed:
            return None
        for fork in self.forks:
            if fork.committed:
                return None
        if not self._reserve():
            return None
        # The budget is a gate of the permit protocol: a hedge is one withdrawal (its release is a no-op).
        if policy.budget is not None and policy.budget.acquire(self.ctx, now).kind != READY:
            self._unreserve()
            return None
        self.launched += 1
        self.running += 1
        self.next_at = now + self.delay
        fork = self.ctx.fork()
        fork.hedge = self.launched
        self.forks.append(fork)
        return fork

    def finish(
        self, n: int, ok: bool, retryable: bool, value: Any, error: BaseException | None, latency: float, now: float
    ) -> tuple[int, CallContext | None]:
        """Attempt ``n`` ended. Returns what that means and, maybe, a hedge to start in its place.

        A failure does not end the call while another attempt runs. A retryable failure
        starts the next hedge at once, without waiting for the delay (as gRPC does on a
        non-fatal status); when nothing runs and nothing can start, the call ends with the
        primary's outcome.
        """
        if self.done:
            return LATE, None
        self.running -= 1
        if n == 0:
            self.primary_running = False
        if ok:
            self.done = True
            self.winner = n
            self.win_value = value
            self.win_latency = latency
            return WIN, None
        if n == 0:
            self.final_error = error
            self.final_value = value
            self.failed_value = error is None
        fork = self.want_hedge(now) if retryable else None
        if fork is None and self.running == 0:
            self.done = True
            return END, None
        return WAIT, fork

    def started(self, fork: CallContext, now: float) -> None:
        """Emit :class:`HedgeStarted` (outside any lock)."""
        if fork.listeners:
            emit(fork.listeners, HedgeStarted(self.policy.name, fork, fork.hedge, now - self.start))

    def conclude(self) -> Any:
        """The call's answer once ``done``: the winner's value, or the primary's failure."""
        policy, ctx, winner = self.policy, self.ctx, self.winner
        if winner < 0:
            if self.final_error is not None:
                raise self.final_error
            return self.final_value
        if self.percentile is not None:
            policy._observe(self.win_latency)
        if winner > 0:
            fork = self.forks[winner - 1]
            ctx.endpoint = fork.endpoint
            if fork.tried:
                if ctx.tried is None:
                    ctx.tried = list(fork.tried)
                else:
                    ctx.tried.extend([e for e in fork.tried if e not in ctx.tried])
            if ctx.listeners:
                emit(ctx.listeners, HedgeWon(policy.name, ctx, winner))
                if not self.primary_running and (self.final_error is not None or self.failed_value):
                    emit(ctx.listeners, HedgeAttemptFailed(policy.name, ctx, 0, self.final_error))
        return self.win_value


def judge_error(ctx: CallContext, error: BaseException) -> bool:
    """Whether an attempt's error should start the next hedge at once.

    A classifier that raises says no: the attempt still counts out of the race (a race
    waiting for an attempt that never reports would never end).
    """
    try:
        return isinstance(error, Exception) and ctx.classifier.retryable_error(error)
    except Exception:
        _log.exception("classifier failed on %r; not retrying it", error)
        return False


def judge_result(ctx: CallContext, value: Any) -> tuple[bool, bool, BaseException | None]:
    """(ok, retryable, error) for an attempt that returned ``value``; ``error`` is the
    classifier's own when it raised (the attempt then failed, and is not retried)."""
    classifier = ctx.classifier
    try:
        if not classifier.checks_results or classifier.result(value) is not Outcome.FAILURE:
            return True, False, None
        return False, classifier.retryable_result(value), None
    except Exception as exc:
        return False, False, exc
