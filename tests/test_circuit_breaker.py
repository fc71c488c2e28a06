from __future__ import annotations

import asyncio
import math
import threading
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience.policies.circuit_breaker as cb_module
import resilience.policies.windows as windows_module
from resilience.clock import FakeClock
from resilience.context import CallContext
from resilience.errors import BulkheadFullError, CircuitOpenError, IsolatedCircuitError
from resilience.events import Event
from resilience.outcome import Classifier, Outcome
from resilience.permit import Rejection
from resilience.pipeline import Pipeline
from resilience.policies.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerOptions,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
)
from resilience.policies.circuit_breaker.states import CircuitPermit
from resilience.policies.windows import CountWindow, TimeWindow

CLOSED, OPEN, HALF_OPEN, ISOLATED = (
    CircuitState.CLOSED,
    CircuitState.OPEN,
    CircuitState.HALF_OPEN,
    CircuitState.ISOLATED,
)


class Boom(Exception):
    pass


def ok() -> str:
    return "ok"


def boom() -> str:
    raise Boom("down")


async def aok() -> str:
    return "ok"


async def aboom() -> str:
    raise Boom("down")


def changes(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.old.value, e.new.value, e.reason) for e in events if isinstance(e, CircuitStateChanged)]


def rejected(pipeline: Pipeline) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as info:
        pipeline.call(ok)
    return info.value


# -- consecutive mode ------------------------------------------------------------------------


def test_opens_after_consecutive_failures_and_a_success_resets_the_count(clock: FakeClock) -> None:
    events: list[Event] = []
    breaker = CircuitBreaker(failure_threshold=3, break_duration=10, clock=clock)
    p = Pipeline(breaker, clock=clock, listeners=[events.append])
    for _ in range(2):
        with pytest.raises(Boom):
            p.call(boom)
    assert p.call(ok) == "ok"  # resets the run of failures
    for _ in range(2):
        with pytest.raises(Boom):
            p.call(boom)
    assert breaker.state is CLOSED
    assert breaker.metrics().consecutive_failures == 2
    with pytest.raises(Boom):  # the call that trips the breaker raises its own error
        p.call(boom)
    assert breaker.state is OPEN
    clock.advance(4)
    err = rejected(p)
    assert err.retry_after == pytest.approx(6.0)
    assert err.context is not None
    assert changes(events) == [("closed", "open", "failure_threshold")]
    rejections = [e for e in events if isinstance(e, CircuitRejected)]
    assert len(rejections) == 1
    assert rejections[0].state is OPEN
    assert rejections[0].retry_after == pytest.approx(6.0)


def test_half_open_after_the_break_then_closes_on_success(clock: FakeClock) -> None:
    events: list[Event] = []
    breaker = CircuitBreaker(failure_threshold=1, break_duration=timedelta(seconds=5), clock=clock)
    p = Pipeline(breaker, clock=clock, listeners=[events.append])
    with pytest.raises(Boom):
        p.call(boom)
    clock.advance(4.999)
    rejected(p)
    clock.advance(0.001)
    assert breaker.state is OPEN  # the move to half-open is made by the next call
    assert p.call(ok) == "ok"
    assert breaker.state is CLOSED
    assert changes(events) == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "break_elapsed"),
        ("half_open", "closed", "probes_succeeded"),
    ]


def test_failed_probe_reopens_and_break_grows_up_to_the_cap_then_resets(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        failure_threshold=1, break_duration=2, break_multiplier=3, max_break_duration=10, clock=clock
    )
    p = Pipeline(breaker, clock=clock)
    with pytest.raises(Boom):
        p.call(boom)
    breaks = []
    for _ in range(4):
        breaks.append(breaker.metrics().retry_after)
        clock.advance(breaks[-1])
        with pytest.raises(Boom):  # the probe fails: open again, for longer
            p.call(boom)
    assert breaks == pytest.approx([2, 6, 10, 10])
    clock.advance(10)
    assert p.call(ok) == "ok"
    assert breaker.state is CLOSED
    with pytest.raises(Boom):
        p.call(boom)
    assert breaker.metrics().retry_after == pytest.approx(2)  # back to the first break after a close


