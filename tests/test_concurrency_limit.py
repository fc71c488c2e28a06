from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    CallContext,
    Classifier,
    ConcurrencyLimitError,
    DeadlineExceededError,
    Event,
    FakeClock,
    Outcome,
    Pipeline,
    RejectedError,
    Rejection,
    Timeout,
)
from resilience.policies.concurrency import (
    AIMD,
    ConcurrencyLimit,
    ConcurrencyLimitOptions,
    ConcurrencyLimitRejected,
    ConcurrencyPermit,
    FixedLimit,
    Gradient2,
    LimitAlgorithm,
    LimitChanged,
    LimitState,
)

from .helpers import Gauge

N = 64
LIMIT = 8


def admit(policy: ConcurrencyLimit, now: float) -> ConcurrencyPermit:
    permit = policy.acquire(None, now)
    assert isinstance(permit, ConcurrencyPermit), permit
    return permit


def finish(policy: ConcurrencyLimit, permit: ConcurrencyPermit, outcome: Outcome, now: float) -> None:
    policy.release(permit, outcome, now - permit.start, now)


def play(policy: ConcurrencyLimit, clock: FakeClock, rtt: float, outcome: Outcome = Outcome.SUCCESS) -> int:
    """One call of ``rtt`` seconds through the permit API; returns the limit after it."""
    permit = admit(policy, clock.monotonic())
    clock.advance(rtt)
    finish(policy, permit, outcome, clock.monotonic())
    return policy.limit


def busy_play(policy: ConcurrencyLimit, clock: FakeClock, rtts: list[float]) -> list[int]:
    """Calls that overlap: ``len(rtts)`` permits taken at once, then released in order."""
    permits = [admit(policy, clock.monotonic()) for _ in rtts]
    trajectory = []
    start = clock.monotonic()
    for permit, rtt in zip(permits, rtts, strict=True):
        clock.advance(max(0.0, start + rtt - clock.monotonic()))
        finish(policy, permit, Outcome.SUCCESS, clock.monotonic())
        trajectory.append(policy.limit)
    return trajectory


def feed(algorithm: LimitAlgorithm, state: LimitState, rtt: float, now: float, inflight: int | None = None) -> int:
    """One sample straight into the algorithm; ``inflight`` defaults to a saturated limit."""
    return algorithm.update(state, rtt, state.limit if inflight is None else inflight, False, now)


# -- AIMD ----------------------------------------------------------------------------------


def test_aimd_trajectory_is_exact(clock: FakeClock) -> None:
    changes: list[tuple[int, int]] = []
    policy = ConcurrencyLimit(
        AIMD(4, min_limit=2, max_limit=6, backoff_ratio=0.5, timeout=1.0),
        listeners=[lambda e: changes.append((e.old, e.new)) if isinstance(e, LimitChanged) else None],
    )
    # Alone (inflight 1 of 4): the limit is not in use, nothing learnt.
    assert [play(policy, clock, 0.1) for _ in range(3)] == [4, 4, 4]
    # Overlapping calls: the k-th of them started with k in flight; 2 * k >= limit adds one.
    assert busy_play(policy, clock, [0.1, 0.1]) == [4, 5]
    assert busy_play(policy, clock, [0.1, 0.1, 0.1]) == [5, 5, 6]
    assert busy_play(policy, clock, [0.1] * 4) == [6, 6, 6, 6]  # capped at max_limit
    # A failure halves it; a too-slow success (rtt > timeout) too; never below min_limit.
    assert play(policy, clock, 0.1, Outcome.FAILURE) == 3
    assert play(policy, clock, 2.0) == 2
    assert play(policy, clock, 0.1, Outcome.FAILURE) == 2
    # An ignored outcome (the caller's fault) moves nothing.
    assert play(policy, clock, 5.0, Outcome.IGNORED) == 2
    # In use again: 1 * 2 >= 2.
    assert [play(policy, clock, 0.1) for _ in range(3)] == [3, 3, 3]
    assert changes == [(4, 5), (5, 6), (6, 3), (3, 2), (2, 3)]
    assert policy.inflight == 0


