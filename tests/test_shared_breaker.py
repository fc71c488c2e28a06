from __future__ import annotations

import asyncio
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from resilience.clock import FakeClock
from resilience.errors import CircuitOpenError, IsolatedCircuitError
from resilience.pipeline import Pipeline
from resilience.policies.circuit_breaker import CircuitBreaker, CircuitState
from resilience.shared.redis_breaker import AsyncRedisBreakerState, RedisBreakerState, _Core

from .servers import RedisServer, free_port

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_shared_breaker_worker.py"


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("down")


def ok() -> str:
    return "ok"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def fast(url: str, key: str, **options: float) -> RedisBreakerState:
    settings = {"poll_interval": 0.2, "tick": 0.02, "reconnect_min": 0.05, "reconnect_max": 0.2, "socket_timeout": 1.0}
    settings.update(options)
    return RedisBreakerState(url, key=key, **settings)


@pytest.fixture
def key() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def states() -> Iterator[list[RedisBreakerState]]:
    made: list[RedisBreakerState] = []
    try:
        yield made
    finally:
        for state in made:
            state.close()


# -- the pure core -------------------------------------------------------------------------------


def test_core_applies_newer_epochs_from_others_only(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    core = _Core("k", "p:", 1.0, 0.05, 0.1, 1.0, 1.0, None, clock)
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    core.attach(breaker)
    core.receive(b"1|open|5000|other|3")
    assert breaker.state is CircuitState.OPEN
    assert breaker.metrics().retry_after == pytest.approx(5.0)
    core.receive(b"1|closed|0|other|2")  # older: ignored
    assert breaker.state is CircuitState.OPEN
    core.receive(f"1|closed|0|{core.origin}|4".encode())  # our own echo: ignored
    assert breaker.state is CircuitState.OPEN
    core.receive(b"1|closed|0|other|4")  # not newer than the echo either
    assert breaker.state is CircuitState.OPEN
    core.receive(b"1|closed|0|other|5")
    assert breaker.state is CircuitState.CLOSED
    core.receive(b"1|open|9000|other|6", 2500)  # from the state key: its PTTL is the rest of the break
    assert breaker.metrics().retry_after == pytest.approx(2.5)
    with caplog.at_level(logging.WARNING, logger="resilience.shared"):
        core.receive(b"garbage")
        core.receive(b"1|sideways|0|other|9")
    assert len(caplog.records) == 2
    assert core.seen == 6
    with pytest.raises(ValueError, match="already attached"):
        core.attach(breaker)


def test_core_publishes_the_current_state_once_per_change() -> None:
    clock = FakeClock()
    core = _Core("k", "p:", 1.0, 0.05, 0.1, 1.0, 1.0, None, clock)
    breaker = CircuitBreaker(failure_threshold=1, break_duration=30, clock=clock)
    core.attach(breaker)
    assert core.take_publication() is None
    core.dirty = True
    breaker.release(breaker.acquire(None, 0.0), __import__("resilience").Outcome.FAILURE, 0.0, 0.0)
    clock.advance(10)
    keys, args = core.take_publication() or ([], [])
    assert keys == ["p:k:state", "p:k:epoch"]
    assert args == ["open", "20000", core.origin, "20000", "p:k:events"]
    assert core.take_publication() is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"poll_interval": 0}, r"poll_interval must be a finite number of seconds > 0, got 0"),
        ({"tick": -1}, r"tick must be a finite number of seconds > 0, got -1"),
        ({"reconnect_min": 2, "reconnect_max": 1}, r"reconnect_max must be >= reconnect_min \(2\), got 1"),
    ],
)
def test_invalid_options(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisBreakerState("redis://127.0.0.1:1/0", key="k", **options)
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        RedisBreakerState("redis://127.0.0.1:1/0", key="")


# -- real Redis, one process --------------------------------------------------------------------------


def test_open_close_and_isolate_propagate_between_breakers(
    redis_server: RedisServer, key: str, states: list[RedisBreakerState]
) -> None:
    a_state, b_state = fast(redis_server.url, key), fast(redis_server.url, key)
    states += [a_state, b_state]
    a = CircuitBreaker(failure_threshold=2, break_duration=0.3, shared=a_state)
    b = CircuitBreaker(failure_threshold=2, break_duration=0.3, shared=b_state)
    assert a_state.wait_connected(10)
    assert b_state.wait_connected(10)
    pa, pb = Pipeline(a), Pipeline(b)
    for _ in range(2):
        with pytest.raises(Boom):
            pa.call(boom)
    assert wait_until(lambda: b.state is CircuitState.OPEN, 2)
    with pytest.raises(CircuitOpenError) as info:
        pb.call(ok)
    assert info.value.retry_after is not None
    assert 0 < info.value.retry_after <= 0.3
    time.sleep(0.35)  # both breaks end; b's probe closes b, and b tells a
    assert pb.call(ok) == "ok"
    assert b.state is CircuitState.CLOSED
    assert wait_until(lambda: a.state is CircuitState.CLOSED, 2)
    a.isolate()
    assert wait_until(lambda: b.state is CircuitState.ISOLATED, 2)
    with pytest.raises(IsolatedCircuitError):
        pb.call(ok)
    b.reset()
    assert wait_until(lambda: a.state is CircuitState.CLOSED, 2)


def test_a_late_starter_reads_the_state_key(
    redis_server: RedisServer, key: str, states: list[RedisBreakerState]
) -> None:
    a_state = fast(redis_server.url, key)
    states.append(a_state)
    a = CircuitBreaker(failure_threshold=1, break_duration=30, shared=a_state)
    assert a_state.wait_connected(10)
    with pytest.raises(Boom):
        Pipeline(a).call(boom)
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert wait_until(lambda: client.get(f"resilience:breaker:{key}:state") is not None, 2)
        ttl = client.pttl(f"resilience:breaker:{key}:state")
        assert 25_000 < ttl <= 30_000  # the open state expires with its break
    finally:
        client.close()
    late_state = fast(redis_server.url, key)
    states.append(late_state)
    late = CircuitBreaker(failure_threshold=1, break_duration=30, shared=late_state)
    assert late_state.wait_connected(10)
    assert late.state is CircuitState.OPEN  # read on connection, no message needed
    assert 25 < late.metrics().retry_after <= 30


def test_a_missed_message_is_caught_up_by_the_poll(
    redis_server: RedisServer, key: str, states: list[RedisBreakerState]
) -> None:
    shared = fast(redis_server.url, key, poll_interval=0.2)
    states.append(shared)
    breaker = CircuitBreaker(failure_threshold=1, shared=shared)
    assert shared.wait_connected(10)
    client = redis.Redis.from_url(redis_server.url)
    try:
        # Another process's open whose PUBLISH never arrived: only the state key has it.
        client.set(f"resilience:breaker:{key}:state", "1|open|20000|elsewhere|1000", px=20_000)
        started = time.monotonic()
        assert wait_until(lambda: breaker.state is CircuitState.OPEN, 5)
        assert time.monotonic() - started < 1.0
        assert 15 < breaker.metrics().retry_after <= 20
    finally:
        client.close()


def test_no_redis_round_trip_per_call_in_the_closed_state(
    redis_server: RedisServer, key: str, states: list[RedisBreakerState]
) -> None:
    shared = fast(redis_server.url, key, poll_interval=60)
    states.append(shared)
    breaker = CircuitBreaker(failure_threshold=3, shared=shared)
    assert shared.wait_connected(10)
    pipeline = Pipeline(breaker)
    client = redis.Redis.from_url(redis_server.url)

    def commands() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def delta(old: dict[str, int], new: dict[str, int]) -> dict[str, int]:
        return {k: n - old.get(k, 0) for k, n in new.items() if n != old.get(k, 0)}

    try:
        before = commands()
        for _ in range(2000):
            pipeline.call(ok)
        for _ in range(2):
            with pytest.raises(Boom):
                pipeline.call(boom)
        after = commands()
        assert delta(before, after) == {"info": 1}  # the INFO of the first count, nothing else
        with pytest.raises(Boom):
            pipeline.call(boom)  # opens: one transition, published once by the worker
        assert wait_until(lambda: shared._core.published == 1, 2)
        published = delta(after, commands())
        # INFO, then the script (EVALSHA, and SCRIPT LOAD + EVALSHA again if Redis did not know it) and
        # the commands it runs, which Redis counts too.
        assert published.pop("info") == 1
        assert published.pop("publish") == published.pop("incr") == published.pop("set") == 1
        assert set(published) <= {"evalsha", "eval", "script|load", "script"}, published
    finally:
        client.close()


def test_redis_down_mid_test_breaker_works_locally_then_resyncs(
    redis_server: RedisServer, key: str, states: list[RedisBreakerState], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resilience.shared")
    a_state, b_state = fast(redis_server.url, key), fast(redis_server.url, key)
    states += [a_state, b_state]
    a = CircuitBreaker(failure_threshold=2, break_duration=60, shared=a_state)
    b = CircuitBreaker(failure_threshold=2, break_duration=60, shared=b_state)
    assert a_state.wait_connected(10)
    assert b_state.wait_connected(10)
    pa = Pipeline(a)
    try:
        redis_server.stop()
        assert wait_until(lambda: not a_state.connected and not b_state.connected, 5)
        time.sleep(0.6)  # several reconnect attempts fail meanwhile
        started = time.monotonic()
        assert pa.call(ok) == "ok"
        for _ in range(2):
            with pytest.raises(Boom):
                pa.call(boom)
        assert a.state is CircuitState.OPEN  # decided locally, without Redis
        with pytest.raises(CircuitOpenError):
            pa.call(ok)
        assert time.monotonic() - started < 0.5  # and without waiting for it
        assert b.state is CircuitState.CLOSED
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2  # once per shared state, for the whole outage
        assert all("Redis unreachable" in r.getMessage() for r in warnings)
        redis_server.start()
        assert wait_until(lambda: b.state is CircuitState.OPEN, 10)  # a published its open on return
        assert a_state.wait_connected(5)
        assert b_state.wait_connected(5)
        assert sum("reachable again" in r.getMessage() for r in caplog.records) == 2
        assert 55 < b.metrics().retry_after <= 60
    finally:
        if redis_server.proc is None:
            redis_server.start()


# -- real Redis, four processes ------------------------------------------------------------------------


def test_an_open_in_one_process_is_seen_by_three_others_within_a_second(redis_server: RedisServer, key: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    roles = ["opener", "watcher", "watcher", "watcher"]
    children: list[subprocess.Popen[str]] = []
    lines: queue.Queue[tuple[int, str]] = queue.Queue()

    def pump(i: int, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put((i, line.strip()))

    def expect(count: int, timeout: float) -> dict[int, str]:
        got: dict[int, str] = {}
        end = time.monotonic() + timeout
        while len(got) < count:
            try:
                i, line = lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            got[i] = line
        return got

    try:
        for i, role in enumerate(roles):
            child = subprocess.Popen(
                [sys.executable, str(WORKER), redis_server.url, key, role],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
            children.append(child)
            threading.Thread(target=pump, args=(i, child), daemon=True).start()
        ready = expect(4, 20)
        assert ready == dict.fromkeys(range(4), "ready")
        for child in children[1:] + children[:1]:  # watchers first, then the opener
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = expect(4, 10)
        assert sorted(reports) == [0, 1, 2, 3], reports
        opened = float(reports[0].split()[1])
        for i in (1, 2, 3):
            word, at = reports[i].split()
            assert word == "saw"
            print(f"process {i} saw the open {1000 * (float(at) - opened):.1f} ms after it was decided")
            assert -0.05 < float(at) - opened < 1.0, (i, float(at) - opened)
        for child in children:
            assert child.wait(10) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(5)
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()


# -- asyncio -------------------------------------------------------------------------------------------


async def test_async_shared_state_propagates_opens_and_closes(redis_server: RedisServer, key: str) -> None:
    options = {"poll_interval": 0.2, "tick": 0.02, "socket_timeout": 1.0}
    a_state = AsyncRedisBreakerState(redis_server.url, key=key, **options)
    b_state = AsyncRedisBreakerState(redis_server.url, key=key, **options)
    a = CircuitBreaker(failure_threshold=1, break_duration=0.3, shared=a_state)
    b = CircuitBreaker(failure_threshold=1, break_duration=0.3, shared=b_state)
    pa, pb = Pipeline(a), Pipeline(b)

    async def aboom() -> None:
        raise Boom("down")

    async def aok() -> str:
        return "ok"

    async def until(predicate: Callable[[], bool], seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not predicate():  # noqa: ASYNC110 - polling another task's effect
            await asyncio.sleep(0.005)
        return predicate()

    async with a_state, b_state:
        assert await a_state.wait_connected(10)
        assert await b_state.wait_connected(10)
        started = time.monotonic()
        with pytest.raises(Boom):
            await pa.acall(aboom)
        assert await until(lambda: b.state is CircuitState.OPEN, 1.0)
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.35)
        assert await pb.acall(aok) == "ok"
        assert await until(lambda: a.state is CircuitState.CLOSED, 2)
    assert not a_state.connected or a_state._task is None


async def test_async_shared_state_without_redis_works_locally(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="resilience.shared")
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    shared = AsyncRedisBreakerState(url, key="nowhere", reconnect_min=0.02, reconnect_max=0.05, socket_timeout=0.5)
    breaker = CircuitBreaker(failure_threshold=1, shared=shared)
    pipeline = Pipeline(breaker)

    async def aboom() -> None:
        raise Boom("down")

    async with shared:
        await asyncio.sleep(0.3)
        with pytest.raises(Boom):
            await pipeline.acall(aboom)
        with pytest.raises(CircuitOpenError):
            await pipeline.acall(aboom)
        assert not await shared.wait_connected(0.1)
    assert len([r for r in caplog.records if "Redis unreachable" in r.getMessage()]) == 1
