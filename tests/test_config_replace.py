"""Pipeline.replace: an in-place swap of the policy chain, for adapters that hold a pipeline."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from resilience import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Constant,
    FakeClock,
    Pipeline,
    Retry,
)


def test_new_calls_take_the_new_chain_and_share_its_policies() -> None:
    pipeline = Pipeline(Retry(1))
    breaker = CircuitBreaker(failure_threshold=1)
    source = Pipeline(Retry(2, backoff=Constant(0), budget=None), breaker)
    pipeline.replace(source)
    assert pipeline.policies == source.policies
    attempts: list[int] = []

    def fail() -> None:
        attempts.append(1)
        raise ConnectionError("down")

    with pytest.raises(CircuitOpenError):
        pipeline.call(fail)
    assert len(attempts) == 1 and breaker.state.value == "open"  # one failure opened it; the retry met it open
    with pytest.raises(TypeError, match="replace needs a Pipeline"):
        pipeline.replace(Retry(2))  # type: ignore[arg-type]


def test_a_call_in_flight_finishes_under_the_chain_it_started_with() -> None:
    old = Bulkhead(1)
    pipeline = Pipeline(old)
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(5)
        return "old"

    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(pipeline.call(slow)))
    thread.start()
    assert entered.wait(5)
    with pytest.raises(BulkheadFullError):
        pipeline.call(lambda: "x")  # the old bulkhead's one slot is taken
    pipeline.replace(Pipeline(Bulkhead(5)))
    assert pipeline.call(lambda: "new") == "new"  # the new chain: a free slot
    release.set()
    thread.join(5)
    assert result == ["old"] and old.active == 0  # the call in flight released its slot in the old bulkhead


def test_decorated_functions_follow_the_swap_sync_and_async() -> None:
    clock = FakeClock()
    pipeline = Pipeline(clock=clock)
    calls: list[int] = []

    @pipeline
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("once")
        return "ok"

    @pipeline
    async def aflaky() -> str:
        return flaky()

    with pytest.raises(ConnectionError):
        flaky()
    calls.clear()
    events: list[object] = []
    pipeline.replace(Pipeline(Retry(3, backoff=Constant(1), budget=None), clock=clock, listeners=[events.append]))
    assert flaky() == "ok" and len(calls) == 2
    assert [type(e).__name__ for e in events] == ["RetryScheduled"]  # the new listeners too
    calls.clear()
    assert asyncio.run(aflaky()) == "ok" and clock.sleeps[-1] == 1.0


def test_listeners_that_watch_pipelines_are_told_again() -> None:
    class Watcher:
        def __init__(self) -> None:
            self.watched: list[Any] = []

        def __call__(self, event: object) -> None:
            pass

        def watch(self, pipeline: Pipeline) -> None:
            self.watched.append(pipeline)

    watcher = Watcher()
    target = Pipeline()
    target.replace(Pipeline(Retry(2), listeners=[watcher]))
    assert target in watcher.watched and target.listeners == (watcher,)
