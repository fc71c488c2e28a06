"""The OpenTelemetry listener on the SDK's in-memory exporter (issue 12, items 2 and 3): spans per call
and per attempt, the policies' decisions as span events, the metrics and gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from resilience import (
    Bulkhead,
    BulkheadFullError,
    CallContext,
    CircuitBreaker,
    ConcurrencyLimit,
    Constant,
    EndpointPool,
    FakeClock,
    Fallback,
    OutlierEjection,
    PeakEwma,
    Pipeline,
    Retry,
    RetryBudget,
    StaticDiscovery,
)
from resilience.outcome import Outcome
from resilience.policies.hedge import Hedge
from resilience.telemetry import OpenTelemetryListener
from tests._telemetry import Recorder, events
from tests.helpers import MODES, Script, run


class Boom(Exception):
    pass


@pytest.fixture
def rec() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_call_that_retried_once_has_two_attempt_spans_under_its_span(rec: Recorder, mode: str) -> None:
    clock = FakeClock()
    retry = Retry(3, backoff=Constant(0.5))
    p = Pipeline(retry, clock=clock, listeners=[rec.listener], service="inventory", method="Get")
    assert run(mode, p, Script(Boom("first"), "ok")) == "ok"
    call = rec.call()
    assert call.kind is SpanKind.INTERNAL and call.name == "inventory/Get"
    assert call.attributes is not None
    assert call.attributes["resilience.policies"] == "retry"
    assert call.attributes["resilience.outcome"] == "success"
    assert call.status.status_code is StatusCode.UNSET
    first, second = rec.attempts()
    for span in (first, second):
        assert span.parent is not None and span.parent.span_id == call.context.span_id
        assert span.context.trace_id == call.context.trace_id
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["resilience.attempt"], first.attributes["resilience.outcome"]) == (1, "failure")
    assert first.attributes["error.type"] == "tests.test_telemetry_listener.Boom"
    assert first.status.status_code is StatusCode.ERROR
    assert [name for name, _ in events(first)] == ["exception"]
    assert "exception.stacktrace" not in events(first)[0][1]
    assert (second.attributes["resilience.attempt"], second.attributes["resilience.outcome"]) == (2, "success")
    retried = {
        "resilience.attempt": 1,
        "resilience.retry.delay": 0.5,
        "error.type": "tests.test_telemetry_listener.Boom",
        "resilience.policy": "retry",
    }
    assert ("resilience.retry", retried) in events(call)
    labels = {"resilience.service": "inventory", "resilience.method": "Get", "resilience.outcome": "success"}
    assert rec.points("resilience.call.duration") == [(labels, 1)]  # a histogram's count: calls by outcome
    durations = rec.points("resilience.attempt.duration")
    attempts = {(a["resilience.outcome"], a["resilience.hedge"]): n for a, n in durations}
    assert attempts == {("failure", False): 1, ("success", False): 1}
    assert [a.get("error.type") for a, _ in durations if a["resilience.outcome"] == "failure"] == [
        "tests.test_telemetry_listener.Boom"
    ]
    assert rec.points("resilience.retries") == [({"resilience.policy": "retry"}, 1)]


def test_a_call_span_is_a_child_of_the_callers_span(rec: Recorder) -> None:
    tracer = rec.tracer_provider.get_tracer("test")
    p = Pipeline(Retry(2), listeners=[rec.listener])
    with tracer.start_as_current_span("handler") as parent:
        p.call(lambda: "ok")
    call = rec.call()
    assert call.parent is not None and call.parent.span_id == parent.get_span_context().span_id


@pytest.mark.parametrize("mode", MODES)
def test_a_fallback_answer_shows_on_the_call(rec: Recorder, mode: str) -> None:
    p = Pipeline(Fallback(value="spare"), clock=FakeClock(), listeners=[rec.listener])
    assert run(mode, p, Script(Boom())) == "spare"
    call = rec.call()
    assert call.attributes is not None and call.attributes["resilience.outcome"] == "fallback"
    assert [n for n, _ in events(call)] == ["resilience.fallback"]
    assert rec.points("resilience.fallbacks") == [({"resilience.policy": "fallback"}, 1)]


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_call_has_an_error_status_and_its_error_type(rec: Recorder, mode: str) -> None:
    p = Pipeline(Retry(2, backoff=Constant(0.0)), clock=FakeClock(), listeners=[rec.listener])
    with pytest.raises(Boom):
        run(mode, p, Script(Boom(), Boom()))
    call = rec.call()
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None and call.attributes["error.type"] == "tests.test_telemetry_listener.Boom"
    assert [n for n, _ in events(call)] == ["resilience.retry", "resilience.retry.gave_up", "exception"]


def test_a_hedge_that_won_and_a_primary_cancelled(rec: Recorder) -> None:
    clock = FakeClock()
    p = Pipeline(Hedge(delay=0.1), clock=clock, listeners=[rec.listener])
    gates: dict[int, asyncio.Future[str]] = {}

    async def attempt(ctx: CallContext) -> str:
        gates[ctx.hedge] = asyncio.get_running_loop().create_future()
        return await gates[ctx.hedge]

    async def scenario() -> str:
        task = asyncio.ensure_future(p.aexecute(attempt, p.context()))
        for want in (0, 1):
            for _ in range(50):
                await asyncio.sleep(0)
                if want in gates:
                    break
            if want == 0:
                clock.advance(0.1)
        gates[1].set_result("hedge")
        return await task

    assert asyncio.run(scenario()) == "hedge"
    call = rec.call()
    names = [n for n, _ in events(call)]
    assert names == ["resilience.hedge", "resilience.hedge.won"]
    assert events(call)[0][1]["resilience.hedge.delay"] == pytest.approx(0.1)
    primary, hedge = rec.attempts()
    assert primary.attributes is not None and hedge.attributes is not None
    assert primary.attributes["resilience.outcome"] == "cancelled"
    assert primary.status.status_code is StatusCode.UNSET  # a lost hedge is no error
    assert (hedge.attributes["resilience.hedge"], hedge.attributes["resilience.outcome"]) == (1, "success")
    assert rec.points("resilience.hedges") == [({"resilience.policy": "hedge"}, 1)]


@pytest.mark.parametrize("mode", MODES)
def test_rejections_and_breaker_transitions_are_events(rec: Recorder, mode: str) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    p = Pipeline(Retry(2, backoff=Constant(0.0)), breaker, clock=clock, listeners=[rec.listener])
    with pytest.raises(Exception, match="open"):
        run(mode, p, Script(Boom()))
    call = rec.call()
    found = dict(events(call))
    changed = found["resilience.circuit.state_changed"]
    assert (changed["resilience.circuit.old"], changed["resilience.circuit.new"]) == ("closed", "open")
    assert found["resilience.rejected"]["resilience.reason"] == "open"
    assert found["resilience.rejected"]["resilience.rejected_by"] == "CircuitRejected"
    assert len(rec.attempts()) == 1  # the rejected retry was never sent
    assert rec.points("resilience.rejections") == [
        ({"resilience.policy": "circuitbreaker", "resilience.reason": "open"}, 1)
    ]


def test_a_full_bulkhead_is_a_rejection(rec: Recorder) -> None:
    bulkhead = Bulkhead(1)  # no queue: a second call is turned away
    p = Pipeline(bulkhead, listeners=[rec.listener])

    def inner() -> str:
        with pytest.raises(BulkheadFullError):
            p.call(lambda: "never")
        return "ok"

    assert p.call(inner) == "ok"
    rejected = [c for c in rec.calls() if c.attributes and c.attributes["resilience.outcome"] == "ignored"]
    assert len(rejected) == 1
    assert dict(events(rejected[0]))["resilience.rejected"]["resilience.reason"] == "full"


def test_gauges_read_what_the_pipelines_and_pools_hold(rec: Recorder) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock, name="orders-breaker")
    budget = RetryBudget(ratio=0.0, min_per_second=3.0)
    limit = ConcurrencyLimit(name="orders-limit")
    Pipeline(Retry(2, budget=budget), breaker, limit, clock=clock, listeners=[rec.listener])
    discovery = StaticDiscovery({"orders": ["10.0.0.1:1", "10.0.0.2:1"]})
    pool: EndpointPool[Any] = EndpointPool("orders", discovery, PeakEwma(ejection=OutlierEjection()))
    rec.listener.watch(pool)
    states = {a["resilience.circuit.state"]: v for a, v in rec.points("resilience.circuit.state")}
    assert states == {"closed": 1, "open": 0, "half_open": 0, "isolated": 0}
    breaker.isolate()
    states = {a["resilience.circuit.state"]: v for a, v in rec.points("resilience.circuit.state")}
    assert states["isolated"] == 1 and states["closed"] == 0
    (level,) = rec.points("resilience.retry_budget.level")
    assert level[0] == {"resilience.policy": "retry"} and level[1] == pytest.approx(30.0)  # 3/s over a 10 s window
    assert rec.points("resilience.concurrency.limit") == [({"resilience.policy": "orders-limit"}, limit.limit)]
    endpoints = {a["resilience.endpoint.state"]: v for a, v in rec.points("resilience.endpoints")}
    assert endpoints == {"healthy": 2, "ejected": 0}
    ctx = CallContext("orders", "Get")
    selection = pool.pick(ctx, clock.monotonic())
    selection.release(Outcome.SUCCESS, 0.02, clock.monotonic(), ctx)
    scores = rec.points("resilience.balancer.score")
    assert scores == [({"resilience.service": "orders", "resilience.endpoint": selection.address}, pytest.approx(0.02))]
    rec.listener.unwatch(pool)
    assert rec.points("resilience.endpoints") == []
    pool.close()


def test_watch_refuses_what_it_cannot_read(rec: Recorder) -> None:
    with pytest.raises(TypeError, match=r"watch takes a Pipeline.*got 'nope'"):
        rec.listener.watch("nope")


def test_two_listeners_on_one_pipeline_make_one_set_of_spans() -> None:
    first, second = Recorder(), Recorder()
    try:
        p = Pipeline(Retry(2), listeners=[first.listener, second.listener])
        p.call(lambda: "ok")
        assert len(first.calls()) == 1 and len(first.attempts()) == 1
        assert second.spans() == []  # the call's spans are the first listener's
    finally:
        first.close()
        second.close()


def test_without_an_sdk_the_listener_is_inactive_and_calls_run_as_without_it() -> None:
    if getattr(trace, "_TRACER_PROVIDER", None) is not None:
        pytest.skip("a global tracer provider was set in this process")
    listener = OpenTelemetryListener()
    assert not listener.active()
    p = Pipeline(Retry(2), listeners=[listener])
    ctx = p.context()
    assert p.execute(lambda c: "ok", ctx) == "ok"
    assert ctx.telemetry is None and not ctx.observed
    assert "inactive" in repr(listener)


def test_a_disabled_listener_never_records_and_adds_no_step(rec: Recorder) -> None:
    listener = OpenTelemetryListener(rec.tracer_provider, rec.meter_provider, enabled=False)
    assert not listener.active()
    p = Pipeline(Retry(2), listeners=[listener])
    assert p._sync_chain.__name__ == "retry_sync"  # the chain of a pipeline without listeners
    p.call(lambda: "ok")
    assert rec.spans() == []


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="tracer_provider must be an opentelemetry TracerProvider, got 3"):
        OpenTelemetryListener(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="meter_provider must be an opentelemetry MeterProvider"):
        OpenTelemetryListener(meter_provider="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="enabled must be a bool, got 'yes'"):
        OpenTelemetryListener(enabled="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="redact_query_params must be a sequence of names, not one string"):
        OpenTelemetryListener(redact_query_params="token")
    with pytest.raises(ValueError, match="redact_headers must hold non-empty strings, got ''"):
        OpenTelemetryListener(redact_headers=[""])


def test_an_ejection_during_a_call_is_an_event_on_its_span(rec: Recorder) -> None:
    clock = FakeClock()
    discovery = StaticDiscovery({"orders": ["10.0.0.1:1", "10.0.0.2:1"]})
    ejection = OutlierEjection(consecutive_failures=1, success_rate_stdev=None, max_ejection_percent=50)
    pool: EndpointPool[Any] = EndpointPool("orders", discovery, ejection=ejection)
    p = Pipeline(Retry(1), clock=clock, listeners=[rec.listener])

    def attempt(ctx: CallContext) -> str:
        selection = pool.pick(ctx, clock.monotonic())
        selection.release(Outcome.FAILURE, 0.01, clock.monotonic(), ctx)
        return "answered anyway"

    assert p.execute(attempt, p.context()) == "answered anyway"
    (_, attributes) = next(e for e in events(rec.call()) if e[0] == "resilience.endpoint.ejected")
    assert attributes["resilience.reason"] == "consecutive_failures" and attributes["resilience.service"] == "orders"
    assert rec.points("resilience.endpoint.ejections") == [
        ({"resilience.service": "orders", "resilience.reason": "consecutive_failures"}, 1)
    ]
    pool.close()