def test_aimd_through_a_pipeline_on_the_fake_clock(clock: FakeClock) -> None:
    events: list[Event] = []
    policy = ConcurrencyLimit(AIMD(1, max_limit=3, timeout=0.5))
    pipeline = Pipeline(policy, clock=clock, listeners=[events.append])
    rtts = iter([0.1, 0.1, 0.9, 0.1])

    def call() -> str:
        clock.advance(next(rtts))
        return "ok"

    limits = []
    for _ in range(4):
        pipeline.call(call)
        limits.append(policy.limit)
    assert limits == [2, 3, 2, 3]  # 0.9 s is slower than the 0.5 s timeout: 3 * 0.9 -> 2

    def broken() -> str:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        pipeline.call(broken)
    assert policy.limit == 2
    moves = [(e.old, e.new) for e in events if isinstance(e, LimitChanged)]
    assert moves == [(1, 2), (2, 3), (3, 2), (2, 3), (3, 2)]
    assert all(isinstance(e, LimitChanged) and e.context is not None for e in events)


async def test_a_timed_out_async_call_is_a_drop(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(AIMD(10, backoff_ratio=0.5))
    pipeline = Pipeline(policy, Timeout(1), clock=clock)

    async def slow() -> None:
        await asyncio.Event().wait()

    call = asyncio.create_task(pipeline.acall(slow))
    await asyncio.sleep(0)
    clock.advance(1)
    with pytest.raises(DeadlineExceededError):
        await call
    assert policy.limit == 5
    assert policy.inflight == 0


async def test_cancelled_and_rejected_calls_do_not_move_the_limit(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(AIMD(2, backoff_ratio=0.5))
    pipeline = Pipeline(policy, clock=clock)
    gate = asyncio.Event()

    async def held() -> None:
        await gate.wait()

    async def refused() -> None:
        raise RejectedError("further in")

    call = asyncio.create_task(pipeline.acall(held))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    with pytest.raises(RejectedError):
        await pipeline.acall(refused)
    assert policy.limit == 2
    assert policy.inflight == 0


# -- Gradient2 -----------------------------------------------------------------------------


def test_gradient2_grows_while_latency_holds_and_shrinks_when_it_rises(clock: FakeClock) -> None:
    algorithm = Gradient2(10, min_limit=2, max_limit=40, smoothing=0.5, warmup=5, long_window=100)
    state = algorithm.start()
    # Fed directly: the algorithm sees a saturated limit (inflight == limit) on every sample.
    growth = [feed(algorithm, state, 0.01, float(i)) for i in range(60)]
    assert growth == sorted(growth)
    assert growth[0] > 10
    assert growth[-1] == 40
    assert state.long_rtt == pytest.approx(0.01)
    # Latency quadruples: long/short falls below 1/rtt_tolerance and the limit falls; as the
    # long average takes in the new latency, the gradient returns to 1 and the limit rises:
    # the trajectory is a valley.
    shrink = [feed(algorithm, state, 0.04, 100.0 + i) for i in range(20)]
    bottom = shrink.index(min(shrink))
    assert shrink[: bottom + 1] == sorted(shrink[: bottom + 1], reverse=True)
    assert shrink[bottom:] == sorted(shrink[bottom:])
    assert shrink[0] < 40
    assert shrink[bottom] <= 15
    assert bottom >= 5
    # Latency back to normal: the long average decays towards it and the limit grows again.
    recover = [feed(algorithm, state, 0.01, 200.0 + i) for i in range(100)]
    assert recover == sorted(recover)
    assert recover[0] < 20
    assert recover[-1] == 40


def test_gradient2_learns_nothing_while_mostly_idle() -> None:
    algorithm = Gradient2(20, max_limit=100)
    state = algorithm.start()
    for i in range(50):
        assert feed(algorithm, state, 0.001 * (1 + i % 7), float(i), inflight=3) == 20  # 2 * 3 < 20


def test_gradient2_in_a_pipeline_moves_with_scripted_rtts(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(Gradient2(4, min_limit=1, max_limit=16, warmup=1, smoothing=1.0))
    # Saturated calls: four at a time (inflight 1..4 of a limit of 4 and up).
    first = busy_play(policy, clock, [0.01, 0.01, 0.01, 0.01])
    assert first[-1] > 4
    before = policy.limit
    trajectory = busy_play(policy, clock, [0.2] * min(before, 8))
    assert trajectory[-1] < before


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["aimd", "gradient2"]),
    st.integers(1, 50),
    st.integers(0, 50),
    st.lists(st.tuples(st.floats(0.0, 10.0), st.integers(1, 200), st.booleans()), max_size=200),
)
def test_limit_always_within_bounds(kind: str, low: int, span: int, samples: list[tuple[float, int, bool]]) -> None:
    high = low + span
    algorithm: LimitAlgorithm
    if kind == "aimd":
        algorithm = AIMD(low, min_limit=low, max_limit=high, timeout=5.0)
    else:
        algorithm = Gradient2(high, min_limit=low, max_limit=high, warmup=3, long_window=20)
    policy = ConcurrencyLimit(algorithm)
    state = policy.state
    now = 0.0
    for rtt, inflight, dropped in samples:
        new = algorithm.update(state, rtt, inflight, dropped, now)
        now += rtt
        assert low <= new <= high
        assert new == state.limit == policy.limit
    finish(policy, admit(policy, now), Outcome.FAILURE, now + 1)
    assert low <= policy.limit <= high


# -- admission ---------------------------------------------------------------------------------


def test_rejection_names_the_limit_and_carries_the_context(clock: FakeClock) -> None:
    events: list[Event] = []
    policy = ConcurrencyLimit(1, name="orders-limit")
    pipeline = Pipeline(policy, clock=clock, listeners=[events.append])
    inner_errors: list[BaseException] = []

    def outer(ctx: CallContext) -> str:
        try:
            pipeline.execute(lambda c: "inner", pipeline.context())
        except ConcurrencyLimitError as exc:
            inner_errors.append(exc)
        return "outer"

    assert pipeline.execute(outer, pipeline.context()) == "outer"
    (error,) = inner_errors
    assert isinstance(error, RejectedError)
    assert error.context is not None
    assert "orders-limit: 1 calls in flight reach the limit of 1" in str(error)
    rejected = [e for e in events if isinstance(e, ConcurrencyLimitRejected)]
    assert [(e.policy, e.limit, e.inflight) for e in rejected] == [("orders-limit", 1, 1)]
    assert policy.inflight == 0


def test_standalone_permits_for_a_server(clock: FakeClock) -> None:
    seen: list[LimitChanged] = []
    policy = ConcurrencyLimit(AIMD(2, max_limit=3), listeners=[lambda e: seen.append(e)])  # type: ignore[arg-type]
    a = admit(policy, 0.0)
    b = admit(policy, 0.0)
    assert (a.start, a.inflight, b.inflight) == (0.0, 1, 2)
    refused = policy.acquire(None, 0.0)
    assert isinstance(refused, Rejection)
    assert (refused.reason, refused.detail, refused.retry_after) == ("limit", (2, 2), None)
    finish(policy, b, Outcome.SUCCESS, 0.01)
    assert policy.limit == 3
    assert policy.inflight == 1
    assert [(e.old, e.new, e.context) for e in seen] == [(2, 3, None)]
    c = admit(policy, 0.02)
    finish(policy, a, Outcome.SUCCESS, 0.03)
    finish(policy, c, Outcome.SUCCESS, 0.04)
    assert policy.inflight == 0


def test_fixed_limit_never_moves(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(FixedLimit(3))
    assert busy_play(policy, clock, [0.1, 5.0, 0.1]) == [3, 3, 3]
    assert play(policy, clock, 1.0, Outcome.FAILURE) == 3
    assert repr(policy) == "ConcurrencyLimit(FixedLimit(3), limit=3)"


@pytest.mark.parametrize("algorithm", [FixedLimit(LIMIT), AIMD(LIMIT, min_limit=LIMIT, max_limit=LIMIT)])
def test_64_threads_against_a_limit_of_8_admit_exactly_8(algorithm: LimitAlgorithm) -> None:
    policy = ConcurrencyLimit(algorithm)
    pipeline = Pipeline(policy)
    gauge = Gauge()
    release = threading.Event()
    decided = threading.Semaphore(0)
    rejected: list[int] = []
    start = threading.Barrier(N)

    def held() -> None:
        gauge.enter()
        decided.release()
        try:
            assert release.wait(10), "test did not release the calls"
        finally:
            gauge.leave()

    def worker() -> None:
        start.wait(10)
        try:
            pipeline.call(held)
        except ConcurrencyLimitError:
            rejected.append(1)
            decided.release()

    threads = [threading.Thread(target=worker) for _ in range(N)]
    for t in threads:
        t.start()
    try:
        for _ in range(N):
            assert decided.acquire(timeout=10)
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert gauge.admitted == LIMIT
    assert len(rejected) == N - LIMIT
    assert gauge.peak == LIMIT
    assert policy.inflight == 0
    assert policy.limit == LIMIT


async def test_64_tasks_against_a_limit_of_8_admit_exactly_8() -> None:
    policy = ConcurrencyLimit(FixedLimit(LIMIT))
    pipeline = Pipeline(policy)
    gauge = Gauge()
    release = asyncio.Event()
    inside = asyncio.Semaphore(0)

    async def held() -> None:
        gauge.enter()
        inside.release()
        try:
            await release.wait()
        finally:
            gauge.leave()

    tasks = [asyncio.create_task(pipeline.acall(held)) for _ in range(N)]
    for _ in range(LIMIT):
        await asyncio.wait_for(inside.acquire(), 10)
    for _ in range(5):
        await asyncio.sleep(0)
    rejected_before_release = sum(1 for t in tasks if t.done())
    release.set()
    results: list[Any] = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert rejected_before_release == N - LIMIT
    assert sum(isinstance(r, ConcurrencyLimitError) for r in results) == N - LIMIT
    assert gauge.admitted == LIMIT
    assert gauge.peak == LIMIT
    assert policy.inflight == 0


# -- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AIMD(0), r"initial_limit must be in \[1, 200\], got 0"),
        (lambda: AIMD(20, min_limit=0), r"min_limit must be in \[1, 1000000\], got 0"),
        (lambda: AIMD(20, min_limit=30), r"initial_limit must be in \[30, 200\], got 20"),
        (lambda: AIMD(5, min_limit=10, max_limit=8), r"max_limit must be in \[10, 1000000\], got 8"),
        (lambda: AIMD(300), r"initial_limit must be in \[1, 200\], got 300"),
        (lambda: AIMD(backoff_ratio=1.0), r"backoff_ratio must be in \[0.5, 1\), got 1.0"),
        (lambda: AIMD(backoff_ratio=0.1), r"backoff_ratio must be in \[0.5, 1\), got 0.1"),
        (lambda: AIMD(timeout=0), r"timeout must be a finite number of seconds > 0, got 0"),
        (lambda: Gradient2(smoothing=0), r"smoothing must be in \(0, 1\], got 0"),
        (lambda: Gradient2(rtt_tolerance=0.9), r"rtt_tolerance must be in \[1, 100\], got 0.9"),
        (lambda: Gradient2(long_window=0), r"long_window must be in \[1, 1000000\], got 0"),
        (lambda: Gradient2(warmup=0), r"warmup must be in \[1, 1000000\], got 0"),
        (lambda: Gradient2(queue_size=-1), r"queue_size must be in \[0, 1e\+06\], got -1"),
        (lambda: FixedLimit(0), r"limit must be in \[1, 1000000\], got 0"),
        (lambda: ConcurrencyLimit(0), r"limit must be in \[1, 1000000\], got 0"),
    ],
)
def test_invalid_options_name_the_option_value_and_range(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_algorithm_must_be_a_limit_algorithm() -> None:
    with pytest.raises(TypeError, match="algorithm must be a LimitAlgorithm"):
        ConcurrencyLimit("aimd")  # type: ignore[arg-type]


def test_defaults() -> None:
    policy = ConcurrencyLimit()
    assert isinstance(policy.algorithm, AIMD)
    assert (policy.limit, policy.algorithm.min_limit, policy.algorithm.max_limit) == (20, 1, 200)
    assert policy.options == ConcurrencyLimitOptions(AIMD())
    assert policy.name == "concurrencylimit"
    gradient = Gradient2(queue_size=lambda limit: limit**0.5)
    assert gradient.update(gradient.start(), 0.01, 20, False, 0.0) >= 20


# -- every way a call ends releases its permit ---------------------------------------------

MODES = ["sync", "async", "trio"]


class Broken(Exception):
    """The backend failed."""


class StrictClassifier(Classifier):
    """Results ``"bad"`` are failures; a classifier bug can be switched on for errors or results."""

    __slots__ = ("raise_on_error", "raise_on_result")
    checks_results = True

    def __init__(self, raise_on_error: bool = False, raise_on_result: bool = False) -> None:
        self.raise_on_error = raise_on_error
        self.raise_on_result = raise_on_result

    def error(self, exc: BaseException) -> Outcome:
        if self.raise_on_error:
            raise LookupError("classifier bug on an error")
        return super().error(exc)

    def result(self, result: object) -> Outcome:
        if self.raise_on_result:
            raise LookupError("classifier bug on a result")
        return Outcome.FAILURE if result == "bad" else Outcome.SUCCESS


def through(mode: str, pipeline: Pipeline, outcome: object) -> object:
    def fn(ctx: CallContext) -> object:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    if mode == "sync":
        return pipeline.execute(fn, pipeline.context())

    async def afn(ctx: CallContext) -> object:
        return fn(ctx)

    return asyncio.run(pipeline.aexecute(afn, pipeline.context()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("outcome", "classifier", "raised", "limit_after"),
    [
        ("ok", StrictClassifier(), None, 4),  # a success alone says nothing about the limit
        ("bad", StrictClassifier(), None, 2),  # a failed result is a drop
        (Broken("down"), StrictClassifier(), Broken, 2),  # an exception is a drop
        (RejectedError("further in"), StrictClassifier(), RejectedError, 4),  # ignored
        (Broken("down"), StrictClassifier(raise_on_error=True), LookupError, 4),  # the wedge that was
        ("ok", StrictClassifier(raise_on_result=True), LookupError, 4),
    ],
    ids=["success", "failed-result", "exception", "rejection", "raising-error-classifier", "raising-result-classifier"],
)
def test_every_release_path_ends_with_nothing_in_flight(
    mode: str,
    outcome: object,
    classifier: Classifier,
    raised: type[BaseException] | None,
    limit_after: int,
    clock: FakeClock,
) -> None:
    policy = ConcurrencyLimit(AIMD(4, backoff_ratio=0.5))
    pipeline = Pipeline(policy, clock=clock, classifier=classifier)
    if raised is None:
        assert through(mode, pipeline, outcome) == outcome
    else:
        with pytest.raises(raised):
            through(mode, pipeline, outcome)
    assert policy.inflight == 0
    assert policy.limit == limit_after
    # The limit is not wedged: as many calls as the limit still get in at once.
    permits = [admit(policy, clock.monotonic()) for _ in range(policy.limit)]
    assert isinstance(policy.acquire(None, clock.monotonic()), Rejection)
    for permit in permits:
        finish(policy, permit, Outcome.IGNORED, clock.monotonic())
    assert policy.inflight == 0


async def test_a_raising_classifier_no_longer_leaks_a_slot_async(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(FixedLimit(1))
    pipeline = Pipeline(policy, clock=clock, classifier=StrictClassifier(raise_on_error=True))

    async def broken() -> None:
        raise Broken("down")

    for _ in range(3):  # with a leak, the second call would find the only slot taken
        with pytest.raises(LookupError, match="classifier bug"):
            await pipeline.acall(broken)
        assert policy.inflight == 0


def test_a_raising_classifier_no_longer_leaks_a_slot_sync(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(FixedLimit(1))
    pipeline = Pipeline(policy, clock=clock, classifier=StrictClassifier(raise_on_error=True))

    def broken() -> None:
        raise Broken("down")

    for _ in range(3):
        with pytest.raises(LookupError, match="classifier bug"):
            pipeline.call(broken)
        assert policy.inflight == 0


async def test_a_cancelled_call_releases_its_permit(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(AIMD(2, backoff_ratio=0.5))
    pipeline = Pipeline(policy, clock=clock)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(pipeline.acall(hang))
    await started.wait()
    assert policy.inflight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (policy.inflight, policy.limit) == (0, 2)


async def test_an_outer_asyncio_timeout_releases_the_permit_as_ignored(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(AIMD(2, backoff_ratio=0.5))
    pipeline = Pipeline(policy, clock=clock)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):  # fires on the next loop turn: no real waiting
            await pipeline.acall(hang)
    assert started.is_set()
    # The call inside saw a cancellation: not the backend's fault, the limit stays.
    assert (policy.inflight, policy.limit) == (0, 2)


# -- options and reconfigure ---------------------------------------------------------------


def test_options_are_frozen() -> None:
    import dataclasses

    options = ConcurrencyLimitOptions(AIMD())
    for obj, attribute, value in [
        (options, "algorithm", FixedLimit(1)),
        (AIMD(), "min_limit", 3),
        (Gradient2(), "smoothing", 0.5),
        (FixedLimit(3), "limit", 4),
    ]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attribute, value)
    assert UNTYPED_OPTIONS(5).algorithm == FixedLimit(5)  # an int is a FixedLimit
    assert AIMD(5, max_limit=10) == AIMD(5, max_limit=10)  # compared by value
    with pytest.raises(ValueError, match=r"initial_limit must be in \[1, 10\], got 20"):
        AIMD().replace(max_limit=10)  # a copy is checked again


UNTYPED_OPTIONS: Any = ConcurrencyLimitOptions  # to pass what the annotations forbid
UNTYPED_LIMIT: Any = ConcurrencyLimit


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: UNTYPED_OPTIONS(0), ValueError, r"limit must be in \[1, 1000000\], got 0"),
        (lambda: UNTYPED_OPTIONS("aimd"), TypeError, "algorithm must be a LimitAlgorithm"),
        (lambda: UNTYPED_OPTIONS(True), TypeError, "algorithm must be a LimitAlgorithm"),
        (lambda: UNTYPED_LIMIT(options=AIMD()), TypeError, "options must be ConcurrencyLimitOptions, got AIMD"),
    ],
)
def test_invalid_limit_options(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_reconfigure_needs_concurrency_limit_options() -> None:
    policy = ConcurrencyLimit(FixedLimit(3))
    with pytest.raises(TypeError, match=r"reconfigure needs ConcurrencyLimitOptions, got FixedLimit\(4\)"):
        policy.reconfigure(FixedLimit(4))  # type: ignore[arg-type]
    assert policy.options == ConcurrencyLimitOptions(FixedLimit(3))
    assert policy.limit == 3


def test_reconfigure_keeps_the_learnt_limit_clamped_and_the_calls_in_flight(clock: FakeClock) -> None:
    seen: list[tuple[int, int]] = []
    policy = ConcurrencyLimit(
        AIMD(10, max_limit=50),
        listeners=[lambda e: seen.append((e.old, e.new)) if isinstance(e, LimitChanged) else None],
    )
    busy_play(policy, clock, [0.1] * 10)  # 6 of the 10 find 2 * inflight >= limit: 10 -> 16
    assert policy.limit == 16
    held = [admit(policy, clock.monotonic()) for _ in range(3)]
    seen.clear()
    # A new initial_limit does not apply to a running policy; the learnt limit stays.
    policy.reconfigure(ConcurrencyLimitOptions(AIMD(1, max_limit=100)))
    assert (policy.limit, policy.inflight, seen) == (16, 3, [])
    # A narrower range brings the limit within it, and says so.
    policy.reconfigure(ConcurrencyLimitOptions(AIMD(2, max_limit=8)))
    assert (policy.limit, policy.inflight, seen) == (8, 3, [(16, 8)])
    assert policy.algorithm == AIMD(2, max_limit=8)
    # The calls admitted before finish as usual, and their samples feed the new algorithm.
    finish(policy, held.pop(), Outcome.FAILURE, clock.monotonic() + 0.1)
    assert policy.limit == 7  # 8 * 0.9
    for permit in held:
        finish(policy, permit, Outcome.SUCCESS, clock.monotonic() + 0.1)
    assert policy.inflight == 0
    # Raised back: the limit is kept (it is inside the new range).
    policy.reconfigure(ConcurrencyLimitOptions(AIMD(20, min_limit=1, max_limit=200)))
    assert policy.limit == 7


def test_reconfigure_keeps_the_averages_of_the_same_kind_only(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(Gradient2(10, max_limit=40, warmup=2))
    busy_play(policy, clock, [0.05] * 10)
    learnt = policy.state
    long_rtt, samples = learnt.long_rtt, learnt.samples
    assert samples == 10
    assert long_rtt == pytest.approx(0.05)
    policy.reconfigure(ConcurrencyLimitOptions(Gradient2(10, max_limit=40, smoothing=0.5)))
    assert policy.state is learnt
    assert (learnt.long_rtt, learnt.samples) == (long_rtt, samples)
    limit = policy.limit
    policy.reconfigure(ConcurrencyLimitOptions(AIMD(max_limit=40)))
    assert policy.limit == limit
    assert (policy.state.long_rtt, policy.state.samples) == (0.0, 0)  # another kind: started afresh
    assert policy.state.estimate == float(limit)


async def test_calls_in_flight_finish_under_the_old_limit(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(FixedLimit(3))
    pipeline = Pipeline(policy, clock=clock)
    gates = [asyncio.Event() for _ in range(3)]
    inside = asyncio.Semaphore(0)

    async def held(gate: asyncio.Event) -> str:
        inside.release()
        await gate.wait()
        return "done"

    tasks = [asyncio.create_task(pipeline.acall(held, gate)) for gate in gates]
    for _ in gates:
        await inside.acquire()
    policy.reconfigure(ConcurrencyLimitOptions(FixedLimit(1)))
    assert (policy.limit, policy.inflight) == (1, 3)

    async def quick() -> str:
        return "quick"

    with pytest.raises(ConcurrencyLimitError, match="3 calls in flight reach the limit of 1"):
        await pipeline.acall(quick)
    for gate in gates[:2]:
        gate.set()
    await asyncio.sleep(0)
    assert [t.result() for t in tasks[:2]] == ["done", "done"]
    with pytest.raises(ConcurrencyLimitError, match="1 calls in flight reach the limit of 1"):
        await pipeline.acall(quick)
    gates[2].set()
    assert await tasks[2] == "done"
    assert await pipeline.acall(quick) == "quick"
    assert policy.inflight == 0


def test_one_algorithm_object_serves_many_policies(clock: FakeClock) -> None:
    algorithm = AIMD(4, backoff_ratio=0.5)
    a, b = ConcurrencyLimit(algorithm), ConcurrencyLimit(algorithm)
    play(a, clock, 0.1, Outcome.FAILURE)
    assert (a.limit, b.limit) == (2, 4)
    assert a.state is not b.state


def test_a_fixed_limit_reads_no_clock_on_success(clock: FakeClock) -> None:
    class CountingClock(FakeClock):
        readings = 0

        def monotonic(self) -> float:
            self.readings += 1
            return super().monotonic()

    counting = CountingClock()
    policy = ConcurrencyLimit(FixedLimit(2))
    pipeline = Pipeline(policy, clock=counting)
    assert pipeline.call(lambda: "ok") == "ok"
    assert (counting.readings, policy.inflight) == (0, 0)
    policy.reconfigure(ConcurrencyLimitOptions(AIMD(2)))  # an adaptive limit needs the durations
    assert pipeline.call(lambda: "ok") == "ok"
    assert (counting.readings, policy.inflight) == (2, 0)
    policy.reconfigure(ConcurrencyLimitOptions(FixedLimit(2)))

    def broken() -> None:
        raise Broken("down")

    with pytest.raises(Broken):
        pipeline.call(broken)
    assert policy.inflight == 0