def test_success_threshold_and_probe_slots_with_the_permission_api(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, break_duration=1, half_open_max_calls=2, success_threshold=3)
    permit = breaker.acquire(None, 0.0)
    breaker.release(permit, Outcome.FAILURE, 0.0, 0.0)
    assert breaker.state is OPEN
    a = breaker.acquire(None, 1.0)
    b = breaker.acquire(None, 1.0)
    assert breaker.state is HALF_OPEN
    rejection = breaker.acquire(None, 1.0)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.retry_after) == ("half_open", None)
    breaker.release(a, Outcome.SUCCESS, 0.0, 1.0)  # 1 success; its slot is free again
    c = breaker.acquire(None, 1.0)
    breaker.release(b, Outcome.IGNORED, 0.0, 1.0)  # counts for nothing but frees the slot
    d = breaker.acquire(None, 1.0)
    assert isinstance(breaker.acquire(None, 1.0), Rejection)
    breaker.release(c, Outcome.SUCCESS, 0.0, 1.0)
    assert breaker.state is HALF_OPEN
    breaker.release(d, Outcome.SUCCESS, 0.0, 1.0)
    assert breaker.state is CLOSED


def test_outcomes_of_calls_admitted_before_a_transition_do_not_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, break_duration=1, half_open_max_calls=2)
    slow_closed = breaker.acquire(None, 0.0)
    for _ in range(2):
        breaker.release(breaker.acquire(None, 0.0), Outcome.FAILURE, 0.0, 0.0)
    assert breaker.state is OPEN
    probe = breaker.acquire(None, 1.0)
    assert breaker.state is HALF_OPEN
    breaker.release(slow_closed, Outcome.FAILURE, 0.0, 1.0)  # from the closed era: ignored
    assert breaker.state is HALF_OPEN
    assert breaker.metrics(1.0).probes_in_flight == 1
    breaker.release(probe, Outcome.SUCCESS, 0.0, 1.0)
    assert breaker.state is CLOSED
    breaker.release(probe, Outcome.FAILURE, 0.0, 1.0)  # a stale probe permit: ignored
    breaker.release(slow_closed, Outcome.FAILURE, 0.0, 1.0)
    breaker.release(slow_closed, Outcome.FAILURE, 0.0, 1.0)
    assert breaker.state is CLOSED
    assert breaker.metrics(1.0).consecutive_failures == 0


# -- what counts as a failure -------------------------------------------------------------------


def test_ignored_outcomes_count_as_neither(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    p = Pipeline(breaker, clock=clock)

    def full() -> None:
        raise BulkheadFullError("full")

    with pytest.raises(Boom):
        p.call(boom)
    for _ in range(5):
        with pytest.raises(BulkheadFullError):
            p.call(full)
    assert breaker.metrics().consecutive_failures == 1  # neither counted nor reset
    with pytest.raises(Boom):
        p.call(boom)
    assert breaker.state is OPEN


def test_failure_on_types_makes_other_errors_successes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, failure_on=(ConnectionError, TimeoutError), clock=clock)
    p = Pipeline(breaker, clock=clock)

    def conn() -> None:
        raise ConnectionError("refused")

    def value() -> None:
        raise ValueError("bad answer")

    with pytest.raises(ConnectionError):
        p.call(conn)
    with pytest.raises(ValueError):
        p.call(value)  # not a failure: the backend answered, so the run is broken
    with pytest.raises(ConnectionError):
        p.call(conn)
    assert breaker.state is CLOSED
    with pytest.raises(ConnectionError):
        p.call(conn)
    assert breaker.state is OPEN


