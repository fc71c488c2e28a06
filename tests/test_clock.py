from __future__ import annotations

import asyncio

import pytest

from resilience import SYSTEM_CLOCK, Clock, FakeClock


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
    SYSTEM_CLOCK.call_at(now + 0.06, lambda: (order.append(3), finished.set_result(None)))
    SYSTEM_CLOCK.call_at(now + 0.04, lambda: order.append(2))
    SYSTEM_CLOCK.call_at(now + 0.02, lambda: order.append(1))
    await asyncio.wait_for(finished, 5)
    assert order == [1, 2, 3]
