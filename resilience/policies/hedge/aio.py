"""The hedge's async executor: asyncio tasks (the primary in the caller's task), or a trio nursery."""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

from ...clock import TimerHandle
from ...context import CallContext
from ...events import emit
from ...policy import AsyncNext
from .race import END, LATE, WIN, HedgeAttemptFailed, Race, judge_error, judge_result

if TYPE_CHECKING:
    from .policy import Hedge

__all__: list[str] = []  # the executors are internal: use Hedge


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # no asyncio loop: trio


class AsyncRace(Race):
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
        if not self.done and self.launched < self.max_hedges:
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
            ok, retryable = False, judge_error(fork, exc)
        else:
            ok, retryable, error = judge_result(fork, value)
        now = fork.clock.monotonic()
        action, replacement = self.finish(fork.hedge, ok, retryable, value, error, now - start, now)
        if error is not None and not isinstance(error, Exception):
            if action == END:
                self.wake()
            raise error
        if action == WIN:
            if self.primary_running:
                self.cancelled_primary = True
                self.task.cancel()
            else:
                self.wake()
        elif action == END:
            self.wake()
        elif replacement is not None:
            self.launch(replacement, now)
        if not ok or action == LATE:
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


def hedge_async(policy: Hedge, next: AsyncNext) -> AsyncNext:
    """The async step that runs ``next`` hedged by ``policy``."""

    async def hedge_async(ctx: CallContext) -> Any:
        if not ctx.idempotent or ctx.committed or ctx.hedgeable is False:
            return await next(ctx)
        clock = ctx.clock
        start = clock.monotonic()
        delay = policy._begin(ctx, start)
        if delay is None:
            return policy._unhedged(await next(ctx), ctx, start)
        task = _current_task()
        if task is None:
            return await _hedge_trio(policy, next, ctx, delay, start)
        race = AsyncRace(policy, ctx, delay, start, next, task)
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
                _, fork = race.finish(0, False, judge_error(ctx, exc), None, exc, now - start, now)
                if fork is not None:
                    race.launch(fork, now)
            else:
                if race.cancelled_primary:
                    # The primary ended before our cancellation reached it: the hedge still wins.
                    task.uncancel()
                    await ctx.classifier.adiscard(value)
                else:
                    ok, retryable, judged = judge_result(ctx, value)
                    if ok and race.launched == 0:  # the happy path: answered before any hedge
                        if race.timer is not None:
                            race.timer.cancel()
                            race.timer = None
                        if race.percentile is not None:
                            policy._observe(clock.monotonic() - start)
                        return value
                    now = clock.monotonic()
                    _, fork = race.finish(0, ok, retryable, value, judged, now - start, now)
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


async def _hedge_trio(policy: Hedge, next: AsyncNext, ctx: CallContext, delay: float, start: float) -> Any:
    """The race in a trio nursery: the first success cancels the rest."""
    import trio

    race = Race(policy, ctx, delay, start)
    clock = ctx.clock

    async with trio.open_nursery() as nursery:

        async def attempt(actx: CallContext, began: float) -> None:
            error: BaseException | None = None
            value: Any = None
            try:
                value = await next(actx)
            except trio.Cancelled:
                raise
            except Exception as exc:
                error = exc
                ok, retryable = False, judge_error(actx, exc)
            else:
                ok, retryable, error = judge_result(actx, value)
            now = clock.monotonic()
            n = actx.hedge if actx is not ctx else 0
            action, replacement = race.finish(n, ok, retryable, value, error, now - began, now)
            if action in (WIN, END):
                nursery.cancel_scope.cancel()
            elif replacement is not None:
                race.started(replacement, now)
                nursery.start_soon(attempt, replacement, now)
            if not ok or action == LATE:
                if not ok and n and actx.listeners:
                    emit(actx.listeners, HedgeAttemptFailed(policy.name, actx, n, error))
                if error is None:
                    await actx.classifier.adiscard(value)

        async def timer() -> None:
            while not race.done and race.launched < race.max_hedges:
                wait = race.next_at - clock.monotonic()
                if wait > 0:
                    await clock.asleep(wait)
                    continue
                now = clock.monotonic()
                fork = race.want_hedge(now)
                if fork is None:
                    return
                race.started(fork, now)
                nursery.start_soon(attempt, fork, now)

        nursery.start_soon(attempt, ctx, start)
        nursery.start_soon(timer)
    if race.winner > 0 and race.failed_value:
        await ctx.classifier.adiscard(race.final_value)
    return race.conclude()
