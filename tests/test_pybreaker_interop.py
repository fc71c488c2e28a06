"""The pybreaker adapter, and a differential test of our consecutive mode against pybreaker.

Differences between pybreaker (1.4) and our consecutive-failure mode, found here and
pinned by the tests below (the differential test avoids them; the others show them):

- pybreaker counts an excluded exception as a *success* (it resets the failure count and
  counts towards closing a half-open breaker); an ``IGNORED`` outcome of ours counts as
  neither.
- pybreaker raises ``CircuitBreakerError`` from the call whose failure trips the breaker;
  ours lets that call's own error through.
- pybreaker counts any ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) as a
  failure; the default classifier calls those (and cancellations) ``IGNORED``.
- pybreaker holds its lock for the whole call, so in half-open it lets every caller
  through, one after the other; ours lets ``half_open_max_calls`` probes run at once and
  rejects the rest at once.
- pybreaker reads the wall clock (``datetime.now(UTC)``; its Redis storage keeps
  ``opened_at`` in whole seconds); ours reads a monotonic clock.
On sequences of plain successes and failures, with time advancing, both walk the same states.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pybreaker
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.clock import FakeClock
from resilience.errors import CircuitOpenError
from resilience.outcome import Classifier, Outcome
from resilience.pipeline import Pipeline
from resilience.policies.circuit_breaker import CircuitBreaker
from resilience.policies.pybreaker_adapter import PyBreakerPolicy

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


class Boom(Exception):
    pass


class Business(Exception):
    pass


@contextmanager
def pybreaker_time(clock: FakeClock) -> Iterator[None]:
    """Make pybreaker read ``clock``: it calls ``datetime.now(UTC)`` through its module's name."""

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return EPOCH + timedelta(seconds=clock.monotonic())

    with mock.patch.object(pybreaker, "datetime", FakeDatetime):
        yield


def ok() -> str:
    return "ok"


def boom() -> str:
    raise Boom("down")


async def aok() -> str:
    return "ok"


async def aboom() -> str:
    raise Boom("down")


PB_STATE = {"closed": "closed", "open": "open", "half-open": "half_open"}

steps_strategy = st.lists(
    st.one_of(st.booleans(), st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 5.0])),
    max_size=60,
)


# -- differential: our consecutive mode against pybreaker -------------------------------------------


@given(
    fail_max=st.integers(1, 4),
    reset_timeout=st.sampled_from([1, 2, 5]),
    success_threshold=st.integers(1, 3),
    steps=steps_strategy,
)
@settings(max_examples=300, deadline=None)
def test_consecutive_mode_walks_the_same_states_as_pybreaker(
    fail_max: int, reset_timeout: int, success_threshold: int, steps: list[bool | float]
) -> None:
    clock = FakeClock()
    theirs = pybreaker.CircuitBreaker(
        fail_max=fail_max, reset_timeout=reset_timeout, success_threshold=success_threshold
    )
    ours = CircuitBreaker(
        failure_threshold=fail_max, break_duration=reset_timeout, success_threshold=success_threshold, clock=clock
    )
    pipeline = Pipeline(ours, clock=clock)
    walk_theirs: list[tuple[bool, str]] = []
    walk_ours: list[tuple[bool, str]] = []
    with pybreaker_time(clock):
        for step in steps:
            if isinstance(step, float):
                clock.advance(step)
                continue
            ran = [False, False]

            def call(i: int, failing: bool = step, ran: list[bool] = ran) -> str:
                ran[i] = True
                if failing:
                    raise Boom("down")
                return "ok"

            with suppress(Boom, pybreaker.CircuitBreakerError):
                theirs.call(call, 0)
            with suppress(Boom, CircuitOpenError):
                pipeline.call(call, 1)
            walk_theirs.append((ran[0], PB_STATE[theirs.current_state]))
            walk_ours.append((ran[1], ours.state.value))
    assert walk_ours == walk_theirs


