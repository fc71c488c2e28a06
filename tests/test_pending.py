"""Results judged at their end (:class:`~resilience.outcome.Pending`): the gates around an
attempt that returns one keep their permits until it ends, then count its real outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilience import Bulkhead, BulkheadFullError, CallContext, CircuitBreaker, CircuitOpenError, Pipeline
from resilience.outcome import Classifier, Pending
from resilience.policies.circuit_breaker import CircuitState

from .helpers import MODES, run_async


class StreamClassifier(Classifier):
    __slots__ = ()
    checks_results = True


class Stream(Pending):
    __slots__ = ()


def _ctx(pipeline: Pipeline, classifier: Classifier | None = None) -> CallContext:
    ctx = pipeline.context()
    ctx.classifier = classifier if classifier is not None else StreamClassifier()
    return ctx


def _call(mode: str, pipeline: Pipeline, ctx: CallContext, result: Any) -> Any:
    if mode == "sync":
        return pipeline.execute(lambda c: result, ctx)

    async def attempt(c: CallContext) -> Any:
        return result

    return run_async(mode, pipeline.aexecute, attempt, ctx)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fused", [False, True], ids=["one-gate", "fused-gates"])
def test_gates_hold_their_permits_until_the_stream_ends(mode: str, fused: bool) -> None:
    bulkhead = Bulkhead(1)
    policies: list[Any] = [CircuitBreaker(failure_threshold=1), bulkhead] if fused else [bulkhead]
    pipeline = Pipeline(*policies)
    stream = Stream()
    assert _call(mode, pipeline, _ctx(pipeline), stream) is stream
    assert bulkhead.active == 1
    with pytest.raises(BulkheadFullError):
        _call(mode, pipeline, _ctx(pipeline), Stream())
    assert stream.end() is True
    assert bulkhead.active == 0
    assert stream.end(RuntimeError("again")) is False  # ends once
    assert bulkhead.active == 0
    assert isinstance(_call(mode, pipeline, _ctx(pipeline), Stream()), Stream)


@pytest.mark.parametrize("mode", MODES)
def test_a_stream_failing_after_it_was_returned_counts_as_a_failure(mode: str) -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    pipeline = Pipeline(breaker)
    for _ in range(2):
        stream = Stream()
        _call(mode, pipeline, _ctx(pipeline), stream)
        assert breaker.state is CircuitState.CLOSED
        stream.end(ConnectionError("reset mid-stream"))
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        _call(mode, pipeline, _ctx(pipeline), Stream())


@pytest.mark.parametrize("mode", MODES)
def test_a_stream_ending_well_or_cancelled_does_not_count_against_the_backend(mode: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    pipeline = Pipeline(breaker)
    good, cancelled = Stream(), Stream()
    _call(mode, pipeline, _ctx(pipeline), good)
    _call(mode, pipeline, _ctx(pipeline), cancelled)
    good.end()
    cancelled.end(asyncio.CancelledError())  # the caller gave up: ignored
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("mode", MODES)
def test_a_stream_ended_before_the_gate_looks_is_released_at_once(mode: str) -> None:
    bulkhead = Bulkhead(1)
    pipeline = Pipeline(bulkhead)
    stream = Stream()
    stream.end()
    _call(mode, pipeline, _ctx(pipeline), stream)
    assert bulkhead.active == 0


@pytest.mark.parametrize("mode", MODES)
def test_without_a_result_checking_classifier_a_pending_result_is_a_plain_success(mode: str) -> None:
    bulkhead = Bulkhead(1)
    pipeline = Pipeline(bulkhead)
    _call(mode, pipeline, _ctx(pipeline, Classifier()), Stream())
    assert bulkhead.active == 0
