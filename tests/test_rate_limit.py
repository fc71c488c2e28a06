from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import limits
import limits.aio.storage
import limits.storage
import limits.storage.memory
import limits.strategies
import pytest
from limits.errors import StorageError

from resilience import CallContext, Event, FakeClock, Pipeline, RateLimitedError
from resilience.permit import Permit, Rejection
from resilience.policies.rate_limit import (
    RATE_LIMIT_STRATEGIES,
    RateLimit,
    RateLimitOptions,
    RateLimitRejected,
    RateLimitStorageState,
    RateLimitWaited,
)

from .helpers import call, outcome
from .servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lclock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A FakeClock whose wall time is also the time ``limits``' memory storage reads.

    ``limits`` reads ``time.time()`` itself and takes no clock; replacing the ``time`` module
    seen by its memory storage and strategies keeps the policy and the storage on one fake
    time, so that window logic is tested without real sleeps.
    """
    clock = FakeClock()
    fake_time = types.SimpleNamespace(time=clock.wall)
    monkeypatch.setattr(limits.storage.memory, "time", fake_time)
    monkeypatch.setattr(limits.strategies, "time", fake_time)
    return clock


# -- decisions, on the memory storage with fake time ---------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_moving_window_rejects_with_the_time_until_the_oldest_permit_expires(mode: str, lclock: FakeClock) -> None:
    pipeline = Pipeline(RateLimit("4/second", strategy="moving-window"), clock=lclock)
    for _ in range(4):
        assert outcome(mode, pipeline) == "ok"
        lclock.advance(0.25)
    lclock.advance(1e-3)  # limits counts a permit of exactly one period ago as still in the window
    assert outcome(mode, pipeline) == "ok"  # the first permit (t=0) has left the window
    retry_after = outcome(mode, pipeline)
    assert retry_after == pytest.approx(0.25 - 1e-3, abs=1e-6)  # the permit of t=0.25 leaves at 1.25
    lclock.advance(0.25)
    assert outcome(mode, pipeline) == "ok"


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_fixed_window_rejects_until_the_window_ends(mode: str, lclock: FakeClock) -> None:
    pipeline = Pipeline(RateLimit((3, 2), strategy="fixed-window"), clock=lclock)
    assert [outcome(mode, pipeline) for _ in range(3)] == ["ok"] * 3
    lclock.advance(0.5)
    assert outcome(mode, pipeline) == pytest.approx(1.5, abs=1e-6)
    lclock.advance(1.5)
    assert outcome(mode, pipeline) == "ok"


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_sliding_window_counter_weights_the_previous_window(mode: str, lclock: FakeClock) -> None:
    lclock.advance(1_000_000 - lclock.wall() % 1_000_000 + 2.5)  # 2.5 s into a 10 s window
    assert lclock.wall() % 10 == 2.5
    pipeline = Pipeline(RateLimit("10 per 10 seconds", strategy="sliding-window-counter"), clock=lclock)
    assert [outcome(mode, pipeline) for _ in range(10)] == ["ok"] * 10
    assert outcome(mode, pipeline) == pytest.approx(7.5, abs=1e-6)  # when this window ends
    lclock.advance(10.0)  # 25% into the next window: the previous 10 weigh 7.5
    assert [outcome(mode, pipeline) for _ in range(3)] == ["ok", "ok", "ok"]
    assert isinstance(outcome(mode, pipeline), float)


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_wait_mode_sleeps_until_the_next_permit(mode: str, lclock: FakeClock) -> None:
    seen: list[Event] = []
    pipeline = Pipeline(RateLimit("2/second", mode="wait"), clock=lclock, listeners=[seen.append])
    assert [call(mode, pipeline) for _ in range(3)] == ["ok"] * 3
    assert 1.0 <= sum(lclock.sleeps) <= 1.0 + 0.0011
    assert lclock.sleeps[0] == pytest.approx(1.0, abs=1e-6)
    waits = [e for e in seen if isinstance(e, RateLimitWaited)]
    assert [e.delay for e in waits] == lclock.sleeps
    assert not any(isinstance(e, RateLimitRejected) for e in seen)


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_wait_mode_rejects_at_once_past_max_wait_or_deadline(mode: str, lclock: FakeClock) -> None:
    seen: list[Event] = []
    limit = RateLimit("2/second", mode="wait", max_wait=0.5)
    pipeline = Pipeline(limit, clock=lclock, listeners=[seen.append])
    call(mode, pipeline)
    lclock.advance(0.25)
    call(mode, pipeline)
    with pytest.raises(RateLimitedError) as info:
        call(mode, pipeline)  # next permit at t=1.0: 0.75 s away, over max_wait
    assert info.value.retry_after == pytest.approx(0.75, abs=1e-6)
    lclock.advance(0.375)
    with pytest.raises(RateLimitedError) as info:
        call(mode, pipeline, pipeline.context(timeout=0.25))  # 0.375 s away: fits max_wait, not the deadline
    assert info.value.retry_after == pytest.approx(0.375, abs=1e-6)
    assert lclock.sleeps == []
    assert [(e.reason, round(e.retry_after or 0, 3)) for e in seen if isinstance(e, RateLimitRejected)] == [
        ("max_wait", 0.75),
        ("deadline", 0.375),
    ]
    assert call(mode, pipeline, pipeline.context(timeout=0.5)) == "ok"  # fits both: waits
    assert lclock.sleeps[0] == pytest.approx(0.375, abs=1e-6)


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_keys_from_the_context(mode: str, lclock: FakeClock) -> None:
    limit = RateLimit("1/second", key="{service}:{method}:{tenant}")
    pipeline = Pipeline(limit, clock=lclock)

    def ctx(service: str, tenant: str) -> CallContext:
        return pipeline.context(service=service, method="get", tags={"tenant": tenant})

    assert outcome(mode, pipeline, ctx("a", "t1")) == "ok"
    assert isinstance(outcome(mode, pipeline, ctx("a", "t1")), float)
    assert outcome(mode, pipeline, ctx("a", "t2")) == "ok"
    assert outcome(mode, pipeline, ctx("b", "t1")) == "ok"
    assert limit.remaining("a:get:t1") == 0
    assert limit.remaining("a:get:t3") == 1
    limit.reset("a:get:t1")
    assert outcome(mode, pipeline, ctx("a", "t1")) == "ok"

    by_callable = Pipeline(RateLimit("1/second", key=lambda c: c.tag("user") or "anon", name="u"), clock=lclock)
    assert outcome(mode, by_callable, by_callable.context(tags={"user": "x"})) == "ok"
    assert outcome(mode, by_callable, by_callable.context()) == "ok"
    assert isinstance(outcome(mode, by_callable, by_callable.context()), float)


def test_sync_and_async_callers_share_one_memory_limit(lclock: FakeClock) -> None:
    pipeline = Pipeline(RateLimit("5/second"), clock=lclock)
    modes = ["sync", "async", "sync", "async", "async", "sync", "async"]
    assert [outcome(mode, pipeline) == "ok" for mode in modes] == [True] * 5 + [False] * 2


@pytest.mark.parametrize("strategy", RATE_LIMIT_STRATEGIES)
def test_sync_and_async_give_the_same_answers(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def play(mode: str) -> list[Any]:
        clock = FakeClock()
        fake_time = types.SimpleNamespace(time=clock.wall)
        monkeypatch.setattr(limits.storage.memory, "time", fake_time)
        monkeypatch.setattr(limits.strategies, "time", fake_time)
        pipeline = Pipeline(RateLimit("3/second", strategy=strategy), clock=clock)
        trace: list[Any] = []
        for _ in range(30):
            clock.advance(0.125)
            result = outcome(mode, pipeline)
            trace.append(result if isinstance(result, str) else round(result, 6))
        return trace

    sync_trace = play("sync")
    assert "ok" in sync_trace
    assert any(isinstance(r, float) for r in sync_trace)
    assert sync_trace == play("async")


def test_rejection_message_and_event(lclock: FakeClock) -> None:
    seen: list[Event] = []
    pipeline = Pipeline(RateLimit("1/minute", key="{tenant}", name="rl"), clock=lclock, listeners=[seen.append])
    ctx = pipeline.context(tags={"tenant": "acme"})
    call("sync", pipeline, ctx)
    with pytest.raises(RateLimitedError, match=r"rl: rate limit exceeded for key 'acme', next permit in 60\.000s"):
        call("sync", pipeline, ctx)
    (event,) = seen
    assert isinstance(event, RateLimitRejected)
    assert (event.policy, event.key, event.reason) == ("rl", "acme", "limit")
    assert event.retry_after == pytest.approx(60.0, abs=1e-6)


# -- storage failures -----------------------------------------------------------------------


class FlakyStorage(limits.storage.MemoryStorage):
    """A memory storage that fails like a remote one while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.asked = 0

    def _check(self) -> None:
        self.asked += 1
        if self.down:
            raise StorageError(ConnectionError("connection refused"))

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        self._check()
        return super().acquire_entry(key, limit, expiry, amount)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        self._check()
        return super().get_moving_window(key, limit, expiry)


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_fail_open_admits_logs_once_and_rechecks_later(
    mode: str, lclock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FlakyStorage()
    seen: list[Event] = []
    pipeline = Pipeline(
        RateLimit("2/second", storage=storage, storage_recheck=5.0), clock=lclock, listeners=[seen.append]
    )
    caplog.set_level(logging.INFO, logger="resilience")
    storage.down = True
    assert [outcome(mode, pipeline) for _ in range(10)] == ["ok"] * 10
    assert storage.asked == 1  # not asked again before storage_recheck
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "connection refused" in caplog.records[0].getMessage()
    storage.down = False
    lclock.advance(5.0)
    assert [outcome(mode, pipeline) for _ in range(3)][:2] == ["ok", "ok"]
    assert isinstance(outcome(mode, pipeline), float)  # limiting again
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    states = [(e.available, type(e.error).__name__) for e in seen if isinstance(e, RateLimitStorageState)]
    assert states == [(False, "ConnectionError"), (True, "NoneType")]


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_fail_closed_rejects_while_the_storage_is_down(mode: str, lclock: FakeClock) -> None:
    storage = FlakyStorage()
    seen: list[Event] = []
    pipeline = Pipeline(RateLimit("2/second", storage=storage, fail_open=False), clock=lclock, listeners=[seen.append])
    storage.down = True
    with pytest.raises(RateLimitedError, match="storage unavailable") as info:
        call(mode, pipeline)
    assert isinstance(info.value.__cause__, StorageError)
    assert info.value.retry_after is None
    with pytest.raises(RateLimitedError, match="storage unavailable"):
        call(mode, pipeline)  # within storage_recheck: rejected without asking
    assert storage.asked == 1
    assert [e.reason for e in seen if isinstance(e, RateLimitRejected)] == ["storage", "storage"]


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rate": "lots"}, ValueError, "rate must be a limits string such as '100/second'.*got 'lots'"),
        ({"rate": "1/second;10/minute"}, ValueError, "rate must be a single limit"),
        ({"rate": "0/second"}, ValueError, "rate amount must be >= 1, got 0"),
        ({"rate": (0, 1)}, ValueError, "rate amount must be >= 1, got 0"),
        ({"rate": (5, 0)}, ValueError, "rate period must be a finite number of seconds > 0, got 0"),
        ({"rate": (5, 1.5)}, ValueError, "rate period must be a whole number of seconds >= 1, got 1.5"),
        ({"rate": 5}, TypeError, "rate must be a limits string"),
        ({"strategy": "token-bucket"}, ValueError, "strategy must be one of fixed-window, moving-window, sliding"),
        ({"mode": "queue"}, ValueError, "mode must be 'reject' or 'wait', got 'queue'"),
        ({"max_wait": -1}, ValueError, "max_wait must be a finite number of seconds > 0, got -1"),
        ({"storage_recheck": 0}, ValueError, "storage_recheck must be a finite number of seconds > 0, got 0"),
        ({"storage": "nosuch://x"}, ValueError, "storage must be a storage URI limits supports, got 'nosuch://x'"),
        ({"storage": "async+memory://"}, ValueError, "storage must be a URI with a scheme without async"),
        ({"storage": 42}, TypeError, "storage must be a storage URI or a limits.storage.Storage, got 42"),
        ({"async_storage": "memory://"}, ValueError, "async_storage must be a URI with an async"),
        ({"key": "{a[0]}"}, ValueError, "key template fields must be plain names"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    kwargs.setdefault("rate", "1/second")
    with pytest.raises(error, match=message):
        RateLimit(**kwargs)


def test_rate_forms() -> None:
    from datetime import timedelta

    assert str(RateLimit("100/second").item) == "100 per 1 second"
    assert str(RateLimit("10 per 5 minutes").item) == "10 per 5 minute"
    assert str(RateLimit((7, 30)).item) == "7 per 30 second"
    assert str(RateLimit((7, timedelta(minutes=2))).item) == "7 per 120 second"
    item = limits.RateLimitItemPerHour(3)
    assert RateLimit(item).item is item
    assert repr(RateLimit("1/second")) == "RateLimit('1 per 1 second', strategy='moving-window', mode='reject')"


@pytest.mark.redis
def test_a_sync_storage_object_needs_an_async_storage_for_async_callers(redis_server: RedisServer) -> None:
    storage = limits.storage.RedisStorage(redis_server.url)
    pipeline = Pipeline(RateLimit("1/second", storage=storage))
    with pytest.raises(TypeError, match="asyncio callers need async_storage"):
        asyncio.run(pipeline.acall(asyncio.sleep, 0))
    storage.storage.close()


@pytest.mark.redis
def test_a_missing_async_driver_only_concerns_async_callers(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = limits.storage.storage_from_string

    def no_async_driver(uri: str, **options: Any) -> Any:
        if uri.startswith("async+"):
            raise limits.errors.ConfigurationError("'coredis' prerequisite not available")
        return real(uri, **options)

    monkeypatch.setattr(limits.storage, "storage_from_string", no_async_driver)
    limit = RateLimit("1/second", storage=redis_server.url, name=f"nd-{uuid.uuid4().hex}")
    pipeline = Pipeline(limit)
    try:
        assert pipeline.call(int) == 0
        with pytest.raises(TypeError, match=r"asyncio callers need async_storage.*'coredis' prerequisite"):
            asyncio.run(pipeline.acall(_aint))
    finally:
        limit.close()


# -- with a real Redis ------------------------------------------------------------------------


@pytest.fixture
def redis_limit(redis_server: RedisServer) -> Iterator[RateLimit]:
    limit = RateLimit("5/second", storage=redis_server.url, name=f"rl-{uuid.uuid4().hex}")
    try:
        yield limit
    finally:
        limit.close()


@pytest.mark.redis
def test_redis_limit_rejects_with_retry_after(redis_limit: RateLimit) -> None:
    pipeline = Pipeline(redis_limit)
    assert [outcome("sync", pipeline) for _ in range(5)] == ["ok"] * 5
    retry_after = outcome("sync", pipeline)
    assert isinstance(retry_after, float)
    assert 0.0 < retry_after <= 1.0
    assert redis_limit.remaining() == 0


@pytest.mark.redis
async def test_async_redis_limit_through_limits_aio(redis_server: RedisServer) -> None:
    name = f"arl-{uuid.uuid4().hex}"
    limit = RateLimit("5/second", storage=redis_server.url, name=name, key="{tenant}")
    sync_view = RateLimit("5/second", storage=redis_server.url, name=name)
    try:
        assert isinstance(limit._active[3].storage, limits.aio.storage.RedisStorage)
        pipeline = Pipeline(limit)

        async def one(tenant: str) -> float | str:
            try:
                return str(await pipeline.aexecute(_aok, pipeline.context(tags={"tenant": tenant})))
            except RateLimitedError as exc:
                return exc.retry_after if exc.retry_after is not None else "no retry_after"

        results = await asyncio.gather(*(one("t") for _ in range(8)))
        assert results.count("ok") == 5
        assert all(0.0 < r <= 1.0 for r in results if isinstance(r, float))
        assert await one("other") == "ok"
        assert sync_view.remaining("t") == 0  # the same limit, seen by a sync caller
        assert sync_view.remaining("other") == 4
    finally:
        await limit.aclose()
        sync_view.close()


async def _aok(ctx: CallContext) -> str:
    return "ok"


@pytest.mark.redis
async def test_fail_open_when_redis_stops(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    name = f"fo-{uuid.uuid4().hex}"
    opts = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    open_limit = RateLimit("2/second", storage=redis_server.url, name=name, storage_recheck=0.05, storage_options=opts)
    closed_limit = RateLimit("2/second", storage=redis_server.url, name=name, fail_open=False, storage_options=opts)
    sync_open, async_open, sync_closed = Pipeline(open_limit), Pipeline(open_limit), Pipeline(closed_limit)
    caplog.set_level(logging.WARNING, logger="resilience")
    try:
        assert sync_open.call(int) == 0
        assert await async_open.acall(_aint) == 0
        with pytest.raises(RateLimitedError, match="rate limit exceeded"):
            sync_open.call(int)
        redis_server.stop()
        try:
            started = time.monotonic()
            for _ in range(20):
                assert sync_open.call(int) == 0  # admitted: the storage is down, fail open
                assert await async_open.acall(_aint) == 0
            assert time.monotonic() - started < 5.0
            with pytest.raises(RateLimitedError, match="storage unavailable"):
                sync_closed.call(int)
            assert len([r for r in caplog.records if "storage failed" in r.getMessage()]) == 2  # once per policy
        finally:
            redis_server.start()
        await asyncio.sleep(0.06)  # past storage_recheck: the next call asks Redis again
        assert sync_open.call(int) == 0
        assert sync_open.call(int) == 0
        with pytest.raises(RateLimitedError, match="rate limit exceeded"):
            sync_open.call(int)
    finally:
        await open_limit.aclose()
        await closed_limit.aclose()


async def _aint() -> int:
    return 0


@pytest.mark.redis
def test_four_processes_share_a_redis_limit_of_100_per_second(redis_server: RedisServer) -> None:
    name = f"mp-{uuid.uuid4().hex}"
    duration = 5.0
    start_at = time.time() + 4.0  # for the workers to import and connect: ~0.2 s idle, far more when loaded
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    worker = str(Path(__file__).with_name("_rate_limit_worker.py"))
    procs = [
        subprocess.Popen(
            [sys.executable, worker, redis_server.url, name, repr(start_at), str(duration)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=start_at - time.time() + duration + 20)
            assert proc.returncode == 0, err.decode()[-2000:]
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    # a worker that starts late still shares the limit for most of the run; the total is what counts
    assert all(r["late"] < 2.0 for r in results), results
    admitted = sum(r["admitted"] for r in results)
    assert all(r["admitted"] > 0 and r["rejected"] > 0 for r in results), results
    print(f"4 processes admitted {admitted}: {results}")
    assert 475 <= admitted <= 525, results


# -- the permit protocol, options and reconfigure ----------------------------------------------


def test_acquire_gives_a_permit_or_a_rejection_that_may_be_waited_on(lclock: FakeClock) -> None:
    ctx = CallContext(clock=lclock)
    reject = RateLimit("1/second", key="{tenant}")
    tenant = CallContext(clock=lclock, tags={"tenant": "acme"})
    assert isinstance(reject.acquire(tenant, 0.0), Permit)
    refused = reject.acquire(tenant, 0.0)
    assert isinstance(refused, Rejection)
    assert (refused.reason, refused.max_wait, refused.detail) == ("limit", 0.0, "acme")
    assert refused.retry_after == pytest.approx(1.0, abs=1e-6)
    waits = RateLimit("1/second", mode="wait", max_wait=2.0)
    waits.acquire(ctx, 0.0)
    later = waits.acquire(ctx, 0.0)
    assert isinstance(later, Rejection) and (later.reason, later.max_wait) == ("limit", 2.0)
    unbounded = RateLimit("1/second", mode="wait", name="u")
    unbounded.acquire(ctx, 0.0)
    forever = unbounded.acquire(ctx, 0.0)
    assert isinstance(forever, Rejection) and forever.max_wait == float("inf")
    # the memory storage serves asyncio callers through acquire: no aacquire for the executor
    assert reject.aacquire is None


def test_options_are_frozen_validated_and_accepted_whole() -> None:
    import dataclasses
    from datetime import timedelta

    options = RateLimitOptions((100, 1), mode="wait", max_wait=timedelta(seconds=2))  # type: ignore[arg-type]
    assert options.rate == limits.RateLimitItemPerSecond(100, 1)  # stored as the limits item
    assert options == RateLimitOptions("100/second", mode="wait", max_wait=2.0)
    assert (options.max_wait, options.storage_recheck, options.fail_open) == (2.0, 1.0, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.mode = "reject"  # type: ignore[misc]
    with pytest.raises(ValueError, match="strategy must be one of"):
        options.replace(strategy="leaky")
    with pytest.raises(TypeError, match="fail_open must be a bool, got 1"):
        RateLimitOptions("1/second", fail_open=1)  # type: ignore[arg-type]
    limit = RateLimit(options=options)
    assert limit.options is options
    assert (limit.item, limit.strategy, limit.mode, limit.max_wait) == (options.rate, "moving-window", "wait", 2.0)
    with pytest.raises(TypeError, match="needs rate"):
        RateLimit()
    with pytest.raises(TypeError, match="not both"):
        RateLimit("1/second", options=options)
    with pytest.raises(TypeError, match="reconfigure needs RateLimitOptions"):
        limit.reconfigure(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_reconfigure_keeps_the_counts_of_an_unchanged_rate_and_strategy(mode: str, lclock: FakeClock) -> None:
    limit = RateLimit("2/second")
    pipeline = Pipeline(limit, clock=lclock)
    assert [outcome(mode, pipeline) for _ in range(2)] == ["ok", "ok"]
    limit.reconfigure(limit.options.replace(mode="wait", max_wait=0.5, key=None))
    assert limit.remaining() == 0  # the same count, in the same storage
    with pytest.raises(RateLimitedError) as info:
        call(mode, pipeline)  # wait mode now, but the next permit is a second away
    assert info.value.retry_after == pytest.approx(1.0, abs=1e-6)
    assert lclock.sleeps == []


@pytest.mark.parametrize("change", [{"rate": "3/second"}, {"strategy": "fixed-window"}])
def test_reconfigure_with_another_rate_or_strategy_counts_afresh_in_the_same_storage(
    change: dict[str, str], lclock: FakeClock
) -> None:
    storage = limits.storage.MemoryStorage()
    limit = RateLimit("2/second", storage=storage)
    pipeline = Pipeline(limit, clock=lclock)
    assert [outcome("sync", pipeline) for _ in range(3)][2] != "ok"
    limit.reconfigure(limit.options.replace(**change))
    assert limit._storage is storage
    expected = 3 if "rate" in change else 2
    assert [outcome("sync", pipeline) for _ in range(expected)] == ["ok"] * expected
    assert isinstance(outcome("sync", pipeline), float)
    limit.reconfigure(limit.options.replace(rate="2/second", strategy="moving-window"))
    assert isinstance(outcome("sync", pipeline), float)  # back to the first: its counts are still there


class FixedWindowOnlyStorage(limits.storage.Storage):
    """A storage that supports the fixed window only (as some limits backends do)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.inner = limits.storage.MemoryStorage()

    @property
    def base_exceptions(self) -> type[Exception]:
        return ConnectionError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.inner.incr(key, expiry, amount=amount)

    def get(self, key: str) -> int:
        return self.inner.get(key)

    def get_expiry(self, key: str) -> float:
        return self.inner.get_expiry(key)

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        return None

    def clear(self, key: str) -> None:
        self.inner.clear(key)


def test_reconfigure_to_a_strategy_the_storage_lacks_changes_nothing(lclock: FakeClock) -> None:
    limit = RateLimit("1/second", strategy="fixed-window", storage=FixedWindowOnlyStorage())
    before = limit.options
    with pytest.raises(ValueError, match="FixedWindowOnlyStorage does not support the 'moving-window' strategy"):
        limit.reconfigure(before.replace(strategy="moving-window"))
    assert limit.options is before and limit.strategy == "fixed-window"
    assert limit.aacquire is not None  # not the memory storage: asyncio callers go through aacquire
    pipeline = Pipeline(limit, clock=lclock)
    assert outcome("sync", pipeline) == "ok"
    assert isinstance(outcome("sync", pipeline), float)


def test_reconfigure_keeps_the_storages_outage(lclock: FakeClock) -> None:
    storage = FlakyStorage()
    limit = RateLimit("2/second", storage=storage, storage_recheck=5.0)
    pipeline = Pipeline(limit, clock=lclock)
    storage.down = True
    assert outcome("sync", pipeline) == "ok"  # failing open
    limit.reconfigure(limit.options.replace(fail_open=False))
    with pytest.raises(RateLimitedError, match="storage unavailable"):
        call("sync", pipeline)  # still down: rejected at once, without asking the storage
    assert storage.asked == 1


@pytest.mark.redis
def test_redis_strategies_never_meet_under_one_key(redis_server: RedisServer) -> None:
    # A fixed window is a counter and a moving window a list in Redis: under one key,
    # a switch of strategy would fail with WRONGTYPE until the old key expired.
    name = f"sw-{uuid.uuid4().hex}"
    limit = RateLimit("2/minute", strategy="fixed-window", storage=redis_server.url, name=name, fail_open=False)
    pipeline = Pipeline(limit)
    try:
        assert [outcome("sync", pipeline) for _ in range(2)] == ["ok", "ok"]
        limit.reconfigure(limit.options.replace(strategy="moving-window"))
        assert [outcome("sync", pipeline) for _ in range(2)] == ["ok", "ok"]
        assert isinstance(outcome("sync", pipeline), float)
        limit.reconfigure(limit.options.replace(strategy="sliding-window-counter"))
        assert outcome("sync", pipeline) == "ok"
        other = RateLimit("2/minute", strategy="moving-window", storage=redis_server.url, name=name)
        try:
            assert other.remaining() == 0  # another process on the same strategy shares the count
        finally:
            other.close()
    finally:
        limit.close()


@pytest.mark.redis
def test_a_stalled_redis_fails_open_instead_of_blocking_the_call() -> None:
    """Issue 9, item 20: a SIGSTOPped Redis used to block a sync call forever, past any Timeout."""
    import signal
    import threading

    server = RedisServer()
    server.start()
    try:
        policy = RateLimit("100/second", storage=server.url, storage_recheck=60)
        pipeline = Pipeline(policy)
        assert pipeline.call(lambda: "ok") == "ok"  # connected while Redis answers
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(pipeline.call(lambda: "admitted")), daemon=True)
        worker.start()
        worker.join(30)  # bounded: a call that never returns fails the test instead of hanging it
        assert outcome == ["admitted"]  # the stall timed out and failed open
        server.proc.send_signal(signal.SIGCONT)
        policy.close()
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.close()


# -- issue 9, item 20: the in-memory storage frees idle keys -----------------------------------


def _stored_keys(policy: RateLimit) -> int:
    """Every per-key entry the policy's memory storage holds: moving windows, ``limits``'
    own window lists, counters and per-key locks."""
    storage: Any = policy._storage
    return (
        len(getattr(storage, "_windows", {}))
        + len(storage.events)
        + len(storage.storage)
        + len(storage.expirations)
        + len(storage.locks)
    )


def _tenants(mode: str, pipeline: Pipeline, names: list[str]) -> list[str]:
    """One call per tenant name, in ``mode``: ``"ok"`` or ``"limited"`` each."""

    def verdict(exc: BaseException | None) -> str:
        return "limited" if isinstance(exc, RateLimitedError) else "ok"

    if mode == "sync":
        seen = []
        for name in names:
            try:
                pipeline.execute(lambda c: "ok", pipeline.context(tags={"tenant": name}))
                seen.append("ok")
            except RateLimitedError as exc:
                seen.append(verdict(exc))
        return seen

    async def main() -> list[str]:
        async def ok(c: CallContext) -> str:
            return "ok"

        seen = []
        for name in names:
            try:
                await pipeline.aexecute(ok, pipeline.context(tags={"tenant": name}))
                seen.append("ok")
            except RateLimitedError as exc:
                seen.append(verdict(exc))
        return seen

    import trio

    return trio.run(main) if mode == "trio" else asyncio.run(main())


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_the_default_memory_storage_frees_the_keys_of_idle_tenants(mode: str, lclock: FakeClock) -> None:
    policy = RateLimit("100/second", key="{tenant}")
    pipeline = Pipeline(policy, clock=lclock)
    tenants = [f"tenant-{i}" for i in range(2000)]
    assert _tenants(mode, pipeline, tenants) == ["ok"] * 2000
    assert _stored_keys(policy) == 2000
    lclock.advance(1.5)  # every tenant's window is over
    # One tenant goes on calling; each call checks the next 128 keys: 2000 / 128 -> 16 calls.
    assert _tenants(mode, pipeline, ["busy"] * 17) == ["ok"] * 17
    assert _stored_keys(policy) == 1  # only the busy tenant's window is left
    assert _tenants(mode, pipeline, ["tenant-7"]) == ["ok"]  # a tenant that comes back starts afresh
    assert policy.remaining("tenant-7") == 99


def test_a_sweep_keeps_the_windows_that_still_hold_permits(lclock: FakeClock) -> None:
    policy = RateLimit("2/second", key="{tenant}")
    pipeline = Pipeline(policy, clock=lclock)
    assert _tenants("sync", pipeline, ["old"]) == ["ok"]  # t=0; a sweep pass is due at t=1
    lclock.advance(0.6)
    assert _tenants("sync", pipeline, ["busy", "busy"]) == ["ok", "ok"]
    lclock.advance(0.6)  # t=1.2: old's permit has left its window, busy's two have not
    assert outcome("sync", pipeline, pipeline.context(tags={"tenant": "busy"})) == pytest.approx(0.4, abs=1e-6)
    assert _stored_keys(policy) == 1
    assert policy.remaining("busy") == 0
    policy.reset("busy")
    assert _stored_keys(policy) == 0


def test_the_memory_storage_decides_as_limits_own_does() -> None:
    import random as random_module

    from resilience.policies.rate_limit import _SweptMemoryStorage

    now = [1_700_000_000.0]
    fake_time = types.SimpleNamespace(time=lambda: now[0])
    rng = random_module.Random(7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limits.storage.memory, "time", fake_time)
        ours, theirs = _SweptMemoryStorage(), limits.storage.memory.MemoryStorage()
        theirs.timer.cancel()  # its trimming runs on a real-time thread; leave it out
        keys = [f"k{i}" for i in range(6)]
        for _ in range(5000):
            now[0] += rng.choice([0.0, 0.01, 0.05, 0.2, 0.7, 1.3])
            key, limit = rng.choice(keys), rng.choice([1, 3, 5])
            expiry, amount = rng.choice([1, 2]), rng.choice([1, 1, 1, 2])
            key = f"{key}/{limit}/{expiry}"
            assert ours.acquire_entry(key, limit, expiry, amount) == theirs.acquire_entry(key, limit, expiry, amount)
            start, inside = ours.get_moving_window(key, limit, expiry)
            expected_start, expected_inside = theirs.get_moving_window(key, limit, expiry)
            assert inside == expected_inside
            if inside:
                assert start == expected_start
        assert ours.window_count <= len(keys) * 6 and len(theirs.events) >= ours.window_count


def test_the_memory_storage_admits_exactly_the_limit_across_threads() -> None:
    import threading

    policy = RateLimit("50/hour")
    results: list[bool] = []
    lock = threading.Lock()

    def hits() -> None:
        for _ in range(100):
            admitted = not isinstance(policy.acquire(CallContext(), 0.0), Rejection)
            with lock:
                results.append(admitted)

    threads = [threading.Thread(target=hits) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 800
    assert sum(results) == 50
