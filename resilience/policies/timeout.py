"""Timeout: a time limit on an attempt or on a whole call."""

from __future__ import annotations

import asyncio
import sys
from asyncio.events import _get_running_loop
from dataclasses import dataclass
from typing import Any

from .. import _aio, _validate
from .._validate import Seconds, as_seconds
from ..context import CallContext
from ..errors import DeadlineExceededError
from ..events import TimeoutExpired, emit
from ..options import Options
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["Timeout", "TimeoutOptions"]

if sys.version_info < (3, 12):
    # Before 3.12 asyncio.current_task() is Python code that asks for the running loop
    # again: looking the task up in asyncio's own registry with the loop at hand saves a
    # quarter of an async Timeout.
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

    _task_of = _current_tasks.get
else:  # pragma: no cover - exercised on newer Pythons

    def _task_of(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
        return asyncio.current_task(loop)


@dataclass(frozen=True, slots=True)
class TimeoutOptions(Options):
    """A :class:`Timeout`'s limit.

    Attributes:
        seconds: the time limit, > 0 and at most ``threading.TIMEOUT_MAX``, as seconds or a
            ``timedelta`` (stored as seconds). Required.
    """

    seconds: float

    def __post_init__(self) -> None:
        self.set("seconds", _validate.seconds("seconds", self.seconds, bounded=True))


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

    :meth:`reconfigure` swaps the limit; a call keeps the deadline it started with. There
    is no other state.

    Args:
        seconds: the time limit, > 0, as seconds or a ``timedelta`` (see :class:`TimeoutOptions`).
        options: the whole options object, instead of ``seconds``.
        name: the policy's name in events (default ``"timeout"``).
    """

    __slots__ = ("_options",)

    options_type = TimeoutOptions

    def __init__(
        self, seconds: Seconds | None = None, *, options: TimeoutOptions | None = None, name: str | None = None
    ) -> None:
        super().__init__(name)
        if options is None:
            if seconds is None:
                raise TypeError("Timeout needs seconds (or options=TimeoutOptions(...))")
            options = TimeoutOptions(as_seconds(seconds))
        elif not isinstance(options, TimeoutOptions):
            raise TypeError(f"options must be TimeoutOptions, got {options!r}")
        elif seconds is not None:
            raise TypeError("give seconds or options, not both")
        self._options = options

    @property
    def seconds(self) -> float:
        """The time limit now."""
        return self._options.seconds

    def reconfigure(self, options: TimeoutOptions) -> None:
        """Swap the time limit; calls in flight keep the deadline they started with."""
        if not isinstance(options, TimeoutOptions):
            raise TypeError(f"Timeout.reconfigure needs TimeoutOptions, got {options!r}")
        self._options = options

    @property
    def options(self) -> TimeoutOptions:
        """The options in force now."""
        return self._options

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
        policy = self

        def timeout_sync(ctx: CallContext) -> Any:
            limit = policy._options.seconds
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
        policy = self

        async def timeout_async(ctx: CallContext) -> Any:
            clock = ctx.clock
            outer = ctx.deadline
            deadline = clock.monotonic() + policy._options.seconds
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
