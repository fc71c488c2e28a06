"""The few async primitives the policies need, on asyncio and on trio.

The asyncio path stays the cheap one: a running asyncio loop is looked up first (one C
call); trio is only considered when there is none, and is only imported then. Nothing
here imports trio unless a trio run is what calls it.

- :func:`running_asyncio_loop` and :func:`current_library` tell where we run;
- :func:`sleep` and :func:`checkpoint` sleep for real and yield once;
- :class:`Waiter` is a one-shot wake-up that any thread may trigger, with a deadline on
  any :class:`~resilience.Clock`;
- :func:`deadline_scope` cancels what runs inside it when a clock reaches a deadline;
- :func:`trio_call_at` is :meth:`~resilience.SystemClock.call_at` under trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import threading
import time
from asyncio.events import _get_running_loop
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

    from .clock import Clock, TimerHandle

__all__ = [
    "DeadlineScope",
    "Waiter",
    "checkpoint",
    "current_library",
    "deadline_scope",
    "running_asyncio_loop",
    "sleep",
    "trio_call_at",
    "trio_token",
]

_log = logging.getLogger("resilience")


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop of this thread, or None (a single C call, no exception)."""
    return _get_running_loop()


def current_library() -> str:
    """``"asyncio"`` or ``"trio"``, whichever runs the calling task.

    Raises:
        RuntimeError: outside any async library, or inside one that is neither.
    """
    if _get_running_loop() is not None:
        return "asyncio"
    try:
        import sniffio
    except ImportError:  # trio depends on sniffio: without it, trio cannot be running
        raise RuntimeError("no running asyncio loop and no trio run (sniffio is not installed)") from None
    try:
        name = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        raise RuntimeError("no running asyncio event loop or trio run in this thread") from None
    if name != "trio":
        raise RuntimeError(f"resilience runs on asyncio or trio, found {name!r}")
    return "trio"


def _trio() -> Any:
    """The trio module when the calling task runs under trio; else RuntimeError from current_library."""
    current_library()
    import trio

    return trio


def trio_token() -> trio.lowlevel.TrioToken | None:
    """The token of the trio run of this thread, or None (never imports trio)."""
    module = sys.modules.get("trio")
    if module is None:
        return None
    try:
        token: trio.lowlevel.TrioToken = module.lowlevel.current_trio_token()
    except RuntimeError:
        return None
    return token


async def sleep(seconds: float) -> None:
    """Sleep for real on the running library."""
    if _get_running_loop() is not None:
        await asyncio.sleep(seconds)
        return
    await _trio().sleep(seconds)


async def checkpoint() -> None:
    """Yield to the running library once (a cancellation point)."""
    if _get_running_loop() is not None:
        await asyncio.sleep(0)
        return
    await _trio().lowlevel.checkpoint()


# ---------------------------------------------------------------------------------------------
# Waiter

_PENDING, _WOKEN, _EXPIRED, _CANCELLED = 0, 1, 2, 3
# One lock for every waiter's state: the critical sections are a compare and a store, so
# sharing it costs nothing measurable and saves a lock per waiter.
_state_lock = threading.Lock()


