from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import BulkheadFullError, CallContext, Event, FakeClock, Pipeline, RateLimitedError
from resilience.permit import DelayedPermit, Permit, Rejection
from resilience.policies.token_bucket import (
    RateLimitRejected,
    RateLimitWaited,
    TokenBucket,
    TokenBucketOptions,
    compile_key,
)

from .helpers import call, outcome
from .test_release_paths import ManualClock

# Rates whose interval is a power of two make the GCRA arithmetic exact in floats.


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_burst_then_steady_rate_with_exact_retry_after(mode: str, clock: FakeClock) -> None:
    pipeline = Pipeline(TokenBucket(4.0, burst=3), clock=clock)
    assert [outcome(mode, pipeline) for _ in range(4)] == ["ok", "ok", "ok", 0.25]
    clock.advance(0.125)
    assert outcome(mode, pipeline) == 0.125
    clock.advance(0.125)
    assert outcome(mode, pipeline) == "ok"
    assert outcome(mode, pipeline) == 0.25
    # steady state: exactly one call per 0.25 s
    admitted = 0
    for _ in range(64 * 10):  # 10 s in steps of 1/64 s
        clock.advance(1 / 64)
        admitted += outcome(mode, pipeline) == "ok"
    assert admitted == 40


def test_an_idle_bucket_refills_to_burst_and_no_more(clock: FakeClock) -> None:
    bucket = TokenBucket(8.0, burst=5)
    assert [bucket.take(0.0) for _ in range(6)] == [0.0, 0.0, 0.0, 0.0, 0.0, 0.125]
    assert bucket.available(0.0) == 0.0
    assert bucket.available(0.25) == 2.0
    assert bucket.available(100.0) == 5.0
    assert [bucket.take(100.0) for _ in range(6)] == [0.0] * 5 + [0.125]


def test_reservations_queue_waiters_in_order() -> None:
    bucket = TokenBucket(4.0, burst=1)
    waits = [bucket.take(0.0, None, math.inf) for _ in range(5)]
    assert waits == [0.0, 0.25, 0.5, 0.75, 1.0]
    # a caller that may wait only 0.3 s takes nothing and learns when its token would come
    assert bucket.take(0.0, None, 0.3) == 1.25
    assert bucket.take(1.0, None, 0.3) == 0.25


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_wait_mode_sleeps_on_the_clock_until_the_token_is_due(mode: str, clock: FakeClock) -> None:
    seen: list[Event] = []
    pipeline = Pipeline(TokenBucket(4.0, burst=2, mode="wait"), clock=clock, listeners=[seen.append])
    for _ in range(5):
        assert call(mode, pipeline) == "ok"
    assert clock.sleeps == [0.25, 0.25, 0.25]
    assert clock.monotonic() == 0.75
    assert [e.delay for e in seen if isinstance(e, RateLimitWaited)] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_wait_beyond_max_wait_or_deadline_rejects_at_once(mode: str, clock: FakeClock) -> None:
    seen: list[Event] = []
    pipeline = Pipeline(TokenBucket(2.0, burst=1, mode="wait", max_wait=0.4), clock=clock, listeners=[seen.append])
    assert call(mode, pipeline) == "ok"
    with pytest.raises(RateLimitedError) as info:
        call(mode, pipeline)
    assert info.value.retry_after == 0.5
    ctx = pipeline.context(timeout=0.25)
    clock.advance(0.125)  # the token is due in 0.375 s: within max_wait, after the deadline
    with pytest.raises(RateLimitedError) as info:
        call(mode, pipeline, ctx)
    assert info.value.retry_after == 0.375
    assert clock.sleeps == []  # no pointless sleep
    reasons = [e.reason for e in seen if isinstance(e, RateLimitRejected)]
    assert reasons == ["max_wait", "deadline"]
    # a token that is due now is granted even to a call past its deadline: Timeout's business
    clock.advance(1.0)
    late = pipeline.context(timeout=0.1)
    clock.advance(0.2)
    assert call(mode, pipeline, late) == "ok"


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_rejection_error_and_event(mode: str, clock: FakeClock) -> None:
    seen: list[Event] = []
    pipeline = Pipeline(TokenBucket(1.0, name="tb"), clock=clock, listeners=[seen.append])
    call(mode, pipeline)
    with pytest.raises(RateLimitedError, match=r"tb: rate limit exceeded, next permit in 1\.000s") as info:
        call(mode, pipeline)
    assert info.value.retry_after == 1.0
    assert info.value.context is not None
    assert seen == [RateLimitRejected("tb", info.value.context, "", 1.0, "limit")]


