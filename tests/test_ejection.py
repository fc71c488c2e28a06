"""Outlier ejection on the fake clock: who is ejected, for how long, how many, and the events."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience import (
    CircuitBreaker,
    EndpointEjected,
    EndpointPool,
    EndpointReturned,
    Event,
    FakeClock,
    OutlierEjection,
    OutlierEjectionOptions,
    PeakEwma,
    RoundRobin,
    StaticDiscovery,
    WeightedRoundRobin,
)
from resilience.balancing.base import NoEndpointError
from resilience.context import CallContext
from resilience.outcome import Outcome

S, F, IGN = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED


def _addr(i: int) -> str:
    return f"127.0.0.1:{6000 + i}"


class Setup:
    """A pool of ``n`` endpoints under round robin with ejection, its clock and its events."""

    def __init__(self, n: int, balancer: Any = None, health: Any = None, **options: Any) -> None:
        self.clock = FakeClock()
        self.events: list[Event] = []
        self.ejection = OutlierEjection(listeners=[self.events.append], **options)
        self.discovery = StaticDiscovery({"svc": [_addr(i) for i in range(n)]})
        self.pool: EndpointPool[Any] = EndpointPool(
            "svc", self.discovery, balancer or RoundRobin(), ejection=self.ejection, health=health
        )

    def ctx(self) -> CallContext:
        return CallContext("svc", "m", clock=self.clock)

    def call(self, outcome: Callable[[str], Outcome], duration: float = 0.01) -> str:
        ctx = self.ctx()
        selection = self.pool.pick(ctx)
        selection.release(outcome(selection.address), duration, self.clock.monotonic(), ctx)
        return selection.address

    def calls(self, n: int, outcome: Callable[[str], Outcome]) -> list[str]:
        return [self.call(outcome) for _ in range(n)]

    @property
    def ejected(self) -> list[str]:
        assert self.pool.outliers is not None
        return self.pool.outliers.ejected()

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def _bad(*bad: int) -> Callable[[str], Outcome]:
    addresses = {_addr(i) for i in bad}
    return lambda a: F if a in addresses else S


def test_consecutive_failures_eject_and_picks_skip_the_ejected_endpoint() -> None:
    s = Setup(3, consecutive_failures=3, base_ejection_time=30)
    s.calls(6, _bad(0))  # round robin: A fails twice
    assert s.ejected == []
    s.calls(1, _bad(0))  # the third in a row
    assert s.ejected == [_addr(0)]
    (event,) = s.of(EndpointEjected)
    assert (event.service, event.address, event.reason, event.ejections, event.duration) == (
        "svc",
        _addr(0),
        "consecutive_failures",
        1,
        30.0,
    )
    assert _addr(0) not in s.calls(20, _bad(0))
    s.clock.advance(30)
    back = s.calls(3, _bad())
    assert _addr(0) in back
    (returned,) = s.of(EndpointReturned)
    assert returned.address == _addr(0) and returned.ejected_for == pytest.approx(30.0)
    assert s.ejected == []


def test_a_success_resets_the_run_of_failures_and_ignored_outcomes_do_not_count() -> None:
    s = Setup(2, consecutive_failures=2)
    outcomes = iter([F, S, F, S, F, IGN, IGN])
    s.calls(14, lambda a: next(outcomes) if a == _addr(0) else S)
    assert s.ejected == []  # never two failures in a row; ignored ones neither count nor reset
    s.calls(2, _bad(0))
    assert s.ejected == [_addr(0)]  # F, I, I, F: two in a row


def test_success_rate_below_mean_minus_k_stdev_is_ejected_at_the_interval() -> None:
    s = Setup(6, consecutive_failures=None, min_hosts=5, min_requests=20, interval=10, max_ejection_percent=50)
    flaky = iter([F, S] * 100)
    s.calls(180, lambda a: next(flaky) if a == _addr(0) else S)  # A: 50 % over 30 calls
    assert s.ejected == []  # nothing before the interval ends
    s.clock.advance(10)
    s.call(_bad())
    assert s.ejected == [_addr(0)]
    assert [e.reason for e in s.of(EndpointEjected)] == ["success_rate"]


def test_success_rate_needs_enough_hosts_and_requests() -> None:
    for hosts, requests in ((5, 100), (7, 20)):
        s = Setup(6, consecutive_failures=None, min_hosts=hosts, min_requests=requests, interval=10)
        flaky = iter([F, S] * 100)
        s.calls(180, lambda a, flaky=flaky: next(flaky) if a == _addr(0) else S)  # type: ignore[misc]
        s.clock.advance(10)
        s.call(_bad())
        assert s.ejected == [], (hosts, requests)


def test_failure_percentage_ejects_above_the_threshold() -> None:
    s = Setup(
        5,
        consecutive_failures=None,
        success_rate_stdev=None,
        failure_percentage=40,
        min_hosts=3,
        min_requests=10,
        max_ejection_percent=100,
    )
    pattern = {_addr(0): iter([F, F, S] * 50), _addr(1): iter([F, S, S] * 50)}  # 67 % and 33 %
    s.calls(100, lambda a: next(pattern[a]) if a in pattern else S)
    s.clock.advance(10)
    s.call(_bad())
    assert s.ejected == [_addr(0)]
    assert [e.reason for e in s.of(EndpointEjected)] == ["failure_percentage"]


def test_latency_far_above_the_others_ejects_when_asked() -> None:
    s = Setup(5, consecutive_failures=None, success_rate_stdev=None, latency_factor=5, min_hosts=5, min_requests=10)
    for _ in range(100):
        ctx = s.ctx()
        selection = s.pool.pick(ctx)
        slow = selection.address == _addr(3)
        selection.release(S, 0.5 if slow else 0.02, s.clock.monotonic(), ctx)
    s.clock.advance(10)
    s.call(_bad())
    assert s.ejected == [_addr(3)]
    assert [e.reason for e in s.of(EndpointEjected)] == ["latency"]


def test_ejection_time_grows_with_each_ejection_up_to_the_cap() -> None:
    s = Setup(2, consecutive_failures=1, base_ejection_time=10, max_ejection_time=25, interval=1000)
    durations = []
    for _ in range(4):
        while not s.ejected:
            s.call(_bad(0))
        durations.append(s.of(EndpointEjected)[-1].duration)
        s.clock.advance(durations[-1])
        s.call(_bad())  # it returns
        assert s.ejected == []
    assert durations == [10.0, 20.0, 25.0, 25.0]
    assert [e.ejections for e in s.of(EndpointEjected)] == [1, 2, 3, 4]


def test_the_ejection_count_shrinks_back_after_good_intervals() -> None:
    s = Setup(2, consecutive_failures=1, base_ejection_time=10, interval=5)
    for _ in range(2):
        while not s.ejected:
            s.call(_bad(0))
        s.clock.advance(s.of(EndpointEjected)[-1].duration)
        s.call(_bad())
    assert s.of(EndpointEjected)[-1].ejections == 2
    # Good behaviour: a whole interval in the picks with successes, twice, at t+5 and t+10 ...
    for _ in range(3):
        s.calls(4, _bad())
        s.clock.advance(5)
    s.call(_bad())
    while not s.ejected:
        s.call(_bad(0))
    assert s.of(EndpointEjected)[-1].ejections == 1  # back to the base
    assert s.of(EndpointEjected)[-1].duration == 10.0


def test_an_interval_without_successes_does_not_shrink_the_count() -> None:
    s = Setup(2, consecutive_failures=1, base_ejection_time=10, interval=5)
    while not s.ejected:
        s.call(_bad(0))
    s.clock.advance(10)
    s.call(_bad())
    for _ in range(3):  # no attempt reaches A (the test sends nothing): no evidence of health
        s.clock.advance(5)
        s.pool.outliers.tick(s.clock.monotonic())  # type: ignore[union-attr]
    while not s.ejected:
        s.call(_bad(0))
    assert s.of(EndpointEjected)[-1].ejections == 2


@pytest.mark.parametrize(("n", "percent", "most"), [(20, 10, 2), (20, 25, 5), (3, 10, 1), (2, 100, 1), (1, 100, 0)])
def test_never_more_than_the_share_and_never_all(n: int, percent: float, most: int) -> None:
    s = Setup(n, consecutive_failures=1, max_ejection_percent=percent)
    s.calls(5 * n, lambda a: F)  # every endpoint fails
    assert len(s.ejected) == most
    assert len(s.of(EndpointEjected)) == most


def test_share_bound_applies_to_interval_checks_too() -> None:
    s = Setup(10, consecutive_failures=None, failure_percentage=10, min_hosts=3, min_requests=5)
    s.calls(100, _bad(0, 1, 2, 3))
    s.clock.advance(10)
    s.call(_bad())
    assert len(s.ejected) == 1  # 10 % of 10


def test_events_go_to_the_ejections_listeners_and_to_the_calls() -> None:
    s = Setup(2, consecutive_failures=1, base_ejection_time=5)
    seen: list[Event] = []
    ctx = s.ctx()
    ctx.listeners = (seen.append,)
    while not s.ejected:
        ctx.tried = None
        selection = s.pool.pick(ctx)
        selection.release(F if selection.address == _addr(0) else S, 0.01, s.clock.monotonic(), ctx)
    s.clock.advance(5)
    ctx.tried = None
    s.pool.pick(ctx).release(S, 0.01, s.clock.monotonic(), ctx)
    kinds = [type(e) for e in seen]
    assert kinds == [EndpointEjected, EndpointReturned]
    assert [type(e) for e in s.events] == kinds
    assert seen[0].context is ctx and seen[0].policy == "outlierejection"


def test_a_listener_that_raises_breaks_nothing() -> None:
    def bad(event: Event) -> None:
        raise RuntimeError("listener")

    clock = FakeClock()
    pool: EndpointPool[Any] = EndpointPool(
        "svc",
        StaticDiscovery({"svc": [_addr(0), _addr(1)]}),
        ejection=OutlierEjection(consecutive_failures=1, listeners=[bad]),
    )
    ctx = CallContext("svc", "m", clock=clock)
    pool.pick(ctx).release(F, 0.0, 0.0, ctx)
    assert pool.outliers is not None and len(pool.outliers.ejected()) == 1


def test_a_retry_prefers_a_tried_endpoint_to_an_ejected_one() -> None:
    s = Setup(3, consecutive_failures=2, max_ejection_percent=50)
    while not s.ejected:
        s.call(_bad(0))
    ctx = s.ctx()
    seen = []
    for _ in range(4):
        selection = s.pool.pick(ctx)
        seen.append(selection.address)
        selection.release(F, 0.01, s.clock.monotonic(), ctx)
        if len(s.ejected) > 1:
            break
    assert set(seen[:2]) == {_addr(1), _addr(2)}
    assert _addr(0) not in seen


def test_per_endpoint_breakers_work_beside_ejection_and_ejected_ones_are_the_last_resort() -> None:
    clock_holder: list[FakeClock] = []

    def health(endpoint: Any) -> CircuitBreaker:
        return CircuitBreaker(failure_threshold=2, break_duration=100, clock=clock_holder[0])

    s = Setup(3, health=None, consecutive_failures=1, max_ejection_percent=50)
    clock_holder.append(s.clock)
    s.pool = EndpointPool("svc", s.discovery, RoundRobin(), ejection=s.ejection, health=health)
    while not s.ejected:
        s.call(_bad(0))  # A: ejected at its first failure; its breaker saw one failure (closed)
    # B and C fail twice each: their breakers open.
    for _ in range(8):
        try:
            s.call(lambda a: F if a != _addr(0) else S)
        except NoEndpointError:
            break
    assert s.ejected == [_addr(0)]  # at most one of three
    # Every endpoint in the picks is rejected by its breaker: the ejected one serves.
    assert s.call(_bad()) == _addr(0)


def test_a_removed_endpoint_leaves_the_ejected_set_quietly() -> None:
    s = Setup(3, consecutive_failures=1, base_ejection_time=5)
    while not s.ejected:
        s.call(_bad(0))
    s.discovery.set("svc", [_addr(1), _addr(2)])
    assert s.ejected == []
    s.clock.advance(5)
    s.call(_bad())
    assert s.of(EndpointReturned) == []
    s.discovery.set("svc", [_addr(0), _addr(1), _addr(2)])  # back: a new state, not ejected
    assert _addr(0) in s.calls(3, _bad())


def test_tick_drives_an_idle_pool() -> None:
    s = Setup(2, consecutive_failures=1, base_ejection_time=5)
    while not s.ejected:
        s.call(_bad(0))
    tracker = s.pool.outliers
    assert tracker is not None
    s.clock.advance(4)
    tracker.tick(s.clock.monotonic())
    assert s.ejected == [_addr(0)]
    s.clock.advance(1)
    tracker.tick(s.clock.monotonic())
    assert s.ejected == []
    assert len(s.of(EndpointReturned)) == 1


def test_the_balancer_carries_ejection_to_each_pool_it_serves() -> None:
    ejection = OutlierEjection(consecutive_failures=1)
    balancer = PeakEwma(ejection=ejection)
    pools: list[EndpointPool[Any]] = [
        EndpointPool(f"s{i}", StaticDiscovery({f"s{i}": [_addr(0), _addr(1)]}), balancer) for i in range(2)
    ]
    trackers = [p.outliers for p in pools]
    assert all(t is not None and t.ejection is ejection for t in trackers)
    assert trackers[0] is not trackers[1]  # counts per pool
    own = OutlierEjection()
    pool: EndpointPool[Any] = EndpointPool("s", StaticDiscovery({"s": [_addr(0)]}), balancer, ejection=own)
    assert pool.outliers is not None and pool.outliers.ejection is own
    assert EndpointPool("s", StaticDiscovery({"s": [_addr(0)]})).outliers is None
    with pytest.raises(TypeError, match="ejection must be an OutlierEjection or None, got 5"):
        EndpointPool("s", StaticDiscovery({}), ejection=5)  # type: ignore[arg-type]
    assert WeightedRoundRobin(ejection=ejection).ejection is ejection
    assert RoundRobin(ejection=ejection).ejection is ejection


def test_reconfigure_keeps_counts_and_ejections() -> None:
    s = Setup(3, consecutive_failures=3, base_ejection_time=10)
    s.calls(4, _bad(0))  # A: two failures in a row
    s.ejection.reconfigure(OutlierEjectionOptions(consecutive_failures=3, base_ejection_time=20))
    s.calls(3, _bad(0))
    assert s.ejected == [_addr(0)]
    assert s.of(EndpointEjected)[0].duration == 20.0
    with pytest.raises(TypeError, match="needs OutlierEjectionOptions"):
        s.ejection.reconfigure(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"consecutive_failures": 0}, r"consecutive_failures must be in \[1, 1000000\], got 0"),
        ({"success_rate_stdev": 0}, r"success_rate_stdev must be in \(0, 100\], got 0"),
        ({"failure_percentage": 100}, r"failure_percentage must be in \[0, 100\), got 100"),
        ({"latency_factor": 1}, r"latency_factor must be in \(1, 1000\], got 1"),
        ({"min_hosts": 0}, r"min_hosts must be in \[1, 1000000\], got 0"),
        ({"min_requests": 1.5}, "min_requests must be an integer, got 1.5"),
        ({"interval": math.inf}, "interval must be a finite number of seconds > 0, got inf"),
        ({"base_ejection_time": -1}, "base_ejection_time must be a finite number of seconds > 0, got -1"),
        ({"base_ejection_time": 10, "max_ejection_time": 5}, r"max_ejection_time must be >= base_ejection_time \(10\)"),
        ({"max_ejection_percent": 0}, r"max_ejection_percent must be in \(0, 100\], got 0"),
        ({"listeners": [None]}, r"listeners\[0\] must be callable, got None"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"options": 3}, "options must be OutlierEjectionOptions, got 3"),
    ],
)
def test_bad_options_are_refused_naming_the_value(kw: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        OutlierEjection(**kw)


NUMBERS = st.one_of(
    st.sampled_from([0, -0.0, -1, 5e-324, 1, 50, 99.9, 100, 1e10, math.inf, math.nan]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 10**10),
)
OPTIONS = [
    "consecutive_failures",
    "success_rate_stdev",
    "failure_percentage",
    "latency_factor",
    "min_hosts",
    "min_requests",
    "interval",
    "base_ejection_time",
    "max_ejection_time",
    "max_ejection_percent",
]


@pytest.mark.parametrize("option", OPTIONS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=NUMBERS)
def test_a_constructor_refuses_at_once_or_builds_an_ejection_that_works(option: str, value: Any) -> None:
    try:
        ejection = OutlierEjection(
            **{option: value, **({"base_ejection_time": 1} if option == "max_ejection_time" else {})}
        )
    except (TypeError, ValueError) as exc:
        assert option in str(exc) and "got" in str(exc), str(exc)
        return
    clock = FakeClock()
    pool: EndpointPool[Any] = EndpointPool("s", StaticDiscovery({"s": [_addr(0), _addr(1)]}), ejection=ejection)
    for i in range(20):
        ctx = CallContext("s", "m", clock=clock)
        pool.pick(ctx).release(F if i % 2 else S, 0.01, clock.monotonic(), ctx)
        clock.advance(ejection.options.interval if i == 10 else 0.1)
    assert all(n == 0 for n in pool.inflight().values())


@pytest.mark.parametrize("option", ["decay", "probe_after", "probe_share", "unknown_penalty", "failure_penalty"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=NUMBERS)
def test_a_p2c_constructor_refuses_at_once_or_builds_a_balancer_that_works(option: str, value: Any) -> None:
    try:
        balancer = PeakEwma(**{option: value})
    except (TypeError, ValueError) as exc:
        assert option in str(exc) and "got" in str(exc), str(exc)
        return
    clock = FakeClock()
    pool: EndpointPool[Any] = EndpointPool("s", StaticDiscovery({"s": [_addr(i) for i in range(12)]}), balancer)
    for i in range(30):
        ctx = CallContext("s", "m", clock=clock)
        pool.pick(ctx).release(F if i % 3 else S, 0.01 * i, clock.monotonic(), ctx)
        clock.advance(0.5)
    assert all(n == 0 for n in pool.inflight().values())