def test_failure_on_predicate_and_result_predicate(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        failure_threshold=2,
        failure_on=lambda exc: "retryable" in str(exc),
        failure_if_result=lambda r: r == 503,
        clock=clock,
    )
    p = Pipeline(breaker, clock=clock)
    assert p.call(lambda: 503) == 503  # a result marked failure is still returned
    with pytest.raises(Boom):
        p.call(lambda: (_ for _ in ()).throw(Boom("fatal")))
    assert breaker.metrics().consecutive_failures == 0
    assert p.call(lambda: 503) == 503
    with pytest.raises(Boom):
        p.call(lambda: (_ for _ in ()).throw(Boom("retryable")))
    assert breaker.state is OPEN


def test_the_classifier_decides_by_default(clock: FakeClock) -> None:
    class StatusClassifier(Classifier):
        checks_results = True

        def result(self, result: object) -> Outcome:
            if result == 404:
                return Outcome.IGNORED
            return Outcome.FAILURE if result == 500 else Outcome.SUCCESS

    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    p = Pipeline(breaker, clock=clock, classifier=StatusClassifier())
    p.call(lambda: 500)
    p.call(lambda: 404)
    assert breaker.metrics().consecutive_failures == 1
    p.call(lambda: 200)
    assert breaker.metrics().consecutive_failures == 0
    p.call(lambda: 500)
    p.call(lambda: 500)
    assert breaker.state is OPEN


# -- window modes ---------------------------------------------------------------------------------


def test_count_window_opens_at_the_failure_rate_after_minimum_calls(clock: FakeClock) -> None:
    events: list[Event] = []
    breaker = CircuitBreaker(window_size=10, failure_rate=0.5, minimum_calls=6, clock=clock)
    p = Pipeline(breaker, clock=clock, listeners=[events.append])
    for _ in range(5):
        with pytest.raises(Boom):
            p.call(boom)
    assert breaker.state is CLOSED  # 5 of 5 failed, but fewer than minimum_calls
    m = breaker.metrics()
    assert (m.calls, m.failures, m.failure_rate) == (5, 5, 1.0)
    p.call(ok)
    for _ in range(4):
        p.call(ok)
    # the window: 5 failures, 5 successes; the next failure pushes out a failure: 5/10 = 0.5
    with pytest.raises(Boom):
        p.call(boom)
    assert breaker.state is OPEN
    assert changes(events) == [("closed", "open", "failure_rate")]


def test_time_window_forgets_old_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(window_duration=10, window_buckets=10, failure_rate=0.5, minimum_calls=4, clock=clock)
    p = Pipeline(breaker, clock=clock)
    for _ in range(3):
        with pytest.raises(Boom):
            p.call(boom)
    clock.advance(10)
    assert breaker.metrics().calls == 0
    p.call(ok)
    with pytest.raises(Boom):
        p.call(boom)
    assert breaker.state is CLOSED  # 1 failure of 2 calls: under minimum_calls
    with pytest.raises(Boom):
        p.call(boom)
    m = breaker.metrics()
    assert (m.calls, m.failures) == (3, 2)
    with pytest.raises(Boom):
        p.call(boom)
    assert breaker.state is OPEN


def test_slow_call_rate_opens_and_a_slow_probe_reopens(clock: FakeClock) -> None:
    events: list[Event] = []
    breaker = CircuitBreaker(
        window_size=4,
        minimum_calls=4,
        failure_rate=1.0,
        slow_call_duration=1.0,
        slow_call_rate=0.75,
        break_duration=5,
        clock=clock,
    )
    p = Pipeline(breaker, clock=clock, listeners=[events.append])

    def taking(seconds: float) -> Any:
        def call() -> str:
            clock.advance(seconds)
            return "ok"

        return call

    p.call(taking(0.5))
    p.call(taking(1.5))
    p.call(taking(1.0))  # exactly the limit: not slow
    assert breaker.state is CLOSED
    p.call(taking(2.0))
    assert breaker.metrics().slow_call_rate == 0.5
    p.call(taking(2.0))  # window: 1.5, 1.0, 2.0, 2.0 -> 3 of 4 slow
    assert breaker.state is OPEN
    clock.advance(5)
    assert p.call(taking(3.0)) == "ok"  # a slow probe succeeds but reopens
    assert breaker.state is OPEN
    assert changes(events) == [
        ("closed", "open", "slow_call_rate"),
        ("open", "half_open", "break_elapsed"),
        ("half_open", "open", "probe_slow"),
    ]


