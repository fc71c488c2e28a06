"""The hedge's threads executor: every attempt on a worker of a bounded pool; the caller waits."""

from __future__ import annotations

import contextvars
import math
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...context import CallContext
from ...events import emit
from ...policy import SyncNext
from .race import LATE, HedgeAttemptFailed, Race, judge_error, judge_result

if TYPE_CHECKING:
    from .policy import Hedge

__all__: list[str] = []  # the executors are internal: use Hedge


class WorkerPool:
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


class SyncRace(Race):
    """The threads executor: every attempt runs on a worker; the caller waits for the first success."""

    __slots__ = ("cond", "context", "next", "pool")

    def __init__(
        self, policy: Hedge, ctx: CallContext, delay: float, start: float, next: SyncNext, pool: WorkerPool
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
            ok, retryable = False, judge_error(attempt_ctx, exc)
        else:
            ok, retryable, error = judge_result(attempt_ctx, value)
        n = attempt_ctx.hedge if attempt_ctx is not self.ctx else 0
        now = attempt_ctx.clock.monotonic()
        with self.cond:
            action, replacement = self.finish(n, ok, retryable, value, error, now - start, now)
            if replacement is not None:
                self.launch(replacement, now)
            self.cond.notify()  # decided, or a hedge started in its place: the caller re-reads its timer
        if replacement is not None:
            self.started(replacement, now)
        if (not ok and n > 0) or action == LATE:
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
        clock, cond, max_hedges = self.ctx.clock, self.cond, self.max_hedges
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


def hedge_sync(policy: Hedge, next: SyncNext) -> SyncNext:
    """The sync step that runs ``next`` hedged by ``policy``."""
    pool = policy._pool

    def hedge_sync(ctx: CallContext) -> Any:
        if not ctx.idempotent or ctx.committed or ctx.hedgeable is False:
            return next(ctx)
        clock = ctx.clock
        start = clock.monotonic()
        delay = policy._begin(ctx, start)
        if delay is None or not pool.reserve():
            return policy._unhedged(next(ctx), ctx, start)
        race = SyncRace(policy, ctx, delay, start, next, pool)
        pool.start(lambda: race.context.run(race.run, ctx, start))
        race.wait()
        if race.winner > 0 and race.failed_value:
            ctx.classifier.discard(race.final_value)
        return race.conclude()

    return hedge_sync
