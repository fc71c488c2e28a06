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

    __slots__ = ("_lock", "_slots", "_waiters", "max_concurrent", "max_queue", "max_wait")

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
        # Free slots, one item each. deque.pop() and append() are atomic, which lets a call
        # take and give back a slot without the lock while nobody waits; the lock guards the
        # queue of waiters and every hand-over to a waiter.
        self._slots: deque[None] = deque([None] * self.max_concurrent)
        self._waiters: deque[_Waiter] = deque()

    @property
    def active(self) -> int:
        """Calls inside the bulkhead now."""
        return self.max_concurrent - len(self._slots)

    @property
    def queued(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiters)

    # -- the decision core ---------------------------------------------------------------

    def _try_take(self) -> bool:
        """Take a free slot unless someone waits for one (first come, first served)."""
        if self._waiters:
            return False
        try:
            self._slots.pop()
        except IndexError:
            return False
        return True

    def _enter(self, waiter_factory: Any) -> _Waiter | bool:
        """Take a slot (``True``), join the queue (a waiter), or be refused (``False``)."""
        woken: _Waiter | None = None
        with self._lock:
            if self._try_take():
                return True
            if len(self._waiters) >= self.max_queue:
                return False
            waiter: _Waiter = waiter_factory()
            self._waiters.append(waiter)
            # A slot freed since the first look, by a caller who saw no waiter, goes to
            # the head of the queue now (see _leave for the other half of this hand-shake).
            try:
                self._slots.pop()
            except IndexError:
                return waiter
            woken = self._waiters.popleft()
            woken.granted = True
            if woken is waiter:
                return True
        woken.wake()
        return waiter

    def _leave(self) -> None:
        """Free a slot: hand it to the next waiter, if any."""
        self._slots.append(None)
        if self._waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to waiters. After its append, _leave looks at the queue again:
        a waiter that enqueued after the slot was freed but missed it is served here."""
        woken = []
        with self._lock:
            while self._waiters and self._slots:
                self._slots.pop()
                waiter = self._waiters.popleft()
                waiter.granted = True
                woken.append(waiter)
        for waiter in woken:
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
            emit(ctx.listeners, BulkheadRejected(self.name, ctx, reason, self.active, len(self._waiters)))
        if reason == "full":
            message = f"{self.name}: all {self.max_concurrent} slots taken and the queue of {self.max_queue} is full"
        else:
            message = f"{self.name}: no slot freed within the wait limit"
        return BulkheadFullError(message, context=ctx)

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        slots, waiters = self._slots, self._waiters

        def bulkhead_sync(ctx: CallContext) -> Any:
            # The uncontended path inlines _try_take: this runs on every call.
            entry: _Waiter | bool
            if waiters or not slots:
                entry = self._enter(_ThreadWaiter)
            else:
                try:
                    slots.pop()
                    entry = True
                except IndexError:
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
                slots.append(None)  # _leave, inlined
                if waiters:
                    self._hand_over()

        return bulkhead_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        slots, waiters = self._slots, self._waiters

        async def bulkhead_async(ctx: CallContext) -> Any:
            entry: _Waiter | bool
            if waiters or not slots:
                entry = self._enter(_new_task_waiter)
            else:
                try:
                    slots.pop()
                    entry = True
                except IndexError:
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
                slots.append(None)  # _leave, inlined
                if waiters:
                    self._hand_over()

        return bulkhead_async

    def __repr__(self) -> str:
        return f"Bulkhead(max_concurrent={self.max_concurrent}, max_queue={self.max_queue})"


def _new_task_waiter() -> _TaskWaiter:
    return _TaskWaiter(asyncio.get_running_loop())
