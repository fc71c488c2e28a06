"""The async shim (``resilience._aio``) and policies under trio as well as asyncio.

Tests that must run on trio are plain functions that start the library themselves:
pytest-asyncio's auto mode would run every ``async def`` test on asyncio.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest
import sniffio
import trio

from resilience import Constant, FakeClock, Pipeline, Retry, _aio
from resilience.clock import SYSTEM_CLOCK


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_on(backend: str, body: Callable[[], Awaitable[None]]) -> None:
    async def checked() -> None:
        assert sniffio.current_async_library() == backend
        await body()

    anyio.run(checked, backend=backend)


class Flaky:
    """Fails ``failures`` times with ConnectionError, then answers ``"ok"``; notes each call's time."""

    def __init__(self, clock: FakeClock | None, failures: int) -> None:
        self.clock = clock
        self.failures = failures
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(self.clock.monotonic() if self.clock is not None else 0.0)
        if len(self.calls) <= self.failures:
            raise ConnectionError("down")
        return "ok"


# -- library detection, sleep, checkpoint -----------------------------------------------------------


def test_current_library_names_the_running_one(anyio_backend: str) -> None:
    seen: list[object] = []

    async def body() -> None:
        seen.append(_aio.current_library())
        seen.append(_aio.running_asyncio_loop() is not None)

    run_on(anyio_backend, body)
    assert seen == [anyio_backend, anyio_backend == "asyncio"]


def test_current_library_outside_any_says_so() -> None:
    assert _aio.running_asyncio_loop() is None
    with pytest.raises(RuntimeError, match="no running asyncio event loop or trio run"):
        _aio.current_library()


def test_sleep_and_checkpoint_run_on_either_library(anyio_backend: str) -> None:
    done: list[str] = []

    async def body() -> None:
        await _aio.checkpoint()
        await _aio.sleep(0.001)
        done.append("slept")

    run_on(anyio_backend, body)
    assert done == ["slept"]


def test_checkpoint_lets_another_task_run(anyio_backend: str) -> None:
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            order.append("before")
            for _ in range(3):
                await _aio.checkpoint()
            order.append("after")

    run_on(anyio_backend, body)
    assert order == ["before", "other", "after"]


# -- Waiter -----------------------------------------------------------------------------------------


def test_waiter_woken_by_another_task(anyio_backend: str) -> None:
    results: list[object] = []

    async def body() -> None:
        waiter = _aio.Waiter.new()

        async def waker() -> None:
            results.append(waiter.wake())
            results.append(waiter.wake())  # idempotent: the second call decides nothing

        async with anyio.create_task_group() as tg:
            tg.start_soon(waker)
            results.append(await waiter.wait(SYSTEM_CLOCK))
        results.append(waiter.woken)

    run_on(anyio_backend, body)
    assert results == [True, False, True, True]


def test_waiter_woken_from_another_thread(anyio_backend: str) -> None:
    results: list[bool] = []

    async def body() -> None:
        waiter = _aio.Waiter.new()
        thread = threading.Thread(target=lambda: results.append(waiter.wake()))
        thread.start()
        results.append(await waiter.wait(SYSTEM_CLOCK, SYSTEM_CLOCK.monotonic() + 30))
        thread.join()

    run_on(anyio_backend, body)
    assert results == [True, True]


def test_waiter_woken_before_it_waits_returns_at_once(anyio_backend: str) -> None:
    results: list[bool] = []

    async def body() -> None:
        waiter = _aio.Waiter.new()
        results.append(waiter.wake())
        results.append(await waiter.wait(SYSTEM_CLOCK, SYSTEM_CLOCK.monotonic() - 1))

    run_on(anyio_backend, body)
    assert results == [True, True]


