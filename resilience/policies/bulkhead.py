"""Bulkhead: a bound on concurrent calls, with a bounded wait queue."""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from typing import Any

from .._validate import Seconds, integer, seconds
from ..context import CallContext
from ..errors import BulkheadFullError
from ..events import BulkheadRejected, emit
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["Bulkhead"]


class _Waiter:
    """A queued caller. ``granted`` is only changed under the bulkhead's lock."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = False

    def wake(self) -> None:
        raise NotImplementedError


class _ThreadWaiter(_Waiter):
    __slots__ = ("_gate",)

    def __init__(self) -> None:
        super().__init__()
        self._gate = threading.Lock()
        self._gate.acquire()

    def wake(self) -> None:
        self._gate.release()

    def wait(self, timeout: float) -> None:
        self._gate.acquire(timeout=-1 if math.isinf(timeout) else max(0.0, timeout))


class _TaskWaiter(_Waiter):
    __slots__ = ("expired", "future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.expired = False

    def expire(self) -> None:
        """The wait limit passed (runs in the waiter's loop)."""
        if not self.future.done():
            self.expired = True
            self.future.set_exception(TimeoutError())

    def wake(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            _resolve(self.future)
        else:
            self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Bulkhead(Policy):
    """Lets at most ``max_concurrent`` calls run at once; others wait in a bounded queue.

    A call that finds every slot taken waits in line (first come, first served) if fewer
    than ``max_queue`` are already waiting, for at most ``max_wait`` seconds and never past
    its deadline; otherwise, or when the wait runs out, it is rejected with
    :class:`~resilience.BulkheadFullError`. One bulkhead serves threads and asyncio tasks
    alike, also both at once: a freed slot goes straight to the next in line.

    Args:
        max_concurrent: calls allowed inside at once, in [1, 1_000_000].
        max_queue: callers allowed to wait, >= 0 (default 0: reject at once when full).
        max_wait: the longest wait for a slot in seconds, > 0, or ``None`` for no limit
            other than the deadline (default ``None``).
        name: the policy's name in events (default ``"bulkhead"``).
    """

    __slots__ = ("_active", "_lock", "_waiters", "max_concurrent", "max_queue", "max_wait")

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        max_wait: Seconds | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.max_concurrent = integer("max_concurrent", max_concurrent, minimum=1, maximum=1_000_000)
        self.max_queue = integer("max_queue", max_queue, minimum=0, maximum=1_000_000)
        self.max_wait = seconds("max_wait", max_wait, allow_none=True)
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def active(self) -> int:
        """Calls inside the bulkhead now."""
        return self._active

    @property
    def queued(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiters)

    # -- the decision core ---------------------------------------------------------------

    def _enter(self, waiter_factory: Any) -> _Waiter | bool:
        """Take a slot (``True``), join the queue (a waiter), or be refused (``False``)."""
        with self._lock:
            if self._active < self.max_concurrent and not self._waiters:
                self._active += 1
                return True
            if len(self._waiters) >= self.max_queue:
                return False
            waiter: _Waiter = waiter_factory()
            self._waiters.append(waiter)
            return waiter

    def _leave(self) -> None:
        """Free a slot: hand it to the next waiter, if any."""
        lock = self._lock
        lock.acquire()
        if not self._waiters:
            self._active -= 1
            lock.release()
            return
        waiter = self._waiters.popleft()
        waiter.granted = True
        lock.release()
        waiter.wake()

    def _give_up(self, waiter: _Waiter) -> bool:
        """A waiter stops waiting. ``True`` if it leaves empty-handed; ``False`` if it holds a slot."""
        with self._lock:
            if waiter.granted:
                return False
            self._waiters.remove(waiter)
            return True

    def _wait_limit(self, ctx: CallContext) -> float:
        remaining = ctx.remaining()
        return self.max_wait if remaining is None else min(self.max_wait, remaining)

    def _rejected(self, ctx: CallContext, reason: str) -> BulkheadFullError:
        if ctx.listeners:
            emit(ctx.listeners, BulkheadRejected(self.name, ctx, reason, self._active, len(self._waiters)))
        if reason == "full":
            message = f"{self.name}: all {self.max_concurrent} slots taken and the queue of {self.max_queue} is full"
        else:
            message = f"{self.name}: no slot freed within the wait limit"
        return BulkheadFullError(message, context=ctx)

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        lock, capacity = self._lock, self.max_concurrent

        def bulkhead_sync(ctx: CallContext) -> Any:
            # The uncontended path inlines _enter: this runs on every call.
            lock.acquire()
            if self._active < capacity and not self._waiters:
                self._active += 1
                lock.release()
                entry: _Waiter | bool = True
            else:
                lock.release()
                entry = self._enter(_ThreadWaiter)
            if entry is False:
                raise self._rejected(ctx, "full")
            if entry is not True:
                assert isinstance(entry, _ThreadWaiter)
                entry.wait(self._wait_limit(ctx))
                if self._give_up(entry):
                    raise self._rejected(ctx, "wait")
            try:
                return next(ctx)
            finally:
                self._leave()

        return bulkhead_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        lock, capacity = self._lock, self.max_concurrent

        async def bulkhead_async(ctx: CallContext) -> Any:
            lock.acquire()
            if self._active < capacity and not self._waiters:
                self._active += 1
                lock.release()
                entry: _Waiter | bool = True
            else:
                lock.release()
                entry = self._enter(_new_task_waiter)
            if entry is False:
                raise self._rejected(ctx, "full")
            if entry is not True:
                assert isinstance(entry, _TaskWaiter)
                limit = self._wait_limit(ctx)
                handle = None
                if not math.isinf(limit):
                    handle = ctx.clock.call_at(ctx.clock.monotonic() + limit, entry.expire)
                try:
                    await entry.future
                except BaseException:
                    if handle is not None:
                        handle.cancel()
                    if self._give_up(entry):
                        if entry.expired:
                            raise self._rejected(ctx, "wait") from None
                        raise
                    if not entry.expired:
                        self._leave()  # granted while being cancelled: pass the slot on
                        raise
                else:
                    if handle is not None:
                        handle.cancel()
            try:
                return await next(ctx)
            finally:
                self._leave()

        return bulkhead_async

    def __repr__(self) -> str:
        return f"Bulkhead(max_concurrent={self.max_concurrent}, max_queue={self.max_queue})"


def _new_task_waiter() -> _TaskWaiter:
    return _TaskWaiter(asyncio.get_running_loop())