class Waiter:
    """A one-shot wake-up for one waiting task, on asyncio or trio.

    Build it in the task that will wait, with :meth:`new`; hand it to whoever decides
    when that task may go on, who calls :meth:`wake` from any thread (or from the same
    loop). The first of ``wake``, the deadline and a cancellation of the waiting task
    decides, once and for all: :attr:`woken` tells which way it went.

    :meth:`wait` returns True when woken, False when the deadline came first. When the
    waiting task is cancelled the library's own cancellation propagates
    (``asyncio.CancelledError`` with ``task.cancelling()`` untouched, or ``trio.Cancelled``);
    a waker that lost that race gets False from :meth:`wake`, and the cancelled task can
    read :attr:`woken` to learn whether it was woken just before (and so owes, say, a
    bulkhead slot back).
    """

    __slots__ = ("_state", "_thread")

    _state: int
    _thread: int

    @staticmethod
    def new() -> Waiter:
        """A waiter for the calling task, on the library that runs it."""
        loop = _get_running_loop()
        if loop is not None:
            return _AsyncioWaiter(loop)
        _trio()
        return _TrioWaiter()

    @property
    def woken(self) -> bool:
        """Whether :meth:`wake` came first."""
        return self._state == _WOKEN

    @property
    def decided(self) -> bool:
        """Whether the wait is over: woken, expired or cancelled."""
        return self._state != _PENDING

    @property
    def key(self) -> object:
        """The asyncio loop or the trio token of the waiting task."""
        raise NotImplementedError

    def wake(self) -> bool:
        """Let the waiting task go on; True if this call decided, False if something else did first."""
        return self._decide(_WOKEN)

    def _expire(self) -> None:
        self._decide(_EXPIRED)

    def _decide(self, state: int) -> bool:
        with _state_lock:
            if self._state != _PENDING:
                return False
            self._state = state
        if threading.get_ident() == self._thread:
            self._notify()
        else:
            self._notify_from_elsewhere()
        return True

    def _cancelled(self) -> None:
        with _state_lock:
            if self._state == _PENDING:
                self._state = _CANCELLED

    def _notify(self) -> None:
        raise NotImplementedError

    def _notify_from_elsewhere(self) -> None:
        raise NotImplementedError

    async def wait(self, clock: Clock, deadline: float | None = None) -> bool:
        """Wait until woken (True) or until ``clock`` reaches ``deadline`` (False).

        ``deadline`` is on ``clock.monotonic()``; None waits without one. A deadline
        already past still lets a ``wake`` that came before it win.
        """
        raise NotImplementedError


class _AsyncioWaiter(Waiter):
    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._state = _PENDING
        self._thread = threading.get_ident()
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()

    @property
    def key(self) -> object:
        return self._loop

    def _notify(self) -> None:
        future = self._future
        if not future.done():
            # The loop may be closed already (a task left behind by its test): the result
            # is set all the same, only scheduling the waiting task's wake-up fails.
            with contextlib.suppress(RuntimeError):
                future.set_result(None)

    def _notify_from_elsewhere(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to wake
            self._loop.call_soon_threadsafe(self._notify)

    async def wait(self, clock: Clock, deadline: float | None = None) -> bool:
        handle = None if deadline is None else clock.call_at(deadline, self._expire, self._loop)
        try:
            await self._future
        except BaseException:
            self._cancelled()
            raise
        finally:
            if handle is not None:
                handle.cancel()
        return self._state == _WOKEN


class _TrioWaiter(Waiter):
    __slots__ = ("_parked", "_task", "_token")

    def __init__(self) -> None:
        import trio

        self._state = _PENDING
        self._thread = threading.get_ident()
        self._task = trio.lowlevel.current_task()
        self._token = trio.lowlevel.current_trio_token()
        self._parked = False  # only read and written in the trio thread

    @property
    def key(self) -> object:
        return self._token

    def _notify(self) -> None:
        if self._parked:
            self._parked = False
            import trio

            trio.lowlevel.reschedule(self._task)

    def _notify_from_elsewhere(self) -> None:
        import trio

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._notify)

    def _abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
        import trio

        self._parked = False
        self._cancelled()
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self, clock: Clock, deadline: float | None = None) -> bool:
        import trio

        handle = None if deadline is None else clock.call_at(deadline, self._expire)
        try:
            if self._state == _PENDING:
                self._parked = True
                await trio.lowlevel.wait_task_rescheduled(self._abort)
        finally:
            if handle is not None:
                handle.cancel()
        return self._state == _WOKEN


# ---------------------------------------------------------------------------------------------
# Deadline scope


class DeadlineScope:
    """Cancels the code inside it when ``clock`` reaches ``deadline``; see :func:`deadline_scope`."""

    __slots__ = ("_clock", "_deadline", "_handle", "_scope", "_task", "expired")

    def __init__(self, clock: Clock, deadline: float) -> None:
        self._clock = clock
        self._deadline = deadline
        self._handle: TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._scope: trio.CancelScope | None = None
        self.expired = False

    def __enter__(self) -> DeadlineScope:
        loop = _get_running_loop()
        if loop is not None:
            task = asyncio.current_task(loop)
            if task is None:
                raise RuntimeError("a deadline scope must run inside an asyncio task")
            self._task = task
            self._handle = self._clock.call_at(self._deadline, task.cancel, loop)
        else:
            scope = _trio().CancelScope()
            scope.__enter__()
            self._scope = scope
            try:
                self._handle = self._clock.call_at(self._deadline, scope.cancel)
            except BaseException:
                scope.__exit__(*sys.exc_info())
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        handle = self._handle
        assert handle is not None, "the scope was not entered"
        handle.cancel()
        scope = self._scope
        if scope is None:
            # asyncio: our cancellation is ours to take back, an outer one is not.
            task = self._task
            assert task is not None
            if isinstance(exc, asyncio.CancelledError) and handle.fired and task.uncancel() == 0:
                self.expired = True
                return True
            return False
        suppressed = bool(scope.__exit__(exc_type, exc, tb))
        self.expired = scope.cancelled_caught
        return suppressed


