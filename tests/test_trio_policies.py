"""The async executors under trio: waits, cancellation, and every release path, as under asyncio."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from resilience import (
    AdaptiveThrottle,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConcurrencyLimit,
    Event,
    FakeClock,
    Pipeline,
    RateLimit,
    RateLimitedError,
    RateLimitWaited,
    Retry,
    TokenBucket,
)
from resilience.policies.backoff import Constant


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        with trio.fail_after(20):
            return await main()

    return trio.run(bounded)


def test_a_bulkhead_queue_under_trio_serves_waiters_in_order() -> None:
    bulkhead = Bulkhead(1, max_queue=3)
    pipeline = Pipeline(bulkhead)
    order: list[int] = []

    async def main() -> None:
        gate = trio.Event()

        async def call(i: int) -> None:
            async def body() -> None:
                order.append(i)
                if i == 0:
                    await gate.wait()

            await pipeline.acall(body)

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(call, i)
                await trio.testing.wait_all_tasks_blocked()
            assert bulkhead.active == 1 and bulkhead.queued == 3
            with pytest.raises(BulkheadFullError):
                await pipeline.acall(trio.sleep, 0)
            gate.set()

    run(main)
    assert order == [0, 1, 2, 3]
    assert bulkhead.active == 0 and bulkhead.queued == 0


def test_a_cancelled_bulkhead_waiter_under_trio_gives_its_place_back() -> None:
    bulkhead = Bulkhead(1, max_queue=1)
    pipeline = Pipeline(bulkhead)
    ran: list[str] = []

    async def main() -> None:
        gate = trio.Event()
        scopes: list[trio.CancelScope] = []

        async def body() -> None:
            ran.append("waiter")

        async def waiter() -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await pipeline.acall(body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.acall, gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert bulkhead.queued == 1
            scopes[0].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert bulkhead.queued == 0
            gate.set()

    run(main)
    assert ran == []
    assert bulkhead.active == 0 and bulkhead.queued == 0


def test_a_bulkhead_wait_that_runs_out_under_trio_is_a_rejection() -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(1, max_queue=1, max_wait=5)
    pipeline = Pipeline(bulkhead, clock=clock)

    async def main() -> None:
        gate = trio.Event()
        rejected: list[BaseException] = []

        async def second() -> None:
            try:
                await pipeline.acall(trio.sleep, 0)
            except BulkheadFullError as exc:
                rejected.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.acall, gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            clock.advance(4.9)
            await trio.testing.wait_all_tasks_blocked()
            assert rejected == [] and bulkhead.queued == 1
            clock.advance(0.1)
            await trio.testing.wait_all_tasks_blocked()
            assert len(rejected) == 1 and "no slot freed" in str(rejected[0])
            gate.set()

    run(main)
    assert bulkhead.active == 0 and bulkhead.queued == 0


def test_a_token_bucket_wait_under_trio_sleeps_on_the_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, 1, mode="wait", max_wait=10)
    pipeline = Pipeline(bucket, clock=clock)

    async def main() -> list[float]:
        times = []
        for _ in range(3):
            await pipeline.acall(trio.sleep, 0)
            times.append(clock.monotonic())
        return times

    assert run(main) == [0.0, 0.5, 1.0]


def test_a_token_bucket_rejects_under_trio() -> None:
    pipeline = Pipeline(TokenBucket(1, 1), clock=FakeClock())

    async def main() -> None:
        await pipeline.acall(trio.sleep, 0)
        with pytest.raises(RateLimitedError):
            await pipeline.acall(trio.sleep, 0)

    run(main)


def test_retry_backs_off_under_trio() -> None:
    clock = FakeClock()
    pipeline = Pipeline(Retry(3, backoff=Constant(2.0), budget=None), clock=clock)
    attempts: list[float] = []

    async def flaky() -> str:
        attempts.append(clock.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "ok"

    assert run(lambda: pipeline.acall(flaky)) == "ok"
    assert attempts == [0.0, 2.0, 4.0]


def test_release_paths_under_trio_leave_nothing_held() -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(2, max_queue=2)
    limit = ConcurrencyLimit(4)
    breaker = CircuitBreaker(failure_threshold=100, clock=clock)
    pipeline = Pipeline(breaker, limit, bulkhead, clock=clock)

    async def main() -> None:
        async def ok() -> int:
            return 1

        async def boom() -> None:
            raise ValueError("boom")

        async def slow() -> None:
            await trio.sleep_forever()

        assert await pipeline.acall(ok) == 1
        with pytest.raises(ValueError, match="boom"):
            await pipeline.acall(boom)
        with trio.move_on_after(0.01):
            await pipeline.acall(slow)  # cancelled from outside
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(pipeline.acall, slow)
            await trio.testing.wait_all_tasks_blocked()
            assert bulkhead.active == 2 and bulkhead.queued == 2
            nursery.cancel_scope.cancel()

    run(main)
    assert bulkhead.active == 0 and bulkhead.queued == 0
    assert limit.inflight == 0


def test_a_rate_limit_waits_under_trio_until_its_next_permit() -> None:
    events: list[Event] = []
    pipeline = Pipeline(RateLimit("2/second", mode="wait", max_wait=5), listeners=[events.append])
    done: list[int] = []

    async def main() -> None:
        for i in range(3):
            await pipeline.acall(trio.sleep, 0)
            done.append(i)

    run(main)
    assert done == [0, 1, 2]
    waits = [e for e in events if isinstance(e, RateLimitWaited)]
    assert len(waits) >= 1 and all(w.delay > 0 for w in waits)  # only the third call waited


def test_breaker_throttle_and_limit_count_outcomes_under_trio() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, break_duration=10, clock=clock)
    throttle = AdaptiveThrottle()
    limit = ConcurrencyLimit(4)
    counted = Pipeline(throttle, limit, clock=clock)
    guarded = Pipeline(breaker, limit, clock=clock)

    async def ok() -> str:
        await trio.lowlevel.checkpoint()
        return "ok"

    async def boom() -> None:
        await trio.lowlevel.checkpoint()
        raise ConnectionError("down")

    async def main() -> None:
        for _ in range(3):
            assert await counted.acall(ok) == "ok"
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await guarded.acall(boom)
        with pytest.raises(CircuitOpenError):
            await guarded.acall(boom)

    run(main)
    assert throttle.counts(clock.monotonic()) == (3, 3)
    assert breaker.state.value == "open"
    assert limit.inflight == 0