# -- by hand ----------------------------------------------------------------------------------------


def test_isolate_and_reset_emit_to_the_breakers_own_listeners(clock: FakeClock) -> None:
    own: list[Event] = []
    breaker = CircuitBreaker(failure_threshold=1, listeners=[own.append], clock=clock)
    p = Pipeline(breaker, clock=clock)
    breaker.isolate()
    with pytest.raises(IsolatedCircuitError) as info:
        p.call(ok)
    assert info.value.retry_after is None
    clock.advance(3600)
    with pytest.raises(IsolatedCircuitError):
        p.call(ok)
    breaker.reset()
    assert p.call(ok) == "ok"
    breaker.reset()  # already closed: no event
    assert changes(own) == [("closed", "isolated", "isolate"), ("isolated", "closed", "reset")]
    assert all(e.context is None for e in own)


def test_transitions_in_a_call_go_to_both_listener_sets(clock: FakeClock) -> None:
    own: list[Event] = []
    piped: list[Event] = []
    breaker = CircuitBreaker(failure_threshold=1, listeners=[own.append], clock=clock)
    p = Pipeline(breaker, clock=clock, listeners=[piped.append])
    with pytest.raises(Boom):
        p.call(boom)
    assert changes(own) == changes(piped) == [("closed", "open", "failure_threshold")]
    assert own[0] is piped[0]
    assert isinstance(own[0].context, CallContext)


def test_reset_clears_an_open_breaker_and_its_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker(window_size=5, minimum_calls=2, clock=clock)
    p = Pipeline(breaker, clock=clock)
    for _ in range(2):
        with pytest.raises(Boom):
            p.call(boom)
    assert breaker.state is OPEN
    breaker.reset()
    m = breaker.metrics()
    assert (m.state, m.calls, m.failures, m.retry_after) == (CLOSED, 0, 0, 0.0)


# -- options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failure_threshold": 0}, r"failure_threshold must be in \[1, 1000000\], got 0"),
        ({"window_size": 0}, r"window_size must be in \[1, 1000000\], got 0"),
        ({"window_duration": -1}, r"window_duration must be a finite number of seconds > 0, got -1"),
        ({"window_duration": 10, "window_buckets": 0}, r"window_buckets must be in \[1, 1000\], got 0"),
        ({"window_size": 10, "failure_rate": 1.5}, r"failure_rate must be in \(0, 1\], got 1.5"),
        ({"window_size": 10, "failure_rate": 0}, r"failure_rate must be in \(0, 1\], got 0"),
        ({"window_size": 10, "minimum_calls": 11}, r"minimum_calls must be in \[1, 10\], got 11"),
        ({"window_size": 10, "slow_call_duration": 0}, r"slow_call_duration must be a finite number .* > 0, got 0"),
        ({"window_size": 10, "slow_call_rate": 2}, r"slow_call_rate must be in \(0, 1\], got 2"),
        ({"break_duration": 0}, r"break_duration must be a finite number of seconds > 0, got 0"),
        ({"break_multiplier": 0.5}, r"break_multiplier must be in \[1, 1000\], got 0.5"),
        ({"break_duration": 10, "max_break_duration": 5}, r"max_break_duration must be >= break_duration \(10\)"),
        ({"half_open_max_calls": 0}, r"half_open_max_calls must be in \[1, 10000\], got 0"),
        ({"success_threshold": 0}, r"success_threshold must be in \[1, 10000\], got 0"),
        ({"failure_rate": 0.5}, r"failure_rate needs a sliding window"),
        ({"slow_call_duration": 1}, r"slow_call_duration needs a sliding window"),
        ({"window_size": 10, "failure_threshold": 3}, r"failure_threshold .* cannot be combined with a window"),
        ({"window_size": 10, "window_duration": 5}, r"give window_size or window_duration, not both"),
    ],
)
def test_invalid_options_raise_value_error_naming_option_value_and_range(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(**options)


def test_wrong_types_raise_type_error() -> None:
    with pytest.raises(TypeError, match="failure_on"):
        CircuitBreaker(failure_on="Boom")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="failure_if_result"):
        CircuitBreaker(failure_if_result=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shared"):
        CircuitBreaker(shared=object())  # type: ignore[arg-type]


# -- windows, with hypothesis -----------------------------------------------------------------------

outcomes = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=300)


