"""Time sources.

Policies never read the time or sleep by themselves: they ask a :class:`Clock`.
:data:`SYSTEM_CLOCK` is the real one; :class:`FakeClock` is a manual clock whose
sleeps advance time instead of waiting, for the library's tests and for users' own.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "TimerHandle"]


@runtime_checkable
class Clock(Protocol):
    """What policies need of time.

    ``monotonic()`` is in seconds from an arbitrary origin and never goes back;
    ``wall()`` is seconds since the epoch (only used to read HTTP dates).
    """

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...

    def call_at(
        self, deadline: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None
    ) -> TimerHandle:
        """Run ``callback`` in the running event loop at ``deadline`` (on ``monotonic()``).

        Must be called from a running event loop (``loop``, when the caller has it at
        hand); the returned handle's ``cancel()`` takes the callback back. Async timeouts
        and bounded waits are built on this.
        """
        ...


class TimerHandle(Protocol):
    """What :meth:`Clock.call_at` returns: ``fired`` tells whether the callback ran."""

    fired: bool

    def cancel(self) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time``, real sleeps and asyncio timeouts."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)
    sleep = staticmethod(time.sleep)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_at(
        self, deadline: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None
    ) -> TimerHandle:
        global _last_timers
        if loop is None:
            loop = asyncio.get_running_loop()
        timers = _last_timers
        if timers is None or timers.loop is not loop:
            timers = _loop_timers.get(loop)
            if timers is None:
                timers = _loop_timers[loop] = _LoopTimers(loop)
            _last_timers = timers
        return timers.add(deadline, callback)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()


class FakeClock:
    """A manual clock for tests.

    Time only moves through :meth:`advance`, :meth:`sleep` and :meth:`asleep`; both
    sleeps return at once after moving time forward by the requested amount, so a
    test of a retry schedule with minutes of backoff runs in microseconds.

    Callbacks scheduled with :meth:`call_at` (async timeouts, bounded waits) run when
    fake time reaches their deadline: a task sleeping on this clock past its timeout is
    cancelled at the deadline, and time stops there.

    Every sleep is recorded in :attr:`sleeps`. The clock is thread-safe.

    Args:
        start: the initial monotonic time, in seconds (default ``0.0``).
        wall_start: the initial wall-clock time, seconds since the epoch
            (default ``1_700_000_000.0``).
    """

    def __init__(self, start: float = 0.0, *, wall_start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = 0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0), firing any async timeouts passed on the way."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        target = self._now + seconds
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > target:
                    self._now = max(self._now, target)
                    return
                when, _, timer = heapq.heappop(self._timers)
                self._now = max(self._now, when)
            timer.fire()

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance time by ``seconds`` without waiting."""
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """Record the sleep, advance time (firing timeouts) and yield to the event loop once."""
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        task = asyncio.current_task()
        target = self._now + seconds
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > target:
                    self._now = max(self._now, target)
                    break
                when, _, timer = heapq.heappop(self._timers)
                self._now = max(self._now, when)
            timer.fire()
            if task is not None and task.cancelling():
                break  # this very sleep is being cancelled: time stops at the deadline
        await asyncio.sleep(0)

    def call_at(
        self, deadline: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None
    ) -> TimerHandle:
        """Schedule ``callback`` for when fake time reaches ``deadline``.

        It runs inside :meth:`advance` or :meth:`sleep`/:meth:`asleep`, at once if the
        deadline has passed already (on the next turn of the event loop when one runs).
        """
        timer = _FakeTimer(deadline, callback)
        with self._lock:
            expired = deadline <= self._now
            if not expired:
                self._seq += 1
                heapq.heappush(self._timers, (deadline, self._seq, timer))
        if expired:
            try:
                asyncio.get_running_loop().call_soon(timer.fire)
            except RuntimeError:
                timer.fire()
        return timer

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "deadline", "fired")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.fired = True
            self.callback()


class _Timer:
    """A pending deadline of a :class:`_LoopTimers`; built by ``add`` without ``__init__``."""

    __slots__ = ("_entries", "callback", "deadline", "fired")

    _entries: dict[_Timer, None]
    callback: Callable[[], object]
    deadline: float
    fired: bool

    def cancel(self) -> None:
        self._entries.pop(self, None)


_new_timer = object.__new__


class _LoopTimers:
    """All of one loop's pending deadlines behind a single loop timer.

    ``loop.call_at`` plus ``cancel`` costs about 2 µs per call and leaves cancelled handles
    in the loop's heap; a timeout that almost never fires deserves less. Entries sit in a
    dict (add and remove are O(1)); one loop timer is armed at the earliest deadline known
    when it was armed and, when it runs, fires what is due and re-arms itself.
    """

    __slots__ = ("armed_at", "entries", "handle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entries: dict[_Timer, None] = {}
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = math.inf

    def add(self, deadline: float, callback: Callable[[], object]) -> _Timer:
        # Every async Timeout passes here: built field by field, without an __init__ frame.
        timer: _Timer = _new_timer(_Timer)
        timer._entries = entries = self.entries
        timer.deadline = deadline
        timer.callback = callback
        timer.fired = False
        entries[timer] = None
        if deadline < self.armed_at:
            self._arm(deadline)
        return timer

    def _arm(self, deadline: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed_at = deadline
        loop = self.loop
        self.handle = loop.call_at(loop.time() + (deadline - time.monotonic()), self._run)

    def _run(self) -> None:
        self.handle = None
        self.armed_at = math.inf
        now = time.monotonic()
        due = [t for t in self.entries if t.deadline <= now]
        for timer in due:
            del self.entries[timer]
        nearest = min((t.deadline for t in self.entries), default=math.inf)
        if nearest != math.inf:
            self._arm(nearest)
        for timer in due:
            timer.fired = True
            try:
                timer.callback()
            except Exception:  # a callback's failure must not stop the others
                context = {"message": "resilience timer callback failed", "exception": sys.exc_info()[1]}
                self.loop.call_exception_handler(context)


_loop_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopTimers] = weakref.WeakKeyDictionary()
# The loop used last, checked before the weak dictionary (whose lookup costs a weakref).
# It holds its loop strongly until another loop takes its place; a closed loop kept here
# only costs memory, and the next loop replaces it.
_last_timers: _LoopTimers | None = None
