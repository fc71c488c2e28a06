from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest
import sniffio
import trio

from resilience import Clock, DeadlineExceededError, FakeClock, Pipeline, Timeout
from resilience.clock import SYSTEM_CLOCK


def test_fake_clock_advances_only_when_told() -> None:
    clock = FakeClock(start=5.0, wall_start=1000.0)
    assert clock.monotonic() == 5.0
    assert clock.wall() == 1000.0
    clock.advance(2.5)
    assert clock.monotonic() == 7.5
    assert clock.wall() == 1002.5
    clock.sleep(1.0)
    assert clock.monotonic() == 8.5
    assert clock.sleeps == [1.0]


def test_fake_clock_rejects_going_back() -> None:
    with pytest.raises(ValueError, match="seconds must be >= 0, got -1"):
        FakeClock().advance(-1)


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(FakeClock(), Clock)
    assert isinstance(SYSTEM_CLOCK, Clock)


async def test_fake_call_at_fires_in_order_when_time_passes() -> None:
    clock = FakeClock()
    fired: list[str] = []
    clock.call_at(3.0, lambda: fired.append("c"))
    clock.call_at(1.0, lambda: fired.append("a"))
    cancelled = clock.call_at(2.0, lambda: fired.append("b"))
    cancelled.cancel()
    clock.advance(1.5)
    assert fired == ["a"]
    await clock.asleep(10)
    assert fired == ["a", "c"]
    assert clock.monotonic() == 11.5


async def test_fake_asleep_is_cut_at_a_timer_that_cancels_it() -> None:
    clock = FakeClock()

    async def sleeper() -> None:
        await clock.asleep(100)

    task = asyncio.ensure_future(sleeper())
    await asyncio.sleep(0)  # the task is now parked in asleep's final yield
    clock.call_at(clock.monotonic() + 4, task.cancel)
    clock.advance(4)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.monotonic() >= 4


async def test_fake_asleep_stops_time_at_the_deadline_of_its_own_cancellation() -> None:
    clock = FakeClock()

    async def sleeper() -> None:
        current = asyncio.current_task()
        assert current is not None
        clock.call_at(2.0, current.cancel)
        await clock.asleep(50)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(sleeper())
    assert clock.monotonic() == 2.0


async def test_system_clock_call_at_fires_and_cancels() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    skipped: list[int] = []
    handle = SYSTEM_CLOCK.call_at(SYSTEM_CLOCK.monotonic() + 0.01, lambda: skipped.append(1))
    handle.cancel()
    SYSTEM_CLOCK.call_at(SYSTEM_CLOCK.monotonic() + 0.02, lambda: done.set_result("fired"))
    assert await asyncio.wait_for(done, 5) == "fired"
    assert skipped == []


async def test_system_clock_timers_fire_earliest_first_whatever_the_order_added() -> None:
    loop = asyncio.get_running_loop()
    order: list[int] = []
    finished: asyncio.Future[None] = loop.create_future()
    now = SYSTEM_CLOCK.monotonic()

    def last() -> None:
        order.append(3)
        finished.set_result(None)

    SYSTEM_CLOCK.call_at(now + 0.06, last)
    SYSTEM_CLOCK.call_at(now + 0.04, lambda: order.append(2))
    SYSTEM_CLOCK.call_at(now + 0.02, lambda: order.append(1))
    await asyncio.wait_for(finished, 5)
    assert order == [1, 2, 3]


# -- sleepers wake at their own deadlines, on asyncio, trio and threads --------------------------
# Trio tests are plain functions that start the library themselves: pytest-asyncio's auto mode
# would otherwise run every ``async def`` test on asyncio, trio parameter or not.


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_on(backend: str, body: Callable[[], Awaitable[None]]) -> None:
    async def checked() -> None:
        assert sniffio.current_async_library() == backend
        await body()

    anyio.run(checked, backend=backend)


