from __future__ import annotations

import random
from typing import Any

import pytest

from resilience import (
    CallContext,
    Classifier,
    Constant,
    DeadlineExceededError,
    Event,
    Exponential,
    FakeClock,
    Outcome,
    Pipeline,
    Retry,
    RetryBudget,
    RetryBudgetExhaustedError,
    RetryGaveUp,
    RetryScheduled,
)

from .helpers import Script, run, run_ctx

MODES = ["sync", "async", "trio"]


@pytest.mark.parametrize("mode", MODES)
def test_retries_until_success_with_backoff_on_the_fake_clock(mode: str, clock: FakeClock) -> None:
    script = Script(ConnectionError("a"), ConnectionError("b"), "ok")
    pipeline = Pipeline(Retry(5, backoff=Exponential(1.0, 2.0, 30.0)), clock=clock)
    assert run(mode, pipeline, script) == "ok"
    assert script.calls == 3
    assert clock.sleeps == [1.0, 2.0]
    assert clock.monotonic() == 3.0


@pytest.mark.parametrize("mode", MODES)
def test_gives_up_after_max_attempts_with_the_last_error(mode: str, clock: FakeClock) -> None:
    script = Script(ConnectionError("1"), ConnectionError("2"), ConnectionError("3"), "never")
    pipeline = Pipeline(Retry(3, backoff=Constant(0.5)), clock=clock)
    with pytest.raises(ConnectionError, match="3"):
        run(mode, pipeline, script)
    assert script.calls == 3
    assert clock.sleeps == [0.5, 0.5]


@pytest.mark.parametrize("mode", MODES)
def test_only_chosen_exceptions_are_retried(mode: str, clock: FakeClock) -> None:
    script = Script(KeyError("no"), "ok")
    pipeline = Pipeline(Retry(3, retry_on=ConnectionError, backoff=Constant(0)), clock=clock)
    with pytest.raises(KeyError):
        run(mode, pipeline, script)
    assert script.calls == 1
    script = Script(ConnectionError("x"), "ok")
    assert run(mode, pipeline, script) == "ok"


@pytest.mark.parametrize("mode", MODES)
def test_result_predicate_asks_for_a_retry(mode: str, clock: FakeClock) -> None:
    script = Script("busy", "busy", "done")
    pipeline = Pipeline(Retry(5, retry_if_result=lambda r: r == "busy", backoff=Constant(1)), clock=clock)
    assert run(mode, pipeline, script) == "done"
    assert script.calls == 3


@pytest.mark.parametrize("mode", MODES)
def test_last_result_is_returned_when_attempts_run_out(mode: str, clock: FakeClock) -> None:
    script = Script("busy")
    pipeline = Pipeline(Retry(2, retry_if_result=lambda r: r == "busy", backoff=Constant(1)), clock=clock)
    assert run(mode, pipeline, script) == "busy"
    assert script.calls == 2


class _StatusClassifier(Classifier):
    """Results are (status, body) pairs; 5xx is a failure; discarded results are recorded."""

    checks_results = True

    def __init__(self) -> None:
        self.discarded: list[Any] = []

    def result(self, result: object) -> Outcome:
        assert isinstance(result, tuple)
        return Outcome.FAILURE if result[0] >= 500 else Outcome.SUCCESS

    def discard(self, result: object) -> None:
        self.discarded.append(result)


@pytest.mark.parametrize("mode", MODES)
def test_classifier_failures_are_retried_and_discarded(mode: str, clock: FakeClock) -> None:
    classifier = _StatusClassifier()
    script = Script((503, "a"), (502, "b"), (200, "c"))
    pipeline = Pipeline(Retry(3, backoff=Constant(0.1)), clock=clock, classifier=classifier)
    assert run(mode, pipeline, script) == (200, "c")
    assert classifier.discarded == [(503, "a"), (502, "b")]


