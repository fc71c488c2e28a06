"""The hedge policy and its options; the race and the executors live beside it."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

from ..._validate import Seconds, as_seconds, integer, number, seconds
from ...context import CallContext
from ...options import Options, Reconfigurable
from ...policy import AsyncNext, Policy, SyncNext
from ..budget import RetryBudget
from .aio import hedge_async
from .race import LatencyWindow, judge_result
from .threads import WorkerPool, hedge_sync

__all__ = ["Hedge", "HedgeOptions"]

_DEFAULT_BUDGET: Any = object()


@dataclass(frozen=True, slots=True)
class HedgeOptions(Options):
    """When a :class:`Hedge` sends another attempt.

    Attributes:
        delay: seconds to wait before each hedge, >= 0, or ``None`` (with ``percentile``):
            no hedge until the percentile is known (default 0.05).
        percentile: hedge after this quantile of observed latency, in (0, 1); ``None`` for
            the fixed delay (default ``None``).
        window: latency samples kept, in [1, 1_000_000] (default 1000).
        min_samples: samples needed before the percentile is used, in [1, window]
            (default ``min(window, 20)``).
        min_delay: the smallest delay taken from the percentile, >= 0 (default 0.001).
        max_hedges: hedged attempts per call besides the primary, in [1, 10] (default 1).
    """

    delay: float | None = 0.05
    percentile: float | None = None
    window: int = 1000
    min_samples: int | None = None
    min_delay: float = 0.001
    max_hedges: int = 1

    def __post_init__(self) -> None:
        if self.delay is None and self.percentile is None:
            raise ValueError("Hedge needs a delay or a percentile, got delay=None and percentile=None")
        if self.delay is not None:
            self.set("delay", seconds("delay", self.delay, allow_zero=True, bounded=True))
        if self.percentile is not None:
            self.set(
                "percentile",
                number("percentile", self.percentile, low=0.0, high=1.0, low_open=True, high_open=True),
            )
        self.set("window", integer("window", self.window, minimum=1, maximum=1_000_000))
        min_samples = min(self.window, 20) if self.min_samples is None else self.min_samples
        self.set("min_samples", integer("min_samples", min_samples, minimum=1, maximum=self.window))
        self.set("min_delay", seconds("min_delay", self.min_delay, allow_zero=True, bounded=True))
        self.set("max_hedges", integer("max_hedges", self.max_hedges, minimum=1, maximum=10))


class Hedge(Reconfigurable[HedgeOptions], Policy):
    """Sends the call again when it is slow, and answers with the first success.

    The primary attempt runs on the call's context. If it has not succeeded after
    ``delay`` seconds, a hedged attempt starts on ``ctx.fork()`` with ``hedge`` set to 1
    (2 for the next, ...): the fork is made at that moment, so its ``tried`` holds the
    endpoints already in use and a balancer sends the hedge elsewhere. Another hedge
    follows after each further ``delay``, up to ``max_hedges``. The first attempt to
    succeed (by the call's classifier) answers the call; the winner's endpoint and the
    endpoints it tried are copied back to the call's context.

    An attempt that fails does not end the call while another one runs; its error is
    swallowed (and reported as :class:`HedgeAttemptFailed`). A failure the classifier
    calls retryable starts the next hedge at once instead of after the delay (as gRPC
    does on a non-fatal status); with nothing left running and no hedge allowed, the call
    ends with the primary's outcome (its error, or its failing result).

    A hedge needs all of: the call is idempotent and not committed (neither the primary
    nor a running hedge has handed part of a result to the caller), fewer than
    ``max_hedges`` started, the call's deadline not yet passed at the time the first hedge
    would start, and a withdrawal from the ``budget`` (each hedged call deposits one
    request). Other calls go straight through.

    **Delay.** A fixed ``delay``, or with ``percentile`` the given quantile of the latency
    of the successful attempts in the last ``window`` samples (nearest rank, at least
    ``min_delay``). Until ``min_samples`` latencies are known, the fixed ``delay`` is used,
    or no hedge is sent when ``delay`` is ``None``. Only answers are sampled, so under heavy
    hedging the quantile describes the hedged latency, which keeps the delay conservative.

    **Async.** Hedges are tasks; the wait for the delay is a ``ctx.clock.call_at`` timer
    (a :class:`~resilience.FakeClock` drives it with ``advance``). The primary runs in the
    caller's task, so the happy path creates no task. When a hedge wins, the primary is
    cancelled and the losers are cancelled and awaited before the call returns;
    cancelling the call cancels every attempt.

    **Sync.** Attempts, the primary included, run on threads from a bounded pool owned
    by this policy (``max_workers``; with no free worker the call runs directly on the
    caller's thread, unhedged, and a due hedge is skipped). The caller waits with a real
    ``threading`` timeout, so sync hedging cannot be driven by a fake clock (the clock
    still dates budget withdrawals and latency samples). Threads cannot be cancelled:
    losers are abandoned and finish on their own; a result they return later is handed to
    ``ctx.classifier.discard``. An abandoned primary still runs on the call's context.
    Call :meth:`close` to stop the pool's threads.

    **Options and reconfigure.** The keywords build a :class:`HedgeOptions` (``options=``
    takes one whole). :meth:`reconfigure` keeps the latency samples (the oldest dropped
    when the new ``window`` is smaller) and the learnt percentile delay while the new
    options still use a percentile; calls in flight finish with the options they started
    with. ``budget``, ``max_workers`` and the worker pool are kept as they are.

    Args:
        options: the whole options object (instead of delay ... max_hedges).
        delay: seconds to wait before each hedge, >= 0, or ``None`` (with ``percentile``):
            no hedge until the percentile is known (default 0.05).
        percentile: hedge after this quantile of observed latency, in (0, 1), e.g. 0.95;
            ``None`` for the fixed delay (default ``None``).
        window: latency samples kept, in [1, 1_000_000] (default 1000).
        min_samples: samples needed before the percentile is used, in [1, window]
            (default ``min(window, 20)``).
        min_delay: the smallest delay taken from the percentile, >= 0 (default 0.001).
        max_hedges: hedged attempts per call besides the primary, in [1, 10] (default 1).
        budget: a (possibly shared) :class:`~resilience.RetryBudget`, or ``None`` for no
            limit (default: a budget of 10% of requests plus 1 hedge per second, owned by
            this policy).
        max_workers: the sync executor's thread bound, in [1, 10_000] (default 64).
        rng: accepted for symmetry with the other policies; the hedge schedule is
            deterministic and draws nothing from it (default: a private ``random.Random``).
        name: the policy's name in events (default ``"hedge"``).
    """

    __slots__ = ("_learnt", "_lock", "_options", "_pool", "_samples", "budget", "max_workers", "rng")

    options_type = HedgeOptions

    def __init__(
        self,
        delay: Seconds | None = 0.05,
        *,
        options: HedgeOptions | None = None,
        percentile: float | None = None,
        window: int = 1000,
        min_samples: int | None = None,
        min_delay: Seconds = 0.001,
        max_hedges: int = 1,
        budget: RetryBudget | None = _DEFAULT_BUDGET,
        max_workers: int = 64,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            options = HedgeOptions(
                delay=as_seconds(delay),
                percentile=percentile,
                window=window,
                min_samples=min_samples,
                min_delay=as_seconds(min_delay),
                max_hedges=max_hedges,
            )
        elif not isinstance(options, HedgeOptions):
            raise TypeError(f"options must be HedgeOptions, got {options!r}")
        self._options = options
        if budget is _DEFAULT_BUDGET:
            budget = RetryBudget(ratio=0.1, min_per_second=1.0)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
        self.budget: RetryBudget | None = budget
        self.max_workers = integer("max_workers", max_workers, minimum=1, maximum=10_000)
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random or None, got {rng!r}")
        self.rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._samples = LatencyWindow(options.window)
        self._learnt: float | None = None  # the percentile delay, once min_samples are in
        self._pool = WorkerPool(self.max_workers, f"{self.name}-worker")

    # -- options ------------------------------------------------------------------------

    def _reconfigure(self, options: HedgeOptions) -> None:
        with self._lock:
            old = self._samples
            if options.window != old.size:
                samples = LatencyWindow(options.window)
                for value in old.newest(options.window):
                    samples.add(value)
                self._samples = samples
            self._options = options
            self._learnt = None
            if options.percentile is not None and len(self._samples) >= (options.min_samples or 1):
                self._learnt = max(options.min_delay, self._samples.percentile(options.percentile))

    @property
    def delay(self) -> float | None:
        """The fixed delay (``None``: none until the percentile is known)."""
        return self._options.delay

    @property
    def percentile(self) -> float | None:
        """The latency quantile the delay follows, if any."""
        return self._options.percentile

    @property
    def max_hedges(self) -> int:
        """Hedged attempts per call besides the primary."""
        return self._options.max_hedges

    # -- the decision core ------------------------------------------------------------------

    def current_delay(self) -> float | None:
        """The delay a call starting now would wait before its first hedge (``None``: no hedge)."""
        learnt = self._learnt
        return self._options.delay if learnt is None else learnt

    def _observe(self, latency: float) -> None:
        """Take one latency sample; the percentile delay is recomputed here, not per call."""
        with self._lock:
            options, samples = self._options, self._samples
            samples.add(latency)
            if options.percentile is not None and len(samples) >= (options.min_samples or 1):
                self._learnt = max(options.min_delay, samples.percentile(options.percentile))

    def _begin(self, ctx: CallContext, start: float) -> float | None:
        """A hedgeable call starts: count it in the budget; its delay, or ``None`` if it won't be hedged."""
        if self.budget is not None:
            self.budget.deposit(start)
        delay = self.current_delay()
        if delay is not None and ctx.deadline is not None and start + delay >= ctx.deadline:
            return None
        return delay

    @property
    def samples(self) -> int:
        """Latency samples held now."""
        return len(self._samples)

    @property
    def threads(self) -> int:
        """Worker threads of the sync executor alive now."""
        return self._pool.threads

    def close(self, wait: bool = True) -> None:
        """Stop the sync executor's worker threads (after their current attempts when ``wait``).

        Later sync calls run unhedged on the caller's thread. Async calls are unaffected.
        """
        self._pool.close(wait)

    def __enter__(self) -> Hedge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        return hedge_sync(self, next)

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        return hedge_async(self, next)

    def _unhedged(self, value: Any, ctx: CallContext, start: float) -> Any:
        """The answer of a call that ran without hedging (still a latency sample)."""
        if self._options.percentile is not None and judge_result(ctx, value)[0]:
            self._observe(ctx.clock.monotonic() - start)
        return value

    def __repr__(self) -> str:
        options = self._options
        if options.percentile is not None:
            how = f"percentile={options.percentile!r}, window={options.window}, delay={options.delay!r}"
        else:
            how = f"delay={options.delay!r}"
        return f"Hedge({how}, max_hedges={options.max_hedges}, budget={self.budget!r})"