@given(size=st.integers(1, 40), seq=outcomes)
def test_count_window_matches_a_naive_recount_of_the_last_n(size: int, seq: list[tuple[bool, bool]]) -> None:
    window = CountWindow(size)
    for i, (failed, slow) in enumerate(seq):
        window.record(failed, slow, 0.0)
        last = seq[max(0, i + 1 - size) : i + 1]
        assert window.totals(0.0) == (len(last), sum(f for f, _ in last), sum(s for _, s in last))


@given(
    buckets=st.integers(1, 20),
    steps=st.lists(
        st.tuples(st.integers(0, 3000), st.booleans(), st.booleans()),
        max_size=200,
    ),
)
@settings(max_examples=200)
def test_time_window_keeps_its_span_and_forgets_what_is_older(
    buckets: int, steps: list[tuple[int, bool, bool]]
) -> None:
    duration = 10.0
    width = duration / buckets
    window = TimeWindow(duration, buckets)
    now = 0.0
    recorded: list[tuple[float, bool, bool]] = []
    for advance_ms, failed, slow in steps:
        now += advance_ms / 1000
        window.record(failed, slow, now)
        recorded.append((now, failed, slow))
        calls, failures, slow_calls = window.totals(now)
        kept = [r for r in recorded if now - r[0] < duration - width]  # surely inside the span
        alive = [r for r in recorded if now - r[0] < duration]  # at most these
        assert len(kept) <= calls <= len(alive)
        assert sum(r[1] for r in kept) <= failures <= sum(r[1] for r in alive)
        assert sum(r[2] for r in kept) <= slow_calls <= sum(r[2] for r in alive)
        # exact, with the bucket rule: same or a later bucket within the last `buckets`
        tick = math.floor(now / width)
        exact = [r for r in recorded if tick - math.floor(r[0] / width) < buckets]
        assert (calls, failures, slow_calls) == (
            len(exact),
            sum(r[1] for r in exact),
            sum(r[2] for r in exact),
        )
    assert window.totals(now + duration) == (0, 0, 0)


class ModelBreaker:
    """The consecutive-failure rules, written as plainly as possible."""

    def __init__(self, threshold: int, brk: float, successes: int) -> None:
        self.threshold, self.brk, self.successes = threshold, brk, successes
        self.state, self.failures, self.until, self.ok = "closed", 0, 0.0, 0

    def call(self, now: float, failed: bool) -> bool:
        if self.state == "open":
            if now < self.until:
                return False
            self.state, self.ok = "half_open", 0
        if self.state == "half_open":
            if failed:
                self.state, self.until = "open", now + self.brk
            else:
                self.ok += 1
                if self.ok >= self.successes:
                    self.state, self.failures = "closed", 0
            return True
        if failed:
            self.failures += 1
            if self.failures >= self.threshold:
                self.state, self.until, self.failures = "open", now + self.brk, 0
        else:
            self.failures = 0
        return True


@given(
    threshold=st.integers(1, 4),
    successes=st.integers(1, 3),
    steps=st.lists(st.one_of(st.booleans(), st.sampled_from([0.5, 1.0, 2.0, 5.0])), max_size=80),
)
def test_consecutive_mode_follows_a_plain_model(threshold: int, successes: int, steps: list[bool | float]) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=threshold, break_duration=2, success_threshold=successes, clock=clock)
    p = Pipeline(breaker, clock=clock)
    model = ModelBreaker(threshold, 2.0, successes)
    for step in steps:
        if isinstance(step, float):
            clock.advance(step)
            continue
        admitted = model.call(clock.monotonic(), step)
        try:
            p.call(boom if step else ok)
            ran = True
        except Boom:
            ran = True
        except CircuitOpenError:
            ran = False
        assert ran == admitted
        assert breaker.state.value == model.state


