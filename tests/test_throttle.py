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
    Rejection,
    ThrottledError,
)
from resilience.policies.throttle import (
    AdaptiveThrottle,
    AdaptiveThrottleOptions,
    ThrottlePermit,
    ThrottleRejected,
    rejection_probability,
)

ACCEPTED = {True: Outcome.SUCCESS, False: Outcome.FAILURE, None: Outcome.IGNORED}


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


def admitted(throttle: AdaptiveThrottle, now: float) -> bool:
    """One request at ``now``; whether it was admitted (its permit is then released as a refusal)."""
    permit = throttle.acquire(None, now)
    if isinstance(permit, ThrottlePermit):
        throttle.release(permit, Outcome.FAILURE, 0.0, now)
        return True
    return False


def record(throttle: AdaptiveThrottle, permit: object, accepted: bool | None, now: float) -> None:
    """End the call of ``permit``: accepted (``True``), refused (``False``) or neither (``None``)."""
    assert isinstance(permit, ThrottlePermit)
    throttle.release(permit, ACCEPTED[accepted], 0.0, now)


def feed(throttle: AdaptiveThrottle, now: float, accepted: int, failed: int) -> None:
    """Count ``accepted + failed`` requests at ``now`` (locally rejected ones count too)."""
    for i in range(accepted + failed):
        permit = throttle.acquire(None, now)
        if isinstance(permit, ThrottlePermit):
            record(throttle, permit, i < accepted, now)


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
        rejected += not admitted(throttle, 0.0)
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
    assert not admitted(throttle, 0.0)  # request 101 (counted)
    p = 41 / 102
    rng.value = p
    assert admitted(throttle, 0.0)


def test_no_draw_and_no_rejection_while_the_backend_accepts(clock: FakeClock) -> None:
    class Exploding(random.Random):
        def random(self) -> float:
            raise AssertionError("no draw needed when p == 0")

    pipeline = Pipeline(AdaptiveThrottle(rng=Exploding()), clock=clock)
    for _ in range(1000):
        assert run("sync", pipeline, "ok") == "ok"


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
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


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
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
    permit = throttle.acquire(None, 0.0)
    feed(throttle, 1.5, 0, 2)
    record(throttle, permit, None, 1.5)  # its bucket left the window already
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
        permit = throttle.acquire(None, now)
        log.append((tick, "request"))
        if kind == "accept":
            record(throttle, permit, True, now)
            log.append((tick, "accept"))
        elif kind == "fail":
            record(throttle, permit, False, now)
        elif kind == "neither":
            record(throttle, permit, None, now)
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
    from resilience.clock import SYSTEM_CLOCK

    assert throttle.counts(SYSTEM_CLOCK.monotonic()) == (4000, 4000)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 0.5}, ValueError, r"k must be in \[1, 1000\], got 0\.5"),
        ({"k": math.nan}, ValueError, r"k must be in \[1, 1000\], got nan"),
        ({"k": math.inf}, ValueError, r"k must be in \[1, 1000\], got inf"),
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


# -- the permit protocol -------------------------------------------------------------------


def test_release_reads_the_outcome_the_throttle_way() -> None:
    throttle = AdaptiveThrottle(rng=NeverRejects())
    for outcome, counts in [
        (Outcome.SUCCESS, (1, 1)),  # accepted
        (Outcome.FAILURE, (2, 1)),  # refused: a request only
        (Outcome.IGNORED, (2, 1)),  # never reached the backend: the request is taken back
    ]:
        permit = throttle.acquire(None, 0.0)
        assert isinstance(permit, ThrottlePermit)
        throttle.release(permit, outcome, 0.0, 0.0)
        assert throttle.counts(0.0) == counts, outcome


def test_rejection_carries_the_counts_it_was_made_on() -> None:
    class Zero(random.Random):
        def random(self) -> float:
            return 0.0

    throttle = AdaptiveThrottle(k=2.0, rng=Zero())
    feed(throttle, 0.0, 0, 1)  # the first request finds empty counts: always admitted
    rejection = throttle.acquire(None, 0.0)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.detail, rejection.retry_after) == ("throttled", (0.5, 1, 0), None)
    error = throttle.rejected(CallContext(), rejection)
    assert isinstance(error, ThrottledError)
    assert "p=0.500: 0 of 1 recent requests accepted, k=2" in str(error)


def test_one_permit_per_bucket() -> None:
    throttle = AdaptiveThrottle(window=1.0, buckets=4, rng=NeverRejects())
    first = throttle.acquire(None, 0.0)
    assert throttle.acquire(None, 0.2) is first  # same bucket: nothing allocated
    later = throttle.acquire(None, 0.3)
    assert isinstance(later, ThrottlePermit)
    assert later is not first
    assert (first.tick, later.tick) == (0, 1)  # type: ignore[union-attr]