def test_ten_concurrent_sleepers_all_wake_at_their_common_deadline(anyio_backend: str) -> None:
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.asleep(1)
        woke.append(clock.monotonic())

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(sleeper)

    run_on(anyio_backend, body)
    assert woke == [1.0] * 10
    assert clock.monotonic() == 1.0
    assert clock.sleeps == [1.0] * 10


def test_sleepers_wake_in_deadline_order_each_at_its_own_deadline(anyio_backend: str) -> None:
    clock = FakeClock(start=10.0)
    woke: list[tuple[float, float]] = []

    async def sleeper(seconds: float) -> None:
        await clock.asleep(seconds)
        woke.append((seconds, clock.monotonic()))

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            for seconds in (3, 1, 2):
                tg.start_soon(sleeper, seconds)

    run_on(anyio_backend, body)
    assert woke == [(1, 11.0), (2, 12.0), (3, 13.0)]


def test_time_does_not_jump_while_another_task_can_run(anyio_backend: str) -> None:
    clock = FakeClock()
    seen_while_busy: list[float] = []
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.asleep(1)
        woke.append(clock.monotonic())

    async def busy() -> None:
        for _ in range(200):
            seen_while_busy.append(clock.monotonic())
            await anyio.lowlevel.checkpoint()

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            tg.start_soon(busy)

    run_on(anyio_backend, body)
    assert set(seen_while_busy) == {0.0}
    assert woke == [1.0]


def test_two_clocks_sleeping_in_one_loop_each_keep_their_own_time(anyio_backend: str) -> None:
    first, second = FakeClock(), FakeClock(start=100.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, clock: FakeClock, seconds: float) -> None:
        await clock.asleep(seconds)
        woke.append((name, clock.monotonic()))

    async def body() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper, "first", first, 2)
                tg.start_soon(sleeper, "second", second, 1)

    run_on(anyio_backend, body)
    assert sorted(woke) == [("first", 2.0), ("second", 101.0)]


def test_timers_on_the_way_fire_in_deadline_order_and_see_their_own_time(anyio_backend: str) -> None:
    clock = FakeClock()
    fired: list[tuple[str, float]] = []

    async def body() -> None:
        clock.call_at(2.0, lambda: fired.append(("b", clock.monotonic())))
        clock.call_at(0.5, lambda: fired.append(("a", clock.monotonic())))
        clock.call_at(9.0, lambda: fired.append(("late", clock.monotonic())))
        await clock.asleep(3)

    run_on(anyio_backend, body)
    assert fired == [("a", 0.5), ("b", 2.0)]
    assert clock.monotonic() == 3.0


def test_advance_wakes_task_sleepers_whose_deadline_it_passes(anyio_backend: str) -> None:
    clock = FakeClock()
    events: list[tuple[str, float]] = []

    async def sleeper() -> None:
        events.append(("asleep", clock.monotonic()))
        await clock.asleep(5)  # registers before its first yield
        events.append(("woke", clock.monotonic()))

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            while not events:
                await anyio.lowlevel.checkpoint()  # busy: no jump while we run
            clock.advance(2)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            events.append(("advanced", clock.monotonic()))
            clock.advance(4)

    run_on(anyio_backend, body)
    assert events == [("asleep", 0.0), ("advanced", 2.0), ("woke", 6.0)]


def test_a_cancelled_sleeper_leaves_the_clock(anyio_backend: str) -> None:
    clock = FakeClock()
    after: list[float] = []

    async def body() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(clock.asleep, 100)
                await anyio.lowlevel.checkpoint()
                await anyio.lowlevel.checkpoint()
                scope.cancel()
        assert scope.cancelled_caught
        # A sleeper left behind would let time jump to 100 as soon as this task idles.
        await anyio.sleep(0.01)
        after.append(clock.monotonic())
        await clock.asleep(1)
        after.append(clock.monotonic())

    run_on(anyio_backend, body)
    assert after == [0.0, 1.0]
    assert clock.sleeps == [100.0, 1.0]


