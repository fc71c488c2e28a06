"""The fake clock for tests: sleepers wake at their own deadlines (see :class:`FakeClock`)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import threading
import time
import weakref
from asyncio.events import _get_running_loop
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from . import _aio
from .clock import TimerHandle

if TYPE_CHECKING:
    import trio

__all__ = ["FakeClock"]

_log = logging.getLogger("resilience")


class FakeClock:
    """A manual clock for tests, whose sleepers wake at their own deadlines.

    Time moves through :meth:`advance`, and by itself when everything that could run is
    waiting on this clock: sleeps cost no real time, yet concurrent sleepers overlap as
    they would in real time. Ten tasks that each ``await clock.asleep(1)`` at once all wake
    at ``t == 1``; tasks sleeping 1, 2 and 3 wake in that order, each reading exactly its
    own deadline from :meth:`monotonic`. A retry schedule with minutes of backoff runs in
    microseconds. (trio's ``MockClock(autojump_threshold=0)`` behaves the same way.)

    How time jumps. Every sleeper registers its deadline; :meth:`call_at` timers (async
    timeouts, bounded waits, hedge delays) register theirs in the same order. While at
    least one sleeper is pending and nothing else can run, time jumps to the earliest
    pending deadline, sleeper or timer, and wakes or fires what is due there; then it waits
    until nothing can run again before the next jump. Timers alone never move time (only
    :meth:`advance` does), so a timeout around real I/O does not fire early.

    - **asyncio**: "nothing can run" means the sleeper's event loop has no other ready
      callback (a loop without a ``_ready`` queue is given a few turns instead).
    - **trio**: a system task waits in ``trio.testing.wait_all_tasks_blocked()``.
    - **threads** (:meth:`sleep`): time jumps at once when every live thread is asleep
      on this clock (daemon threads already running when the clock was made, and that
      never slept on it, are not counted), else after ``autojump_threshold`` real seconds
      in which nothing happened on the clock (no new sleep, jump or advance). A thread
      that sleeps while no other thread runs therefore returns at once.

    A task sleeping past its own timeout is cancelled at the timeout's deadline and time
    stops there. A cancelled sleeper leaves the clock. :meth:`advance` fires timers and
    wakes sleepers whose deadlines it passes, in deadline order.

    A timer fires in the thread of the event loop that scheduled it (handed over with
    ``call_soon_threadsafe`` or trio's ``run_sync_soon`` when time moves in another
    thread). Every requested sleep is recorded in :attr:`sleeps`. The clock is
    thread-safe.

    Args:
        start: the initial monotonic time, in seconds (default ``0.0``).
        wall_start: the initial wall-clock time, seconds since the epoch
            (default ``1_700_000_000.0``).
        autojump_threshold: for sleeping threads, the real seconds without activity on
            the clock after which time jumps although some thread is not asleep on it;
            finite, >= 0 (default ``0.002``). Raise it when threads start sleeping at
            irregular moments (a slow machine) and must still overlap.
    """

    def __init__(
        self, start: float = 0.0, *, wall_start: float = 1_700_000_000.0, autojump_threshold: float = 0.002
    ) -> None:
        threshold = float(autojump_threshold)
        if not (threshold >= 0 and math.isfinite(threshold)):
            raise ValueError(f"autojump_threshold must be a finite number of seconds >= 0, got {autojump_threshold!r}")
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _FakeTimer | _Sleeper]] = []
        self._seq = 0
        self.sleeps: list[float] = []
        self._threshold = threshold
        self._thread_sleepers = 0
        self._task_sleepers: dict[object, int] = {}  # pending task sleepers per asyncio loop / trio run
        self._drivers: set[object] = set()  # loops and trio runs whose jumper is running
        self._jumping = False  # a sleeping thread is firing a jump's timers outside the lock
        self._activity = time.perf_counter()
        self._foreign: weakref.WeakSet[threading.Thread] = weakref.WeakSet(t for t in threading.enumerate() if t.daemon)
        self._participants: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0), firing timers and waking sleepers on the way."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        target = self._now + seconds
        while True:
            with self._cond:
                due = self._pop_due_locked(target)
                if due is None:
                    self._now = max(self._now, target)
                    self._activity = time.perf_counter()
                    return
            self._deliver(due)

    def sleep(self, seconds: float) -> None:
        """Record the sleep and block until time reaches its end (see the class docstring)."""
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        if seconds == 0:
            return
        me = threading.current_thread()
        cond = self._cond
        with cond:
            entry = _Sleeper(self._now + seconds, None, None)
            self._push_locked(entry)
            self._thread_sleepers += 1
            if me.daemon:
                self._participants.add(me)
            self._activity = time.perf_counter()
            cond.notify_all()  # other sleeping threads: maybe every thread is asleep now
            try:
                while entry.pending:
                    if self._jumping:
                        cond.wait(_POLL)
                        continue
                    idle = time.perf_counter() - self._activity
                    if idle >= self._threshold or self._all_threads_asleep_locked():
                        self._jump_locked()
                    else:
                        # A thread that ends wakes nobody: look again now and then.
                        cond.wait(min(self._threshold - idle, _POLL))
            except BaseException:
                if entry.pending:
                    self._remove_locked(entry)
                raise

    async def asleep(self, seconds: float) -> None:
        """Record the sleep and wait until time reaches its end, on asyncio or trio."""
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        if seconds == 0:
            await _aio.checkpoint()
            return
        waiter = _aio.Waiter.new()
        key = waiter.key
        with self._cond:
            entry = _Sleeper(self._now + seconds, waiter, key)
            self._push_locked(entry)
            sleepers = self._task_sleepers
            sleepers[key] = sleepers.get(key, 0) + 1
            start = key not in self._drivers
            if start:
                self._drivers.add(key)
            self._activity = time.perf_counter()
        if start:
            if isinstance(key, asyncio.AbstractEventLoop):
                key.call_soon(self._asyncio_jumper, key, 0)
            else:
                import trio

                trio.lowlevel.spawn_system_task(self._trio_jumper, key, name="resilience FakeClock")
        try:
            await waiter.wait(self)
        except BaseException:
            with self._cond:
                if entry.pending:
                    self._remove_locked(entry)
            raise

    def call_at(
        self, deadline: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None
    ) -> TimerHandle:
        """Schedule ``callback`` for when fake time reaches ``deadline``.

        It runs when time gets there (by :meth:`advance` or a jump), in the thread of the
        asyncio loop or trio run that scheduled it; a deadline already past runs on the
        next turn of that loop (at once when no loop runs).
        """
        if loop is None:
            loop = _get_running_loop()
        token = _aio.trio_token() if loop is None else None
        timer = _FakeTimer(deadline, callback, loop, token)
        with self._cond:
            expired = deadline <= self._now
            if not expired:
                self._push_locked(timer)
        if expired:
            if loop is not None:
                loop.call_soon(timer.fire)
            elif token is not None:
                token.run_sync_soon(timer.fire_logged)
            else:
                timer.fire()
        return timer

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"

    # -- the waiting machinery; every *_locked method runs with self._cond held --

    def _push_locked(self, entry: _FakeTimer | _Sleeper) -> None:
        self._seq += 1
        entry.item = item = (entry.deadline, self._seq, entry)
        heapq.heappush(self._heap, item)

    def _remove_locked(self, sleeper: _Sleeper) -> None:
        """Take back a sleeper that will not wait any more (cancelled)."""
        heap = self._heap
        assert sleeper.item is not None
        heap.remove(sleeper.item)
        heapq.heapify(heap)
        self._forget_locked(sleeper)

    def _forget_locked(self, sleeper: _Sleeper) -> None:
        sleeper.pending = False
        key = sleeper.key
        if key is None:
            self._thread_sleepers -= 1
            self._cond.notify_all()
        else:
            left = self._task_sleepers[key] - 1
            if left:
                self._task_sleepers[key] = left
            else:
                del self._task_sleepers[key]

    def _pop_due_locked(self, limit: float) -> list[_FakeTimer | _Sleeper] | None:
        """Move time to the earliest live deadline if it is <= ``limit``, taking what is due there."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        if not heap or heap[0][0] > limit:
            return None
        when = heap[0][0]
        if when > self._now:
            self._now = when
        due: list[_FakeTimer | _Sleeper] = []
        while heap and heap[0][0] == when:
            entry = heapq.heappop(heap)[2]
            if entry.cancelled:
                continue
            if isinstance(entry, _Sleeper):
                self._forget_locked(entry)
                if entry.waiter is None:
                    continue  # a thread: _forget_locked has woken it
            due.append(entry)
        return due

    def _deliver(self, due: list[_FakeTimer | _Sleeper]) -> None:
        """Wake the due task sleepers and fire the due timers, in order; outside the lock."""
        error: BaseException | None = None
        for entry in due:
            try:
                entry.deliver()
            except Exception as exc:  # the others still run; the first failure is raised after
                if error is None:
                    error = exc
        if error is not None:
            raise error

    def _jump_locked(self) -> None:
        due = self._pop_due_locked(math.inf)
        self._activity = time.perf_counter()
        if not due:
            return
        self._jumping = True
        self._cond.release()
        try:
            self._deliver(due)
        finally:
            self._cond.acquire()
            self._jumping = False
            self._activity = time.perf_counter()
            self._cond.notify_all()

    def _all_threads_asleep_locked(self) -> bool:
        sleepers = self._thread_sleepers
        if threading.active_count() <= sleepers:
            return True
        if not self._foreign:
            return False
        counted = 0
        for thread in threading.enumerate():
            if thread.daemon and thread in self._foreign and thread not in self._participants:
                continue
            counted += 1
            if counted > sleepers:
                return False
        return True

    def _asyncio_jumper(self, loop: asyncio.AbstractEventLoop, hops: int) -> None:
        ready = getattr(loop, "_ready", None)
        if ready is not None:
            if ready and not _only_jumpers(ready):  # something else can run: look again after it
                loop.call_soon(self._asyncio_jumper, loop, 0)
                return
        elif hops < _BLIND_HOPS:
            loop.call_soon(self._asyncio_jumper, loop, hops + 1)
            return
        with self._cond:
            if not self._task_sleepers.get(loop):
                self._drivers.discard(loop)
                return
            due = self._pop_due_locked(math.inf)
            self._activity = time.perf_counter()
        loop.call_soon(self._asyncio_jumper, loop, 0)  # the next jump, once what wakes now has run
        if due:
            try:
                self._deliver(due)
            except Exception as exc:
                loop.call_exception_handler({"message": "FakeClock timer callback failed", "exception": exc})

    async def _trio_jumper(self, token: object) -> None:
        import trio.testing

        try:
            while True:
                with self._cond:
                    if not self._task_sleepers.get(token):
                        return
                await trio.testing.wait_all_tasks_blocked()
                with self._cond:
                    due = self._pop_due_locked(math.inf) if self._task_sleepers.get(token) else None
                    self._activity = time.perf_counter()
                if due:
                    try:
                        self._deliver(due)
                    except Exception:
                        _log.exception("FakeClock timer callback failed")
        finally:
            with self._cond:
                self._drivers.discard(token)


def _only_jumpers(ready: Iterable[object]) -> bool:
    """Whether a loop's ready queue holds nothing but FakeClock jumpers (of other clocks).

    Two clocks with sleepers on one loop would otherwise each see the other's jumper and
    wait for it forever. The scan stops at the first other callback, mostly the first one.
    """
    return all(getattr(getattr(handle, "_callback", None), "__func__", None) is _JUMPER for handle in ready)


_JUMPER = FakeClock._asyncio_jumper
# A loop without a visible ready queue (uvloop...) gets this many turns before time jumps.
_BLIND_HOPS = 8
# How often (real seconds, at most) a sleeping thread checks whether all threads are asleep.
_POLL = 0.001


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "deadline", "fired", "item", "loop", "thread", "token")

    def __init__(
        self,
        deadline: float,
        callback: Callable[[], object],
        loop: asyncio.AbstractEventLoop | None,
        token: trio.lowlevel.TrioToken | None,
    ) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self.fired = False
        self.loop = loop
        self.token = token
        self.thread = threading.get_ident()
        self.item: tuple[float, int, _FakeTimer | _Sleeper] | None = None

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.fired = True
            self.callback()

    def deliver(self) -> None:
        """Fire now if time moved in the scheduling thread, else hand the firing to its loop."""
        if self.cancelled:
            return
        if self.thread == threading.get_ident() or (self.loop is None and self.token is None):
            self.fire()
        elif self.loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to fire for
                self.loop.call_soon_threadsafe(self.fire)
        else:
            assert self.token is not None
            import trio

            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self.fire_logged)

    def fire_logged(self) -> None:
        """:meth:`fire` for trio's ``run_sync_soon``, where a raising callback would crash the run."""
        try:
            self.fire()
        except Exception:
            _log.exception("FakeClock timer callback failed")


class _Sleeper:
    """A pending sleep: a task's (with its waiter and its loop or trio token) or a thread's."""

    __slots__ = ("deadline", "item", "key", "pending", "waiter")

    cancelled = False  # sleepers leave the heap when cancelled; only timers are dropped lazily

    def __init__(self, deadline: float, waiter: _aio.Waiter | None, key: object) -> None:
        self.deadline = deadline
        self.waiter = waiter
        self.key = key
        self.pending = True
        self.item: tuple[float, int, _FakeTimer | _Sleeper] | None = None

    def deliver(self) -> None:
        assert self.waiter is not None
        self.waiter.wake()
