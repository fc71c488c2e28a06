"""Timeout: a time limit on an attempt or on a whole call."""

from __future__ import annotations

import asyncio
import sys
from asyncio.events import _get_running_loop
from typing import Any

from .. import _aio, _validate
from .._validate import Seconds
from ..context import CallContext
from ..errors import DeadlineExceededError
from ..events import TimeoutExpired, emit
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["Timeout"]

if sys.version_info < (3, 12):
    # Before 3.12 asyncio.current_task() is Python code that asks for the running loop
    # again: looking the task up in asyncio's own registry with the loop at hand saves a
    # quarter of an async Timeout.
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

    _task_of = _current_tasks.get
else:  # pragma: no cover - exercised on newer Pythons

    def _task_of(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
        return asyncio.current_task(loop)


class Timeout(Policy):
    """Limits the time of what it wraps.

    Placed outside a :class:`~resilience.Retry` it bounds the whole call, backoff included;
    inside, it bounds each attempt. Either way it sets ``ctx.deadline`` (keeping an earlier
    deadline that is already there), which the retry policy respects and adapters hand to
    the transport as its timeout.

    **Async** (asyncio or trio): the awaited work is cancelled at the deadline and the call
    raises :class:`~resilience.DeadlineExceededError`; a cancellation from outside is never
    taken for a timeout and propagates as it came.

    **Sync**: a blocking call cannot be interrupted safely from Python, so nothing is
    cancelled. The deadline travels in the context for the adapter to give to the
    transport (the httpx and gRPC adapters do), and an attempt that returns or fails after
    its deadline counts as timed out: its result is discarded and
    :class:`~resilience.DeadlineExceededError` is raised. A plain function that blocks for a
    minute therefore still blocks for a minute; only then is it marked as timed out.

    Args:
        seconds: the time limit, > 0, as seconds or a ``timedelta``.
        name: the policy's name in events (default ``"timeout"``).
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: Seconds, *, name: str | None = None) -> None:
        super().__init__(name)
        self.seconds = _validate.seconds("seconds", seconds)  # the argument shadows the checker

    def _expired(self, ctx: CallContext, own: bool) -> DeadlineExceededError:
        if ctx.listeners:
            emit(ctx.listeners, TimeoutExpired(self.name, ctx, self.seconds))
        what = f"{self.seconds:g}s timeout" if own else "call deadline"
        return DeadlineExceededError(
            f"{self.name}: {ctx.service or 'call'} {ctx.method} exceeded its {what} (attempt {ctx.attempt})".replace(
                "  ", " "
            ),
            context=ctx,
            timeout=self.seconds,
        )

    def wrap(self, next: SyncNext) -> SyncNext:
        limit = self.seconds

        def timeout_sync(ctx: CallContext) -> Any:
            clock = ctx.clock
            outer = ctx.deadline
            deadline = clock.monotonic() + limit
            own = outer is None or deadline <= outer
            if not own:
                deadline = outer  # type: ignore[assignment]
            ctx.deadline = deadline
            try:
                result = next(ctx)
            except Exception as exc:
                if clock.monotonic() > deadline and not isinstance(exc, DeadlineExceededError):
                    raise self._expired(ctx, own) from exc
                raise
            finally:
                ctx.deadline = outer
            if clock.monotonic() > deadline:
                ctx.classifier.discard(result)
                raise self._expired(ctx, own)
            return result

        return timeout_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        limit = self.seconds

        async def timeout_async(ctx: CallContext) -> Any:
            clock = ctx.clock
            outer = ctx.deadline
            deadline = clock.monotonic() + limit
            own = outer is None or deadline <= outer
            if not own:
                deadline = outer  # type: ignore[assignment]
            ctx.deadline = deadline
            loop = _get_running_loop()
            if loop is None:  # not asyncio: trio, through the shim's cancel scope
                try:
                    with _aio.deadline_scope(clock, deadline):
                        return await next(ctx)
                    raise self._expired(ctx, own)  # the scope absorbed its own cancellation
                finally:
                    ctx.deadline = outer
            task: asyncio.Task[Any] | None = _task_of(loop)
            if task is None:
                raise RuntimeError("an async Timeout must run inside an asyncio task")
            handle = clock.call_at(deadline, task.cancel, loop)
            try:
                return await next(ctx)
            except asyncio.CancelledError:
                if handle.fired and task.uncancel() == 0:
                    raise self._expired(ctx, own) from None
                raise
            finally:
                handle.cancel()
                ctx.deadline = outer

        return timeout_async

    def __repr__(self) -> str:
        return f"Timeout({self.seconds!r})"
