"""The endpoint pool: picks with handles, in-flight counts that cannot leak, health per endpoint."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import CircuitBreaker, FakeClock, Pipeline, Retry, StaticDiscovery
from resilience.balancing import EndpointPool, EndpointState, NoEndpointError, RoundRobin
from resilience.context import CallContext
from resilience.discovery.base import Endpoint
from resilience.outcome import Outcome
from resilience.policies.backoff import Constant

ADDRESSES = [f"127.0.0.1:{5000 + i}" for i in range(5)]


def _ctx(clock: FakeClock | None = None) -> CallContext:
    return CallContext("svc", "m", clock=clock or FakeClock())


class Closed:
    def __init__(self) -> None:
        self.closed: list[str] = []
        self.resources: list[Any] = []

    def __call__(self, state: EndpointState[Any]) -> None:
        self.closed.append(state.address)
        self.resources.append(state.resource)


def test_a_pick_counts_in_flight_until_its_single_release() -> None:
    pool: EndpointPool[Any] = EndpointPool("svc", StaticDiscovery({"svc": ADDRESSES[:2]}))
    ctx = _ctx()
    selection = pool.pick(ctx)
    assert pool.inflight()[selection.address] == 1
    assert ctx.endpoint == selection.address and ctx.tried == [selection.address]
    assert selection.release(Outcome.SUCCESS, 0.1, 1.0) is True
    assert selection.release(Outcome.FAILURE, 0.1, 1.0) is False  # a second release changes nothing
    assert pool.inflight() == dict.fromkeys(ADDRESSES[:2], 0)


def test_a_retry_goes_to_an_endpoint_not_tried() -> None:
    pool: EndpointPool[Any] = EndpointPool("svc", StaticDiscovery({"svc": ADDRESSES[:3]}))
    ctx = _ctx()
    seen = []
    for _ in range(3):
        selection = pool.pick(ctx)
        seen.append(selection.address)
        selection.release(Outcome.FAILURE, 0.0, 0.0)
    assert sorted(seen) == ADDRESSES[:3]


def test_an_empty_service_raises_no_endpoint() -> None:
    pool: EndpointPool[Any] = EndpointPool("svc", StaticDiscovery({}))
    with pytest.raises(NoEndpointError, match="no endpoint known for service 'svc'"):
        pool.pick(_ctx())


def test_a_breaker_per_endpoint_keeps_first_attempts_off_an_open_one() -> None:
    clock = FakeClock()
    breakers: dict[str, CircuitBreaker] = {}

    def health(endpoint: Endpoint) -> CircuitBreaker:
        breakers[endpoint.address] = CircuitBreaker(failure_threshold=2, break_duration=10, clock=clock)
        return breakers[endpoint.address]

    pool: EndpointPool[Any] = EndpointPool("svc", StaticDiscovery({"svc": ADDRESSES[:3]}), RoundRobin(), health=health)
    bad = ADDRESSES[0]
    # Two failures on the bad endpoint open its breaker.
    failures = 0
    while failures < 2:
        selection = pool.pick(_ctx(clock))
        ok = selection.address != bad
        failures += not ok
        selection.release(Outcome.SUCCESS if ok else Outcome.FAILURE, 0.0, clock.monotonic())
    assert breakers[bad].state.value == "open"
    picked = []
    for _ in range(30):
        selection = pool.pick(_ctx(clock))
        picked.append(selection.address)
        selection.release(Outcome.SUCCESS, 0.0, clock.monotonic())
    assert bad not in picked
    assert set(picked) == set(ADDRESSES[1:3])
    # After the break, one probe goes to it again and closes it.
    clock.advance(10)
    picked = []
    for _ in range(3):
        selection = pool.pick(_ctx(clock))
        picked.append(selection.address)
        selection.release(Outcome.SUCCESS, 0.0, clock.monotonic())
    assert bad in picked
    assert breakers[bad].state.value == "closed"


def test_every_endpoint_unhealthy_is_a_rejection_with_the_soonest_retry_after() -> None:
    clock = FakeClock()
    pool: EndpointPool[Any] = EndpointPool(
        "svc",
        StaticDiscovery({"svc": ADDRESSES[:2]}),
        health=lambda e: CircuitBreaker(failure_threshold=1, break_duration=5, clock=clock),
    )
    for _ in range(2):
        selection = pool.pick(_ctx(clock))
        selection.release(Outcome.FAILURE, 0.0, clock.monotonic())
        clock.advance(1)
    with pytest.raises(NoEndpointError, match="every endpoint of service 'svc' is unhealthy") as info:
        pool.pick(_ctx(clock))
    assert info.value.retry_after == pytest.approx(3.0)  # the first opened at t=0 for 5 s; now t=2
    assert pool.inflight() == dict.fromkeys(ADDRESSES[:2], 0)


def test_a_retry_pipeline_skips_an_open_replica_without_sleeping() -> None:
    clock = FakeClock()
    pool: EndpointPool[Any] = EndpointPool(
        "svc",
        StaticDiscovery({"svc": ADDRESSES[:2]}),
        health=lambda e: CircuitBreaker(failure_threshold=1, break_duration=60, clock=clock),
    )
    calls: list[str] = []

    def attempt(ctx: CallContext) -> str:
        selection = pool.pick(ctx)
        calls.append(selection.address)
        failed = selection.address == ADDRESSES[0]
        selection.release(Outcome.FAILURE if failed else Outcome.SUCCESS, 0.0, ctx.clock.monotonic())
        if failed:
            raise ConnectionError("down")
        return selection.address

    pipeline = Pipeline(Retry(3, backoff=Constant(0.5), budget=None), clock=clock)
    for _ in range(6):
        assert pipeline.execute(attempt, pipeline.context()) == ADDRESSES[1]
    assert calls.count(ADDRESSES[0]) == 1  # opened by its first failure, then skipped


def test_a_dropped_endpoint_drains_then_closes_its_resource() -> None:
    discovery = StaticDiscovery({"svc": ADDRESSES[:2]})
    closed = Closed()
    pool: EndpointPool[str] = EndpointPool("svc", discovery, make=lambda e: f"res-{e.address}", close=closed)
    ctx = _ctx()
    busy = pool.pick(ctx)
    idle = pool.pick(ctx)
    idle.release(Outcome.SUCCESS, 0.0, 0.0)
    assert busy.resource == f"res-{busy.address}"
    hold = busy.hold()
    discovery.set("svc", [ADDRESSES[2]])
    assert closed.closed == [idle.address]  # idle: closed at once
    busy.release(Outcome.SUCCESS, 0.0, 0.0)
    assert closed.closed == [idle.address]  # its body is still open
    hold.close()
    hold.close()
    assert closed.closed == [idle.address, busy.address]
    assert pool.inflight() == {ADDRESSES[2]: 0}


def test_a_drained_endpoint_is_closed_after_the_drain_timeout() -> None:
    discovery = StaticDiscovery({"svc": ADDRESSES[:1]})
    closed = Closed()
    later: list[Any] = []
    pool: EndpointPool[str] = EndpointPool(
        "svc", discovery, make=lambda e: "r", close=closed, drain_timeout=5, schedule=lambda d, fn: later.append(fn)
    )
    selection = pool.pick(_ctx())
    discovery.set("svc", [])
    assert closed.closed == []
    (fn,) = later
    fn()
    assert closed.closed == [ADDRESSES[0]]
    selection.release(Outcome.SUCCESS, 0.0, 0.0)
    assert closed.closed == [ADDRESSES[0]]  # closed once


def test_state_survives_a_discovery_change_for_endpoints_that_stay() -> None:
    discovery = StaticDiscovery({"svc": ADDRESSES[:2]})
    pool: EndpointPool[Any] = EndpointPool("svc", discovery, health=lambda e: CircuitBreaker())
    before = {s.address: s for s in pool.states}
    discovery.set("svc", [ADDRESSES[1], ADDRESSES[2]])
    after = {s.address: s for s in pool.states}
    assert after[ADDRESSES[1]] is before[ADDRESSES[1]]
    assert after[ADDRESSES[1]].health == before[ADDRESSES[1]].health


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("pick"), st.integers(0, 3)),
            st.tuples(st.just("release"), st.sampled_from(list(Outcome))),
            st.tuples(st.just("double"), st.sampled_from(list(Outcome))),
            st.tuples(st.just("discover"), st.sets(st.integers(0, 4), max_size=5)),
            st.tuples(st.just("advance"), st.floats(0, 20)),
        ),
        max_size=60,
    )
)
def test_in_flight_counts_always_end_at_zero(steps: list[tuple[str, Any]]) -> None:
    clock = FakeClock()
    discovery = StaticDiscovery({"svc": ADDRESSES[:3]})
    closed = Closed()
    made: list[str] = []

    def make(endpoint: Endpoint) -> str:
        made.append(f"{endpoint.address}#{len(made)}")  # one resource per state, even for an address back again
        return made[-1]

    pool: EndpointPool[str] = EndpointPool(
        "svc",
        discovery,
        health=lambda e: CircuitBreaker(failure_threshold=2, break_duration=5, clock=clock),
        make=make,
        close=closed,
        schedule=lambda d, fn: None,
    )
    held = []
    for step, arg in steps:
        if step == "pick":
            ctx = _ctx(clock)
            for _ in range(arg):
                try:
                    held.append(pool.pick(ctx))
                except NoEndpointError:
                    break
        elif step in ("release", "double") and held:
            selection = held.pop(0)
            selection.release(arg, 0.1, clock.monotonic())
            if step == "double":
                assert selection.release(arg, 0.1, clock.monotonic()) is False
        elif step == "discover":
            discovery.set("svc", [ADDRESSES[i] for i in sorted(arg)])
        elif step == "advance":
            clock.advance(arg)
        for state in [*pool.states, *pool.draining.values()]:
            assert state.inflight >= 0
            for breaker in state.health:
                assert isinstance(breaker, CircuitBreaker)
                assert breaker.metrics().probes_in_flight >= 0
    for selection in held:
        selection.release(Outcome.IGNORED, 0.0, clock.monotonic())
    assert all(n == 0 for n in pool.inflight().values())
    assert not pool.draining
    for state in pool.states:
        for breaker in state.health:
            assert isinstance(breaker, CircuitBreaker)
            assert breaker.metrics().probes_in_flight == 0
    # Every resource was closed at most once, and every one made is closed or still in use.
    live = {s.resource for s in pool.states if s.resource is not None}
    assert len(closed.resources) == len(set(closed.resources))
    assert set(closed.resources) | live == set(made)


def test_concurrent_picks_and_changes_from_threads_leave_no_count() -> None:
    discovery = StaticDiscovery({"svc": ADDRESSES[:3]})
    pool: EndpointPool[Any] = EndpointPool("svc", discovery, schedule=lambda d, fn: None)
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        for _ in range(2000):
            try:
                selection = pool.pick(_ctx())
            except NoEndpointError:
                continue
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return
            selection.release(Outcome.SUCCESS, 0.0, 0.0)

    def changer() -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            discovery.set("svc", ADDRESSES[i % 3 : i % 3 + 3])
            i += 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    change = threading.Thread(target=changer)
    for t in [*threads, change]:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    change.join(60)
    assert not errors
    assert all(n == 0 for n in pool.inflight().values())


async def test_a_cancelled_attempt_releases_its_selection() -> None:
    pool: EndpointPool[Any] = EndpointPool("svc", StaticDiscovery({"svc": ADDRESSES[:1]}))
    started = asyncio.Event()

    async def attempt() -> None:
        selection = pool.pick(_ctx())
        try:
            started.set()
            await asyncio.sleep(10)
        finally:
            selection.release(Outcome.IGNORED, 0.0, 0.0)

    task = asyncio.create_task(attempt())
    await started.wait()
    assert pool.inflight() == {ADDRESSES[0]: 1}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.inflight() == {ADDRESSES[0]: 0}


def test_a_balancer_sees_only_untried_candidates() -> None:
    seen: list[list[str]] = []

    class First(RoundRobin):
        def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
            seen.append([c.address for c in candidates])
            return candidates[0]

    pool: EndpointPool[Any] = EndpointPool("svc", StaticDiscovery({"svc": ADDRESSES[:3]}), First())
    ctx = _ctx()
    for _ in range(4):
        pool.pick(ctx).release(Outcome.FAILURE, 0.0, 0.0)
    assert seen == [ADDRESSES[:3], ADDRESSES[1:3], ADDRESSES[2:3], ADDRESSES[:3]]
