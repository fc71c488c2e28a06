from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest
import sniffio

from resilience import (
    CallContext,
    Constant,
    DeadlineExceededError,
    Event,
    FakeClock,
    Pipeline,
    ResilienceError,
    Retry,
    Timeout,
    TimeoutExpired,
)

from .helpers import Script


def test_sync_attempt_that_overran_counts_as_timed_out(clock: FakeClock) -> None:
    script = Script("late", clock=clock, durations=[5.0])
    with pytest.raises(DeadlineExceededError, match="exceeded its 2s timeout") as info:
        Pipeline(Timeout(2), clock=clock).call(script)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, ResilienceError)
    assert info.value.timeout == 2.0


def test_sync_attempt_within_its_time_returns(clock: FakeClock) -> None:
    script = Script("fine", clock=clock, durations=[1.9])
    assert Pipeline(Timeout(timedelta(seconds=2)), clock=clock).call(script) == "fine"


def test_sync_deadline_is_carried_in_the_context_for_adapters(clock: FakeClock) -> None:
    seen: list[float | None] = []

    def fn(ctx: CallContext) -> str:
        seen.append(ctx.remaining())
        return "ok"

    pipeline = Pipeline(Timeout(10), Retry(2), Timeout(3), clock=clock)
    ctx = pipeline.context()
    assert pipeline.execute(fn, ctx) == "ok"
    assert seen == [3.0]
    assert ctx.deadline is None  # restored after the call


def test_inner_timeout_cannot_extend_an_earlier_outer_deadline(clock: FakeClock) -> None:
    seen: list[float | None] = []
    pipeline = Pipeline(Timeout(2), Timeout(30), clock=clock)
    pipeline.execute(lambda ctx: seen.append(ctx.remaining()), pipeline.context())
    assert seen == [2.0]


def test_sync_retry_of_timed_out_attempts(clock: FakeClock) -> None:
    script = Script("slow", "slow", "fast", clock=clock, durations=[5.0, 5.0, 0.5])
    pipeline = Pipeline(Retry(3, backoff=Constant(1)), Timeout(2), clock=clock)
    assert pipeline.call(script) == "fast"
    assert script.calls == 3


def test_total_timeout_outside_retry_bounds_the_whole_call(clock: FakeClock) -> None:
    script = Script(ConnectionError("down"), clock=clock, durations=[1.0] * 10)
    pipeline = Pipeline(Timeout(4), Retry(10, backoff=Constant(1)), clock=clock)
    with pytest.raises((DeadlineExceededError, ConnectionError)):
        pipeline.call(script)
    # attempts at 0, 2; a third would start at 4 = the deadline: the retry stops first.
    assert script.calls == 2


async def test_async_timeout_cancels_the_awaited_work(clock: FakeClock) -> None:
    cancelled: list[bool] = []

    async def slow() -> str:
        try:
            await clock.asleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    events: list[Event] = []
    with pytest.raises(DeadlineExceededError, match=r"exceeded its 1\.5s timeout"):
        await Pipeline(Timeout(1.5), clock=clock, listeners=[events.append]).acall(slow)
    assert cancelled == [True]
    assert clock.monotonic() == 1.5
    assert [type(e) for e in events] == [TimeoutExpired]


async def test_async_per_attempt_timeouts_with_retry(clock: FakeClock) -> None:
    durations = [10.0, 10.0, 0.1]

    async def work() -> str:
        await clock.asleep(durations.pop(0))
        return "done"

    pipeline = Pipeline(Retry(3, backoff=Constant(1)), Timeout(2), clock=clock)
    assert await pipeline.acall(work) == "done"
    assert clock.monotonic() == pytest.approx(2 + 1 + 2 + 1 + 0.1)


async def test_async_timeout_does_not_swallow_an_outer_cancellation(clock: FakeClock) -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(Pipeline(Timeout(100), clock=clock).acall(forever))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_async_timeout_keeps_a_timeout_error_raised_by_the_work(clock: FakeClock) -> None:
    async def own_timeout() -> None:
        raise TimeoutError("the transport's own")

    with pytest.raises(TimeoutError, match="the transport's own") as info:
        await Pipeline(Timeout(100), clock=clock).acall(own_timeout)
    assert not isinstance(info.value, DeadlineExceededError)


