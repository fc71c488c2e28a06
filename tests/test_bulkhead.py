from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from resilience import Bulkhead, BulkheadFullError, BulkheadRejected, Event, FakeClock, Pipeline

from .helpers import Gauge

N = 64
LIMIT = 8


def test_64_threads_through_a_bulkhead_of_8_admit_exactly_8() -> None:
    bulkhead = Bulkhead(LIMIT)
    pipeline = Pipeline(bulkhead)
    gauge = Gauge()
    release = threading.Event()
    decided = threading.Semaphore(0)
    rejected: list[int] = []

    def held() -> None:
        gauge.enter()
        decided.release()
        try:
            assert release.wait(10), "test did not release the calls"
        finally:
            gauge.leave()

    def worker() -> None:
        try:
            pipeline.call(held)
        except BulkheadFullError:
            rejected.append(1)
            decided.release()

    threads = [threading.Thread(target=worker) for _ in range(N)]
    for t in threads:
        t.start()
    for _ in range(N):
        assert decided.acquire(timeout=10)
    release.set()
    for t in threads:
        t.join(10)
    assert gauge.admitted == LIMIT
    assert len(rejected) == N - LIMIT
    assert gauge.peak == LIMIT
    assert bulkhead.active == 0


def test_64_threads_with_a_queue_all_pass_never_more_than_8_inside() -> None:
    bulkhead = Bulkhead(LIMIT, max_queue=N)
    pipeline = Pipeline(bulkhead)
    gauge = Gauge()
    start = threading.Barrier(N)

    def work() -> None:
        gauge.enter()
        try:
            # Give the others a chance to pile up while we are inside.
            threading.Event().wait(0.002)
        finally:
            gauge.leave()

    def worker() -> None:
        start.wait(10)
        pipeline.call(work)

    threads = [threading.Thread(target=worker) for _ in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert gauge.admitted == N
    assert gauge.peak <= LIMIT
    assert bulkhead.active == 0 and bulkhead.queued == 0


async def test_64_tasks_through_a_bulkhead_of_8_admit_exactly_8() -> None:
    bulkhead = Bulkhead(LIMIT)
    pipeline = Pipeline(bulkhead)
    gauge = Gauge()
    release = asyncio.Event()

    async def held() -> None:
        gauge.enter()
        try:
            await release.wait()
        finally:
            gauge.leave()

    tasks = [asyncio.ensure_future(pipeline.acall(held)) for _ in range(N)]
    await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    rejected = [r for r in results if isinstance(r, BulkheadFullError)]
    assert gauge.admitted == LIMIT
    assert len(rejected) == N - LIMIT
    assert gauge.peak == LIMIT
    assert bulkhead.active == 0


async def test_64_tasks_with_a_queue_all_pass_never_more_than_8_inside() -> None:
    bulkhead = Bulkhead(LIMIT, max_queue=N)
    pipeline = Pipeline(bulkhead)
    gauge = Gauge()

    async def work() -> None:
        gauge.enter()
        try:
            for _ in range(3):
                await asyncio.sleep(0)
        finally:
            gauge.leave()

    await asyncio.wait_for(asyncio.gather(*(pipeline.acall(work) for _ in range(N))), 10)
    assert gauge.admitted == N
    assert gauge.peak == LIMIT
    assert bulkhead.active == 0 and bulkhead.queued == 0


async def test_queued_tasks_give_up_after_max_wait_on_the_fake_clock(clock: FakeClock) -> None:
    events: list[Event] = []
    pipeline = Pipeline(Bulkhead(1, max_queue=2, max_wait=5), clock=clock, listeners=[events.append])
    release = asyncio.Event()

    async def held() -> str:
        await release.wait()
        return "held"

    first = asyncio.ensure_future(pipeline.acall(held))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(pipeline.acall(held)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError, match="queue of 2 is full"):
        await pipeline.acall(held)
    clock.advance(5)
    for task in waiting:
        with pytest.raises(BulkheadFullError, match="no slot freed within the wait limit"):
            await task
    release.set()
    assert await first == "held"
    assert [e.reason for e in events if isinstance(e, BulkheadRejected)] == ["full", "wait", "wait"]


async def test_wait_is_bounded_by_the_call_deadline(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, max_queue=1, max_wait=100)
    pipeline = Pipeline(bulkhead, clock=clock)
    release = asyncio.Event()

    async def held(ctx: Any) -> None:
        await release.wait()

    first = asyncio.ensure_future(pipeline.aexecute(held, pipeline.context()))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(pipeline.aexecute(held, pipeline.context(timeout=2)))
    await asyncio.sleep(0)
    clock.advance(2)
    with pytest.raises(BulkheadFullError):
        await second
    release.set()
    await first
    assert bulkhead.queued == 0 and bulkhead.active == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_slots_are_not_lost() -> None:
    bulkhead = Bulkhead(1, max_queue=5)
    pipeline = Pipeline(bulkhead)
    release = asyncio.Event()

    async def held() -> str:
        await release.wait()
        return "ok"

    first = asyncio.ensure_future(pipeline.acall(held))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(pipeline.acall(held))
    await asyncio.sleep(0)
    assert bulkhead.queued == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.queued == 0
    release.set()
    assert await first == "ok"
    assert await pipeline.acall(held) == "ok"
    assert bulkhead.active == 0


def test_threads_and_tasks_share_one_bulkhead() -> None:
    bulkhead = Bulkhead(2, max_queue=10)
    pipeline = Pipeline(bulkhead)
    gauge = Gauge()

    def sync_work() -> None:
        gauge.enter()
        threading.Event().wait(0.005)
        gauge.leave()

    async def async_work() -> None:
        gauge.enter()
        await asyncio.sleep(0.005)
        gauge.leave()

    async def tasks() -> None:
        await asyncio.gather(*(pipeline.acall(async_work) for _ in range(4)))

    threads = [threading.Thread(target=pipeline.call, args=(sync_work,)) for _ in range(4)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join(10)
    assert gauge.admitted == 8
    assert gauge.peak <= 2
    assert bulkhead.active == 0


def test_sync_waiter_times_out() -> None:
    bulkhead = Bulkhead(1, max_queue=1, max_wait=0.01)
    pipeline = Pipeline(bulkhead)
    inside = threading.Event()
    release = threading.Event()

    def held() -> None:
        inside.set()
        release.wait(10)

    t = threading.Thread(target=pipeline.call, args=(held,))
    t.start()
    assert inside.wait(10)
    with pytest.raises(BulkheadFullError, match="no slot freed"):
        pipeline.call(lambda: None)
    release.set()
    t.join(10)
    assert bulkhead.active == 0 and bulkhead.queued == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrent": 0}, r"max_concurrent must be in \[1, 1000000\], got 0"),
        ({"max_concurrent": 4, "max_queue": -1}, r"max_queue must be in \[0, 1000000\], got -1"),
        ({"max_concurrent": 4, "max_wait": 0}, "max_wait must be a finite number of seconds > 0, got 0"),
    ],
)
def test_invalid_bulkhead_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Bulkhead(**kwargs)


def test_no_slot_is_lost_or_doubled_under_churn() -> None:
    # Slots are taken and returned without the lock while nobody waits; a lost hand-over
    # would leave a waiter stranded (it would give up after max_wait and be counted below).
    bulkhead = Bulkhead(3, max_queue=32, max_wait=10)
    pipeline = Pipeline(bulkhead)
    gauge = Gauge()
    rejected: list[int] = []

    def work() -> None:
        gauge.enter()
        time.sleep(0)  # let the others in while this call holds its slot
        gauge.leave()

    def worker() -> None:
        for _ in range(300):
            try:
                pipeline.call(work)
            except BulkheadFullError:
                rejected.append(1)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert rejected == []
    assert gauge.admitted == 16 * 300
    assert gauge.peak == 3  # the slots were contended, and never more than 3 were taken
    assert bulkhead.active == 0 and bulkhead.queued == 0
