from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    BulkheadFullError,
    CallContext,
    Classifier,
    Event,
    FakeClock,
    Outcome,
    Pipeline,
    ThrottledError,
)
from resilience.policies.throttle import AdaptiveThrottle, ThrottleRejected, rejection_probability


class NotFound(Exception):
    """The backend answered "no such thing": the caller's fault, but the backend accepted the call."""


class HttpLike(Classifier):
    __slots__ = ()
    checks_results = True

    def error(self, exc: BaseException) -> Outcome:
        if isinstance(exc, NotFound):
            return Outcome.IGNORED
        return super().error(exc)

    def result(self, result: object) -> Outcome:
        return Outcome.FAILURE if result == 503 else Outcome.SUCCESS


class NeverRejects(random.Random):
    def random(self) -> float:
        return 1.0


def run(mode: str, pipeline: Pipeline, outcome: Any) -> Any:
    """Call through ``pipeline``; ``outcome`` is raised if an exception, else returned."""

    def fn(ctx: CallContext) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    if mode == "sync":
        return pipeline.execute(fn, pipeline.context())

    async def afn(ctx: CallContext) -> Any:
        return fn(ctx)

    return asyncio.run(pipeline.aexecute(afn, pipeline.context()))


def feed(throttle: AdaptiveThrottle, now: float, accepted: int, failed: int) -> None:
    """Count ``accepted + failed`` requests at ``now`` (locally rejected ones count too)."""
    for i in range(accepted + failed):
        permit = throttle.try_acquire(now)
        if isinstance(permit, int):
            throttle.record(permit, i < accepted, now)


@settings(max_examples=500)
@given(requests=st.integers(0, 10**6), accepts=st.integers(0, 10**6), k=st.floats(1.0, 100.0))
def test_probability_is_in_0_1_and_zero_while_k_times_accepts_cover_requests(
    requests: int, accepts: int, k: float
) -> None:
    accepts = min(accepts, requests)
    p = rejection_probability(requests, accepts, k)
    assert 0.0 <= p < 1.0
    assert (p == 0.0) == (accepts * k >= requests)
    if p > 0:
        assert p == pytest.approx((requests - k * accepts) / (requests + 1))


@pytest.mark.parametrize(("accepts", "expected"), [(0, 100 / 101), (30, 40 / 101), (45, 10 / 101)])
def test_rejection_rate_over_many_trials_matches_the_formula(accepts: int, expected: float) -> None:
    rng = random.Random(20240501)
    trials = 1500
    rejected = 0
    for _ in range(trials):
        throttle = AdaptiveThrottle(k=2.0, rng=rng)
        feed(throttle, 0.0, accepts, 100 - accepts)
        assert throttle.counts(0.0) == (100, accepts)
        assert throttle.probability(0.0) == pytest.approx(expected)
        rejected += not isinstance(throttle.try_acquire(0.0), int)
    sigma = math.sqrt(trials * expected * (1 - expected))
    assert abs(rejected - trials * expected) <= 4 * sigma + 1


def test_decision_is_a_draw_below_p() -> None:
    class Fixed(random.Random):
        value = 0.0

        def random(self) -> float:
            return self.value

    rng = Fixed()
    throttle = AdaptiveThrottle(k=2.0, rng=rng)
    rng.value = 1.0
    feed(throttle, 0.0, 30, 70)
    p = 40 / 101
    rng.value = p - 1e-9
    assert not isinstance(throttle.try_acquire(0.0), int)  # request 101 (counted)
    p = 41 / 102
    rng.value = p
    assert isinstance(throttle.try_acquire(0.0), int)


def test_no_draw_and_no_rejection_while_the_backend_accepts(clock: FakeClock) -> None:
    class Exploding(random.Random):
        def random(self) -> float:
            raise AssertionError("no draw needed when p == 0")

    pipeline = Pipeline(AdaptiveThrottle(rng=Exploding()), clock=clock)
    for _ in range(1000):
        assert run("sync", pipeline, "ok") == "ok"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failing_backend_gets_throttled_and_recovers_after_the_window(mode: str, clock: FakeClock) -> None:
    seen: list[Event] = []
    throttle = AdaptiveThrottle(k=2.0, rng=random.Random(7))
    pipeline = Pipeline(throttle, clock=clock, listeners=[seen.append])
    for _ in range(10):
        run(mode, pipeline, "ok")
    failures = throttled = 0
    errors: list[ThrottledError] = []
    for _ in range(400):
        try:
            run(mode, pipeline, ConnectionError("down"))
        except ConnectionError:
            failures += 1
        except ThrottledError as exc:
            throttled += 1
            errors.append(exc)
    assert all(exc.retry_after is None and exc.context is not None for exc in errors)
    assert throttle.counts(clock.monotonic()) == (410, 10)
    assert throttled > 300
    assert failures + throttled == 400
    events = [e for e in seen if isinstance(e, ThrottleRejected)]
    assert len(events) == throttled
    assert all(0 < e.probability < 1 and e.accepts == 10 for e in events)
    assert events[-1].probability == pytest.approx((events[-1].requests - 20) / (events[-1].requests + 1))
    clock.advance(10.0)
    assert throttle.counts(clock.monotonic()) == (0, 0)
    assert throttle.probability(clock.monotonic()) == 0.0
    assert run(mode, pipeline, "ok") == "ok"