def test_difference_excluded_error_is_a_success_for_pybreaker_ignored_for_us(clock: FakeClock) -> None:
    theirs = pybreaker.CircuitBreaker(fail_max=2, exclude=[Business])
    ours = CircuitBreaker(failure_threshold=2, clock=clock)

    class BusinessIgnored(Classifier):
        def error(self, exc: BaseException) -> Outcome:
            return Outcome.IGNORED if isinstance(exc, Business) else super().error(exc)

    pipeline = Pipeline(ours, clock=clock, classifier=BusinessIgnored())

    def business() -> None:
        raise Business("no such order")

    for fn in (boom, business, boom):
        with pytest.raises((Boom, Business, pybreaker.CircuitBreakerError)):
            theirs.call(fn)
        with pytest.raises((Boom, Business)):
            pipeline.call(fn)
    assert theirs.current_state == "closed"  # the excluded error reset its count
    assert ours.state.value == "open"  # ours: failure, (ignored), failure -> 2 in a row


def test_difference_the_tripping_call_raises_its_own_error(clock: FakeClock) -> None:
    theirs = pybreaker.CircuitBreaker(fail_max=1)
    with pytest.raises(pybreaker.CircuitBreakerError):
        theirs.call(boom)
    pipeline = Pipeline(CircuitBreaker(failure_threshold=1, clock=clock), clock=clock)
    with pytest.raises(Boom):
        pipeline.call(boom)


# -- the adapter, sync ----------------------------------------------------------------------------


def test_sync_adapter_maps_rejection_to_circuit_open_with_retry_after(clock: FakeClock) -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=10)
    pipeline = Pipeline(PyBreakerPolicy(breaker), clock=clock)
    with pybreaker_time(clock):
        with pytest.raises(Boom):
            pipeline.call(boom)
        with pytest.raises(Boom):  # trips pybreaker, but the pipeline sees the call's own error
            pipeline.call(boom)
        assert breaker.current_state == "open"
        clock.advance(4)
        with pytest.raises(CircuitOpenError) as info:
            pipeline.call(ok)
        assert info.value.retry_after == pytest.approx(6.0)
        assert isinstance(info.value.__cause__, pybreaker.CircuitBreakerError)
        clock.advance(6)
        assert pipeline.call(ok) == "ok"
        assert breaker.current_state == "closed"


def test_sync_adapter_keeps_pybreaker_rules_and_listeners() -> None:
    seen: list[tuple[str, str]] = []

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old: Any, new: Any) -> None:
            seen.append((old.name if old else "", new.name))

    breaker = pybreaker.CircuitBreaker(fail_max=2, exclude=[Business], listeners=[Listener()])
    pipeline = Pipeline(PyBreakerPolicy(breaker))

    def business() -> None:
        raise Business("no")

    with pytest.raises(Boom):
        pipeline.call(boom)
    with pytest.raises(Business):
        pipeline.call(business)
    assert breaker.fail_counter == 0
    with pytest.raises(Boom):
        pipeline.call(boom)
    with pytest.raises(Boom):
        pipeline.call(boom)
    assert seen == [("closed", "open")]


class FiveHundred(Classifier):
    checks_results = True

    def result(self, result: object) -> Outcome:
        return Outcome.FAILURE if result == 500 else Outcome.SUCCESS


def test_a_result_the_classifier_calls_a_failure_counts_and_is_returned() -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=2)
    pipeline = Pipeline(PyBreakerPolicy(breaker), classifier=FiveHundred())
    assert pipeline.call(lambda: 500) == 500
    assert breaker.fail_counter == 1
    assert pipeline.call(lambda: 500) == 500  # trips the breaker; the result still comes back
    assert breaker.current_state == "open"
    with pytest.raises(CircuitOpenError):
        pipeline.call(ok)


# -- the adapter, async ---------------------------------------------------------------------------