# -- concurrency ------------------------------------------------------------------------------------


def test_calls_are_not_serialised_four_threads_inside_at_once() -> None:
    breaker = CircuitBreaker(window_size=10, slow_call_duration=60)  # the heavier path: lock + clock
    p = Pipeline(breaker)
    barrier = threading.Barrier(4, timeout=5)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(p.call(barrier.wait))  # passes only with 4 calls inside at once
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [0, 1, 2, 3]  # type: ignore[type-var]
    assert breaker.metrics().calls == 4


@pytest.mark.parametrize("slots", [1, 3])
def test_half_open_admits_exactly_n_probes_among_threads(slots: int) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, break_duration=1, half_open_max_calls=slots, clock=clock)
    p = Pipeline(breaker, clock=clock)
    with pytest.raises(Boom):
        p.call(boom)
    clock.advance(1)
    release = threading.Event()
    inside = threading.Semaphore(0)
    admitted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def probe() -> str:
        inside.release()
        assert release.wait(10)
        return "ok"

    def worker(i: int) -> None:
        try:
            p.call(probe)
            with lock:
                admitted.append(i)
        except CircuitOpenError:
            with lock:
                refused.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for _ in range(slots):
        assert inside.acquire(timeout=10)
    for _ in range(200):  # let every other thread reach the breaker and be refused
        if len(refused) == 16 - slots:
            break
        threading.Event().wait(0.01)
    assert len(refused) == 16 - slots
    assert breaker.metrics().probes_in_flight == slots
    release.set()
    for t in threads:
        t.join(10)
    assert len(admitted) == slots
    assert breaker.state is CLOSED


@pytest.mark.parametrize("slots", [1, 3])
async def test_half_open_admits_exactly_n_probes_among_tasks(slots: int) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, break_duration=1, half_open_max_calls=slots, clock=clock)
    p = Pipeline(breaker, clock=clock)
    with pytest.raises(Boom):
        await p.acall(aboom)
    clock.advance(1)
    release = asyncio.Event()

    async def probe() -> str:
        await release.wait()
        return "ok"

    tasks = [asyncio.create_task(p.acall(probe)) for _ in range(16)]
    for _ in range(3):
        await asyncio.sleep(0)
    refused = [t for t in tasks if t.done() and isinstance(t.exception(), CircuitOpenError)]
    assert len(refused) == 16 - slots
    assert breaker.metrics().probes_in_flight == slots
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert results.count("ok") == slots
    assert breaker.state is CLOSED


async def test_a_cancelled_probe_frees_its_slot(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, break_duration=1, clock=clock)
    p = Pipeline(breaker, clock=clock)
    with pytest.raises(Boom):
        await p.acall(aboom)
    clock.advance(1)
    task = asyncio.create_task(p.acall(asyncio.sleep, 3600))
    await asyncio.sleep(0)
    assert breaker.metrics().probes_in_flight == 1
    with pytest.raises(CircuitOpenError):
        await p.acall(aok)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is HALF_OPEN
    assert breaker.metrics().probes_in_flight == 0
    assert await p.acall(aok) == "ok"
    assert breaker.state is CLOSED


# -- sync and async parity ------------------------------------------------------------------------


SCRIPT: list[str | float] = ["f", "ok", "f", "f", "f", "ok", 2.0, "f", 1.0, 3.0, "ok", "ok", "f", 10.0, "ok", "ok"]


