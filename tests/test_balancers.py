"""Balancers on the fake clock: P2C with Peak-EWMA, smooth weighted round robin, zone preference."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import (
    CircuitBreaker,
    Endpoint,
    EndpointPool,
    FakeClock,
    OutlierEjection,
    PeakEwma,
    PeakEwmaOptions,
    RoundRobin,
    StaticDiscovery,
    WeightedRoundRobin,
    ZonePreference,
)
from resilience.balancing.base import Balancer
from resilience.balancing.state import EndpointState
from resilience.context import CallContext
from resilience.outcome import Outcome

FAST, SLOW = 0.01, 0.3


def _addr(i: int) -> str:
    return f"127.0.0.1:{5000 + i}"


def _ctx(clock: FakeClock) -> CallContext:
    return CallContext("svc", "m", clock=clock)


def _pool(balancer: Balancer, endpoints: list[Any], **kw: Any) -> EndpointPool[Any]:
    return EndpointPool("svc", StaticDiscovery({"svc": endpoints}), balancer, **kw)


def _run(
    pool: EndpointPool[Any],
    clock: FakeClock,
    latency: Callable[[str], float],
    calls: int,
    *,
    step: float = 0.01,
    concurrency: int = 1,
    outcome: Callable[[str], Outcome] = lambda a: Outcome.SUCCESS,
) -> Counter[str]:
    """``calls`` picks, ``concurrency`` in flight at once, each released ``latency(address)`` later."""
    seen: Counter[str] = Counter()
    flight: list[tuple[float, Any, CallContext]] = []
    for _ in range(calls):
        ctx = _ctx(clock)
        selection = pool.pick(ctx)
        seen[selection.address] += 1
        flight.append((clock.monotonic(), selection, ctx))
        if len(flight) >= concurrency:
            start, done, done_ctx = flight.pop(0)
            clock.advance(step)
            duration = latency(done.address)
            done.release(outcome(done.address), duration, start + duration, done_ctx)
    for start, done, done_ctx in flight:
        duration = latency(done.address)
        done.release(outcome(done.address), duration, start + duration, done_ctx)
    return seen


# -- P2C with Peak-EWMA --------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 20])
def test_p2c_prefers_fast_endpoints_and_sends_little_to_a_slow_one(size: int) -> None:
    clock = FakeClock()
    pool = _pool(PeakEwma(rng=random.Random(7)), [_addr(i) for i in range(size)])
    slow = _addr(0)
    seen = _run(pool, clock, lambda a: SLOW if a == slow else FAST, 2000, concurrency=4)
    # 20 s of fake time: the slow one gets its first attempts and about a probe a second.
    assert seen[slow] <= 40, seen
    fair = 2000 / size
    assert all(seen[_addr(i)] > fair * 0.5 for i in range(1, size)), seen


def test_round_robin_would_send_the_slow_one_its_full_share() -> None:
    # The control for the test above: the same traffic, balanced blindly.
    clock = FakeClock()
    pool = _pool(RoundRobin(), [_addr(i) for i in range(3)])
    seen = _run(pool, clock, lambda a: SLOW if a == _addr(0) else FAST, 300)
    assert seen[_addr(0)] == 100


def test_p2c_sends_traffic_back_once_the_slow_endpoint_recovers() -> None:
    clock = FakeClock()
    pool = _pool(PeakEwma(rng=random.Random(3)), [_addr(0), _addr(1)])
    slow_until = [math.inf]

    def latency(address: str) -> float:
        return SLOW if address == _addr(0) and clock.monotonic() < slow_until[0] else FAST

    first = _run(pool, clock, latency, 500, concurrency=4)
    assert first[_addr(0)] <= 15
    slow_until[0] = clock.monotonic()  # recovered from now on
    _run(pool, clock, latency, 500, concurrency=4)  # 5 s: probes see it fast again
    after = _run(pool, clock, latency, 500, concurrency=4)
    assert after[_addr(0)] >= 150, after  # back to a large share of the traffic


def test_peak_ewma_rises_at_once_and_decays_with_time_on_the_clock() -> None:
    clock = FakeClock()
    balancer = PeakEwma(decay=2.0)
    pool = _pool(balancer, [_addr(0)])
    (state,) = pool.states
    assert balancer.cost(state) is None  # no history yet
    balancer.observe(state, Outcome.SUCCESS, 0.1, 0.0)
    assert balancer.cost(state) == pytest.approx(0.1)
    balancer.observe(state, Outcome.SUCCESS, 0.5, 1.0)
    assert balancer.cost(state) == pytest.approx(0.5)  # a peak: at once
    balancer.observe(state, Outcome.SUCCESS, 0.1, 3.0)  # 2 s later: weight 1 - e^-1
    kept = math.exp(-1.0)
    assert balancer.cost(state) == pytest.approx(0.5 * kept + 0.1 * (1 - kept))
    balancer.observe(state, Outcome.SUCCESS, 0.1, 3.0)  # no time passed: no weight
    assert balancer.cost(state) == pytest.approx(0.5 * kept + 0.1 * (1 - kept))
    before = balancer.cost(state)
    balancer.observe(state, Outcome.SUCCESS, 0.1, 103.0)  # long after: almost the sample
    assert before is not None and balancer.cost(state) == pytest.approx(0.1, rel=1e-6)
    selection = pool.pick(_ctx(clock))
    assert balancer.cost(state) == pytest.approx(0.2)  # x (in flight + 1)
    selection.release(Outcome.IGNORED, 0.0, 103.0)


def test_a_failure_counts_as_at_least_the_failure_penalty() -> None:
    balancer = PeakEwma(failure_penalty=1.5)
    pool = _pool(balancer, [_addr(0)])
    (state,) = pool.states
    balancer.observe(state, Outcome.FAILURE, 0.001, 0.0)  # a refused connection: fast, but failed
    assert balancer.cost(state) == pytest.approx(1.5)
    balancer.observe(state, Outcome.FAILURE, 4.0, 1.0)
    assert balancer.cost(state) == pytest.approx(4.0)


def test_an_ignored_outcome_only_raises_the_estimate() -> None:
    balancer = PeakEwma()
    pool = _pool(balancer, [_addr(0)])
    (state,) = pool.states
    balancer.observe(state, Outcome.IGNORED, 0.0, 0.0)  # a local rejection: nothing learnt
    assert balancer.cost(state) is None
    balancer.observe(state, Outcome.SUCCESS, 0.1, 1.0)
    balancer.observe(state, Outcome.IGNORED, 0.05, 50.0)  # cancelled early: says nothing
    assert balancer.cost(state) == pytest.approx(0.1)
    balancer.observe(state, Outcome.IGNORED, 0.4, 51.0)  # a hedge loser cancelled after 0.4 s
    assert balancer.cost(state) == pytest.approx(0.4)
    balancer.observe(state, Outcome.SUCCESS, float("nan"), 52.0)  # a broken clock: no sample
    assert balancer.cost(state) == pytest.approx(0.4)


def test_a_fast_failing_endpoint_is_avoided() -> None:
    clock = FakeClock()
    pool = _pool(PeakEwma(rng=random.Random(1)), [_addr(0), _addr(1), _addr(2)])
    seen = _run(
        pool,
        clock,
        lambda a: 0.001 if a == _addr(0) else FAST,
        1000,
        outcome=lambda a: Outcome.FAILURE if a == _addr(0) else Outcome.SUCCESS,
    )
    assert seen[_addr(0)] <= 15, seen


def test_an_idle_endpoint_gets_a_probe_now_and_then() -> None:
    clock = FakeClock()
    balancer = PeakEwma(probe_after=1.0, probe_share=1.0, rng=random.Random(5))
    pool = _pool(balancer, [_addr(0), _addr(1)])
    fast, slow = pool.states
    balancer.observe(fast, Outcome.SUCCESS, FAST, 0.0)
    balancer.observe(slow, Outcome.SUCCESS, SLOW, 0.0)
    for _ in range(5):  # it was picked (scored) at 0: not idle long enough yet
        clock.advance(0.1)
        selection = pool.pick(_ctx(clock))
        assert selection.address == fast.address
        selection.release(Outcome.SUCCESS, FAST, clock.monotonic())
    clock.advance(0.6)  # 1.1 s since the slow one was last picked
    probe = pool.pick(_ctx(clock))
    assert probe.address == slow.address
    for _ in range(5):  # the probe is in flight, then it was just picked: no second probe
        clock.advance(0.1)
        selection = pool.pick(_ctx(clock))
        assert selection.address == fast.address
        selection.release(Outcome.SUCCESS, FAST, clock.monotonic())
    probe.release(Outcome.SUCCESS, SLOW, clock.monotonic())


def test_probes_are_capped_by_their_share_and_off_at_zero() -> None:
    clock = FakeClock()
    for share, most in ((0.0, 0), (0.01, 3)):
        balancer = PeakEwma(probe_after=0.001, probe_share=share, rng=random.Random(2))
        pool = _pool(balancer, [_addr(i) for i in range(3)])
        for state in pool.states:
            balancer.observe(state, Outcome.SUCCESS, SLOW if state.address == _addr(0) else FAST, 0.0)
        clock.advance(10)
        seen = _run(pool, clock, lambda a: SLOW if a == _addr(0) else FAST, 200)
        assert seen[_addr(0)] <= most, (share, seen)


def test_an_endpoint_without_history_gets_one_attempt_at_a_time_until_it_answers() -> None:
    clock = FakeClock()
    discovery = StaticDiscovery({"svc": [_addr(0), _addr(1)]})
    balancer = PeakEwma(rng=random.Random(4))
    pool: EndpointPool[Any] = EndpointPool("svc", discovery, balancer)
    _run(pool, clock, lambda a: FAST, 50)  # both known and fast
    discovery.set("svc", [_addr(0), _addr(1), _addr(2)])
    first = pool.pick(_ctx(clock))
    assert first.address == _addr(2)  # nothing in flight, no history: cost 0, tried at once
    held = [pool.pick(_ctx(clock)) for _ in range(20)]
    assert all(s.address != _addr(2) for s in held)  # the penalty while its first answer is pending
    for selection in held:
        selection.release(Outcome.SUCCESS, FAST, clock.monotonic())
    clock.advance(FAST)
    first.release(Outcome.SUCCESS, FAST, clock.monotonic())
    seen = _run(pool, clock, lambda a: FAST, 300, concurrency=3)
    assert seen[_addr(2)] >= 60, seen  # known and fast: a full competitor now


def test_a_seeded_rng_gives_the_same_picks() -> None:
    def picks(seed: int) -> list[str]:
        clock = FakeClock()
        pool = _pool(PeakEwma(rng=random.Random(seed)), [_addr(i) for i in range(50)])
        out = []
        for _ in range(100):
            selection = pool.pick(_ctx(clock))
            out.append(selection.address)
            clock.advance(0.01)
            selection.release(Outcome.SUCCESS, FAST, clock.monotonic())
        return out

    assert picks(11) == picks(11)
    assert picks(11) != picks(12)


def test_a_p2c_pick_in_a_large_pool_looks_at_two_endpoints_only() -> None:
    # Flat cost, checked structurally: a pick in a pool of 10,000 scores two endpoints,
    # with a retry's skip too.
    clock = FakeClock()
    balancer = PeakEwma(rng=random.Random(0))
    pool = _pool(balancer, [f"10.0.{i // 250}.{i % 250}:80" for i in range(10_000)])
    ctx = _ctx(clock)
    pool.pick(ctx).release(Outcome.FAILURE, 0.1, 0.0)
    assert sum(1 for s in pool.states if s.score is not None) == 2
    pool.pick(ctx).release(Outcome.SUCCESS, 0.1, 0.0)  # a retry: skips the tried one
    assert 2 <= sum(1 for s in pool.states if s.score is not None) <= 4


def test_p2c_retries_and_breakers_in_a_large_pool() -> None:
    clock = FakeClock()
    pool = _pool(
        PeakEwma(rng=random.Random(9)),
        [_addr(i) for i in range(30)],
        health=lambda e: CircuitBreaker(failure_threshold=1, break_duration=60, clock=clock),
    )
    ctx = _ctx(clock)
    tried = []
    for _ in range(30):  # every endpoint once, then its breaker opens
        selection = pool.pick(ctx)
        tried.append(selection.address)
        selection.release(Outcome.FAILURE, 0.01, clock.monotonic())
    assert sorted(tried) == sorted(_addr(i) for i in range(30))


def test_p2c_options_are_validated_and_reconfigure_keeps_estimates() -> None:
    with pytest.raises(ValueError, match=r"decay must be a finite number of seconds > 0, got 0"):
        PeakEwma(decay=0)
    with pytest.raises(ValueError, match=r"probe_share must be in \[0, 1\], got 2"):
        PeakEwma(probe_share=2)
    with pytest.raises(ValueError, match=r"unknown_penalty must be in \(0, 1e\+09\], got -1"):
        PeakEwma(unknown_penalty=-1)
    with pytest.raises(TypeError, match=r"rng must be a random\.Random or None, got 3"):
        PeakEwma(rng=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="zone must be a ZonePreference, a zone name or None, got 5"):
        PeakEwma(zone=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ejection must be an OutlierEjection or None"):
        PeakEwma(ejection="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options must be PeakEwmaOptions"):
        PeakEwma(options=ZonePreference("a"))  # type: ignore[arg-type]
    balancer = PeakEwma()
    pool = _pool(balancer, [_addr(0)])
    balancer.observe(pool.states[0], Outcome.SUCCESS, 0.2, 0.0)
    balancer.reconfigure(PeakEwmaOptions(decay=5.0, zone="eu-1"))  # type: ignore[arg-type]  # a name is taken
    assert balancer.options.zone == ZonePreference("eu-1")
    assert balancer.cost(pool.states[0]) == pytest.approx(0.2)


# -- weighted round robin ------------------------------------------------------------------


def _weighted(weights: list[int]) -> list[Endpoint]:
    return [Endpoint(_addr(i), weight=w) for i, w in enumerate(weights)]


def _picks(pool: EndpointPool[Any], n: int) -> list[str]:
    clock = FakeClock()
    out = []
    for _ in range(n):
        selection = pool.pick(_ctx(clock))
        out.append(selection.address)
        selection.release(Outcome.SUCCESS, 0.0, 0.0)
    return out


def test_weighted_round_robin_is_smooth() -> None:
    pool = _pool(WeightedRoundRobin(), _weighted([5, 1, 1]))
    letters = {_addr(0): "A", _addr(1): "B", _addr(2): "C"}
    assert "".join(letters[a] for a in _picks(pool, 14)) == "AAABCAA" * 2


def test_equal_weights_are_plain_round_robin() -> None:
    pool = _pool(WeightedRoundRobin(), [_addr(i) for i in range(4)])
    assert _picks(pool, 8) == [_addr(i) for i in range(4)] * 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12), st.integers(1, 3))
def test_weighted_round_robin_gives_exact_shares_over_each_cycle(weights: list[int], cycles: int) -> None:
    pool = _pool(WeightedRoundRobin(), _weighted(weights))
    total = sum(weights)
    seen = _picks(pool, total * cycles)
    for c in range(cycles):
        counts = Counter(seen[c * total : (c + 1) * total])
        assert counts == {_addr(i): w for i, w in enumerate(weights)}


def test_weighted_round_robin_with_huge_weights() -> None:
    pool = _pool(WeightedRoundRobin(), _weighted([1_000_000, 1, 999_999]))
    counts = Counter(_picks(pool, 20_000))
    assert counts[_addr(1)] <= 1
    assert abs(counts[_addr(0)] - counts[_addr(2)]) <= 2


def test_a_skipped_turn_is_given_back_later_in_the_cycle() -> None:
    clock = FakeClock()
    pool = _pool(WeightedRoundRobin(), _weighted([2, 2, 2]))
    seen = []
    for i in range(6):
        ctx = _ctx(clock)
        if i == 0:
            ctx.tried = [_addr(0)]  # a retry after A failed: A's turn is skipped, not lost
        selection = pool.pick(ctx)
        seen.append(selection.address)
        selection.release(Outcome.SUCCESS, 0.0, 0.0)
    assert seen[0] != _addr(0)
    assert Counter(seen) == {_addr(0): 2, _addr(1): 2, _addr(2): 2}


def test_weighted_round_robin_follows_weight_changes() -> None:
    discovery = StaticDiscovery({"svc": _weighted([1, 1])})
    pool: EndpointPool[Any] = EndpointPool("svc", discovery, WeightedRoundRobin())
    assert Counter(_picks(pool, 4)) == {_addr(0): 2, _addr(1): 2}
    discovery.set("svc", _weighted([3, 1]))
    assert Counter(_picks(pool, 8)) == {_addr(0): 6, _addr(1): 2}


def test_weighted_round_robin_with_a_large_skip_looks_over_the_list() -> None:
    balancer = WeightedRoundRobin()
    pool = _pool(balancer, [_addr(i) for i in range(40)])
    ctx = _ctx(FakeClock())
    ctx.tried = [_addr(i) for i in range(39)]  # all but the last: more than the heap's draws
    assert pool.pick(ctx).address == _addr(39)
    assert balancer.pick(list(pool.states[:2]), ctx, 0.0) in pool.states[:2]  # a plain list works too


# -- zone preference -----------------------------------------------------------------------


def _zoned(local: int, remote: int) -> list[Endpoint]:
    return [Endpoint(_addr(i), zone="a" if i < local else "b") for i in range(local + remote)]


@pytest.mark.parametrize(
    "make", [lambda z: PeakEwma(zone=z, rng=random.Random(1)), lambda z: WeightedRoundRobin(zone=z)]
)
def test_the_local_zone_is_preferred_while_healthy_enough(make: Callable[[Any], Balancer]) -> None:
    clock = FakeClock()
    pool = _pool(make(ZonePreference("a", min_healthy=0.5, refresh=1.0)), _zoned(4, 4))
    local = {_addr(i) for i in range(4)}
    failing: set[str] = set()

    def outcome(address: str) -> Outcome:
        return Outcome.FAILURE if address in failing else Outcome.SUCCESS

    seen = _run(pool, clock, lambda a: FAST, 100, outcome=outcome)
    assert set(seen) <= local
    # Two of four local endpoints fail: still half healthy, still local.
    failing |= {_addr(0), _addr(1)}
    for state in pool.states[:2]:
        state.failing = True  # as their next failures would say
    clock.advance(1.0)
    seen = _run(pool, clock, lambda a: FAST, 50, step=0.0, outcome=outcome)
    assert set(seen) <= local
    # A third: below half. Within `refresh` the old verdict holds; after it, every zone.
    failing.add(_addr(2))
    pool.states[2].failing = True
    seen = _run(pool, clock, lambda a: FAST, 10, step=0.0, outcome=outcome)
    assert set(seen) <= local
    clock.advance(1.0)
    seen = _run(pool, clock, lambda a: FAST, 200, step=0.0, outcome=outcome)
    assert set(seen) - local
    # They recover: once counted again, the local zone only.
    failing.clear()
    for state in pool.states[:3]:
        state.failing = False
    clock.advance(1.0)
    seen = _run(pool, clock, lambda a: FAST, 50, step=0.0, outcome=outcome)
    assert set(seen) <= local


def test_a_pick_leaves_the_local_zone_when_every_local_endpoint_is_ruled_out() -> None:
    clock = FakeClock()
    pool = _pool(PeakEwma(zone="a", rng=random.Random(1)), _zoned(2, 3))
    ctx = _ctx(clock)
    seen = []
    for _ in range(3):
        selection = pool.pick(ctx)
        seen.append(selection.address)
        selection.release(Outcome.FAILURE, 0.0, 0.0)
    assert set(seen[:2]) == {_addr(0), _addr(1)}
    assert seen[2] not in {_addr(0), _addr(1)}


def test_ejected_local_endpoints_count_as_unhealthy() -> None:
    clock = FakeClock()
    ejection = OutlierEjection(consecutive_failures=1, max_ejection_percent=50)
    pool = _pool(PeakEwma(zone="a", ejection=ejection, rng=random.Random(1)), _zoned(2, 2))
    while not pool.states[0].ejected:
        selection = pool.pick(_ctx(clock))
        ok = selection.address != _addr(0)
        selection.release(Outcome.SUCCESS if ok else Outcome.FAILURE, FAST, clock.monotonic())
    pool.states[0].failing = False  # only the ejection speaks against it
    clock.advance(1.0)
    assert set(_run(pool, clock, lambda a: FAST, 20, step=0.0)) == {_addr(1)}  # 1 of 2 healthy: enough
    zone = ZonePreference("a", min_healthy=1.0)
    pool2 = _pool(PeakEwma(zone=zone, ejection=ejection, rng=random.Random(1)), _zoned(2, 2))
    pool2.states[0].ejected = True
    assert set(_run(pool2, clock, lambda a: FAST, 40, step=0.0)) - {_addr(0), _addr(1)}


def test_without_local_endpoints_every_endpoint_serves() -> None:
    pool = _pool(WeightedRoundRobin(zone="nowhere"), _zoned(0, 3))
    assert Counter(_picks(pool, 6)) == {_addr(i): 2 for i in range(3)}


def test_zone_preference_options_are_validated() -> None:
    with pytest.raises(ValueError, match="zone must be a non-empty string, got ''"):
        ZonePreference("")
    with pytest.raises(ValueError, match=r"min_healthy must be in \(0, 1\], got 0"):
        ZonePreference("a", min_healthy=0)
    with pytest.raises(ValueError, match="refresh must be a finite number of seconds > 0, got -1"):
        ZonePreference("a", refresh=-1)
    with pytest.raises(TypeError, match="zone must be a ZonePreference"):
        WeightedRoundRobin(zone=1)  # type: ignore[arg-type]


# -- threads -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: PeakEwma(zone="a"), WeightedRoundRobin, RoundRobin])
def test_concurrent_picks_from_threads_leave_no_count(make: Callable[[], Balancer]) -> None:
    discovery = StaticDiscovery({"svc": _zoned(3, 12)})
    pool: EndpointPool[Any] = EndpointPool("svc", discovery, make(), schedule=lambda d, fn: None)
    clock = FakeClock()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(1500):
                ctx = _ctx(clock)
                if i % 7 == 0:
                    ctx.tried = [_addr(rng.randrange(15))]
                selection = pool.pick(ctx)
                outcome = Outcome.FAILURE if rng.random() < 0.1 else Outcome.SUCCESS
                selection.release(outcome, rng.random() / 10, clock.monotonic())
                if i % 300 == 0:
                    discovery.set("svc", _zoned(3, 12 - seed % 3))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all(n == 0 for n in pool.inflight().values())


def test_a_custom_balancer_with_only_pick_still_works() -> None:
    class Last(Balancer):
        def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
            return candidates[-1]

    pool = _pool(Last(), [_addr(0), _addr(1)])
    ctx = _ctx(FakeClock())
    assert pool.pick(ctx).address == _addr(1)
    assert pool.pick(ctx).address == _addr(0)  # the retry: untried first
