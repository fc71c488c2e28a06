"""Time sources.

Policies never read the time or sleep by themselves: they ask a :class:`Clock`.
:data:`SYSTEM_CLOCK` is the real one; :class:`FakeClock` is a manual clock whose
sleeps cost no real time, for the library's tests and for users' own. Both work
under asyncio and trio (the small shim in :mod:`resilience._aio` picks the library).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
import weakref
from asyncio.events import _get_running_loop
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from . import _aio

if TYPE_CHECKING:
    pass

__all__ = ["Clock", "FakeClock", "SystemClock", "TimerHandle"]

_log = logging.getLogger("resilience")


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

        Must be called from a running asyncio loop (``loop``, when the caller has it at
        hand) or from a trio task; the returned handle's ``cancel()`` takes the callback
        back. Async timeouts and bounded waits are built on this.
        """
        ...


class TimerHandle(Protocol):
    """What :meth:`Clock.call_at` returns: ``fired`` tells whether the callback ran."""

    fired: bool

    def cancel(self) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time``, real sleeps and timers (asyncio or trio)."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)
    sleep = staticmethod(time.sleep)

    async def asleep(self, seconds: float) -> None:
        if _get_running_loop() is None:
            await _aio.sleep(seconds)  # trio
            return
        await asyncio.sleep(seconds)

    def call_at(
        self, deadline: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None
    ) -> TimerHandle:
        global _last_timers
        if loop is None:
            loop = _get_running_loop()
            if loop is None:
                return _aio.trio_call_at(deadline, callback)
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


# The fake clock lives in a room of its own; it is reachable from here as it always was.
from .fake_clock import FakeClock  # noqa: E402