def deadline_scope(clock: Clock, deadline: float) -> DeadlineScope:
    """A scope cancelled at ``deadline`` (on ``clock.monotonic()``), on asyncio or trio.

    Use it as ``with deadline_scope(clock, deadline) as scope: await work()``; when the
    deadline cancelled the work, the scope absorbs that cancellation, the ``with`` block
    ends normally and ``scope.expired`` is True. A cancellation from outside always
    propagates. It works with any clock whose ``call_at`` runs under the library
    (the system clock and :class:`~resilience.FakeClock` do).
    """
    return DeadlineScope(clock, deadline)


# ---------------------------------------------------------------------------------------------
# The system clock's timers under trio


class _TrioTimer:
    __slots__ = ("_entries", "callback", "deadline", "fired")

    def __init__(self, entries: dict[_TrioTimer, None], deadline: float, callback: Callable[[], object]) -> None:
        self._entries = entries
        self.deadline = deadline
        self.callback = callback
        self.fired = False

    def cancel(self) -> None:
        self._entries.pop(self, None)


class _TrioTimers:
    """All of one trio run's ``SYSTEM_CLOCK.call_at`` timers, run by one system task.

    The task sleeps in a cancel scope whose deadline is the earliest timer's (converted
    from ``time.monotonic()`` to trio's clock); an earlier timer moves that deadline.
    Everything happens in the trio thread, so no lock is needed.
    """

    __slots__ = ("armed_at", "entries", "scope", "token")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.entries: dict[_TrioTimer, None] = {}
        self.scope: trio.CancelScope | None = None
        self.armed_at = math.inf

    def add(self, deadline: float, callback: Callable[[], object]) -> _TrioTimer:
        timer = _TrioTimer(self.entries, deadline, callback)
        self.entries[timer] = None
        if deadline < self.armed_at:
            self.armed_at = deadline
            if self.scope is not None:
                self.scope.deadline = _to_trio_time(deadline)
        return timer

    async def run(self) -> None:
        import trio

        try:
            while True:
                with trio.CancelScope(deadline=_to_trio_time(self.armed_at)) as scope:
                    self.scope = scope
                    await trio.sleep_forever()
                self.scope = None
                now = time.monotonic()
                due = [t for t in self.entries if t.deadline <= now]
                for timer in due:
                    del self.entries[timer]
                self.armed_at = min((t.deadline for t in self.entries), default=math.inf)
                for timer in due:
                    timer.fired = True
                    try:
                        timer.callback()
                    except Exception:  # a callback's failure must not stop the others
                        _log.exception("resilience timer callback failed")
        finally:
            if _trio_timers.get(self.token) is self:
                del _trio_timers[self.token]


def _to_trio_time(deadline: float) -> float:
    if math.isinf(deadline):
        return math.inf
    import trio

    current: float = trio.current_time()
    return current + (deadline - time.monotonic())


_trio_timers: dict[trio.lowlevel.TrioToken, _TrioTimers] = {}


def trio_call_at(deadline: float, callback: Callable[[], object]) -> TimerHandle:
    """Run ``callback`` in the current trio run when ``time.monotonic()`` reaches ``deadline``.

    Raises:
        RuntimeError: outside a trio run (or inside neither asyncio nor trio).
    """
    trio = _trio()
    token = trio.lowlevel.current_trio_token()
    timers = _trio_timers.get(token)
    if timers is None:
        timers = _trio_timers[token] = _TrioTimers(token)
        trio.lowlevel.spawn_system_task(timers.run, name="resilience timers")
    return timers.add(deadline, callback)
