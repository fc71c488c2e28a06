"""Call and attempt events (issue 12, item 1): who gets them, what they say, and that a pipeline
without a call listener runs its calls exactly as before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilience import (
    CallContext,
    CircuitBreaker,
    Constant,
    Event,
    FakeClock,
    Fallback,
    Outcome,
    Pipeline,
    Retry,
    RetryScheduled,
)
from resilience.events import AttemptEnded, AttemptStarted, CallEnded, CallListener, CallStarted
from resilience.outcome import Pending
from resilience.policies.hedge import Hedge
from tests.helpers import MODES, Script, run, run_async, run_ctx


class Boom(Exception):
    pass


def record() -> tuple[list[Event], CallListener]:
    events: list[Event] = []
    return events, CallListener(events.append)


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


@pytest.mark.parametrize("mode", MODES)
def test_a_retried_call_tells_each_attempt(mode: str) -> None:
    clock = FakeClock()
    events, listener = record()
    script = Script(Boom("first"), "ok", clock=clock, durations=[0.25, 0.5])
    p = Pipeline(Retry(3, backoff=Constant(1.0)), clock=clock, listeners=[listener])
    assert run(mode, p, script) == "ok"
    assert kinds(events) == [
        "CallStarted",
        "AttemptStarted",
        "AttemptEnded",
        "RetryScheduled",
        "AttemptStarted",
        "AttemptEnded",
        "CallEnded",
    ]
    started = events[0]
    assert isinstance(started, CallStarted) and started.policies == ("retry",) and started.policy == "pipeline"
    first, second = events[2], events[5]
    assert isinstance(first, AttemptEnded) and isinstance(second, AttemptEnded)
    assert (first.attempt, first.hedge, first.outcome, type(first.error)) == (1, 0, Outcome.FAILURE, Boom)
    assert first.duration == pytest.approx(0.25)
    assert (second.attempt, second.outcome, second.error, second.result) == (2, Outcome.SUCCESS, None, "ok")
    assert second.duration == pytest.approx(0.5)
    retry = events[3]
    assert isinstance(retry, RetryScheduled) and retry.delay == 1.0
    ended = events[-1]
    assert isinstance(ended, CallEnded)
    assert ended.outcome is Outcome.SUCCESS and ended.error is None
    assert ended.duration == pytest.approx(1.75)  # both attempts and the backoff between them


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_call_ends_with_its_error(mode: str) -> None:
    events, listener = record()
    p = Pipeline(Retry(2, backoff=Constant(0.0)), clock=FakeClock(), listeners=[listener])
    with pytest.raises(Boom):
        run(mode, p, Script(Boom("a"), Boom("b")))
    ended = events[-1]
    assert isinstance(ended, CallEnded) and ended.outcome is Outcome.FAILURE and isinstance(ended.error, Boom)
    assert [e.attempt for e in events if isinstance(e, AttemptStarted)] == [1, 2]


@pytest.mark.parametrize("mode", MODES)
def test_a_fallback_answer_is_a_successful_call(mode: str) -> None:
    events, listener = record()
    p = Pipeline(Fallback(value="spare"), clock=FakeClock(), listeners=[listener])
    assert run(mode, p, Script(Boom())) == "spare"
    assert kinds(events) == ["CallStarted", "AttemptStarted", "AttemptEnded", "FallbackUsed", "CallEnded"]
    ended = events[-1]
    assert isinstance(ended, CallEnded) and ended.outcome is Outcome.SUCCESS


@pytest.mark.parametrize("mode", MODES)
def test_an_attempt_a_gate_turns_away_is_not_sent_and_makes_no_attempt_event(mode: str) -> None:
    clock = FakeClock()
    events, listener = record()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    p = Pipeline(Retry(3, backoff=Constant(0.0)), breaker, clock=clock, listeners=[listener])
    with pytest.raises(Exception, match="open"):
        run(mode, p, Script(Boom()))
    assert [e.attempt for e in events if isinstance(e, AttemptStarted)] == [1]
    assert "CircuitRejected" in kinds(events)


def test_the_endpoint_known_before_an_attempt_and_the_one_it_went_to() -> None:
    events, listener = record()
    p = Pipeline(Retry(2, backoff=Constant(0.0)), clock=FakeClock(), listeners=[listener])
    picks = iter(["10.0.0.1:1", "10.0.0.2:1"])

    def attempt(ctx: CallContext) -> str:
        ctx.endpoint = next(picks)  # what a balancing adapter's pick does
        ctx.tried = [*(ctx.tried or []), ctx.endpoint]
        if ctx.attempt == 1:
            raise Boom()
        return "ok"

    ctx = p.context()
    ctx.endpoint = "fixed:443"  # an adapter with one target sets it before the call
    assert p.execute(attempt, ctx) == "ok"
    started = [e for e in events if isinstance(e, AttemptStarted)]
    ended = [e for e in events if isinstance(e, AttemptEnded)]
    assert [s.endpoint for s in started] == ["fixed:443", None]  # the second would be a stale pick
    assert [e.endpoint for e in ended] == ["10.0.0.1:1", "10.0.0.2:1"]


def test_hedged_attempts_come_on_their_forks() -> None:
    clock = FakeClock()
    events, listener = record()
    p = Pipeline(Hedge(delay=0.1), clock=clock, listeners=[listener])
    gates: dict[int, asyncio.Future[str]] = {}

    async def attempt(ctx: CallContext) -> str:
        gates[ctx.hedge] = asyncio.get_running_loop().create_future()
        return await gates[ctx.hedge]

    async def scenario() -> str:
        task = asyncio.ensure_future(p.aexecute(attempt, p.context()))
        for _ in range(50):
            await asyncio.sleep(0)
            if 0 in gates:
                break
        clock.advance(0.1)
        for _ in range(50):
            await asyncio.sleep(0)
            if 1 in gates:
                break
        gates[1].set_result("hedge")
        return await task

    assert asyncio.run(scenario()) == "hedge"
    started = [e for e in events if isinstance(e, AttemptStarted)]
    assert [(s.attempt, s.hedge) for s in started] == [(1, 0), (1, 1)]
    assert started[1].context is not started[0].context  # the hedge's own context
    ended = {e.hedge: e for e in events if isinstance(e, AttemptEnded)}
    assert ended[1].outcome is Outcome.SUCCESS
    assert ended[0].outcome is Outcome.IGNORED and isinstance(ended[0].error, asyncio.CancelledError)
    assert "HedgeStarted" in kinds(events) and "HedgeWon" in kinds(events)
    assert isinstance(events[-1], CallEnded) and events[-1].outcome is Outcome.SUCCESS


class Stream(Pending):
    pass


@pytest.mark.parametrize("mode", MODES)
def test_a_stream_attempt_and_its_call_end_when_the_stream_ends(mode: str) -> None:
    events, listener = record()
    p = Pipeline(Retry(2), clock=FakeClock(), listeners=[listener])
    stream = Stream()
    result = run_ctx(mode, p, lambda ctx: stream, p.context())
    assert result is stream
    assert kinds(events) == ["CallStarted", "AttemptStarted"]
    stream.end(Boom("mid-stream"))
    assert kinds(events) == ["CallStarted", "AttemptStarted", "AttemptEnded", "CallEnded"]
    assert all(isinstance(e.error, Boom) for e in events[2:])  # type: ignore[attr-defined]


def test_plain_listeners_get_only_the_policies_events() -> None:
    plain: list[Event] = []
    following, listener = record()
    p = Pipeline(Retry(2, backoff=Constant(0.0)), clock=FakeClock(), listeners=[plain.append, listener])
    assert p.call(Script(Boom(), "ok")) == "ok"
    assert kinds(plain) == ["RetryScheduled"]
    assert kinds(following).count("AttemptStarted") == 2


def test_without_a_call_listener_the_chain_is_the_one_it_was() -> None:
    def noop() -> None:
        return None

    bare = Pipeline(Retry(2), clock=FakeClock())
    plain = Pipeline(Retry(2), clock=FakeClock(), listeners=[lambda e: None])
    followed = Pipeline(Retry(2), clock=FakeClock(), listeners=[CallListener()])
    assert bare._sync_chain.__name__ == plain._sync_chain.__name__ == "retry_sync"
    assert followed._sync_chain.__name__ == "observed_call_sync"
    assert bare.call(noop) is None


class Switch(CallListener):
    """A call listener that can be switched off, and that records what it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.events: list[Event] = []
        self.watched: list[Pipeline] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def active(self) -> bool:
        return self.on

    def watch(self, pipeline: Pipeline) -> None:
        self.watched.append(pipeline)