def test_float_rounding_never_rejects_a_due_token(clock: FakeClock) -> None:
    pipeline = Pipeline(TokenBucket(10.0, burst=1), clock=clock)
    for _ in range(1000):
        assert call("sync", pipeline) == "ok"
        clock.advance(0.1)  # 0.1 is not exact in binary: the errors add up
    assert isinstance(outcome("sync", pipeline), str)
    assert isinstance(outcome("sync", pipeline), float)


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_keys_from_service_method_and_tags(mode: str, clock: FakeClock) -> None:
    pipeline = Pipeline(TokenBucket(1.0, key="{service}:{method}:{tenant}"), clock=clock)

    def ctx(service: str, method: str, tenant: str | None) -> CallContext:
        return pipeline.context(service=service, method=method, tags={"tenant": tenant} if tenant else None)

    assert outcome(mode, pipeline, ctx("a", "m", "t1")) == "ok"
    assert outcome(mode, pipeline, ctx("a", "m", "t1")) == 1.0
    assert outcome(mode, pipeline, ctx("a", "m", "t2")) == "ok"
    assert outcome(mode, pipeline, ctx("a", "n", "t1")) == "ok"
    assert outcome(mode, pipeline, ctx("b", "m", "t1")) == "ok"
    assert outcome(mode, pipeline, ctx("a", "m", None)) == "ok"
    assert outcome(mode, pipeline, ctx("a", "m", None)) == 1.0


def test_compile_key() -> None:
    ctx = CallContext("svc", "get", tags={"tenant": "acme", "pct": "5%"})
    assert compile_key(None) is None
    assert compile_key("fixed")(ctx) == "fixed"  # type: ignore[misc]
    assert compile_key("{service}")(ctx) == "svc"  # type: ignore[misc]
    assert compile_key("{service}/{method}/{tenant}/{pct}%{missing}")(ctx) == "svc/get/acme/5%%"  # type: ignore[misc]
    assert compile_key("{{literal}}:{tenant}")(ctx) == "{literal}:acme"  # type: ignore[misc]
    assert compile_key(lambda c: c.method * 2)(ctx) == "getget"  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"plain names.*\{tags\.x\}"):
        compile_key("{tags.x}")
    with pytest.raises(ValueError, match=r"\{tenant:>5\}"):
        compile_key("{tenant:>5}")
    with pytest.raises(ValueError, match="key must be a valid template"):
        compile_key("{unclosed")
    with pytest.raises(TypeError, match="key must be"):
        compile_key(5)  # type: ignore[arg-type]


def test_key_memory_is_bounded_idle_keys_go_first() -> None:
    bucket = TokenBucket(1.0, burst=1, key="{tenant}", max_keys=100)
    for i in range(10):
        bucket.take(0.0, f"busy{i}")  # busy until t=1
    for i in range(90):
        bucket.take(-5.0, f"idle{i}")  # full again from t=-4
    assert bucket.keys == 100
    bucket.take(0.0, "new")
    assert bucket.keys == 11  # the 90 idle ones were dropped, nothing else
    assert all(bucket.take(0.0, f"busy{i}") == 1.0 for i in range(10))  # busy keys kept their state
    for i in range(10_000):
        bucket.take(float(i), f"k{i}", 0.0)
        assert bucket.keys <= 100


def test_key_eviction_drops_the_fullest_buckets_when_all_are_busy() -> None:
    bucket = TokenBucket(1.0, burst=4, key="{tenant}", max_keys=10)
    for i in range(10):
        for _ in range(i % 4 + 1):  # key i holds i % 4 + 1 used tokens
            bucket.take(0.0, f"k{i}")
    bucket.take(0.0, "new")
    assert bucket.keys == 10  # evicted down to 9, then "new" added
    assert bucket.available(0.0, "k3") == 0.0  # the emptiest ones stayed
    assert bucket.available(0.0, "k7") == 0.0
    assert bucket.available(0.0, "k0") == 4.0  # a fullest one went