async def test_async_timeout_on_the_real_clock_cancels_real_work() -> None:
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DeadlineExceededError):
        await Pipeline(Timeout(0.05)).acall(slow)
    assert loop.time() - start < 2.5


# -- the async Timeout on asyncio and on trio --------------------------------------------------------
# Plain functions that start the library themselves: pytest-asyncio's auto mode would run every
# ``async def`` test on asyncio, whatever its backend parameter says.


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_on(backend: str, body: Callable[[], Awaitable[None]]) -> None:
    async def checked() -> None:
        assert sniffio.current_async_library() == backend
        await body()

    anyio.run(checked, backend=backend)


def test_timeout_expires_on_the_fake_clock_under_either_library(anyio_backend: str) -> None:
    clock = FakeClock()
    events: list[Event] = []
    cancelled: list[float] = []

    async def slow() -> str:
        try:
            await clock.asleep(60)
        except BaseException:
            cancelled.append(clock.monotonic())
            raise
        return "late"

    async def body() -> None:
        pipeline = Pipeline(Timeout(2.5), clock=clock, listeners=[events.append])
        with pytest.raises(DeadlineExceededError, match=r"exceeded its 2\.5s timeout") as info:
            await pipeline.acall(slow)
        assert info.value.timeout == 2.5

    run_on(anyio_backend, body)
    assert cancelled == [2.5]
    assert clock.monotonic() == 2.5
    assert [type(e) for e in events] == [TimeoutExpired]


def test_timeout_expires_on_the_real_clock_under_either_library(anyio_backend: str) -> None:
    async def slow() -> str:
        await anyio.sleep(30)
        return "late"

    async def body() -> None:
        with pytest.raises(DeadlineExceededError):
            await Pipeline(Timeout(0.02)).acall(slow)

    run_on(anyio_backend, body)


def test_timeout_lets_work_that_ends_in_time_return_under_either_library(anyio_backend: str) -> None:
    clock = FakeClock()
    seen: list[float | None] = []

    async def quick(ctx: CallContext) -> str:
        seen.append(ctx.remaining())
        await clock.asleep(1)
        return "done"

    async def body() -> None:
        pipeline = Pipeline(Timeout(3), clock=clock)
        ctx = pipeline.context()
        assert await pipeline.aexecute(quick, ctx) == "done"
        assert ctx.deadline is None
        await anyio.sleep(0.01)  # the cancelled timer must not move time once we idle

    run_on(anyio_backend, body)
    assert seen == [3.0]
    assert clock.monotonic() == 1.0


def test_timeout_never_swallows_an_outer_cancellation_under_either_library(anyio_backend: str) -> None:
    clock = FakeClock()
    reached: list[str] = []

    async def forever() -> None:
        reached.append("started")
        await anyio.sleep_forever()

    async def body() -> None:
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(Pipeline(Timeout(100), clock=clock).acall, forever)
                while not reached:
                    await anyio.lowlevel.checkpoint()
                outer.cancel()
        assert outer.cancelled_caught
        reached.append("outer caught it")

    run_on(anyio_backend, body)
    assert reached == ["started", "outer caught it"]


def test_outer_cancellation_wins_over_a_timeout_that_fired_too(anyio_backend: str) -> None:
    clock = FakeClock()

    async def slow() -> None:
        await clock.asleep(60)

    async def body() -> None:
        with anyio.CancelScope() as outer:
            # The timer fires, and then the outer scope is cancelled before the work sees it.
            clock.call_at(1.0, outer.cancel)
            await Pipeline(Timeout(1), clock=clock).acall(slow)
        assert outer.cancelled_caught

    run_on(anyio_backend, body)


def test_async_timeout_outside_any_async_library_says_so() -> None:
    async def work() -> None:
        return None

    coro = Pipeline(Timeout(1)).acall(work)
    with pytest.raises(RuntimeError, match="no running asyncio event loop or trio run"):
        coro.send(None)
    coro.close()


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "seconds must be a finite number of seconds > 0, got 0"),
        (-3, ValueError, "seconds must be a finite number of seconds > 0, got -3"),
        (float("nan"), ValueError, "seconds must be a finite number of seconds > 0, got nan"),
        ("1s", TypeError, "seconds must be a number of seconds or a timedelta, got '1s'"),
    ],
)
def test_invalid_timeout(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Timeout(value)  # type: ignore[arg-type]