def test_window_expires_bucket_by_bucket() -> None:
    throttle = AdaptiveThrottle(k=1.0, window=10.0, buckets=40, rng=NeverRejects())
    feed(throttle, 0.0, 0, 50)
    feed(throttle, 5.0, 20, 30)
    assert throttle.counts(9.99) == (100, 20)
    assert throttle.counts(10.0) == (50, 20)  # the t=0 bucket left the window
    assert throttle.counts(14.99) == (50, 20)
    assert throttle.counts(15.0) == (0, 0)
    feed(throttle, 1000.0, 3, 0)
    assert throttle.counts(1000.0) == (3, 3)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_what_counts_as_accepted(mode: str, clock: FakeClock) -> None:
    throttle = AdaptiveThrottle(rng=NeverRejects())
    pipeline = Pipeline(throttle, clock=clock, classifier=HttpLike())
    cases: list[tuple[Any, tuple[int, int]]] = [
        ("ok", (1, 1)),  # success
        (NotFound(), (2, 2)),  # the caller's fault: the backend did accept it
        (503, (3, 2)),  # a failed result: a request, not an accept
        (RuntimeError("boom"), (4, 2)),  # a failure
        (BulkheadFullError("full"), (4, 2)),  # rejected by our own policy further in: neither
    ]
    for outcome, counts in cases:
        with contextlib.suppress(Exception):
            run(mode, pipeline, outcome)
        assert throttle.counts(clock.monotonic()) == counts, outcome


async def test_a_cancelled_call_counts_as_neither(clock: FakeClock) -> None:
    throttle = AdaptiveThrottle(rng=NeverRejects())
    pipeline = Pipeline(throttle, clock=clock)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(pipeline.acall(hang))
    await started.wait()
    assert throttle.counts(0.0) == (1, 0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert throttle.counts(0.0) == (0, 0)


def test_a_taken_back_request_outside_the_window_is_not_taken_twice() -> None:
    throttle = AdaptiveThrottle(window=1.0, buckets=4, rng=NeverRejects())
    permit = throttle.try_acquire(0.0)
    assert isinstance(permit, int)
    feed(throttle, 1.5, 0, 2)
    throttle.record(permit, None, 1.5)  # its bucket left the window already
    assert throttle.counts(1.5) == (2, 0)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["accept", "fail", "neither", "reject"])),
        max_size=120,
    )
)
def test_counts_match_a_naive_model(ops: list[tuple[int, str]]) -> None:
    """The bucketed counts equal a recount of every event still in the window."""
    width = 0.25
    throttle = AdaptiveThrottle(k=1.5, window=1.0, buckets=4, rng=NeverRejects())
    log: list[tuple[int, str]] = []  # (tick, "request" | "accept")
    tick = 0
    for step, kind in ops:
        tick += step
        now = tick * width + width / 2
        permit = throttle.try_acquire(now)
        assert isinstance(permit, int)
        log.append((tick, "request"))
        if kind == "accept":
            throttle.record(permit, True, now)
            log.append((tick, "accept"))
        elif kind == "fail":
            throttle.record(permit, False, now)
        elif kind == "neither":
            throttle.record(permit, None, now)
            log.remove((tick, "request"))
        live = [k for t, k in log if tick - t < 4]
        assert throttle.counts(now) == (live.count("request"), live.count("accept"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sync_and_async_make_the_same_decisions(seed: int) -> None:
    outcomes = [("ok" if random.Random(seed * 1000 + i).random() < 0.3 else RuntimeError("x")) for i in range(200)]

    def play(mode: str) -> list[str]:
        clock = FakeClock()
        pipeline = Pipeline(AdaptiveThrottle(rng=random.Random(seed)), clock=clock)
        trace = []
        for outcome in outcomes:
            clock.advance(0.05)
            try:
                run(mode, pipeline, outcome)
                trace.append("ok")
            except ThrottledError:
                trace.append("throttled")
            except RuntimeError:
                trace.append("failed")
        return trace

    sync_trace = play("sync")
    assert "throttled" in sync_trace
    assert sync_trace == play("async")


def test_threads_lose_no_counts() -> None:
    throttle = AdaptiveThrottle(rng=random.Random(1))
    pipeline = Pipeline(throttle)
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait(10)
        for _ in range(500):
            pipeline.call(lambda: None)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    from resilience import SYSTEM_CLOCK

    assert throttle.counts(SYSTEM_CLOCK.monotonic()) == (4000, 4000)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 0.5}, ValueError, r"k must be in \[1, inf\), got 0\.5"),
        ({"k": math.nan}, ValueError, r"k must be in \[1, inf\), got nan"),
        ({"window": 0}, ValueError, "window must be a finite number of seconds > 0, got 0"),
        ({"window": -1.0}, ValueError, "window must be a finite number of seconds > 0, got -1.0"),
        ({"buckets": 0}, ValueError, r"buckets must be in \[1, 10000\], got 0"),
        ({"rng": 42}, TypeError, "rng must be a random.Random or None, got 42"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        AdaptiveThrottle(**kwargs)


def test_defaults() -> None:
    from datetime import timedelta

    throttle = AdaptiveThrottle(window=timedelta(seconds=5))
    assert (throttle.k, throttle.window, throttle.buckets) == (2.0, 5.0, 40)
    assert repr(throttle) == "AdaptiveThrottle(k=2.0, window=5.0, buckets=40)"
