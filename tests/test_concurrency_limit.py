from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    CallContext,
    ConcurrencyLimitError,
    DeadlineExceededError,
    Event,
    FakeClock,
    Outcome,
    Pipeline,
    RejectedError,
    Timeout,
)
from resilience.policies.concurrency import (
    AIMD,
    ConcurrencyLimit,
    ConcurrencyLimitRejected,
    FixedLimit,
    Gradient2,
    LimitAlgorithm,
    LimitChanged,
)

from .helpers import Gauge

N = 64
LIMIT = 8


def play(policy: ConcurrencyLimit, clock: FakeClock, rtt: float, outcome: Outcome = Outcome.SUCCESS) -> int:
    """One call of ``rtt`` seconds through the permit API; returns the limit after it."""
    permit = policy.try_acquire(clock.monotonic())
    assert permit is not None
    clock.advance(rtt)
    policy.release(permit, outcome, clock.monotonic())
    return policy.limit


def busy_play(policy: ConcurrencyLimit, clock: FakeClock, rtts: list[float]) -> list[int]:
    """Calls that overlap: ``len(rtts)`` permits taken at once, then released in order."""
    permits = [policy.try_acquire(clock.monotonic()) for _ in rtts]
    assert all(p is not None for p in permits)
    trajectory = []
    start = clock.monotonic()
    for permit, rtt in zip(permits, rtts, strict=True):
        assert permit is not None
        clock.advance(max(0.0, start + rtt - clock.monotonic()))
        policy.release(permit, Outcome.SUCCESS, clock.monotonic())
        trajectory.append(policy.limit)
    return trajectory


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
    # Fed directly: the algorithm sees a saturated limit (inflight == limit) on every sample.
    growth = [algorithm.update(0.01, algorithm.limit, False, float(i)) for i in range(60)]
    assert growth == sorted(growth)
    assert growth[0] > 10
    assert growth[-1] == 40
    assert algorithm.long_rtt == pytest.approx(0.01)
    # Latency quadruples: long/short falls below 1/rtt_tolerance and the limit falls; as the
    # long average takes in the new latency, the gradient returns to 1 and the limit rises:
    # the trajectory is a valley.
    shrink = [algorithm.update(0.04, algorithm.limit, False, 100.0 + i) for i in range(20)]
    bottom = shrink.index(min(shrink))
    assert shrink[: bottom + 1] == sorted(shrink[: bottom + 1], reverse=True)
    assert shrink[bottom:] == sorted(shrink[bottom:])
    assert shrink[0] < 40
    assert shrink[bottom] <= 15
    assert bottom >= 5
    # Latency back to normal: the long average decays towards it and the limit grows again.
    recover = [algorithm.update(0.01, algorithm.limit, False, 200.0 + i) for i in range(100)]
    assert recover == sorted(recover)
    assert recover[0] < 20
    assert recover[-1] == 40


def test_gradient2_learns_nothing_while_mostly_idle() -> None:
    algorithm = Gradient2(20, max_limit=100)
    for i in range(50):
        assert algorithm.update(0.001 * (1 + i % 7), 3, False, float(i)) == 20  # 2 * 3 < 20


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
    now = 0.0
    for rtt, inflight, dropped in samples:
        new = algorithm.update(rtt, inflight, dropped, now)
        now += rtt
        assert low <= new <= high
        assert new == algorithm.limit
    permit = policy.try_acquire(now)
    assert permit is not None
    policy.release(permit, Outcome.FAILURE, now + 1)
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
    a = policy.try_acquire(0.0)
    b = policy.try_acquire(0.0)
    assert a is not None
    assert b is not None
    assert a.inflight == 1
    assert b.inflight == 2
    assert policy.try_acquire(0.0) is None
    policy.release(b, Outcome.SUCCESS, 0.01)
    assert policy.limit == 3
    assert policy.inflight == 1
    assert [(e.old, e.new, e.context) for e in seen] == [(2, 3, None)]
    c = policy.try_acquire(0.02)
    assert c is not None
    policy.release(a, Outcome.SUCCESS, 0.03)
    policy.release(c, Outcome.SUCCESS, 0.04)
    assert policy.inflight == 0


def test_fixed_limit_never_moves(clock: FakeClock) -> None:
    policy = ConcurrencyLimit(FixedLimit(3))
    assert busy_play(policy, clock, [0.1, 5.0, 0.1]) == [3, 3, 3]
    assert play(policy, clock, 1.0, Outcome.FAILURE) == 3
    assert repr(policy) == "ConcurrencyLimit(FixedLimit(3))"


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
    assert policy.name == "concurrencylimit"
    gradient = Gradient2(queue_size=lambda limit: limit**0.5)
    assert gradient.update(0.01, 20, False, 0.0) >= 20