def test_threads_admit_exactly_the_burst() -> None:
    bucket = TokenBucket(1e-6, burst=50)
    pipeline = Pipeline(bucket)
    admitted: list[int] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait(10)
        for _ in range(100):
            with contextlib.suppress(RateLimitedError):
                pipeline.call(admitted.append, 1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(admitted) == 50


async def test_tasks_waiting_are_served_in_arrival_order(clock: FakeClock) -> None:
    pipeline = Pipeline(TokenBucket(4.0, burst=1, mode="wait"), clock=clock)
    order: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        async def fn() -> None:
            order.append((i, clock.monotonic()))

        await pipeline.acall(fn)

    await asyncio.gather(*(one(i) for i in range(4)))
    assert [i for i, _ in order] == [0, 1, 2, 3]
    assert all(at >= i * 0.25 for i, at in order)  # nobody runs before its slot
    assert clock.monotonic() == 0.75


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 4.0, 16.0]),
    burst=st.integers(1, 8),
    gaps=st.lists(st.integers(0, 64), min_size=1, max_size=80),
)
def test_gcra_conforms_and_retry_after_is_exact(rate: float, burst: int, gaps: list[int]) -> None:
    """In any span of time the bucket admits at most burst + rate * span; a rejected call
    retried exactly ``retry_after`` later is admitted."""
    bucket = TokenBucket(rate, burst=burst)
    now = 0.0
    admitted: list[float] = []
    for gap in gaps:
        now += gap / 64
        wait = bucket.take(now)
        if wait == 0.0:
            admitted.append(now)
        else:
            probe = TokenBucket(rate, burst=burst)
            probe._tat = bucket._tat
            assert probe.take(now + wait) == 0.0
            assert probe._tat == bucket._tat + 1 / rate  # taken at once, not before
            probe._tat = bucket._tat
            assert probe.take(now + wait - 1 / 128) > 0.0
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            assert j - i + 1 <= burst + rate * span + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, r"rate must be in \(0, 1e\+09\], got 0"),
        ({"rate": -1.0}, r"rate must be in \(0, 1e\+09\], got -1\.0"),
        ({"rate": math.nan}, "rate must be in"),
        ({"rate": 1, "burst": 0}, r"burst must be in \[1, 1000000000\], got 0"),
        ({"rate": 1, "mode": "block"}, "mode must be 'reject' or 'wait', got 'block'"),
        ({"rate": 1, "max_wait": 0}, "max_wait must be a finite number of seconds > 0, got 0"),
        ({"rate": 1, "max_keys": 0}, r"max_keys must be in \[1, 10000000\], got 0"),
        # Float edges: one token per 1 / rate seconds must be a number of seconds at all.
        (
            {"rate": 5e-324},
            r"rate must be large enough that burst / rate is a finite number of seconds, got rate=5e-324",
        ),
        ({"rate": 1e-300, "burst": 10**9}, r"burst / rate is a finite.*got rate=1e-300 with burst=1000000000"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucket(**kwargs)


def test_max_wait_accepts_timedelta() -> None:
    from datetime import timedelta

    assert TokenBucket(1.0, mode="wait", max_wait=timedelta(milliseconds=250)).max_wait == 0.25


def test_a_tiny_rate_that_floats_can_still_count_is_accepted() -> None:
    bucket = TokenBucket(1e-300)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(1e300)


# -- the permit protocol ------------------------------------------------------------------------


def test_acquire_gives_permits_delays_and_rejections(clock: FakeClock) -> None:
    ctx = CallContext(clock=clock)
    reject = TokenBucket(4.0, burst=1)
    assert isinstance(reject.acquire(ctx, 0.0), Permit)
    refused = reject.acquire(ctx, 0.0)
    assert isinstance(refused, Rejection)
    assert (refused.reason, refused.retry_after, refused.max_wait) == ("limit", 0.25, 0.0)

    wait = TokenBucket(4.0, burst=1, mode="wait", max_wait=0.3, key="{tenant}")
    tenant = CallContext(clock=clock, tags={"tenant": "acme"})
    assert wait.acquire(tenant, 0.0).kind == Permit.kind
    delayed = wait.acquire(tenant, 0.0)
    assert isinstance(delayed, DelayedPermit) and (delayed.delay, delayed.key) == (0.25, "acme")
    too_late = wait.acquire(tenant, 0.0)  # due in 0.5 s, over max_wait: nothing is reserved
    assert isinstance(too_late, Rejection) and (too_late.reason, too_late.retry_after) == ("max_wait", 0.5)
    assert wait.take(0.0, "acme", 1.0) == 0.5


def test_now_zero_means_the_contexts_clock(clock: FakeClock) -> None:
    # The executors pass no time to an unclocked gate: the bucket reads it itself.
    bucket = TokenBucket(1.0)
    ctx = CallContext(clock=clock)
    clock.advance(10.0)
    assert isinstance(bucket.acquire(ctx, 0.0), Permit)
    refused = bucket.acquire(ctx, 0.0)
    assert isinstance(refused, Rejection) and refused.retry_after == 1.0
    assert bucket.take(10.5) == 0.5  # the token was taken at t=10, not at t=0


# -- a waiter that never runs gives its token back ------------------------------------------------


async def test_a_waiter_cancelled_before_its_token_is_due_gives_it_back() -> None:
    clock = ManualClock()  # async sleeps never end by themselves: only the cancellation does
    bucket = TokenBucket(4.0, burst=1, mode="wait")
    pipeline = Pipeline(bucket, clock=clock)
    ran: list[int] = []

    async def work(i: int) -> None:
        ran.append(i)

    await pipeline.acall(work, 0)  # the only token
    first = asyncio.ensure_future(pipeline.acall(work, 1))  # reserves t=0.25
    second = asyncio.ensure_future(pipeline.acall(work, 2))  # reserves t=0.5
    await asyncio.sleep(0)
    assert clock.sleeps == [0.25, 0.5]
    first.cancel()  # not the last reservation: giving it back would put two calls in one slot
    with pytest.raises(asyncio.CancelledError):
        await first
    assert bucket.take(0.0, None, 10.0) == 0.75
    # now the last reservation is the one made just above (t=0.75): the second's stays forfeit
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert bucket.take(0.0, None, 10.0) == 1.0
    third = asyncio.ensure_future(pipeline.acall(work, 3))  # reserves t=1.25, the last one
    await asyncio.sleep(0)
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    assert bucket.take(0.0, None, 10.0) == 1.25  # given back: t=1.25 is free again
    assert ran == [0]


def test_a_sync_waiter_interrupted_in_its_sleep_gives_its_token_back() -> None:
    clock = ManualClock()
    bucket = TokenBucket(4.0, burst=1, mode="wait")
    pipeline = Pipeline(bucket, clock=clock)
    assert pipeline.call(lambda: "ok") == "ok"
    clock.interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        pipeline.call(lambda: "never")
    assert clock.sleeps == [0.25]
    assert bucket.take(0.0, None, 1.0) == 0.25  # the token of t=0.25 is free again


def test_a_waiter_that_ran_keeps_its_token_whatever_its_outcome(clock: FakeClock) -> None:
    bucket = TokenBucket(4.0, burst=1, mode="wait")
    pipeline = Pipeline(bucket, clock=clock)
    pipeline.call(lambda: "ok")

    def rejected_further_in() -> None:
        raise BulkheadFullError("full")  # an outcome the bucket is told is IGNORED

    with pytest.raises(BulkheadFullError):
        pipeline.call(rejected_further_in)
    assert clock.sleeps == [0.25]
    now = clock.monotonic()
    assert bucket.take(now, None, 1.0) == pytest.approx(0.5 - now)


# -- options and reconfigure ------------------------------------------------------------------


def test_options_are_frozen_validated_and_accepted_whole() -> None:
    import dataclasses
    from datetime import timedelta

    options = TokenBucketOptions(4.0, burst=2, mode="wait", max_wait=timedelta(seconds=1))  # type: ignore[arg-type]
    assert (options.rate, options.burst, options.max_wait, options.keyfn) == (4.0, 2, 1.0, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rate = 5.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="mode must be 'reject' or 'wait'"):
        options.replace(mode="queue")
    bucket = TokenBucket(options=options)
    assert bucket.options is options
    assert (bucket.rate, bucket.burst, bucket.mode, bucket.max_wait, bucket.max_keys) == (4.0, 2, "wait", 1.0, 100_000)
    assert TokenBucket(1.0).max_wait == math.inf
    assert TokenBucket(1.0, key="{tenant}").options == TokenBucketOptions(1.0, key="{tenant}")
    with pytest.raises(TypeError, match="needs rate"):
        TokenBucket()
    with pytest.raises(TypeError, match="not both"):
        TokenBucket(1.0, options=options)
    with pytest.raises(TypeError, match="reconfigure needs TokenBucketOptions"):
        bucket.reconfigure(object())  # type: ignore[arg-type]


def test_reconfigure_keeps_the_tokens_each_bucket_holds(clock: FakeClock) -> None:
    bucket = TokenBucket(4.0, burst=4, key="{tenant}", clock=clock)
    for _ in range(3):
        assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0, "a") == 0.0
    bucket.reconfigure(bucket.options.replace(rate=8.0))
    assert bucket.available(0.0) == 1.0  # the single bucket still holds 1 token...
    assert bucket.available(0.0, "a") == 3.0  # ...and the keyed one 3
    assert bucket.available(0.125) == 2.0  # refilling at the new rate
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.125


