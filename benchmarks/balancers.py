"""What a pick costs for each balancer with 10, 100 and 10,000 endpoints, and the memory per endpoint.

Run: ``.venv/bin/python benchmarks/balancers.py [--quick] [--rounds N]``.

For each balancer and pool size, three costs in µs, each the median over rounds of the best of
several timed loops (the best loop is the one least disturbed on a shared machine):

- **pool pick + release**: ``EndpointPool.pick(ctx)`` then ``Selection.release(...)``, which
  calls the balancer's ``observe`` (and outlier ejection's ``record``): what an adapter pays
  per attempt, less the I/O;
- **retry pick + release**: the same for a retry, whose context already tried one endpoint
  (the pool then asks the balancer to skip it);
- **select + observe**: the balancer alone, without the pool's bookkeeping.

Time runs on a ``FakeClock`` advanced by hand (the balancers read only the ``now`` they are
given), latencies are drawn from a seeded generator, and a few endpoints are slow. Memory per
endpoint is measured with ``tracemalloc``: what a pool of 10,000 endpoints holds once every
endpoint has been picked and released (its state, the balancer's score, the ejection's counts
and the balancer's caches), divided by 10,000; the endpoints themselves (discovery's objects)
are not counted. The goal checked at the end is the issue's: P2C flat in the number of
endpoints (within 1.5x from 10 to 10,000). The script exits 0 whatever it says.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resilience import (
    Endpoint,
    EndpointPool,
    FakeClock,
    OutlierEjection,
    PeakEwma,
    RoundRobin,
    StaticDiscovery,
    WeightedRoundRobin,
)
from resilience.balancing.base import Balancer
from resilience.context import CallContext
from resilience.outcome import Outcome

SIZES = (10, 100, 10_000)

BALANCERS: dict[str, Callable[[], Balancer]] = {
    "RoundRobin": RoundRobin,
    "WeightedRoundRobin": WeightedRoundRobin,
    "PeakEwma (P2C)": lambda: PeakEwma(rng=random.Random(1)),
    "PeakEwma + OutlierEjection": lambda: PeakEwma(rng=random.Random(1), ejection=OutlierEjection()),
    "WeightedRoundRobin, zone": lambda: WeightedRoundRobin(zone="a"),
    "PeakEwma, zone": lambda: PeakEwma(zone="a", rng=random.Random(1)),
}


def _endpoints(n: int) -> list[Endpoint]:
    rng = random.Random(n)
    return [
        Endpoint(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:80", weight=rng.randint(1, 10), zone="ab"[i % 2])
        for i in range(n)
    ]


class Bench:
    """One balancer over one pool, and the loops that time it."""

    def __init__(self, make: Callable[[], Balancer], n: int) -> None:
        self.clock = FakeClock()
        self.balancer = make()
        self.pool: EndpointPool[Any] = EndpointPool("svc", StaticDiscovery({"svc": _endpoints(n)}), self.balancer)
        rng = random.Random(2)
        # Latencies per endpoint: mostly 5-15 ms, one in 20 slow (300 ms).
        self.latency = [0.3 if rng.random() < 0.05 else rng.uniform(0.005, 0.015) for _ in range(n)]
        self.index = {s.address: i for i, s in enumerate(self.pool.states)}
        self.ctx = CallContext("svc", "m", clock=self.clock)
        for _ in range(min(3 * n, 30_000)):  # warm up: scores, schedules and caches exist
            self.pick_release(self.ctx)

    def pick_release(self, ctx: CallContext) -> None:
        ctx.tried = None
        clock = self.clock
        clock._now += 0.0005  # a pick every 0.5 ms: 2,000 per second
        selection = self.pool.pick(ctx)
        duration = self.latency[self.index[selection.address]]
        selection.release(Outcome.SUCCESS, duration, clock._now, ctx)

    def retry_release(self, ctx: CallContext) -> None:
        ctx.tried = [self.pool.states[0].address]
        clock = self.clock
        clock._now += 0.0005
        selection = self.pool.pick(ctx)
        selection.release(Outcome.SUCCESS, 0.01, clock._now, ctx)

    def select_observe(self, ctx: CallContext) -> None:
        clock = self.clock
        clock._now += 0.0005
        states = self.pool.states
        state = self.balancer.select(states, None, ctx, clock._now)
        assert state is not None
        self.balancer.observe(state, Outcome.SUCCESS, 0.01, clock._now)


def _best_loop(fn: Callable[[CallContext], None], ctx: CallContext, loops: int, iterations: int) -> float:
    """µs per call: the best of ``loops`` timed loops of ``iterations`` calls."""
    best = float("inf")
    for _ in range(loops):
        start = time.perf_counter()
        for _ in range(iterations):
            fn(ctx)
        best = min(best, (time.perf_counter() - start) / iterations)
    return best * 1e6


def _memory_per_endpoint(make: Callable[[], Balancer], n: int) -> float:
    endpoints = _endpoints(n)
    discovery = StaticDiscovery({"svc": endpoints})
    clock = FakeClock()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    balancer = make()
    pool: EndpointPool[Any] = EndpointPool("svc", discovery, balancer)
    ctx = CallContext("svc", "m", clock=clock)
    for state in pool.states:  # every endpoint gets a score and its counts
        balancer.observe(state, Outcome.SUCCESS, 0.01, 0.0)
        if pool.outliers is not None:
            pool.outliers.record(state, Outcome.SUCCESS, 0.01, 0.0, None)
    for _ in range(1000):
        ctx.tried = None
        pool.pick(ctx).release(Outcome.SUCCESS, 0.01, 0.0)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert pool.states
    return (after - before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few loops, numbers mean little")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    args = parser.parse_args()
    loops, iterations, rounds = (2, 500, 1) if args.quick else (5, 4000, args.rounds)
    print(f"Python {sys.version.split()[0]}; µs per operation, median of {rounds} rounds of the best of {loops} loops")
    print()
    header = "| balancer | operation | " + " | ".join(f"{n:,} endpoints" for n in SIZES) + " | 10,000 / 10 |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    results: dict[tuple[str, str], list[float]] = {}
    for name, make in BALANCERS.items():
        benches = {n: Bench(make, n) for n in SIZES}
        for op in ("pick_release", "retry_release", "select_observe"):
            figures = []
            for n in SIZES:
                bench = benches[n]
                fn = getattr(bench, op)
                figures.append(statistics.median(_best_loop(fn, bench.ctx, loops, iterations) for _ in range(rounds)))
            results[(name, op)] = figures
            label = {
                "pick_release": "pool pick + release",
                "retry_release": "retry pick + release",
                "select_observe": "select + observe",
            }[op]
            cells = " | ".join(f"{f:.2f}" for f in figures)
            print(f"| {name} | {label} | {cells} | {figures[-1] / figures[0]:.2f}x |", flush=True)
    print()
    print("| balancer | bytes per endpoint (10,000 endpoints) |")
    print("|---|---|")
    for name, make in BALANCERS.items():
        print(f"| {name} | {_memory_per_endpoint(make, 10_000):.0f} |", flush=True)
    print()
    flat = results[("PeakEwma (P2C)", "pick_release")]
    ratio = flat[-1] / flat[0]
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(f"Goal, P2C flat (pool pick + release, 10,000 vs 10 endpoints, within 1.5x): {ratio:.2f}x, {verdict}")


if __name__ == "__main__":
    main()