@pytest.mark.parametrize("mode", MODES)
def test_non_idempotent_calls_are_not_retried_unless_opted_in(mode: str, clock: FakeClock) -> None:
    calls: list[int] = []

    def fn(ctx: CallContext) -> str:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("reset")
        return "ok"

    pipeline = Pipeline(Retry(3, backoff=Constant(0)), clock=clock)
    with pytest.raises(ConnectionError):
        run_ctx(mode, pipeline, fn, pipeline.context(idempotent=False))
    assert calls == [1]
    calls.clear()
    opted_in = Pipeline(Retry(3, backoff=Constant(0), retry_non_idempotent=True), clock=clock)
    assert run_ctx(mode, opted_in, fn, opted_in.context(idempotent=False)) == "ok"
    assert calls == [1, 2]


@pytest.mark.parametrize("mode", MODES)
def test_committed_calls_are_not_retried(mode: str, clock: FakeClock) -> None:
    def fn(ctx: CallContext) -> str:
        ctx.committed = True  # e.g. a stream's first message reached the caller
        raise ConnectionError("broken mid-stream")

    pipeline = Pipeline(Retry(3, backoff=Constant(0)), clock=clock)
    ctx = pipeline.context()
    with pytest.raises(ConnectionError):
        run_ctx(mode, pipeline, fn, ctx)
    assert ctx.attempt == 1


@pytest.mark.parametrize("mode", MODES)
def test_server_pushback_sets_the_delay_and_a_longer_one_than_allowed_ends_the_retries(
    mode: str, clock: FakeClock
) -> None:
    pushbacks = [2.5, 500.0]
    gave_up: list[str] = []

    def fn(ctx: CallContext) -> str:
        if pushbacks:
            ctx.pushback = pushbacks.pop(0)
            raise ConnectionError("busy")
        return "ok"

    pipeline = Pipeline(
        Retry(5, backoff=Constant(9), max_pushback=60),
        clock=clock,
        listeners=[lambda e: gave_up.append(e.reason) if isinstance(e, RetryGaveUp) else None],
    )
    with pytest.raises(ConnectionError):  # 500 s asked, 60 s allowed: honoured or given up, never shortened
        run_ctx(mode, pipeline, fn, pipeline.context())
    assert clock.sleeps == [2.5]
    assert gave_up == ["pushback_too_long"]


@pytest.mark.parametrize("mode", MODES)
def test_negative_pushback_means_do_not_retry(mode: str, clock: FakeClock) -> None:
    def fn(ctx: CallContext) -> str:
        ctx.pushback = -1
        raise ConnectionError("go away")

    pipeline = Pipeline(Retry(5, backoff=Constant(1)), clock=clock)
    ctx = pipeline.context()
    with pytest.raises(ConnectionError):
        run_ctx(mode, pipeline, fn, ctx)
    assert ctx.attempt == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("mode", MODES)
def test_pushback_past_the_deadline_fails_at_once_with_a_clear_error(mode: str, clock: FakeClock) -> None:
    def fn(ctx: CallContext) -> str:
        ctx.pushback = 30.0
        raise ConnectionError("retry later")

    pipeline = Pipeline(Retry(5), clock=clock)
    with pytest.raises(DeadlineExceededError, match=r"retry in 30.000s but only 10.000s remain") as info:
        run_ctx(mode, pipeline, fn, pipeline.context(timeout=10))
    assert isinstance(info.value.__cause__, ConnectionError)
    assert clock.sleeps == []


@pytest.mark.parametrize("mode", MODES)
def test_never_sleeps_past_the_deadline(mode: str, clock: FakeClock) -> None:
    attempts: list[float] = []

    def fn(ctx: CallContext) -> str:
        attempts.append(clock.monotonic())
        raise ConnectionError("down")

    pipeline = Pipeline(Retry(10, backoff=Exponential(1, 2, 100)), clock=clock)
    with pytest.raises(ConnectionError):
        run_ctx(mode, pipeline, fn, pipeline.context(timeout=10))
    # Delays 1, 2, 4 fit (t = 1, 3, 7); the next (8) would end past t = 10.
    assert attempts == [0, 1, 3, 7]
    assert clock.monotonic() <= 10


