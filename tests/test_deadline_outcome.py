"""An attempt cut by an outer Timeout counts as a failure (issue 9, item 16).

A cancellation that arrives when the call's deadline has passed is a slow backend: the
breaker and the concurrency limit inside the ``Timeout`` count it as a ``FAILURE``
(:func:`resilience.outcome.error_outcome`). Any other cancellation — the caller's task
cancelled before the deadline, a hedge that lost — stays ``IGNORED``. Async on asyncio and
trio with a fake clock; the sync path, which cannot cut an attempt, is pinned too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from interceptors.httpx import AsyncResilientTransport, ResilientTransport
from resilience import (
    AIMD,
    CallContext,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    ConcurrencyLimit,
    DeadlineExceededError,
    FakeClock,
    Pipeline,
    Timeout,
)
from resilience.policies.hedge import Hedge

from ._http_server import HttpServer, Reply
from .helpers import Script, run_async

ASYNC_MODES = ["async", "trio"]


class Hang:
    """An attempt that waits for an event the test never sets: only a cancellation ends it.

    It waits on no clock, so fake time moves only when the test advances it.
    """

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def __call__(self, ctx: CallContext | None = None) -> str:
        self.started += 1
        event: Any = trio.Event() if _in_trio() else asyncio.Event()
        try:
            await event.wait()
        except BaseException:
            self.cancelled += 1
            raise
        return "never"


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


async def _settle() -> None:
    if _in_trio():
        await trio.testing.wait_all_tasks_blocked()
    else:
        for _ in range(20):
            await asyncio.sleep(0)


async def _drive(call: Callable[[], Awaitable[Any]], action: Callable[[Callable[[], Any]], None]) -> Any:
    """Start ``call()``, let it block, run ``action(cancel)`` — ``cancel`` cancels the call
    from outside — and return what the call returned or raised."""
    box: dict[str, Any] = {}
    if _in_trio():

        async def runner(scope: trio.CancelScope) -> None:
            with scope:
                try:
                    box["value"] = await call()
                except trio.Cancelled as exc:
                    box["value"] = exc
                    raise  # the scope absorbs its own cancellation
                except Exception as exc:
                    box["value"] = exc

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            nursery.start_soon(runner, scope)
            await _settle()
            action(scope.cancel)
        return box["value"]
    task = asyncio.ensure_future(call())
    await _settle()
    action(task.cancel)
    try:
        return await task
    except BaseException as exc:
        return exc


def _cancelled(value: object) -> bool:
    return isinstance(value, asyncio.CancelledError | trio.Cancelled)


# -- a breaker inside a Timeout ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_an_attempt_cut_by_the_timeout_counts_against_the_breaker_and_one_cancelled_from_outside_does_not(
    mode: str,
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, break_duration=30, clock=clock)
    pipeline = Pipeline(Timeout(1.0), breaker, clock=clock)
    hang = Hang()

    async def main() -> list[Any]:
        seen = [await _drive(lambda: pipeline.acall(hang), lambda cancel: clock.advance(1.0))]
        assert breaker.state is CircuitState.CLOSED  # one failure of two
        for _ in range(3):  # the caller gives up before the deadline: not the backend's fault
            seen.append(await _drive(lambda: pipeline.acall(hang), lambda cancel: cancel()))
        assert breaker.state is CircuitState.CLOSED
        seen.append(await _drive(lambda: pipeline.acall(hang), lambda cancel: clock.advance(1.0)))
        assert breaker.state is CircuitState.OPEN  # the second slow attempt: the threshold
        with pytest.raises(CircuitOpenError):
            await pipeline.acall(hang)
        return seen

    seen = run_async(mode, main)
    assert isinstance(seen[0], DeadlineExceededError) and isinstance(seen[4], DeadlineExceededError)
    assert all(_cancelled(v) for v in seen[1:4])
    assert (hang.started, hang.cancelled) == (5, 5)


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_an_attempt_cut_by_the_timeout_is_a_drop_for_the_concurrency_limit(mode: str) -> None:
    clock = FakeClock()
    limit = ConcurrencyLimit(AIMD(10, backoff_ratio=0.5))
    pipeline = Pipeline(Timeout(1.0), limit, clock=clock)
    hang = Hang()

    async def main() -> tuple[Any, Any]:
        outside = await _drive(lambda: pipeline.acall(hang), lambda cancel: cancel())
        assert limit.limit == 10  # a cancellation from outside leaves the limit alone
        cut = await _drive(lambda: pipeline.acall(hang), lambda cancel: clock.advance(1.0))
        return outside, cut

    outside, cut = run_async(mode, main)
    assert _cancelled(outside)
    assert isinstance(cut, DeadlineExceededError)
    assert limit.limit == 5  # the slow attempt was a drop
    assert limit.inflight == 0


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_a_hedge_that_lost_is_not_counted_against_the_breaker(mode: str) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, break_duration=30, clock=clock)
    pipeline = Pipeline(Timeout(10.0), Hedge(0.1, budget=None), breaker, clock=clock)
    hang = Hang()

    async def attempt(ctx: CallContext) -> str:
        if ctx.hedge == 0:
            return await hang(ctx)  # the primary hangs and loses
        return "hedged"

    async def main() -> Any:
        return await _drive(lambda: pipeline.aexecute(attempt, pipeline.context()), lambda cancel: clock.advance(0.1))

    assert run_async(mode, main) == "hedged"
    assert (hang.started, hang.cancelled) == (1, 1)
    assert breaker.state is CircuitState.CLOSED  # one failure would have opened it


# -- the sync path -------------------------------------------------------------------------------
#
# A sync Timeout cannot cut an attempt. What it does: the adapters hand the time left to the
# transport as its timeout, so a slow backend ends in the transport's own timeout error,
# which the classifier calls a failure (below, against a real server). A plain function
# that ignores the deadline and returns late has answered: the breaker inside counts that
# answer as it came (a success), and the Timeout discards it and raises the deadline.
# Slowness on its own is the breaker's slow_call_duration to judge.


def test_sync_an_attempt_that_answers_after_the_deadline_is_what_it_answered() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, break_duration=30, clock=clock)
    pipeline = Pipeline(Timeout(1.0), breaker, clock=clock)
    with pytest.raises(DeadlineExceededError):
        pipeline.call(Script("late", clock=clock, durations=[2.0]))
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(DeadlineExceededError):
        pipeline.call(Script(TimeoutError("read timed out"), clock=clock, durations=[2.0]))
    assert breaker.state is CircuitState.OPEN


@pytest.fixture
def slow_server() -> Iterator[HttpServer]:
    with HttpServer() as server:
        server.default = Reply(delay=1.0)
        yield server


@pytest.mark.parametrize("mode", ["sync", *ASYNC_MODES])
def test_a_slow_backend_cut_by_the_timeout_opens_the_breaker(mode: str, slow_server: HttpServer) -> None:
    # Real time: the transport's timeout (sync) or the Timeout's cancellation (async) ends
    # the attempt at 0.2 s; either way the breaker inside counts a failure.
    breaker = CircuitBreaker(failure_threshold=1, break_duration=30)
    pipeline = Pipeline(Timeout(0.2), breaker)
    url = slow_server.url + "/slow"
    if mode == "sync":
        with httpx.Client(transport=ResilientTransport(pipeline=pipeline)) as client:
            with pytest.raises(httpx.TimeoutException):
                client.get(url)
            with pytest.raises(CircuitOpenError):
                client.get(url)
    else:

        async def main() -> None:
            async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline=pipeline)) as client:
                with pytest.raises((DeadlineExceededError, httpx.TimeoutException)):
                    await client.get(url)
                with pytest.raises(CircuitOpenError):
                    await client.get(url)

        run_async(mode, main)
    assert breaker.state is CircuitState.OPEN
    assert len(slow_server.requests) == 1
