"""Hedge: a raising classifier never wedges a call; trio; options and reconfigure."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import trio
import trio.lowlevel

from resilience import CallContext, Classifier, Event, Outcome, Pipeline
from resilience.policies.hedge import Hedge, HedgeOptions, HedgeWon


class Broken(Classifier):
    """A classifier whose every answer raises."""

    checks_results = True

    def error(self, exc: BaseException) -> Outcome:
        raise RuntimeError("classifier bug")

    def retryable_error(self, exc: BaseException) -> bool:
        raise RuntimeError("classifier bug")

    def result(self, result: object) -> Outcome:
        raise RuntimeError("classifier bug")


async def test_a_raising_classifier_ends_an_async_hedged_call() -> None:
    hedge = Hedge(delay=0.001, budget=None)
    pipeline = Pipeline(hedge, classifier=Broken())

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("down")

    with pytest.raises((ConnectionError, RuntimeError)):
        await asyncio.wait_for(pipeline.acall(failing), 10)

    async def answering() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    with pytest.raises(RuntimeError, match="classifier bug"):
        await asyncio.wait_for(pipeline.acall(answering), 10)


def test_a_raising_classifier_ends_a_sync_hedged_call() -> None:
    hedge = Hedge(delay=0.001, budget=None)
    pipeline = Pipeline(hedge, classifier=Broken())
    done = threading.Event()
    outcome: list[BaseException] = []

    def failing() -> None:
        raise ConnectionError("down")

    def run() -> None:
        try:
            pipeline.call(failing)
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(10), "the hedged call never returned"
    assert isinstance(outcome[0], ConnectionError | RuntimeError)
    hedge.close()


def test_a_hedge_wins_under_trio_and_the_primary_is_cancelled() -> None:
    events: list[Event] = []
    hedge = Hedge(delay=0.01, budget=None)
    pipeline = Pipeline(hedge, listeners=[events.append])
    cancelled: list[int] = []

    async def attempt(ctx: CallContext) -> str:
        try:
            if ctx.hedge == 0:
                await trio.sleep(30)
            return f"hedge-{ctx.hedge}"
        except trio.Cancelled:
            cancelled.append(ctx.hedge)
            raise

    async def main() -> str:
        with trio.fail_after(10):
            return await pipeline.aexecute(attempt, pipeline.context())

    assert trio.run(main) == "hedge-1"
    assert cancelled == [0]
    assert [e.hedge for e in events if isinstance(e, HedgeWon)] == [1]


def test_a_primary_that_answers_first_under_trio_needs_no_hedge() -> None:
    hedge = Hedge(delay=5, budget=None)
    pipeline = Pipeline(hedge)

    async def attempt(ctx: CallContext) -> str:
        await trio.lowlevel.checkpoint()
        return f"hedge-{ctx.hedge}"

    async def main() -> str:
        with trio.fail_after(10):
            return await pipeline.aexecute(attempt, pipeline.context())

    assert trio.run(main) == "hedge-0"


def test_hedge_options_are_frozen_and_checked() -> None:
    options = HedgeOptions(delay=0.1, max_hedges=2)
    with pytest.raises(AttributeError):
        options.delay = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"max_hedges must be in \[1, 10\], got 11"):
        HedgeOptions(max_hedges=11)
    with pytest.raises(ValueError, match="at most"):
        Hedge(delay=9223372037)
    assert Hedge(options=options).options is options
    with pytest.raises(TypeError, match="needs HedgeOptions"):
        Hedge().reconfigure(object())  # type: ignore[arg-type]


def test_reconfigure_keeps_the_latency_samples() -> None:
    hedge = Hedge(delay=None, percentile=0.5, window=10, min_samples=3, min_delay=0.0)
    for latency in (0.1, 0.2, 0.3, 0.4, 0.5):
        hedge._observe(latency)
    assert hedge.current_delay() == pytest.approx(0.3)
    hedge.reconfigure(hedge.options.replace(percentile=0.9))
    assert hedge.samples == 5
    assert hedge.current_delay() == pytest.approx(0.5)
    hedge.reconfigure(hedge.options.replace(window=2, min_samples=2))
    assert hedge.samples == 2  # the newest two
    assert hedge.current_delay() == pytest.approx(0.5)
    hedge.reconfigure(HedgeOptions(delay=0.05))
    assert hedge.current_delay() == 0.05  # no percentile any more: the fixed delay


async def test_a_call_in_flight_keeps_the_options_it_started_with() -> None:
    hedge = Hedge(delay=0.001, max_hedges=1, budget=None)
    pipeline = Pipeline(hedge)
    started: list[int] = []
    release = asyncio.Event()

    async def attempt(ctx: CallContext) -> Any:
        started.append(ctx.hedge)
        if len(started) == 1:
            hedge.reconfigure(HedgeOptions(delay=0.001, max_hedges=3))
        await release.wait()
        return ctx.hedge

    task = asyncio.create_task(pipeline.aexecute(attempt, pipeline.context()))
    for _ in range(100):
        await asyncio.sleep(0.005)
        if len(started) >= 2:
            break
    await asyncio.sleep(0.02)
    release.set()
    await task
    assert started == [0, 1]  # one hedge, as when the call started