def test_reconfigure_clamps_to_a_smaller_burst_and_does_not_fill_a_larger_one(clock: FakeClock) -> None:
    bucket = TokenBucket(4.0, burst=8, clock=clock)
    bucket.take(0.0)
    bucket.take(0.0)
    bucket.reconfigure(TokenBucketOptions(4.0, burst=4))
    assert bucket.available(0.0) == 4.0  # 6 tokens, clamped to the new burst
    assert [bucket.take(0.0) for _ in range(5)] == [0.0] * 4 + [0.25]
    bucket.reconfigure(TokenBucketOptions(4.0, burst=16))
    assert bucket.available(0.0) == 0.0  # an emptied bucket is not filled by a larger burst
    assert bucket.available(1.0) == 4.0
    assert bucket.available(100.0) == 16.0


def test_reconfigure_keeps_tokens_reserved_ahead(clock: FakeClock) -> None:
    bucket = TokenBucket(4.0, burst=1, mode="wait", clock=clock)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0, None, 1.0) == 0.25  # reserved: one token owed
    bucket.reconfigure(TokenBucketOptions(2.0, burst=1, mode="wait"))
    assert bucket.take(0.0, None, 10.0) == 1.0  # the owed token, then the next, at 0.5 s each


def test_reconfigure_at_the_clocks_now_and_a_full_bucket_stays_full() -> None:
    clock = FakeClock(start=100.0)
    bucket = TokenBucket(1.0, burst=2, clock=clock)
    bucket.take(100.0)
    bucket.reconfigure(TokenBucketOptions(10.0, burst=2))
    assert bucket.available(100.0) == pytest.approx(1.0)
    idle = TokenBucket(1.0, burst=2, key="{tenant}", clock=clock)
    idle.take(0.0, "old")
    idle.reconfigure(TokenBucketOptions(10.0, burst=2, key="{tenant}"))
    assert idle.available(100.0, "old") == 2.0


def test_a_smaller_max_keys_drops_idle_buckets_at_once(clock: FakeClock) -> None:
    bucket = TokenBucket(1.0, burst=1, key="{tenant}", max_keys=100, clock=clock)
    for i in range(50):
        bucket.take(-10.0, f"idle{i}")
    for i in range(10):
        bucket.take(0.0, f"busy{i}")
    bucket.reconfigure(bucket.options.replace(max_keys=20))
    assert bucket.keys == 10  # the idle ones went, the busy ones kept their state
    assert all(bucket.take(0.0, f"busy{i}") == 1.0 for i in range(10))


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_reconfigure_applies_to_the_next_calls(mode: str, clock: FakeClock) -> None:
    bucket = TokenBucket(1.0, burst=1, clock=clock)
    pipeline = Pipeline(bucket, clock=clock)
    assert outcome(mode, pipeline) == "ok"
    assert outcome(mode, pipeline) == 1.0
    bucket.reconfigure(TokenBucketOptions(4.0, burst=1, mode="wait"))
    assert call(mode, pipeline) == "ok"  # waits now, for a token due sooner
    assert clock.sleeps == [0.25]