def test_a_timeout_cancels_its_sleeper_at_its_deadline_and_time_stops_there(anyio_backend: str) -> None:
    clock = FakeClock()
    cancelled_at: list[float] = []

    async def slow() -> None:
        try:
            await clock.asleep(60)
        except BaseException:
            cancelled_at.append(clock.monotonic())
            raise

    async def body() -> None:
        with pytest.raises(DeadlineExceededError):
            await Pipeline(Timeout(1.5), clock=clock).acall(slow)
        await anyio.sleep(0.01)  # idle: nothing may move time any more

    run_on(anyio_backend, body)
    assert cancelled_at == [1.5]
    assert clock.monotonic() == 1.5


def test_ten_threads_sleeping_at_once_all_wake_at_their_deadline() -> None:
    # The main thread only joins: time jumps once no thread sleeps anew for the threshold
    # (generous here, so that a slow machine starting the threads still overlaps them).
    clock = FakeClock(autojump_threshold=0.5)
    woke: list[float] = []
    barrier = threading.Barrier(10)

    def sleeper() -> None:
        barrier.wait()
        clock.sleep(1)
        woke.append(clock.monotonic())

    threads = [threading.Thread(target=sleeper) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert woke == [1.0] * 10
    assert clock.monotonic() == 1.0


def test_threads_wake_in_deadline_order_once_every_thread_is_asleep() -> None:
    # Every thread, the main one included, sleeps on the clock: each jump needs no grace,
    # and the threshold is long enough that only that rule can move time in time.
    clock = FakeClock(autojump_threshold=30)
    woke: list[tuple[float, float]] = []

    def sleeper(seconds: float) -> None:
        clock.sleep(seconds)
        woke.append((seconds, clock.monotonic()))

    threads = [threading.Thread(target=sleeper, args=(s,)) for s in (3, 1, 2, 1, 1)]
    for thread in threads:
        thread.start()
    sleeper(4)
    for thread in threads:
        thread.join(60)
    assert woke == [(1, 1.0), (1, 1.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_a_sleeping_thread_is_woken_by_a_timeout_of_a_task_on_the_same_clock() -> None:
    # Threads and tasks share one time line: the thread's sleep lets the task's timeout fire.
    clock = FakeClock()

    async def body() -> None:
        async def forever() -> None:
            await anyio.sleep_forever()

        with pytest.raises(DeadlineExceededError):
            await Pipeline(Timeout(2), clock=clock).acall(forever)

    def in_thread() -> None:
        anyio.run(body)

    thread = threading.Thread(target=in_thread)
    thread.start()
    while thread.is_alive():
        clock.sleep(0.5)
    thread.join()
    assert clock.monotonic() >= 2.0


def test_fake_clock_rejects_a_bad_autojump_threshold() -> None:
    with pytest.raises(ValueError, match="autojump_threshold must be a finite number of seconds >= 0, got -1"):
        FakeClock(autojump_threshold=-1)
    with pytest.raises(ValueError, match="got inf"):
        FakeClock(autojump_threshold=float("inf"))


# -- the system clock under trio ------------------------------------------------------------------


def test_system_clock_sleeps_and_timers_work_under_trio() -> None:
    order: list[int] = []

    async def body() -> None:
        done = trio.Event()
        now = SYSTEM_CLOCK.monotonic()
        skipped = SYSTEM_CLOCK.call_at(now + 0.01, lambda: order.append(0))
        skipped.cancel()

        def last() -> None:
            order.append(3)
            done.set()

        SYSTEM_CLOCK.call_at(now + 0.04, last)
        late = SYSTEM_CLOCK.call_at(now + 0.03, lambda: order.append(2))
        SYSTEM_CLOCK.call_at(now + 0.02, lambda: order.append(1))
        await SYSTEM_CLOCK.asleep(0.001)
        with trio.fail_after(5):
            await done.wait()
        assert late.fired and not skipped.fired

    trio.run(body)
    assert order == [1, 2, 3]