@pytest.mark.parametrize("mode", MODES)
def test_budget_stops_retries_in_a_full_outage(mode: str, clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0, window=10)
    pipeline = Pipeline(Retry(3, backoff=Constant(0), budget=budget), clock=clock)
    calls = 0
    exhausted = 0
    for _ in range(100):
        script = Script(ConnectionError("down"))
        try:
            run(mode, pipeline, script)
        except RetryBudgetExhaustedError as exc:
            assert isinstance(exc.last_error, ConnectionError)
            assert exc.__cause__ is exc.last_error
            exhausted += 1
        except ConnectionError:
            pass
        calls += script.calls
    # 100 requests, 10% budget: at most 10 retries over the outage instead of 200.
    assert calls <= 110
    assert exhausted >= 80


@pytest.mark.parametrize("mode", MODES)
def test_budget_exhaustion_returns_a_failed_result_as_it_is(mode: str, clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0, min_per_second=0, window=10)
    classifier = _StatusClassifier()
    pipeline = Pipeline(Retry(3, budget=budget), clock=clock, classifier=classifier)
    assert run(mode, pipeline, Script((503, "x"))) == (503, "x")


@pytest.mark.parametrize("mode", MODES)
def test_events_tell_what_retry_did(mode: str, clock: FakeClock) -> None:
    events: list[Event] = []
    pipeline = Pipeline(Retry(2, backoff=Constant(1)), clock=clock, listeners=[events.append])
    with pytest.raises(ConnectionError):
        run(mode, pipeline, Script(ConnectionError("down")))
    assert [type(e) for e in events] == [RetryScheduled, RetryGaveUp]
    scheduled, gave_up = events
    assert isinstance(scheduled, RetryScheduled) and scheduled.delay == 1.0 and scheduled.attempt == 1
    assert isinstance(gave_up, RetryGaveUp) and gave_up.reason == "attempts" and gave_up.attempt == 2


