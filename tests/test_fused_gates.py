"""Consecutive gates run in one generated frame, exactly as if each had its own executor."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    AdaptiveThrottle,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    ConcurrencyLimit,
    Event,
    FakeClock,
    Pipeline,
    Policy,
    TokenBucket,
)
from resilience.policy import AsyncNext, SyncNext


class Through(Policy):
    """A policy that is not a gate: it keeps the gates around it apart (one executor each)."""

    def wrap(self, next: SyncNext) -> SyncNext:
        return next

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        async def through(ctx: Any) -> Any:
            return await next(ctx)

        return through


def _gates(clock: FakeClock) -> list[Any]:
    return [
        CircuitBreaker(failure_threshold=3, break_duration=5, clock=clock),
        AdaptiveThrottle(k=1.5, rng=random.Random(7)),  # the same draws in both runs
        ConcurrencyLimit(2),
        TokenBucket(5, 3, clock=clock),
        Bulkhead(2),
    ]


def _trace(fused: bool, script: list[str], mode: str) -> list[Any]:
    clock = FakeClock()
    gates = _gates(clock)
    policies: list[Policy] = []
    for gate in gates:
        policies.append(gate)
        if not fused:
            policies.append(Through())
    events: list[Event] = []
    pipeline = Pipeline(*policies, clock=clock, listeners=[events.append])
    if fused:
        assert pipeline._sync_chain.__name__.count("_") == len(gates)  # one frame for all five
    out: list[Any] = []

    def step(kind: str) -> Any:
        if kind == "boom":
            raise ConnectionError("down")
        return kind

    async def astep(kind: str) -> Any:
        return step(kind)

    for kind in script:
        if kind == "tick":
            clock.advance(1.0)
            continue
        try:
            if mode == "sync":
                out.append(pipeline.call(step, kind))
            else:
                out.append(asyncio.run(pipeline.acall(astep, kind)))
        except Exception as exc:
            out.append(type(exc).__name__)
    out.append([type(e).__name__ for e in events])
    breaker, throttle, limit, _bucket, bulkhead = gates
    out.append((breaker.state.value, throttle.counts(clock.monotonic()), limit.inflight, bulkhead.active))
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["ok", "boom", "tick"]), max_size=30), st.sampled_from(["sync", "async"]))
def test_fused_gates_walk_as_nested_ones(script: list[str], mode: str) -> None:
    assert _trace(True, script, mode) == _trace(False, script, mode)


def test_a_rejection_inside_does_not_count_against_the_backend_outside() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    bulkhead = Bulkhead(1)
    pipeline = Pipeline(breaker, bulkhead)
    inner = Pipeline(breaker, bulkhead)

    def nested() -> str:
        with pytest.raises(BulkheadFullError):
            inner.call(lambda: "never")
        return "held"

    assert pipeline.call(nested) == "held"
    assert breaker.state.value == "closed"  # the bulkhead's rejection was not the backend's fault
    assert bulkhead.active == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_judgement_that_raises_inside_reaches_the_gates_outside_as_an_error(mode: str) -> None:
    clock = FakeClock()
    limit = ConcurrencyLimit(4)

    def bad(result: object) -> bool:
        raise RuntimeError("predicate bug")

    breaker = CircuitBreaker(failure_threshold=1, failure_if_result=bad, clock=clock)
    bulkhead = Bulkhead(2)
    pipeline = Pipeline(limit, breaker, bulkhead, clock=clock)

    async def aok() -> str:
        return "ok"

    def run() -> Any:
        return pipeline.call(lambda: "ok") if mode == "sync" else asyncio.run(pipeline.acall(aok))

    with pytest.raises(RuntimeError, match="predicate bug"):
        run()
    assert limit.inflight == 0
    assert bulkhead.active == 0
    assert breaker.state.value == "closed"
