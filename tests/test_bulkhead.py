from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from resilience import Bulkhead, BulkheadFullError, BulkheadRejected, CallContext, Event, FakeClock, Pipeline
from resilience.outcome import Outcome
from resilience.permit import Permit, Ticket
from resilience.policies.bulkhead import BulkheadOptions

from .helpers import Gauge
from .test_release_paths import ManualClock


@pytest.fixture(autouse=True)
def every_bulkhead_ends_at_rest(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After every test, each bulkhead it made holds no slot and has nobody in its queue."""
    made: list[Bulkhead] = []
    init = Bulkhead.__init__

    def tracked(self: Bulkhead, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Bulkhead, "__init__", tracked)
    yield
    for bulkhead in made:
        assert (bulkhead.active, bulkhead.queued) == (0, 0), bulkhead


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


# -- exceptions and cancellations while waiting ---------------------------------------------


@pytest.mark.parametrize("when", ["before_the_grant", "after_the_grant"])
def test_an_exception_raised_into_a_waiting_thread_never_loses_a_slot(
    when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a KeyboardInterrupt from a signal handler would: raised out of the blocking wait.
    bulkhead = Bulkhead(1, max_queue=2)
    pipeline = Pipeline(bulkhead)
    holder = bulkhead.acquire(CallContext(), 0.0)
    assert isinstance(holder, Permit)

    def interrupted(ticket: Ticket, timeout: float) -> None:
        assert bulkhead.queued == 1
        if when == "after_the_grant":
            bulkhead.release(holder, Outcome.SUCCESS, 0.0, 0.0, None)  # the slot goes to this waiter
            assert ticket.granted
        raise KeyboardInterrupt

    monkeypatch.setattr(Ticket, "wait", interrupted)
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        pipeline.call(calls.append, 1)
    assert calls == []  # the call never ran
    assert bulkhead.queued == 0
    if when == "before_the_grant":
        assert bulkhead.active == 1  # the holder's slot, still held
        bulkhead.release(holder, Outcome.SUCCESS, 0.0, 0.0, None)
    assert bulkhead.active == 0  # the granted slot was given back
    assert pipeline.call(lambda: "ok") == "ok"


@pytest.mark.parametrize("order", ["expire_then_cancel", "cancel_then_expire"])
async def test_a_waiter_whose_wait_expires_in_the_turn_it_is_cancelled_gets_its_cancellation(order: str) -> None:
    clock = ManualClock()
    events: list[Event] = []
    bulkhead = Bulkhead(1, max_queue=1, max_wait=5)
    pipeline = Pipeline(bulkhead, clock=clock, listeners=[events.append])
    release = asyncio.Event()
    cancelling: list[int] = []

    async def held() -> None:
        await release.wait()

    async def waiter() -> None:
        try:
            await pipeline.acall(held)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            cancelling.append(task.cancelling())
            raise

    first = asyncio.ensure_future(pipeline.acall(held))
    await asyncio.sleep(0)
    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)
    assert bulkhead.queued == 1
    if order == "expire_then_cancel":
        clock.advance(5)  # the wait runs out now...
        task.cancel()  # ...and the waiter is cancelled in the same turn
    else:
        task.cancel()
        clock.advance(5)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelling == [1]  # the cancellation came through as it was sent, not as a rejection
    assert [e for e in events if isinstance(e, BulkheadRejected)] == []
    assert bulkhead.queued == 0
    release.set()
    await first


async def test_a_waiter_granted_a_slot_and_cancelled_in_the_same_turn_never_runs_and_passes_it_on() -> None:
    bulkhead = Bulkhead(1, max_queue=2)
    pipeline = Pipeline(bulkhead)
    holder = bulkhead.acquire(CallContext(), 0.0)
    assert isinstance(holder, Permit)
    ran: list[int] = []

    async def work(i: int) -> None:
        ran.append(i)

    first = asyncio.ensure_future(pipeline.acall(work, 1))
    second = asyncio.ensure_future(pipeline.acall(work, 2))
    await asyncio.sleep(0)
    assert bulkhead.queued == 2
    bulkhead.release(holder, Outcome.SUCCESS, 0.0, 0.0, None)  # the slot goes to the first waiter...
    first.cancel()  # ...cancelled in the same turn
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 10)
    assert ran == [2]


def test_the_deadline_bound_is_named_in_the_error(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, max_queue=1, max_wait=100)
    pipeline = Pipeline(bulkhead, clock=clock)
    holder = bulkhead.acquire(CallContext(clock=clock), 0.0)
    assert isinstance(holder, Permit)
    ctx = pipeline.context(timeout=1)
    clock.advance(2)  # past its deadline already: the wait is over at once
    with pytest.raises(BulkheadFullError, match=r"no slot freed within the wait limit \(the call's deadline\)"):
        pipeline.execute(lambda c: None, ctx)
    bulkhead.release(holder, Outcome.SUCCESS, 0.0, 2.0, None)


# -- options and reconfigure ------------------------------------------------------------------


def test_options_are_frozen_validated_and_accepted_whole() -> None:
    options = BulkheadOptions(4, max_queue=2, max_wait=timedelta(milliseconds=250))  # type: ignore[arg-type]
    assert (options.max_concurrent, options.max_queue, options.max_wait) == (4, 2, 0.25)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_queue = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"max_queue must be in \[0, 1000000\], got -1"):
        options.replace(max_queue=-1)
    bulkhead = Bulkhead(options=options)
    assert bulkhead.options is options
    assert (bulkhead.max_concurrent, bulkhead.max_queue, bulkhead.max_wait) == (4, 2, 0.25)
    assert Bulkhead(4).max_wait == float("inf")
    assert Bulkhead(4, max_wait=timedelta(seconds=2)).options == BulkheadOptions(4, 0, 2.0)
    with pytest.raises(TypeError, match="needs max_concurrent"):
        Bulkhead()
    with pytest.raises(TypeError, match="not both"):
        Bulkhead(4, options=options)
    with pytest.raises(TypeError, match="options must be BulkheadOptions"):
        Bulkhead(options=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reconfigure needs BulkheadOptions"):
        bulkhead.reconfigure(object())  # type: ignore[arg-type]


def _take(bulkhead: Bulkhead) -> Permit:
    permit = bulkhead.acquire(CallContext(), 0.0)
    assert isinstance(permit, Permit) and not isinstance(permit, Ticket), permit
    return permit


def _free(bulkhead: Bulkhead, permit: Permit) -> None:
    bulkhead.release(permit, Outcome.SUCCESS, 0.0, 0.0, None)


def _refused(bulkhead: Bulkhead) -> bool:
    return getattr(bulkhead.acquire(CallContext(), 0.0), "reason", None) == "full"


async def test_a_larger_max_concurrent_grants_waiters_at_once() -> None:
    bulkhead = Bulkhead(1, max_queue=2)
    pipeline = Pipeline(bulkhead)
    release = asyncio.Event()
    ran: list[int] = []

    async def held() -> None:
        await release.wait()

    async def quick(i: int) -> None:
        ran.append(i)

    holder = asyncio.ensure_future(pipeline.acall(held))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(pipeline.acall(quick, i)) for i in range(2)]
    await asyncio.sleep(0)
    assert bulkhead.queued == 2
    bulkhead.reconfigure(bulkhead.options.replace(max_concurrent=3))
    await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert ran == [0, 1]
    assert bulkhead.active == 1  # the holder is still inside
    release.set()
    await holder
    held_now = [_take(bulkhead) for _ in range(3)]
    extra = bulkhead.acquire(CallContext(), 0.0)
    assert isinstance(extra, Ticket) and bulkhead.abandon(extra)  # 3 slots, all taken: a 4th waits
    for permit in held_now:
        _free(bulkhead, permit)


def test_a_smaller_max_concurrent_takes_slots_away_as_they_are_released() -> None:
    bulkhead = Bulkhead(3)
    inside = [_take(bulkhead) for _ in range(3)]
    bulkhead.reconfigure(BulkheadOptions(1))
    assert bulkhead.active == 3  # nobody inside is interrupted
    assert _refused(bulkhead)
    _free(bulkhead, inside[0])
    assert bulkhead.active == 2 and _refused(bulkhead)
    _free(bulkhead, inside[1])
    assert bulkhead.active == 1 and _refused(bulkhead)
    _free(bulkhead, inside[2])
    assert bulkhead.active == 0
    only = _take(bulkhead)
    assert _refused(bulkhead)
    _free(bulkhead, only)


def test_a_smaller_max_concurrent_takes_free_slots_at_once_and_a_larger_one_keeps_what_is_not_yet_taken() -> None:
    bulkhead = Bulkhead(4)
    inside = [_take(bulkhead) for _ in range(3)]
    bulkhead.reconfigure(BulkheadOptions(2))  # the free slot goes now, a held one when released
    assert _refused(bulkhead)
    bulkhead.reconfigure(BulkheadOptions(3))  # the held slot not yet taken away is kept instead
    assert _refused(bulkhead)  # 3 inside, 3 allowed
    _free(bulkhead, inside.pop())
    assert bulkhead.active == 2
    inside.append(_take(bulkhead))
    assert _refused(bulkhead)
    for permit in inside:
        _free(bulkhead, permit)
    assert bulkhead.active == 0
    again = [_take(bulkhead) for _ in range(3)]
    assert _refused(bulkhead)
    for permit in again:
        _free(bulkhead, permit)


def test_a_smaller_max_queue_rejects_no_one_already_waiting() -> None:
    bulkhead = Bulkhead(1, max_queue=3, max_wait=5)
    holder = _take(bulkhead)
    tickets = [bulkhead.acquire(CallContext(), 0.0) for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets) and bulkhead.queued == 3
    bulkhead.reconfigure(BulkheadOptions(1, max_queue=1, max_wait=1))
    assert bulkhead.queued == 3  # all still in line
    assert _refused(bulkhead)  # but nobody may join now
    assert [t.max_wait for t in tickets if isinstance(t, Ticket)] == [5, 5, 5]  # waits already begun keep theirs
    granted: list[Ticket] = []
    for ticket in tickets:
        assert isinstance(ticket, Ticket)
        ticket.attach(functools.partial(granted.append, ticket))
    _free(bulkhead, holder)
    for i, ticket in enumerate(tickets):
        assert granted == tickets[: i + 1]  # first come, first served
        assert isinstance(ticket, Ticket) and not bulkhead.abandon(ticket)  # it holds the slot
        _free(bulkhead, ticket)
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
    holder = _take(bulkhead)
    ticket = bulkhead.acquire(CallContext(), 0.0)
    assert isinstance(ticket, Ticket) and ticket.max_wait == 1  # a new wait gets the new max_wait
    assert bulkhead.abandon(ticket)
    _free(bulkhead, holder)


def test_reconfigure_under_churn_loses_no_slot_and_never_exceeds_the_largest_limit() -> None:
    # Threads take and give back slots (without the lock while nobody waits) while another
    # thread moves max_concurrent between 1 and 4: the slot count must stay exact.
    bulkhead = Bulkhead(2, max_queue=64, max_wait=10)
    pipeline = Pipeline(bulkhead)
    gauge = Gauge()
    rejected: list[int] = []
    done = threading.Event()

    def work() -> None:
        gauge.enter()
        time.sleep(0)
        gauge.leave()

    def worker() -> None:
        for _ in range(200):
            try:
                pipeline.call(work)
            except BulkheadFullError:
                rejected.append(1)

    def reconfigurer() -> None:
        for i in range(2000):
            if done.is_set():
                return
            bulkhead.reconfigure(BulkheadOptions(1 + i % 4, max_queue=64, max_wait=10))
            time.sleep(0)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    changer = threading.Thread(target=reconfigurer)
    for t in [*threads, changer]:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    changer.join(10)
    assert rejected == []
    assert gauge.admitted == 12 * 200
    assert gauge.peak <= 4
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
    bulkhead.reconfigure(BulkheadOptions(3))
    slots = [_take(bulkhead) for _ in range(3)]
    assert _refused(bulkhead)  # exactly 3 slots: none lost, none doubled
    for permit in slots:
        _free(bulkhead, permit)
