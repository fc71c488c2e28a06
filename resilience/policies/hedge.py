"""Hedge: when an attempt is slow, send the same call again and take the first success.

The scheme of gRPC's hedging (proposal A6) and Finagle's backup requests: after a delay
without an answer, start another attempt (the balancer sends it to another endpoint);
whichever succeeds first answers the call, the others are cancelled (asyncio) or abandoned
(threads). A budget keeps hedges to a small share of the load.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import math
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._validate import Seconds, integer, number, seconds
from ..clock import TimerHandle
from ..context import CallContext
from ..events import Event, emit
from ..outcome import Outcome
from ..policy import AsyncNext, Policy, SyncNext
from .budget import RetryBudget

__all__ = ["Hedge", "HedgeAttemptFailed", "HedgeStarted", "HedgeWon"]

_DEFAULT_BUDGET: Any = object()


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


class _LatencyWindow:
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

    def percentile(self, p: float) -> float:
        """The nearest-rank ``p``-quantile (``p`` in (0, 1)); the window must not be empty."""
        ordered = self._sorted
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


# What an attempt's end means for the call (returned by _Race.finish).
_WAIT = 0  # others are running (or a hedge was started in its place): keep waiting
_WIN = 1  # this attempt answers the call
_END = 2  # every attempt failed and no hedge can follow: the call ends with the primary's outcome
_LATE = 3  # the call was already decided: this attempt lost


class _Race:
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
        "next_at",
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
        if self.done or self.launched >= policy.max_hedges or self.ctx.committed:
            return None
        for fork in self.forks:
            if fork.committed:
                return None
        if not self._reserve():
            return None
        if policy.budget is not None and not policy.budget.try_withdraw(now):
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
            return _LATE, None
        self.running -= 1
        if n == 0:
            self.primary_running = False
        if ok:
            self.done = True
            self.winner = n
            self.win_value = value
            self.win_latency = latency
            return _WIN, None
        if n == 0:
            self.final_error = error
            self.final_value = value
            self.failed_value = error is None
        fork = self.want_hedge(now) if retryable else None
        if fork is None and self.running == 0:
            self.done = True
            return _END, None
        return _WAIT, fork

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
        if policy.percentile is not None:
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


def _judge_error(ctx: CallContext, error: BaseException) -> bool:
    """Whether an attempt's error should start the next hedge at once."""
    return isinstance(error, Exception) and ctx.classifier.retryable_error(error)


def _judge_result(ctx: CallContext, value: Any) -> tuple[bool, bool]:
    """(ok, retryable) for an attempt that returned ``value``."""
    classifier = ctx.classifier
    if not classifier.checks_results or classifier.result(value) is not Outcome.FAILURE:
        return True, False
    return False, classifier.retryable_result(value)