def run_sync(script: list[str | float]) -> list[Any]:
    clock = FakeClock()
    events: list[Event] = []
    breaker = CircuitBreaker(
        failure_threshold=3, break_duration=4, break_multiplier=2, success_threshold=2, clock=clock
    )
    p = Pipeline(breaker, clock=clock, listeners=[events.append])
    trace: list[Any] = []
    for step in script:
        if isinstance(step, float):
            clock.advance(step)
            continue
        try:
            trace.append(p.call(boom if step == "f" else ok))
        except Exception as exc:
            trace.append(type(exc).__name__)
        trace.append(breaker.state.value)
    return [trace, changes(events)]


async def run_async(script: list[str | float]) -> list[Any]:
    clock = FakeClock()
    events: list[Event] = []
    breaker = CircuitBreaker(
        failure_threshold=3, break_duration=4, break_multiplier=2, success_threshold=2, clock=clock
    )
    p = Pipeline(breaker, clock=clock, listeners=[events.append])
    trace: list[Any] = []
    for step in script:
        if isinstance(step, float):
            clock.advance(step)
            continue
        try:
            trace.append(await p.acall(aboom if step == "f" else aok))
        except Exception as exc:
            trace.append(type(exc).__name__)
        trace.append(breaker.state.value)
    return [trace, changes(events)]


async def test_sync_and_async_executors_walk_the_same_states() -> None:
    sync = run_sync(SCRIPT)
    assert sync == await run_async(SCRIPT)
    assert "CircuitOpenError" in sync[0]
    assert ("half_open", "closed", "probes_succeeded") in sync[1]


def test_the_async_executor_walks_the_same_states_under_trio() -> None:
    import trio

    assert trio.run(run_async, SCRIPT) == run_sync(SCRIPT)


def test_one_breaker_serves_sync_and_async_pipelines_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=clock)
    p = Pipeline(breaker, clock=clock)
    with pytest.raises(Boom):
        p.call(boom)

    async def second() -> None:
        with pytest.raises(Boom):
            await p.acall(aboom)

    asyncio.run(second())
    assert breaker.state is OPEN


# -- cost and exports -----------------------------------------------------------------------------


def test_modules_export_what_they_define() -> None:
    import resilience.policies.pybreaker_adapter as adapter_module
    import resilience.shared.redis_breaker as redis_module

    for module in (cb_module, windows_module, adapter_module, redis_module):
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
            and isinstance(value, type)
        }
        assert public <= set(module.__all__), public - set(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)


def test_memory_is_bounded_by_the_window() -> None:
    window = CountWindow(8)
    for i in range(10_000):
        window.record(i % 3 == 0, False)
    assert len(window._ring) == 8
    tw = TimeWindow(1.0, 4)
    for i in range(10_000):
        tw.record(True, True, i * 0.001)
    assert len(tw._calls) == 4


# -- options and reconfigure ------------------------------------------------------------------------


def _fail(breaker: CircuitBreaker, now: float) -> None:
    breaker.release(breaker.acquire(None, now), Outcome.FAILURE, 0.0, now)


def test_reconfigure_keeps_an_open_breaker_open_with_the_rest_of_its_break() -> None:
    breaker = CircuitBreaker(failure_threshold=2, break_duration=30)
    _fail(breaker, 0.0)
    _fail(breaker, 0.0)
    assert breaker.state is OPEN
    breaker.reconfigure(breaker.options.replace(failure_threshold=5, break_duration=10))
    assert breaker.state is OPEN
    assert breaker.metrics(5.0).retry_after == pytest.approx(25.0)  # the break it started with
    rejection = breaker.acquire(None, 5.0)
    assert isinstance(rejection, Rejection) and rejection.reason == "open"


def test_reconfigure_keeps_the_consecutive_count_and_applies_the_new_threshold() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    _fail(breaker, 0.0)
    _fail(breaker, 0.0)
    breaker.reconfigure(breaker.options.replace(failure_threshold=4))
    assert breaker.metrics(0.0).consecutive_failures == 2
    _fail(breaker, 0.0)
    assert breaker.state is CLOSED  # 3 < 4
    _fail(breaker, 0.0)
    assert breaker.state is OPEN