def test_judges_errors_and_results_by_what_reached_the_backend() -> None:
    throttle = AdaptiveThrottle()
    ctx = CallContext(classifier=HttpLike())
    assert throttle.judge_error(ctx, RuntimeError("boom")) is Outcome.FAILURE
    assert throttle.judge_error(ctx, NotFound()) is Outcome.SUCCESS  # the caller's fault, answered
    assert throttle.judge_error(ctx, BulkheadFullError("full")) is Outcome.IGNORED  # ours, never sent
    assert throttle.judge_error(ctx, asyncio.CancelledError()) is Outcome.IGNORED
    assert throttle.judge_error(ctx, KeyboardInterrupt()) is Outcome.IGNORED
    assert throttle.judge_result(ctx, 503) is Outcome.FAILURE
    assert throttle.judge_result(ctx, 200) is Outcome.SUCCESS
    assert throttle.judge_result(CallContext(), 503) is Outcome.SUCCESS  # a classifier that checks no results


class RaisingClassifier(HttpLike):
    __slots__ = ()

    def error(self, exc: BaseException) -> Outcome:
        raise LookupError("classifier bug")


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_a_raising_classifier_takes_the_request_back(mode: str, clock: FakeClock) -> None:
    throttle = AdaptiveThrottle(rng=NeverRejects())
    pipeline = Pipeline(throttle, clock=clock, classifier=RaisingClassifier())
    run(mode, pipeline, "ok")
    with pytest.raises(LookupError, match="classifier bug"):
        run(mode, pipeline, RuntimeError("boom"))
    assert throttle.counts(clock.monotonic()) == (1, 1)


# -- options and reconfigure ---------------------------------------------------------------


def test_options_are_frozen_and_validated() -> None:
    import dataclasses
    from datetime import timedelta

    options = AdaptiveThrottleOptions(k=1.5, window=timedelta(seconds=2), buckets=8)  # type: ignore[arg-type]
    assert options == AdaptiveThrottleOptions(1.5, 2.0, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.k = 3.0  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"buckets must be in \[1, 10000\], got 0"):
        options.replace(buckets=0)
    with pytest.raises(TypeError, match="options must be AdaptiveThrottleOptions, got 2"):
        AdaptiveThrottle(options=2)  # type: ignore[arg-type]
    throttle = AdaptiveThrottle(options=options)
    assert throttle.options is options
    assert (throttle.k, throttle.window, throttle.buckets) == (1.5, 2.0, 8)


def test_reconfigure_needs_throttle_options() -> None:
    throttle = AdaptiveThrottle()
    with pytest.raises(TypeError, match=r"AdaptiveThrottle.reconfigure needs AdaptiveThrottleOptions, got 3.0"):
        throttle.reconfigure(3.0)  # type: ignore[arg-type]
    assert throttle.options == AdaptiveThrottleOptions()


def test_reconfigure_keeps_the_counts_of_the_same_shape_and_applies_k_at_once() -> None:
    throttle = AdaptiveThrottle(k=2.0, window=10.0, buckets=40, rng=NeverRejects())
    feed(throttle, 0.0, 30, 70)
    assert throttle.probability(0.0) == pytest.approx(40 / 101)
    in_flight = throttle.acquire(None, 0.0)  # admitted before the change
    throttle.reconfigure(AdaptiveThrottleOptions(k=1.5, window=10.0, buckets=40))
    assert throttle.counts(0.0) == (101, 30)
    assert throttle.probability(0.0) == pytest.approx((101 - 45) / 102)
    record(throttle, in_flight, True, 0.0)  # same shape: its accept counts
    assert throttle.counts(0.0) == (101, 31)


@pytest.mark.parametrize("change", [{"window": 5.0}, {"buckets": 10}])
def test_reconfigure_to_another_shape_starts_new_counts(change: dict[str, Any]) -> None:
    throttle = AdaptiveThrottle(window=10.0, buckets=40, rng=NeverRejects())
    feed(throttle, 0.0, 30, 70)
    accepted = throttle.acquire(None, 0.0)
    taken_back = throttle.acquire(None, 0.0)
    throttle.reconfigure(throttle.options.replace(**change))
    assert throttle.counts(0.0) == (0, 0)
    feed(throttle, 0.0, 1, 1)
    # Calls admitted under the old counts count for nothing in the new ones.
    record(throttle, accepted, True, 0.0)
    record(throttle, taken_back, None, 0.0)
    assert throttle.counts(0.0) == (2, 1)
    assert throttle.buckets == throttle.options.buckets
    assert throttle.counts(throttle.window) == (0, 0)  # the new window expires them
