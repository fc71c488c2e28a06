"""Every way a call can end gives its permit back: after it, the policy's state is at rest.

Each stateful policy below is run through every release path, sync and async: success,
failure, a result judged a failure, cancellation, an outer timeout, a classifier whose
``error()`` or ``result()`` raises, and (for the breaker) a predicate that raises during
a half-open probe. After the call the policy holds nothing: no slot taken, no one queued,
no call in flight, no probe in flight (and a breaker left half-open admits the next probe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from resilience import CallContext, FakeClock, Pipeline
from resilience.outcome import Classifier, Outcome
from resilience.permit import Permit, Ticket
from resilience.policies.bulkhead import Bulkhead
from resilience.policies.circuit_breaker import CircuitBreaker, CircuitState
from resilience.policies.circuit_breaker.states import CircuitPermit
from resilience.policies.concurrency import ConcurrencyLimit
from resilience.policies.token_bucket import TokenBucket
from resilience.policy import Policy


class ManualClock:
    """A clock that moves only by hand: its timers fire in :meth:`advance`, in the caller's
    thread, and its async sleeps never end by themselves (only a cancellation ends them).

    Lets a test put two things in one loop turn (a wait that expires, and a cancellation),
    or cancel a sleeper before its time has come.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.timers: list[_ManualTimer] = []
        self.interrupt: BaseException | None = None
        """When set, a sync sleep raises it (as a signal handler would) instead of sleeping."""

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.interrupt is not None:
            raise self.interrupt
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.get_running_loop().create_future()  # until cancelled

    def call_at(
        self, deadline: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None
    ) -> _ManualTimer:
        timer = _ManualTimer(deadline, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in [t for t in self.timers if t.deadline <= self.now]:
            self.timers.remove(timer)
            timer.fire()


class _ManualTimer:
    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.fired = True
            self.callback()


# -- the release paths -----------------------------------------------------------------------


class Boom(Exception):
    """The call's own failure."""


class Broke(Exception):
    """A classifier or a predicate that fails while judging the outcome."""


class Judging(Classifier):
    """Results ``"bad"`` are failures; with ``broken`` set, ``error()`` or ``result()`` raises."""

    checks_results = True

    def __init__(self, broken: str | None = None) -> None:
        self.broken = broken
        self.discarded: list[object] = []

    def error(self, exc: BaseException) -> Outcome:
        if self.broken == "error":
            raise Broke("classifier.error")
        return super().error(exc)

    def result(self, result: object) -> Outcome:
        if self.broken == "result":
            raise Broke("classifier.result")
        return Outcome.FAILURE if result == "bad" else Outcome.SUCCESS

    def discard(self, result: object) -> None:
        self.discarded.append(result)


def _raise_broke(value: object) -> bool:
    raise Broke(f"predicate on {value!r}")


PATHS = [
    "success",
    "failure",
    "result_failure",
    "cancel",
    "outer_timeout",
    "classifier_error_raises",
    "classifier_result_raises",
    "failure_on_raises",
    "failure_if_result_raises",
]
ASYNC_ONLY = {"cancel", "outer_timeout"}
BREAKER_ONLY = {"failure_on_raises", "failure_if_result_raises"}
RAISES: dict[str, type[BaseException]] = {
    "failure": Boom,
    "cancel": asyncio.CancelledError,
    "outer_timeout": TimeoutError,
    "classifier_error_raises": Broke,
    "classifier_result_raises": Broke,
    "failure_on_raises": Broke,
    "failure_if_result_raises": Broke,
}
RETURNS = {"success": "ok", "result_failure": "bad"}


def classifier_for(path: str) -> Classifier:
    if path == "classifier_error_raises":
        return Judging("error")
    if path == "classifier_result_raises":
        return Judging("result")
    return Judging()


def sync_body(path: str) -> Callable[[], str]:
    def body() -> str:
        if path in ("failure", "classifier_error_raises", "failure_on_raises"):
            raise Boom("down")
        return "bad" if path == "result_failure" else "ok"

    return body


# -- the policies under test -----------------------------------------------------------------


@dataclass
class Subject:
    """A policy, what to do before the call (make it queue, wait, or probe), and a check
    that it is at rest after."""

    policy: Policy
    clock: Any
    before_sync: Callable[[pytest.MonkeyPatch], None]
    before_async: Callable[[], None]
    at_rest: Callable[[str], None]


def _nothing(*args: Any) -> None:
    return None


def bulkhead_subject(path: str, clock: FakeClock) -> Subject:
    bulkhead = Bulkhead(1, max_queue=4, max_wait=10)

    def at_rest(path: str) -> None:
        assert (bulkhead.active, bulkhead.queued) == (0, 0)

    return Subject(bulkhead, clock, _nothing, _nothing, at_rest)


def queued_bulkhead_subject(path: str, clock: FakeClock) -> Subject:
    """The call finds the only slot taken and waits in line until the holder releases it."""
    bulkhead = Bulkhead(1, max_queue=4, max_wait=10)
    seen_queued: list[int] = []

    def take_slot() -> Permit:
        permit = bulkhead.acquire(CallContext(clock=clock), clock.monotonic())
        assert isinstance(permit, Permit) and permit.kind == 0
        return permit

    def free_slot(holder: Permit) -> None:
        seen_queued.append(bulkhead.queued)
        bulkhead.release(holder, Outcome.SUCCESS, 0.0, clock.monotonic(), None)

    def before_sync(monkeypatch: pytest.MonkeyPatch) -> None:
        holder = take_slot()
        wait = Ticket.wait

        def wait_for_the_holder(ticket: Ticket, timeout: float) -> None:
            free_slot(holder)  # the holder ends while this thread waits
            wait(ticket, timeout)

        monkeypatch.setattr(Ticket, "wait", wait_for_the_holder)

    def before_async() -> None:
        holder = take_slot()
        loop = asyncio.get_running_loop()

        def free_once_queued(turns: int) -> None:
            if bulkhead.queued or not turns:
                free_slot(holder)
            else:
                loop.call_soon(free_once_queued, turns - 1)

        loop.call_soon(free_once_queued, 100)

    def at_rest(path: str) -> None:
        assert seen_queued == [1]  # the call did wait in line
        assert (bulkhead.active, bulkhead.queued) == (0, 0)

    return Subject(bulkhead, clock, before_sync, before_async, at_rest)


def token_bucket_subject(path: str, clock: FakeClock) -> Subject:
    """Wait mode: the bucket is empty, so the call reserves the next token and sleeps until it is due."""
    bucket = TokenBucket(4.0, burst=1, mode="wait", clock=clock)

    def before(*args: Any) -> None:
        assert bucket.take(clock.monotonic()) == 0.0  # the only token: the call must wait 0.25 s

    def at_rest(path: str) -> None:
        assert 0.25 in clock.sleeps  # the call did wait for its token
        # A call that ran keeps its token, whatever its outcome: the next is due at 0.5.
        now = clock.monotonic()
        assert bucket.take(now, None, 1.0) == pytest.approx(0.5 - now)

    return Subject(bucket, clock, before, before, at_rest)


def breaker_subject(path: str, clock: FakeClock) -> Subject:
    """The call is the half-open probe of a breaker whose break just ended."""
    breaker = CircuitBreaker(
        failure_threshold=1,
        break_duration=1.0,
        clock=clock,
        failure_on=_raise_broke if path == "failure_on_raises" else None,
        failure_if_result=_raise_broke if path == "failure_if_result_raises" else None,
    )

    def before(*args: Any) -> None:
        permit = breaker.acquire(None, clock.monotonic())
        assert isinstance(permit, CircuitPermit)
        breaker.release(permit, Outcome.FAILURE, 0.0, clock.monotonic(), None)
        assert breaker.state is CircuitState.OPEN
        clock.advance(1.0)

    def at_rest(path: str) -> None:
        assert breaker.metrics().probes_in_flight == 0
        expected = {
            "success": CircuitState.CLOSED,
            "failure": CircuitState.OPEN,
            "result_failure": CircuitState.OPEN,
        }.get(path, CircuitState.HALF_OPEN)  # the outcome was ignored: the probe slot is free
        assert breaker.state is expected
        if expected is CircuitState.HALF_OPEN:
            probe = breaker.acquire(None, clock.monotonic())  # the next call can probe
            assert isinstance(probe, CircuitPermit) and probe.probe
            breaker.release(probe, Outcome.SUCCESS, 0.0, clock.monotonic(), None)
            assert breaker.state is CircuitState.CLOSED

    return Subject(breaker, clock, before, before, at_rest)


def concurrency_subject(path: str, clock: FakeClock) -> Subject:
    limit = ConcurrencyLimit(1)

    def at_rest(path: str) -> None:
        assert limit.inflight == 0

    return Subject(limit, clock, _nothing, _nothing, at_rest)


SUBJECTS: dict[str, Callable[[str, FakeClock], Subject]] = {
    "bulkhead": bulkhead_subject,
    "bulkhead_queued": queued_bulkhead_subject,
    "token_bucket_wait": token_bucket_subject,
    "breaker_probe": breaker_subject,
    "concurrency_limit": concurrency_subject,
}


def _cases() -> Iterator[Any]:
    for subject in SUBJECTS:
        for path in PATHS:
            if path in BREAKER_ONLY and subject != "breaker_probe":
                continue
            for mode in ("sync", "async"):
                if path in ASYNC_ONLY and mode == "sync":
                    continue
                yield pytest.param(subject, path, mode, id=f"{subject}-{path}-{mode}")


async def _call_async(pipeline: Pipeline, path: str) -> Any:
    """The call, in the way ``path`` ends it."""
    body = sync_body(path)

    async def plain() -> str:
        return body()

    if path not in ASYNC_ONLY:
        return await pipeline.acall(plain)
    entered = asyncio.Event()

    async def held() -> str:
        entered.set()
        if cm is not None:
            cm.reschedule(asyncio.get_running_loop().time())  # the outer timeout expires now
        await asyncio.get_running_loop().create_future()  # never answers
        raise AssertionError("unreachable")

    cm: asyncio.Timeout | None = None
    if path == "outer_timeout":
        async with asyncio.timeout(None) as cm:
            return await pipeline.acall(held)
    task = asyncio.ensure_future(pipeline.acall(held))
    async with asyncio.timeout(10):  # a bound on a broken test, never reached
        await entered.wait()
    task.cancel()
    return await task


@pytest.mark.parametrize(("subject_name", "path", "mode"), list(_cases()))
def test_every_release_path_leaves_the_policy_at_rest(
    subject_name: str, path: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    subject = SUBJECTS[subject_name](path, clock)
    classifier = classifier_for(path)
    pipeline = Pipeline(subject.policy, clock=clock, classifier=classifier)

    def run() -> Any:
        if mode == "sync":
            subject.before_sync(monkeypatch)
            return pipeline.call(sync_body(path))

        async def main() -> Any:
            subject.before_async()
            return await _call_async(pipeline, path)

        return asyncio.run(main())

    if path in RAISES:
        with pytest.raises(RAISES[path]):
            run()
    else:
        assert run() == RETURNS[path]
    monkeypatch.undo()
    if path == "classifier_result_raises":
        assert isinstance(classifier, Judging) and classifier.discarded == ["ok"]  # the result was let go
    subject.at_rest(path)
