from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import CallContext, Event, FakeClock, Pipeline, RateLimitedError
from resilience.policies.token_bucket import RateLimitRejected, RateLimitWaited, TokenBucket, compile_key

from .helpers import call, outcome

# Rates whose interval is a power of two make the GCRA arithmetic exact in floats.


@pytest.mark.parametrize("mode", ["sync", "async"])
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


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_wait_mode_sleeps_on_the_clock_until_the_token_is_due(mode: str, clock: FakeClock) -> None:
    seen: list[Event] = []
    pipeline = Pipeline(TokenBucket(4.0, burst=2, mode="wait"), clock=clock, listeners=[seen.append])
    for _ in range(5):
        assert call(mode, pipeline) == "ok"
    assert clock.sleeps == [0.25, 0.25, 0.25]
    assert clock.monotonic() == 0.75
    assert [e.delay for e in seen if isinstance(e, RateLimitWaited)] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("mode", ["sync", "async"])
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


@pytest.mark.parametrize("mode", ["sync", "async"])
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


@pytest.mark.parametrize("mode", ["sync", "async"])
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
    ],
)
def test_invalid_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucket(**kwargs)


def test_max_wait_accepts_timedelta() -> None:
    from datetime import timedelta

    assert TokenBucket(1.0, mode="wait", max_wait=timedelta(milliseconds=250)).max_wait == 0.25