async def test_async_adapter_records_outcomes_like_the_sync_one() -> None:
    clock = FakeClock()
    script: list[str | float] = ["f", "ok", "f", "f", "ok", 5.0, "f", 10.0, "ok", "f", "f", 10.0, "ok"]

    async def run(use_async: bool) -> list[str]:
        breaker = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=10)
        pipeline = Pipeline(PyBreakerPolicy(breaker), clock=clock)
        trace: list[str] = []
        for step in script:
            if isinstance(step, float):
                clock.advance(step)
                continue
            try:
                if use_async:
                    await pipeline.acall(aboom if step == "f" else aok)
                else:
                    pipeline.call(boom if step == "f" else ok)
                trace.append("ok")
            except Exception as exc:
                trace.append(type(exc).__name__)
            trace.append(breaker.current_state)
        return trace

    with pybreaker_time(clock):
        sync = await run(False)
        assert await run(True) == sync
    assert "CircuitOpenError" in sync
    assert sync[-1] == "closed"


async def test_async_adapter_does_not_hold_pybreakers_lock_across_the_await() -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=5)
    pipeline = Pipeline(PyBreakerPolicy(breaker))
    inside = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> str:
        inside.set()
        await release.wait()
        return "slow"

    task = asyncio.create_task(pipeline.acall(slow))
    await asyncio.wait_for(inside.wait(), 5)
    done = threading.Event()
    # A sync caller in another thread gets through pybreaker while the async call is awaiting.
    thread = threading.Thread(target=lambda: (breaker.call(ok), done.set()))
    thread.start()
    assert await asyncio.to_thread(done.wait, 5)
    release.set()
    assert await task == "slow"
    thread.join(5)


async def test_async_half_open_lets_one_probe_through_and_cancellation_frees_it() -> None:
    clock = FakeClock()
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=5)
    pipeline = Pipeline(PyBreakerPolicy(breaker), clock=clock)
    with pybreaker_time(clock):
        with pytest.raises(Boom):
            await pipeline.acall(aboom)
        with pytest.raises(CircuitOpenError) as info:
            await pipeline.acall(aok)
        assert info.value.retry_after == pytest.approx(5.0)
        clock.advance(5)
        release = asyncio.Event()

        async def probe() -> str:
            await release.wait()
            return "ok"

        tasks = [asyncio.create_task(pipeline.acall(probe)) for _ in range(5)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert breaker.current_state == "half-open"
        refused = [t for t in tasks if t.done()]
        assert len(refused) == 4
        assert all(isinstance(t.exception(), CircuitOpenError) for t in refused)
        (probe_task,) = [t for t in tasks if not t.done()]
        probe_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe_task
        assert breaker.current_state == "half-open"
        assert await pipeline.acall(aok) == "ok"  # the slot was freed by the cancellation
        assert breaker.current_state == "closed"


async def test_async_stale_outcome_is_dropped() -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60)
    pipeline = Pipeline(PyBreakerPolicy(breaker))
    release = asyncio.Event()

    async def slow_failure() -> None:
        await release.wait()
        raise Boom("late")

    task = asyncio.create_task(pipeline.acall(slow_failure))
    await asyncio.sleep(0)
    breaker.open()
    breaker.close()
    breaker.open()  # the state changed under the call
    release.set()
    with pytest.raises(Boom):
        await task
    assert breaker.current_state == "open"
    assert breaker.fail_counter == 0


async def test_async_failure_keeps_the_original_traceback_and_context() -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=1)
    pipeline = Pipeline(PyBreakerPolicy(breaker))
    with pytest.raises(Boom) as info:
        await pipeline.acall(aboom)
    assert info.value.__context__ is None
    frames = []
    tb = info.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "_fail" not in frames
    assert breaker.current_state == "open"


def test_constructor_checks_the_breaker_type() -> None:
    with pytest.raises(TypeError, match=r"pybreaker\.CircuitBreaker"):
        PyBreakerPolicy(object())  # type: ignore[arg-type]
    assert PyBreakerPolicy(pybreaker.CircuitBreaker(name="orders")).name == "orders"


def test_missing_pybreaker_gives_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pybreaker", None)
    monkeypatch.delitem(sys.modules, "resilience.policies.pybreaker_adapter")
    with pytest.raises(ImportError, match=r"pip install 'resilience-policies\[pybreaker\]'"):
        importlib.import_module("resilience.policies.pybreaker_adapter")
