from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from resilience import (
    CallContext,
    Classifier,
    Constant,
    DeadlineExceededError,
    Event,
    FakeClock,
    Outcome,
    Pipeline,
    RejectedError,
    Retry,
    RetryBudget,
    Timeout,
)
from resilience.policies.hedge import Hedge, HedgeAttemptFailed, HedgeStarted, HedgeWon


class Backend:
    """Async attempts that wait for the test to answer them, one gate per hedge number.

    Each attempt records when it started and what its context looked like, appends its
    endpoint (``ep<hedge>``) to ``ctx.tried``, and notes whether it was cancelled.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.gates: dict[int, asyncio.Future[Any]] = {}
        self.started: list[tuple[int, float]] = []
        self.seen_tried: dict[int, list[str]] = {}
        self.cancelled: list[int] = []
        self.finished: list[int] = []

    def gate(self, n: int) -> asyncio.Future[Any]:
        if n not in self.gates:
            self.gates[n] = asyncio.get_running_loop().create_future()
        return self.gates[n]

    def answer(self, n: int, value: Any) -> None:
        self.gate(n).set_result(value)

    def fail(self, n: int, error: BaseException) -> None:
        self.gate(n).set_exception(error)

    async def __call__(self, ctx: CallContext) -> Any:
        n = ctx.hedge
        self.started.append((n, self.clock.monotonic()))
        self.seen_tried[n] = list(ctx.tried or [])
        ctx.endpoint = f"ep{n}"
        if ctx.tried is None:
            ctx.tried = []
        ctx.tried.append(ctx.endpoint)
        try:
            return await self.gate(n)
        except asyncio.CancelledError:
            self.cancelled.append(n)
            raise
        finally:
            self.finished.append(n)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def no_budget() -> RetryBudget:
    return RetryBudget(ratio=0.0, min_per_second=0.0)


# -- async, on the fake clock -------------------------------------------------------------


async def test_hedge_starts_exactly_at_the_delay_wins_and_the_primary_is_cancelled(clock: FakeClock) -> None:
    events: list[Event] = []
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock, listeners=[events.append])
    backend = Backend(clock)
    ctx = pipeline.context()
    call = asyncio.create_task(pipeline.aexecute(backend, ctx))
    await settle()
    clock.advance(0.0499)
    await settle()
    assert backend.started == [(0, 0.0)]
    clock.advance(0.0001)
    await settle()
    assert backend.started == [(0, 0.0), (1, 0.05)]
    backend.answer(1, "hedged")
    assert await call == "hedged"
    assert backend.cancelled == [0]
    assert sorted(backend.finished) == [0, 1]
    started = [e for e in events if isinstance(e, HedgeStarted)]
    assert [(e.hedge, e.delay) for e in started] == [(1, 0.05)]
    assert started[0].context is not None
    assert started[0].context.hedge == 1
    assert started[0].context is not ctx
    won = [e for e in events if isinstance(e, HedgeWon)]
    assert [(e.hedge, e.context) for e in won] == [(1, ctx)]
    assert not [e for e in events if isinstance(e, HedgeAttemptFailed)]
    # The winner's endpoint is the call's now; both endpoints count as tried.
    assert ctx.endpoint == "ep1"
    assert ctx.tried == ["ep0", "ep1"]
    assert ctx.hedge == 0


async def test_hedged_context_sees_the_primary_endpoint_in_tried(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    assert backend.seen_tried == {0: [], 1: ["ep0"]}
    backend.answer(0, "primary")
    assert await call == "primary"
    assert backend.cancelled == [1]


async def test_primary_answering_before_the_delay_sends_no_hedge(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1.0)
    events: list[Event] = []
    pipeline = Pipeline(Hedge(0.05, budget=budget), clock=clock, listeners=[events.append])
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.04)
    backend.answer(0, "fast")
    assert await call == "fast"
    clock.advance(1.0)  # the timer was taken back: nothing starts later
    await settle()
    assert backend.started == [(0, 0.0)]
    assert events == []
    assert budget.available(clock.monotonic()) == 10.0  # deposited, nothing withdrawn


async def test_primary_winning_after_a_hedge_started_cancels_the_hedge(clock: FakeClock) -> None:
    events: list[Event] = []
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock, listeners=[events.append])
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    backend.answer(0, "primary")
    assert await call == "primary"
    assert backend.cancelled == [1]
    assert sorted(backend.finished) == [0, 1]  # the loser was awaited before the call returned
    assert not [e for e in events if isinstance(e, HedgeWon)]


async def test_max_hedges_are_spaced_by_the_delay_and_never_exceeded(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(timedelta(milliseconds=50), max_hedges=2, budget=None), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    for _ in range(10):
        clock.advance(0.05)
        await settle()
    assert backend.started == [(0, 0.0), (1, 0.05), (2, 0.1)]
    backend.answer(2, "third")
    assert await call == "third"
    assert sorted(backend.cancelled) == [0, 1]


async def test_exhausted_budget_sends_no_hedge(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(0.05, budget=no_budget()), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(1.0)
    await settle()
    assert backend.started == [(0, 0.0)]
    backend.answer(0, "slow")
    assert await call == "slow"


async def test_budget_allows_exactly_its_share(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10)  # one hedge per 10 s
    pipeline = Pipeline(Hedge(0.05, budget=budget), clock=clock)
    hedged = []
    for _ in range(3):
        backend = Backend(clock)
        call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
        await settle()
        clock.advance(0.05)
        await settle()
        hedged.append(len(backend.started) - 1)
        backend.answer(0, "ok")
        assert await call == "ok"
    assert hedged == [1, 0, 0]


async def test_non_idempotent_calls_are_never_hedged(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1.0)
    pipeline = Pipeline(Hedge(0.05, budget=budget), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context(idempotent=False)))
    await settle()
    clock.advance(1.0)
    await settle()
    assert backend.started == [(0, 0.0)]
    backend.answer(0, "once")
    assert await call == "once"
    assert budget.available(clock.monotonic()) == 10.0  # not even deposited


async def test_a_committed_call_is_not_hedged(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock)
    backend = Backend(clock)
    ctx = pipeline.context()
    call = asyncio.create_task(pipeline.aexecute(backend, ctx))
    await settle()
    ctx.committed = True  # the adapter handed a first stream message to the caller
    clock.advance(1.0)
    await settle()
    assert backend.started == [(0, 0.0)]
    backend.answer(0, "streamed")
    assert await call == "streamed"


async def test_no_hedge_when_the_deadline_comes_before_the_delay(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context(timeout=0.04)))
    await settle()
    clock.advance(1.0)
    await settle()
    assert backend.started == [(0, 0.0)]
    backend.answer(0, "late")
    assert await call == "late"


async def test_primary_failing_before_the_delay_starts_the_hedge_at_once(clock: FakeClock) -> None:
    events: list[Event] = []
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock, listeners=[events.append])
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.01)
    backend.fail(0, ConnectionError("reset"))
    await settle()
    assert backend.started == [(0, 0.0), (1, 0.01)]
    backend.answer(1, "rescued")
    assert await call == "rescued"
    failed = [e for e in events if isinstance(e, HedgeAttemptFailed)]
    assert [(e.hedge, type(e.error)) for e in failed] == [(0, ConnectionError)]


async def test_a_non_retryable_primary_error_before_the_delay_ends_the_call(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    backend.fail(0, RejectedError("not the backend's fault"))
    with pytest.raises(RejectedError):
        await call
    assert backend.started == [(0, 0.0)]


async def test_a_failed_primary_waits_for_the_running_hedge(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    backend.fail(0, ConnectionError("primary down"))
    await settle()
    assert not call.done()
    backend.answer(1, "hedge")
    assert await call == "hedge"


async def test_all_attempts_failing_raise_the_primary_error_and_report_the_others(clock: FakeClock) -> None:
    events: list[Event] = []
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock, listeners=[events.append])
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    backend.fail(1, OSError("hedge down"))
    await settle()
    assert not call.done()  # the primary still runs
    backend.fail(0, ConnectionError("primary down"))
    with pytest.raises(ConnectionError, match="primary down"):
        await call
    failed = [e for e in events if isinstance(e, HedgeAttemptFailed)]
    assert [(e.hedge, str(e.error)) for e in failed] == [(1, "hedge down")]


async def test_cancelling_the_call_cancels_every_attempt(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(0.05, max_hedges=2, budget=None), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert sorted(backend.cancelled) == [0, 1]
    clock.advance(1.0)  # the timer of the second hedge is gone too
    await settle()
    assert len(backend.started) == 2


async def test_a_total_timeout_outside_cancels_every_attempt(clock: FakeClock) -> None:
    pipeline = Pipeline(Timeout(1), Hedge(0.05, budget=None), clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    clock.advance(0.95)
    with pytest.raises(DeadlineExceededError):
        await call
    assert sorted(backend.cancelled) == [0, 1]


async def test_a_primary_that_turns_our_cancellation_into_an_error_still_loses(clock: FakeClock) -> None:
    events: list[Event] = []
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock, listeners=[events.append])
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def attempt(ctx: CallContext) -> str:
        if ctx.hedge:
            return await gate
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionAbortedError("transport closed") from None
        return "unreachable"

    async def caller() -> tuple[str, int]:
        result = await pipeline.aexecute(attempt, pipeline.context())
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling()

    call = asyncio.create_task(caller())
    await settle()
    clock.advance(0.05)
    await settle()
    gate.set_result("hedge")
    assert await call == ("hedge", 0)  # no cancellation left pending on the caller's task
    assert [e.hedge for e in events if isinstance(e, HedgeWon)] == [1]


async def test_a_primary_that_swallows_our_cancellation_has_its_result_discarded(clock: FakeClock) -> None:
    classifier = ResultClassifier()
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock, classifier=classifier)
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def attempt(ctx: CallContext) -> str:
        if ctx.hedge:
            return await gate
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "primary, stubbornly"
        return "unreachable"

    async def caller() -> tuple[str, int]:
        result = await pipeline.aexecute(attempt, pipeline.context())
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling()

    call = asyncio.create_task(caller())
    await settle()
    clock.advance(0.05)
    await settle()
    gate.set_result("hedge")
    assert await call == ("hedge", 0)
    assert classifier.discarded == ["primary, stubbornly"]


async def test_retry_outside_sees_one_failure_per_hedged_call(clock: FakeClock) -> None:
    pipeline = Pipeline(Retry(2, backoff=Constant(0), budget=None), Hedge(0.05, budget=None), clock=clock)
    seen: list[tuple[int, int]] = []

    async def attempt(ctx: CallContext) -> str:
        seen.append((ctx.attempt, ctx.hedge))
        if ctx.attempt == 1:
            raise ConnectionError("down")
        return "second try"

    assert await pipeline.aexecute(attempt, pipeline.context()) == "second try"
    # Attempt 1: the primary fails at once, its hedge starts at once and fails too.
    assert seen == [(1, 0), (1, 1), (2, 0)]


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def test_async_hedges_run_in_the_callers_context(clock: FakeClock) -> None:
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock)
    backend = Backend(clock)
    seen: dict[int, str] = {}

    async def attempt(ctx: CallContext) -> Any:
        seen[ctx.hedge] = REQUEST_ID.get()
        return await backend(ctx)

    async def caller() -> Any:
        REQUEST_ID.set("call-1")
        return await pipeline.aexecute(attempt, pipeline.context())

    call = asyncio.create_task(caller())
    await settle()
    REQUEST_ID.set("the timer's context")  # advance() fires the timer from here
    clock.advance(0.05)
    await settle()
    backend.answer(1, "hedged")
    assert await call == "hedged"
    assert seen == {0: "call-1", 1: "call-1"}


def test_sync_attempts_run_in_the_callers_context() -> None:
    seen: dict[int, str] = {}
    release = threading.Event()
    with Hedge(0.01, budget=None) as hedge:
        pipeline = Pipeline(hedge)

        def attempt(ctx: CallContext) -> int:
            seen[ctx.hedge] = REQUEST_ID.get()
            if ctx.hedge == 0:
                assert release.wait(5)
            return ctx.hedge

        def caller() -> int:
            REQUEST_ID.set("call-2")
            return pipeline.execute(attempt, pipeline.context())

        try:
            assert contextvars.copy_context().run(caller) == 1
        finally:
            release.set()
    assert seen == {0: "call-2", 1: "call-2"}


class ResultClassifier(Classifier):
    """Results equal to "bad" are retryable failures; discarded results are recorded."""

    checks_results = True

    def __init__(self) -> None:
        self.discarded: list[Any] = []

    def result(self, result: object) -> Outcome:
        return Outcome.FAILURE if result == "bad" else Outcome.SUCCESS

    def discard(self, result: object) -> None:
        self.discarded.append(result)


async def test_failing_results_are_not_winners_and_are_discarded(clock: FakeClock) -> None:
    classifier = ResultClassifier()
    pipeline = Pipeline(Hedge(0.05, budget=None, max_hedges=2), clock=clock, classifier=classifier)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    backend.answer(1, "bad")  # the failing hedge starts hedge 2 at once
    await settle()
    assert [n for n, _ in backend.started] == [0, 1, 2]
    backend.answer(0, "bad")
    await settle()
    backend.answer(2, "good")
    assert await call == "good"
    assert classifier.discarded == ["bad", "bad"]


async def test_all_failing_results_return_the_primary_result(clock: FakeClock) -> None:
    classifier = ResultClassifier()
    pipeline = Pipeline(Hedge(0.05, budget=None), clock=clock, classifier=classifier)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    backend.answer(0, "bad")
    await settle()
    backend.answer(1, "bad")
    assert await call == "bad"
    assert classifier.discarded == ["bad"]  # the hedge's; the primary's is the answer


async def test_percentile_delay_follows_the_observed_latencies(clock: FakeClock) -> None:
    # Without budget while sampling (a hedged sample call would race two latencies).
    hedge = Hedge(None, percentile=0.9, window=10, min_samples=10, min_delay=0.002, budget=no_budget())
    pipeline = Pipeline(hedge, clock=clock)

    async def timed(ctx: CallContext, latency: float) -> str:
        await clock.asleep(latency)
        return "ok"

    assert hedge.current_delay() is None  # no fixed delay: no hedge until 10 samples
    for ms in range(1, 11):
        await pipeline.aexecute(lambda ctx, ms=ms: timed(ctx, ms / 1000), pipeline.context())  # type: ignore[misc]
    assert hedge.samples == 10
    assert hedge.current_delay() == pytest.approx(0.009)  # nearest rank: the 9th of 10
    for _ in range(5):  # the window slides: 1..5 ms leave, five 100 ms samples arrive
        await pipeline.aexecute(lambda ctx: timed(ctx, 0.1), pipeline.context())
    assert hedge.current_delay() == pytest.approx(0.1)
    for _ in range(10):
        await pipeline.aexecute(lambda ctx: timed(ctx, 0.0), pipeline.context())
    assert hedge.current_delay() == 0.002  # min_delay

    hedge.budget = None
    backend = Backend(clock)
    start = clock.monotonic()
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.002)
    await settle()
    assert [(n, t - start) for n, t in backend.started] == [(0, 0.0), (1, pytest.approx(0.002))]
    backend.answer(1, "hedged")
    assert await call == "hedged"


async def test_fixed_delay_is_used_until_enough_samples(clock: FakeClock) -> None:
    hedge = Hedge(0.5, percentile=0.5, window=100, min_samples=3, budget=None)
    pipeline = Pipeline(hedge, clock=clock)

    async def timed(ctx: CallContext) -> str:
        await clock.asleep(0.01)
        return "ok"

    for expected in (0.5, 0.5, 0.5):
        assert hedge.current_delay() == expected
        await pipeline.aexecute(timed, pipeline.context())
    assert hedge.current_delay() == pytest.approx(0.01)


async def test_the_winning_hedge_latency_is_sampled(clock: FakeClock) -> None:
    hedge = Hedge(0.05, percentile=0.5, min_samples=1, budget=None)
    pipeline = Pipeline(hedge, clock=clock)
    backend = Backend(clock)
    call = asyncio.create_task(pipeline.aexecute(backend, pipeline.context()))
    await settle()
    clock.advance(0.05)
    await settle()
    clock.advance(0.02)
    backend.answer(1, "hedge")
    assert await call == "hedge"
    assert hedge.current_delay() == pytest.approx(0.02)  # the hedge's own latency, from its start


# -- sync, with small real delays -----------------------------------------------------------


def _pool_threads(name: str) -> list[threading.Thread]:
    # Other tests' threads may still be winding down, and other hedges' pools may live on:
    # only this test's hedge pool counts here (its workers are named after the hedge).
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}-worker")]


def test_sync_hedge_wins_and_the_abandoned_primary_result_is_discarded() -> None:
    classifier = ResultClassifier()
    events: list[Event] = []
    release_primary = threading.Event()
    primary_done = threading.Event()
    with Hedge(0.02, budget=None, name="hedge-wins") as hedge:
        pipeline = Pipeline(hedge, classifier=classifier, listeners=[events.append])

        def attempt(ctx: CallContext) -> str:
            if ctx.hedge == 0:
                try:
                    assert release_primary.wait(5)
                    return "primary-late"
                finally:
                    primary_done.set()
            return "hedge"

        started = time.monotonic()
        assert pipeline.execute(attempt, pipeline.context()) == "hedge"
        assert time.monotonic() - started < 2.0
        assert [e.hedge for e in events if isinstance(e, HedgeWon)] == [1]
        release_primary.set()
        assert primary_done.wait(5)
        for _ in range(500):  # the worker hands the late result over just after the attempt ends
            if classifier.discarded:
                break
            time.sleep(0.001)
        assert classifier.discarded == ["primary-late"]
        assert hedge.threads == 2
    assert hedge.threads == 0
    assert _pool_threads("hedge-wins") == []


def test_sync_primary_before_the_delay_sends_no_hedge() -> None:
    calls: list[int] = []
    with Hedge(0.5, budget=None) as hedge:
        pipeline = Pipeline(hedge)

        def attempt(ctx: CallContext) -> str:
            calls.append(ctx.hedge)
            return "fast"

        for _ in range(20):
            assert pipeline.execute(attempt, pipeline.context()) == "fast"
        assert calls == [0] * 20
        assert hedge.threads <= 2  # reused (a second may start while the first counts itself free)


def test_sync_all_failing_raise_the_primary_error() -> None:
    with Hedge(0.01, max_hedges=2, budget=None) as hedge:
        pipeline = Pipeline(hedge)

        def attempt(ctx: CallContext) -> str:
            time.sleep(0.03)
            raise ConnectionError(f"attempt {ctx.hedge}")

        with pytest.raises(ConnectionError, match="attempt 0"):
            pipeline.execute(attempt, pipeline.context())


def test_sync_failing_primary_starts_the_hedge_at_once() -> None:
    seen: list[int] = []
    with Hedge(5.0, budget=None) as hedge:
        pipeline = Pipeline(hedge)

        def attempt(ctx: CallContext) -> str:
            seen.append(ctx.hedge)
            if ctx.hedge == 0:
                raise ConnectionError("down")
            return "hedge"

        started = time.monotonic()
        assert pipeline.execute(attempt, pipeline.context()) == "hedge"
        assert time.monotonic() - started < 2.0  # far less than the 5 s delay
        assert seen == [0, 1]


def test_sync_without_a_free_worker_the_hedge_is_skipped() -> None:
    seen: list[int] = []
    with Hedge(0.01, budget=None, max_workers=1) as hedge:
        pipeline = Pipeline(hedge)

        def attempt(ctx: CallContext) -> str:
            seen.append(ctx.hedge)
            time.sleep(0.05)
            return f"from {ctx.hedge}"

        assert pipeline.execute(attempt, pipeline.context()) == "from 0"
        assert seen == [0]


def test_sync_non_idempotent_runs_on_the_caller_thread() -> None:
    with Hedge(0.01, budget=None) as hedge:
        pipeline = Pipeline(hedge)
        threads: list[threading.Thread] = []

        def attempt(ctx: CallContext) -> str:
            threads.append(threading.current_thread())
            time.sleep(0.03)
            return "once"

        assert pipeline.execute(attempt, pipeline.context(idempotent=False)) == "once"
        assert threads == [threading.current_thread()]
        assert hedge.threads == 0


def test_sync_calls_after_close_run_unhedged_and_leave_no_thread() -> None:
    hedge = Hedge(0.005, budget=None, max_workers=8, name="hedge-closed")
    pipeline = Pipeline(hedge)
    release = threading.Event()

    def attempt(ctx: CallContext) -> int:
        if ctx.hedge == 0:
            assert release.wait(5)
        return ctx.hedge

    try:
        for _ in range(3):
            assert pipeline.execute(attempt, pipeline.context()) == 1
        # Three abandoned primaries hold a worker each; the hedges' workers are reused
        # (one more may start when a worker has not yet counted itself free).
        assert 4 <= hedge.threads <= 6
    finally:
        release.set()
        hedge.close()
    assert hedge.threads == 0
    assert _pool_threads("hedge-closed") == []
    runners: list[threading.Thread] = []

    def slow(ctx: CallContext) -> int:
        runners.append(threading.current_thread())
        time.sleep(0.03)
        return ctx.hedge

    assert pipeline.execute(slow, pipeline.context()) == 0  # unhedged, on the caller's thread
    assert runners == [threading.current_thread()]
    assert _pool_threads("hedge-closed") == []


# -- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": -1}, r"delay must be a finite number of seconds >= 0, got -1"),
        ({"delay": None}, r"needs a delay or a percentile"),
        ({"percentile": 1.0}, r"percentile must be in \(0, 1\), got 1.0"),
        ({"percentile": 0}, r"percentile must be in \(0, 1\), got 0"),
        ({"window": 0}, r"window must be in \[1, 1000000\], got 0"),
        ({"window": 10, "min_samples": 11}, r"min_samples must be in \[1, 10\], got 11"),
        ({"min_delay": -0.1}, r"min_delay must be a finite number of seconds >= 0, got -0.1"),
        ({"max_hedges": 0}, r"max_hedges must be in \[1, 10\], got 0"),
        ({"max_hedges": 11}, r"max_hedges must be in \[1, 10\], got 11"),
        ({"max_workers": 0}, r"max_workers must be in \[1, 10000\], got 0"),
    ],
)
def test_invalid_options_name_the_option_value_and_range(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hedge(**kwargs)


def test_budget_must_be_a_retry_budget() -> None:
    with pytest.raises(TypeError, match="budget must be a RetryBudget"):
        Hedge(budget=0.1)  # type: ignore[arg-type]


def test_repr_and_defaults() -> None:
    hedge = Hedge()
    assert hedge.delay == 0.05
    assert hedge.max_hedges == 1
    assert hedge.budget is not None
    assert hedge.budget.ratio == 0.1
    assert repr(hedge).startswith("Hedge(delay=0.05, max_hedges=1")
    assert "percentile=0.95" in repr(Hedge(percentile=0.95))