class _AsyncRace(_Race):
    """The asyncio executor: the primary runs in the caller's task, hedges in tasks of their own."""

    __slots__ = ("cancelled_primary", "context", "next", "task", "tasks", "timer", "waiter")

    def __init__(
        self, policy: Hedge, ctx: CallContext, delay: float, start: float, next: AsyncNext, task: asyncio.Task[Any]
    ) -> None:
        super().__init__(policy, ctx, delay, start)
        self.next = next
        self.task = task
        self.tasks: list[asyncio.Task[None]] = []
        self.timer: TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.cancelled_primary = False
        # Hedges run in the caller's context (tracing spans, ...), not in the timer's.
        self.context = contextvars.copy_context()

    def arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.done and self.launched < self.policy.max_hedges:
            self.timer = self.ctx.clock.call_at(self.next_at, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        now = self.ctx.clock.monotonic()
        fork = self.want_hedge(now)
        if fork is not None:
            self.launch(fork, now)

    def launch(self, fork: CallContext, now: float) -> None:
        task = self.task.get_loop().create_task(self.run_hedge(fork, now), context=self.context.copy())
        self.tasks.append(task)
        self.started(fork, now)
        self.arm()

    async def run_hedge(self, fork: CallContext, start: float) -> None:
        error: BaseException | None = None
        value: Any = None
        try:
            value = await self.next(fork)
        except asyncio.CancelledError:
            raise  # only the race cancels a hedge, once the call is decided
        except BaseException as exc:  # even KeyboardInterrupt must count it out, or the call would wait forever
            error = exc
            ok, retryable = False, _judge_error(fork, exc)
        else:
            ok, retryable = _judge_result(fork, value)
        now = fork.clock.monotonic()
        action, replacement = self.finish(fork.hedge, ok, retryable, value, error, now - start, now)
        if error is not None and not isinstance(error, Exception):
            if action == _END:
                self.wake()
            raise error
        if action == _WIN:
            if self.primary_running:
                self.cancelled_primary = True
                self.task.cancel()
            else:
                self.wake()
        elif action == _END:
            self.wake()
        elif replacement is not None:
            self.launch(replacement, now)
        if not ok or action == _LATE:
            if not ok and fork.listeners:
                emit(fork.listeners, HedgeAttemptFailed(self.policy.name, fork, fork.hedge, error))
            if error is None:
                await fork.classifier.adiscard(value)

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        if not self.done:
            self.waiter = self.task.get_loop().create_future()
            await self.waiter

    async def cleanup(self) -> None:
        """Stop the timer; cancel the hedges still running and wait for them to end."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.done = True
        pending = [t for t in self.tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)


class _WorkerPool:
    """A bounded set of daemon threads running jobs for the sync executor.

    A job is only handed over after :meth:`reserve` said there is room for it, so a call
    never queues behind abandoned attempts: with no room, the hedge is simply not sent.
    Threads are started on demand and live until :meth:`close`.
    """

    __slots__ = ("_busy", "_closed", "_jobs", "_lock", "_name", "_threads", "max_workers")

    def __init__(self, max_workers: int, name: str) -> None:
        self.max_workers = max_workers
        self._name = name
        self._lock = threading.Lock()
        self._busy = 0
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()

    @property
    def threads(self) -> int:
        return len(self._threads)

    def reserve(self) -> bool:
        with self._lock:
            if self._closed or self._busy >= self.max_workers:
                return False
            self._busy += 1
            return True

    def unreserve(self) -> None:
        with self._lock:
            self._busy -= 1

    def start(self, job: Callable[[], None]) -> None:
        """Run ``job`` on a worker; the caller holds a reservation."""
        thread = None
        with self._lock:
            # Enough threads for every reserved job: each queued job has a worker free for it.
            if len(self._threads) < self._busy:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
        self._jobs.put(job)
        if thread is not None:
            thread.start()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                job()
            finally:
                with self._lock:
                    self._busy -= 1

    def close(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()


class _SyncRace(_Race):
    """The threads executor: every attempt runs on a worker; the caller waits for the first success."""

    __slots__ = ("cond", "context", "next", "pool")

    def __init__(
        self, policy: Hedge, ctx: CallContext, delay: float, start: float, next: SyncNext, pool: _WorkerPool
    ) -> None:
        super().__init__(policy, ctx, delay, start)
        self.next = next
        self.pool = pool
        self.cond = threading.Condition(threading.Lock())
        # Every attempt runs in a copy of the caller's context (tracing spans, ...).
        self.context = contextvars.copy_context()

    def _reserve(self) -> bool:
        return self.pool.reserve()

    def _unreserve(self) -> None:
        self.pool.unreserve()

    def launch(self, fork: CallContext, start: float) -> None:
        self.pool.start(lambda: self.context.copy().run(self.run, fork, start))

    def run(self, attempt_ctx: CallContext, start: float) -> None:
        """One attempt, on a worker thread."""
        error: BaseException | None = None
        value: Any = None
        try:
            value = self.next(attempt_ctx)
        except BaseException as exc:  # a worker must report every ending, whatever it is
            error = exc
            ok, retryable = False, _judge_error(attempt_ctx, exc)
        else:
            ok, retryable = _judge_result(attempt_ctx, value)
        n = attempt_ctx.hedge if attempt_ctx is not self.ctx else 0
        now = attempt_ctx.clock.monotonic()
        with self.cond:
            action, replacement = self.finish(n, ok, retryable, value, error, now - start, now)
            if replacement is not None:
                self.launch(replacement, now)
            self.cond.notify()  # decided, or a hedge started in its place: the caller re-reads its timer
        if replacement is not None:
            self.started(replacement, now)
        if (not ok and n > 0) or action == _LATE:
            if not ok and attempt_ctx.listeners:
                emit(attempt_ctx.listeners, HedgeAttemptFailed(self.policy.name, attempt_ctx, n, error))
            if error is None:
                attempt_ctx.classifier.discard(value)

    def wait(self) -> None:
        """Block until the call is decided, starting hedges as their delays pass.

        The wait is a real ``Condition.wait`` with a timeout: threads cannot wait on a
        fake clock. When it times out for the hedge it was waiting for, that hedge starts
        even if the clock says otherwise, so a ``FakeClock`` cannot make this loop spin.
        """
        clock, cond, max_hedges = self.ctx.clock, self.cond, self.policy.max_hedges
        while True:
            fork = None
            with cond:
                if self.done:
                    return
                target = self.next_at
                if self.launched >= max_hedges or target == math.inf:
                    timeout = None
                else:
                    timeout = max(0.0, target - clock.monotonic())
                timed_out = not cond.wait(timeout)
                if self.done:
                    return
                if timed_out and self.next_at == target:
                    now = clock.monotonic()
                    fork = self.want_hedge(now)
                    if fork is None:
                        self.next_at = math.inf  # refused (budget, room, commit): no further timed hedge
                    else:
                        self.launch(fork, now)
            if fork is not None:
                self.started(fork, now)


class Hedge(Policy):
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

    Args:
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

    __slots__ = (
        "_learnt",
        "_lock",
        "_pool",
        "_samples",
        "budget",
        "delay",
        "max_hedges",
        "max_workers",
        "min_delay",
        "min_samples",
        "percentile",
        "rng",
        "window",
    )

    def __init__(
        self,
        delay: Seconds | None = 0.05,
        *,
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
        if delay is None and percentile is None:
            raise ValueError("Hedge needs a delay or a percentile, got delay=None and percentile=None")
        self.delay: float | None = None if delay is None else seconds("delay", delay, allow_zero=True)
        self.percentile = (
            None
            if percentile is None
            else number("percentile", percentile, low=0.0, high=1.0, low_open=True, high_open=True)
        )
        self.window = integer("window", window, minimum=1, maximum=1_000_000)
        if min_samples is None:
            min_samples = min(self.window, 20)
        self.min_samples = integer("min_samples", min_samples, minimum=1, maximum=self.window)
        self.min_delay = seconds("min_delay", min_delay, allow_zero=True)
        self.max_hedges = integer("max_hedges", max_hedges, minimum=1, maximum=10)
        if budget is _DEFAULT_BUDGET:
            budget = RetryBudget(ratio=0.1, min_per_second=1.0)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
        self.budget: RetryBudget | None = budget
        self.max_workers = integer("max_workers", max_workers, minimum=1, maximum=10_000)
        self.rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._samples = _LatencyWindow(self.window)
        self._learnt: float | None = None  # the percentile delay, once min_samples are in
        self._pool = _WorkerPool(self.max_workers, f"{self.name}-worker")

    # -- the decision core ------------------------------------------------------------------

    def current_delay(self) -> float | None:
        """The delay a call starting now would wait before its first hedge (``None``: no hedge)."""
        learnt = self._learnt
        return self.delay if learnt is None else learnt

    def _observe(self, latency: float) -> None:
        """Take one latency sample; the percentile delay is recomputed here, not per call."""
        samples = self._samples
        with self._lock:
            samples.add(latency)
            if len(samples) >= self.min_samples:
                self._learnt = max(self.min_delay, samples.percentile(self.percentile))  # type: ignore[arg-type]

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
        pool = self._pool

        def hedge_sync(ctx: CallContext) -> Any:
            if not ctx.idempotent or ctx.committed:
                return next(ctx)
            clock = ctx.clock
            start = clock.monotonic()
            delay = self._begin(ctx, start)
            if delay is None or not pool.reserve():
                return self._unhedged(next(ctx), ctx, start)
            race = _SyncRace(self, ctx, delay, start, next, pool)
            pool.start(lambda: race.context.run(race.run, ctx, start))
            race.wait()
            if race.winner > 0 and race.failed_value:
                ctx.classifier.discard(race.final_value)
            return race.conclude()

        return hedge_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        async def hedge_async(ctx: CallContext) -> Any:
            if not ctx.idempotent or ctx.committed:
                return await next(ctx)
            clock = ctx.clock
            start = clock.monotonic()
            delay = self._begin(ctx, start)
            if delay is None:
                return self._unhedged(await next(ctx), ctx, start)
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("an async Hedge must run inside an asyncio task")
            race = _AsyncRace(self, ctx, delay, start, next, task)
            race.timer = clock.call_at(race.next_at, race.on_timer)
            try:
                try:
                    value = await next(ctx)
                except asyncio.CancelledError:
                    if not race.cancelled_primary or task.uncancel() > 0:
                        raise
                    # A hedge won and cancelled the primary: its value is the answer.
                except Exception as exc:
                    if race.cancelled_primary:
                        task.uncancel()  # it turned our cancellation into an error of its own
                    now = clock.monotonic()
                    _, fork = race.finish(0, False, _judge_error(ctx, exc), None, exc, now - start, now)
                    if fork is not None:
                        race.launch(fork, now)
                else:
                    if race.cancelled_primary:
                        # The primary ended before our cancellation reached it: the hedge still wins.
                        task.uncancel()
                        await ctx.classifier.adiscard(value)
                    else:
                        ok, retryable = _judge_result(ctx, value)
                        if ok and race.launched == 0:  # the happy path: answered before any hedge
                            if race.timer is not None:
                                race.timer.cancel()
                                race.timer = None
                            if self.percentile is not None:
                                self._observe(clock.monotonic() - start)
                            return value
                        now = clock.monotonic()
                        _, fork = race.finish(0, ok, retryable, value, None, now - start, now)
                        if fork is not None:
                            race.launch(fork, now)
                await race.wait()
            finally:
                if race.tasks:
                    await race.cleanup()
                elif race.timer is not None:
                    race.timer.cancel()
                    race.timer = None
            if race.winner > 0 and race.failed_value:
                await ctx.classifier.adiscard(race.final_value)
            return race.conclude()

        return hedge_async

    def _unhedged(self, value: Any, ctx: CallContext, start: float) -> Any:
        """The answer of a call that ran without hedging (still a latency sample)."""
        if self.percentile is not None and _judge_result(ctx, value)[0]:
            self._observe(ctx.clock.monotonic() - start)
        return value

    def __repr__(self) -> str:
        if self.percentile is not None:
            how = f"percentile={self.percentile!r}, window={self.window}, delay={self.delay!r}"
        else:
            how = f"delay={self.delay!r}"
        return f"Hedge({how}, max_hedges={self.max_hedges}, budget={self.budget!r})"