def test_a_failing_listener_does_not_break_the_call(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    def bad(event: Event) -> None:
        raise RuntimeError("listener bug")

    pipeline = Pipeline(Retry(2, backoff=Constant(0)), clock=clock, listeners=[bad])
    assert pipeline.call(Script(ConnectionError("x"), "ok")) == "ok"
    assert "listener bug" in caplog.text


def test_jitter_uses_the_injected_random_source(clock: FakeClock) -> None:
    from resilience import ExponentialJitter

    def delays(seed: int) -> list[float]:
        c = FakeClock()
        p = Pipeline(Retry(4, backoff=ExponentialJitter(1, 2, 60), rng=random.Random(seed)), clock=c)
        with pytest.raises(ConnectionError):
            p.call(Script(ConnectionError("x")))
        return c.sleeps

    assert delays(1) == delays(1)
    assert delays(1) != delays(2)


def test_cancellation_and_keyboard_interrupt_are_never_retried(clock: FakeClock) -> None:
    script = Script(KeyboardInterrupt(), "ok")
    with pytest.raises(KeyboardInterrupt):
        Pipeline(Retry(3, backoff=Constant(0)), clock=clock).call(script)
    assert script.calls == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attempts": 0}, ValueError, r"attempts must be in \[1, 100\], got 0"),
        ({"attempts": 101}, ValueError, r"attempts must be in \[1, 100\], got 101"),
        ({"max_pushback": -1}, ValueError, "max_pushback must be a finite number of seconds >= 0, got -1"),
        ({"backoff": 1.0}, TypeError, "backoff must be a Backoff"),
        ({"retry_on": "oops"}, TypeError, "retry_on must be an exception type"),
        ({"budget": 3}, TypeError, "budget must be a RetryBudget or None, got 3"),
    ],
)
def test_invalid_retry_options(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Retry(**kwargs)


# -- options and reconfigure ---------------------------------------------------------------


def test_options_are_frozen_and_validated() -> None:
    import dataclasses
    from datetime import timedelta

    from resilience.policies.retry import RetryOptions

    options = RetryOptions(attempts=4, max_pushback=timedelta(seconds=2))  # type: ignore[arg-type]
    assert options.max_pushback == 2.0
    assert options == RetryOptions(attempts=4, max_pushback=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.attempts = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"attempts must be in \[1, 100\], got 0"):
        options.replace(attempts=0)
    with pytest.raises(TypeError, match="backoff must be a Backoff"):
        RetryOptions(backoff=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_if_result must be a callable or None, got 3"):
        RetryOptions(retry_if_result=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options must be RetryOptions, got 3"):
        Retry(options=3)  # type: ignore[arg-type]
    policy = Retry(options=options, budget=None)
    assert policy.options is options
    assert (policy.attempts, policy.max_pushback, policy.retry_non_idempotent) == (4, 2.0, False)


def test_reconfigure_needs_retry_options() -> None:
    policy = Retry(3)
    with pytest.raises(TypeError, match=r"Retry\.reconfigure needs RetryOptions, got 5"):
        policy.reconfigure(5)  # type: ignore[arg-type]
    assert policy.attempts == 3


@pytest.mark.parametrize("mode", MODES)
def test_a_call_in_flight_finishes_under_the_options_it_started_with(mode: str, clock: FakeClock) -> None:
    from resilience.policies.retry import RetryOptions

    budget = RetryBudget()
    policy = Retry(3, backoff=Constant(1), budget=budget)
    pipeline = Pipeline(policy, clock=clock)
    seen: list[int] = []

    def fn(ctx: CallContext) -> str:
        seen.append(ctx.attempt)
        if ctx.attempt == 1:
            policy.reconfigure(RetryOptions(attempts=1, backoff=Constant(5)))
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        run_ctx(mode, pipeline, fn, pipeline.context())
    assert seen == [1, 2, 3]  # three attempts and the old backoff, as when it started
    assert clock.sleeps == [1.0, 1.0]
    seen.clear()
    with pytest.raises(ConnectionError):
        run_ctx(mode, pipeline, fn, pipeline.context())
    assert seen == [1]  # a new call: the new options
    assert policy.budget is budget  # reconfigure leaves the shared budget alone


@pytest.mark.parametrize("mode", MODES)
def test_every_call_deposits_in_the_budget(mode: str, clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, window=10)
    pipeline = Pipeline(Retry(3, budget=budget), clock=clock)
    for _ in range(40):
        assert run(mode, pipeline, Script("ok")) == "ok"
    assert budget.available(clock.monotonic()) == 20
    # The deposits carry their time (read for one call in 16): they expire with their
    # window, but for the few after the last reading.
    for _ in range(40):
        assert run(mode, pipeline, Script("ok")) == "ok"
    clock.advance(10.5)
    assert budget.available(clock.monotonic()) <= 0.5 * 16


@pytest.mark.parametrize("mode", MODES)
def test_the_last_error_is_raised_without_the_earlier_ones_as_its_context(mode: str, clock: FakeClock) -> None:
    script = Script(ConnectionError("1"), ConnectionError("2"), ConnectionError("3"))
    pipeline = Pipeline(Retry(3, backoff=Constant(0), budget=None), clock=clock)
    with pytest.raises(ConnectionError, match="3") as info:
        run(mode, pipeline, script)
    assert info.value.__context__ is None
    assert info.value.__cause__ is None


@pytest.mark.parametrize("mode", MODES)
def test_a_context_reused_for_a_second_call_starts_at_attempt_one(mode: str, clock: FakeClock) -> None:
    attempts: list[int] = []

    def fn(ctx: CallContext) -> str:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise ConnectionError("once")
        return "ok"

    pipeline = Pipeline(Retry(3, backoff=Constant(0), budget=None), clock=clock)
    ctx = pipeline.context()
    assert run_ctx(mode, pipeline, fn, ctx) == "ok"
    assert run_ctx(mode, pipeline, fn, ctx) == "ok"
    assert attempts == [1, 2, 1]