def test_reconfigure_keeps_the_window_of_the_same_shape_and_empties_another() -> None:
    breaker = CircuitBreaker(window_size=10, minimum_calls=10, failure_rate=0.5)
    for _ in range(4):
        _fail(breaker, 0.0)
    breaker.reconfigure(breaker.options.replace(failure_rate=0.9))
    assert breaker.metrics(0.0).calls == 4  # same window: counts kept
    stale = breaker.acquire(None, 0.0)
    breaker.reconfigure(breaker.options.replace(window_size=20, minimum_calls=10))
    assert breaker.metrics(0.0).calls == 0  # another shape: a new window
    breaker.release(stale, Outcome.FAILURE, 0.0, 0.0)  # admitted before the change: not counted
    assert breaker.metrics(0.0).calls == 0


def test_reconfigure_to_a_time_window_makes_the_breaker_read_the_clock() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    assert breaker.clocked is False
    breaker.reconfigure(CircuitBreakerOptions(window_duration=10, minimum_calls=2, failure_rate=0.5))
    assert breaker.clocked is True
    p = Pipeline(breaker, clock=clock)
    for _ in range(2):
        with pytest.raises(Boom):
            p.call(boom)
    assert breaker.state is OPEN


def test_breaker_options_are_frozen_checked_and_typed() -> None:
    options = CircuitBreakerOptions(failure_threshold=3)
    with pytest.raises(AttributeError):
        options.failure_threshold = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"failure_threshold must be in \[1, 1000000\], got 0"):
        options.replace(failure_threshold=0)
    with pytest.raises(TypeError, match=r"CircuitBreaker\.reconfigure needs CircuitBreakerOptions"):
        CircuitBreaker().reconfigure(object())  # type: ignore[arg-type]
    assert CircuitBreaker(options=options).options is options
    with pytest.raises(TypeError, match="options must be CircuitBreakerOptions"):
        CircuitBreaker(options=object())  # type: ignore[arg-type]


def test_a_half_open_probe_survives_a_reconfigure() -> None:
    breaker = CircuitBreaker(failure_threshold=1, break_duration=1, success_threshold=1)
    _fail(breaker, 0.0)
    probe = breaker.acquire(None, 1.0)
    assert breaker.state is HALF_OPEN
    breaker.reconfigure(breaker.options.replace(break_duration=5))
    breaker.release(probe, Outcome.SUCCESS, 0.0, 1.0)
    assert breaker.state is CLOSED


# -- half-open has a maximum wait (issue 9, item 17) ------------------------------------------------


def test_a_probe_that_never_returns_cannot_hold_the_breaker_half_open_for_good() -> None:
    events: list[Event] = []
    breaker = CircuitBreaker(failure_threshold=1, break_duration=5, half_open_max_wait=30, listeners=[events.append])
    _fail(breaker, 0.0)
    stuck = breaker.acquire(None, 5.0)  # the probe, which never reports
    assert breaker.state is HALF_OPEN
    refused = breaker.acquire(None, 34.9)
    assert isinstance(refused, Rejection) and refused.reason == "half_open"
    reopened = breaker.acquire(None, 35.0)  # 30 s half-open with every slot taken
    assert isinstance(reopened, Rejection) and reopened.reason == "open"
    assert reopened.retry_after == pytest.approx(5.0)
    assert breaker.state is OPEN
    assert ("half_open", "open", "half_open_timeout") in changes(events)
    breaker.release(stuck, Outcome.SUCCESS, 0.0, 36.0)  # too late: counts for nothing
    assert breaker.state is OPEN
    probe = breaker.acquire(None, 40.0)  # a new half-open period, a new probe
    assert isinstance(probe, CircuitPermit) and probe.probe
    breaker.release(probe, Outcome.SUCCESS, 0.0, 40.0)
    assert breaker.state is CLOSED


def test_half_open_max_wait_is_checked() -> None:
    with pytest.raises(ValueError, match="half_open_max_wait must be a finite number of seconds > 0, got 0"):
        CircuitBreaker(half_open_max_wait=0)
    assert CircuitBreaker().options.half_open_max_wait == 60.0