@pytest.mark.parametrize("mode", MODES)
def test_an_inactive_call_listener_gets_no_call_or_attempt_event(mode: str) -> None:
    switch = Switch()
    p = Pipeline(Retry(2, backoff=Constant(0.0)), clock=FakeClock(), listeners=[switch])
    assert switch.watched == [p]
    assert run(mode, p, Script(Boom(), "ok")) == "ok"
    assert kinds(switch.events) == ["RetryScheduled"]  # the policy's own event still comes
    switch.on = True
    switch.events.clear()
    assert run(mode, p, Script(Boom(), "ok")) == "ok"
    assert kinds(switch.events).count("AttemptEnded") == 2


def test_a_listener_that_raises_breaks_no_call(caplog: pytest.LogCaptureFixture) -> None:
    def bad(event: Event) -> None:
        raise RuntimeError("listener bug")

    class BadWatch(CallListener):
        def watch(self, pipeline: Any) -> None:
            raise RuntimeError("watch bug")

    p = Pipeline(Retry(2), clock=FakeClock(), listeners=[CallListener(bad), BadWatch()])
    assert p.call(lambda: "ok") == "ok"
    assert "listener bug" in caplog.text and "watch bug" in caplog.text


def test_call_listener_refuses_what_is_not_callable() -> None:
    with pytest.raises(TypeError, match="fn must be callable, got 3"):
        CallListener(3)  # type: ignore[arg-type]


def test_decorated_functions_are_followed_too() -> None:
    events, listener = record()
    p = Pipeline(Retry(2), clock=FakeClock(), listeners=[listener])

    @p
    async def fetch() -> str:
        return "ok"

    assert run_async("async", fetch) == "ok"
    assert kinds(events) == ["CallStarted", "AttemptStarted", "AttemptEnded", "CallEnded"]