def test_waiter_deadline_on_the_fake_clock(anyio_backend: str) -> None:
    clock = FakeClock()
    results: list[object] = []

    async def body() -> None:
        waiter = _aio.Waiter.new()

        async def time_passes() -> None:
            await clock.asleep(10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(time_passes)
            results.append(await waiter.wait(clock, 4.0))
            results.append(clock.monotonic())
        results.append(waiter.wake())  # too late: the deadline decided

    run_on(anyio_backend, body)
    assert results == [False, 4.0, False]


def test_waiter_deadline_on_the_real_clock(anyio_backend: str) -> None:
    results: list[bool] = []

    async def body() -> None:
        waiter = _aio.Waiter.new()
        results.append(await waiter.wait(SYSTEM_CLOCK, SYSTEM_CLOCK.monotonic() + 0.01))
        results.append(waiter.decided and not waiter.woken)

    run_on(anyio_backend, body)
    assert results == [False, True]


def test_waiter_cancelled_propagates_the_library_cancellation(anyio_backend: str) -> None:
    results: list[object] = []

    async def body() -> None:
        waiter = _aio.Waiter.new()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_soon() -> None:
                    await anyio.lowlevel.checkpoint()
                    scope.cancel()

                tg.start_soon(cancel_soon)
                await waiter.wait(SYSTEM_CLOCK, SYSTEM_CLOCK.monotonic() + 30)
                results.append("not reached")
        results.append(scope.cancelled_caught)
        results.append(waiter.wake())  # the cancellation decided: a late waker learns it lost
        results.append(waiter.woken)

    run_on(anyio_backend, body)
    assert results == [True, False, False]


async def test_asyncio_waiter_cancellation_keeps_the_task_cancelling_count() -> None:
    waiter = _aio.Waiter.new()
    seen: list[int] = []

    async def wait() -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            await waiter.wait(SYSTEM_CLOCK)
        except asyncio.CancelledError:
            seen.append(task.cancelling())
            raise

    task = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [1]


async def test_asyncio_waiter_woken_then_cancelled_tells_the_task_it_was_woken() -> None:
    waiter = _aio.Waiter.new()
    outcome: list[object] = []

    async def wait() -> None:
        try:
            await waiter.wait(SYSTEM_CLOCK)
        except asyncio.CancelledError:
            outcome.append(waiter.woken)  # e.g. a slot granted just before: to be passed on
            raise

    task = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    outcome.append(waiter.wake())
    task.cancel()  # before the task could resume
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == [True, True]


def test_trio_waiter_cancellation_raises_trio_cancelled() -> None:
    caught: list[type[BaseException]] = []

    async def body() -> None:
        waiter = _aio.Waiter.new()
        with trio.move_on_after(0.01):
            try:
                await waiter.wait(SYSTEM_CLOCK)
            except BaseException as exc:
                caught.append(type(exc))
                raise

    trio.run(body)
    assert caught == [trio.Cancelled]


def test_waiter_outside_any_library_is_refused() -> None:
    with pytest.raises(RuntimeError, match="no running asyncio event loop or trio run"):
        _aio.Waiter.new()


# -- deadline scope ---------------------------------------------------------------------------------


def test_deadline_scope_cancels_at_the_fake_deadline(anyio_backend: str) -> None:
    clock = FakeClock()
    results: list[object] = []

    async def body() -> None:
        with _aio.deadline_scope(clock, 3.0) as scope:
            await clock.asleep(10)
            results.append("not reached")
        results.append(scope.expired)
        results.append(clock.monotonic())
        with _aio.deadline_scope(clock, 10.0) as calm:
            await clock.asleep(1)
        results.append(calm.expired)

    run_on(anyio_backend, body)
    assert results == [True, 3.0, False]


def test_deadline_scope_on_the_real_clock(anyio_backend: str) -> None:
    results: list[bool] = []

    async def body() -> None:
        with _aio.deadline_scope(SYSTEM_CLOCK, SYSTEM_CLOCK.monotonic() + 0.01) as scope:
            await anyio.sleep(30)
        results.append(scope.expired)

    run_on(anyio_backend, body)
    assert results == [True]


def test_deadline_scope_lets_an_outer_cancellation_through(anyio_backend: str) -> None:
    clock = FakeClock()
    results: list[object] = []

    async def body() -> None:
        with anyio.CancelScope() as outer:
            with _aio.deadline_scope(clock, 50.0) as scope:
                outer.cancel()
                await anyio.lowlevel.checkpoint()
            results.append("not reached")
        results.append(outer.cancelled_caught)
        results.append(scope.expired)

    run_on(anyio_backend, body)
    assert results == [True, False]


# -- Retry backs off under trio ---------------------------------------------------------------------


def test_retry_backs_off_on_the_fake_clock_under_trio() -> None:
    clock = FakeClock()
    flaky = Flaky(clock, failures=2)
    answers: list[str] = []

    async def body() -> None:
        answers.append(await Pipeline(Retry(3, backoff=Constant(2)), clock=clock).acall(flaky))

    trio.run(body)
    assert answers == ["ok"]
    assert flaky.calls == [0.0, 2.0, 4.0]
    assert clock.sleeps == [2.0, 2.0]


def test_retry_backs_off_on_the_real_clock_under_trio() -> None:
    flaky = Flaky(None, failures=2)
    answers: list[str] = []

    async def body() -> None:
        answers.append(await Pipeline(Retry(3, backoff=Constant(0.001))).acall(flaky))

    trio.run(body)
    assert answers == ["ok"]
    assert len(flaky.calls) == 3


def test_concurrent_retries_under_trio_overlap_their_backoffs() -> None:
    clock = FakeClock()
    flakies = [Flaky(clock, failures=1) for _ in range(5)]

    async def body() -> None:
        pipeline = Pipeline(Retry(2, backoff=Constant(3)), clock=clock)
        async with trio.open_nursery() as nursery:
            for flaky in flakies:
                nursery.start_soon(pipeline.acall, flaky)

    trio.run(body)
    assert [f.calls for f in flakies] == [[0.0, 3.0]] * 5
    assert clock.monotonic() == 3.0
