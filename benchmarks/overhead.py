"""Per-call overhead of the policies on a no-op call, next to the bare call and to peer libraries.

Run: ``make bench`` or ``.venv/bin/python benchmarks/overhead.py [--quick]``.

Every figure is the best of several timed loops (ns per call): the machine is shared and
noisy, and the best loop is the one least disturbed. Nothing here is asserted; the table
is for reading. The peer stack is what a Python user assembles today: tenacity for
retries, pybreaker for the breaker, limits for a rate limit, a semaphore for the bulkhead.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pybreaker
import tenacity
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

import resilience as r

Row = tuple[str, float | None, float | None]


def time_sync(fn: Callable[[], Any], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


async def time_async(fn: Callable[[], Awaitable[Any]], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(n):
            await fn()
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


def noop() -> int:
    return 1


async def anoop() -> int:
    return 1


def policies() -> dict[str, Callable[[], list[r.Policy]]]:
    """Each policy alone, built fresh, in its happy state; then the composed pipelines."""
    alone: dict[str, Callable[[], list[r.Policy]]] = {
        "Timeout": lambda: [r.Timeout(10)],
        "Retry (with budget)": lambda: [r.Retry(3)],
        "Retry (no budget)": lambda: [r.Retry(3, budget=None)],
        "Fallback": lambda: [r.Fallback(0)],
        "Bulkhead": lambda: [r.Bulkhead(64)],
    }
    optional = {
        "CircuitBreaker": lambda: [r.CircuitBreaker()],  # type: ignore[attr-defined]
        "RateLimit (limits fixed window, memory)": lambda: [r.RateLimit("1000000000/second", strategy="fixed-window")],  # type: ignore[attr-defined]
        "TokenBucket": lambda: [r.TokenBucket(rate=1e9, burst=1_000_000)],  # type: ignore[attr-defined]
        "AdaptiveThrottle": lambda: [r.AdaptiveThrottle()],  # type: ignore[attr-defined]
        "ConcurrencyLimit": lambda: [r.ConcurrencyLimit()],  # type: ignore[attr-defined]
        "Hedge (answer before delay)": lambda: [r.Hedge(delay=10)],  # type: ignore[attr-defined]
    }
    for name, make in optional.items():
        try:
            make()
        except AttributeError:
            continue
        alone[name] = make
    alone["Pipeline: Timeout+Retry+Bulkhead"] = lambda: [r.Timeout(10), r.Retry(3), r.Bulkhead(64)]
    if hasattr(r, "CircuitBreaker") and hasattr(r, "RateLimit"):
        alone["Full: T+R+CB+RateLimit(memory)+B"] = lambda: [
            r.Timeout(10),
            r.Retry(3),
            r.CircuitBreaker(),  # type: ignore[attr-defined]
            r.RateLimit("1000000000/second", strategy="fixed-window"),  # type: ignore[attr-defined]
            r.Bulkhead(64),
        ]
    if hasattr(r, "CircuitBreaker") and hasattr(r, "TokenBucket"):
        alone["Full: T+R+CB+TokenBucket+B"] = lambda: [
            r.Timeout(10),
            r.Retry(3),
            r.CircuitBreaker(),  # type: ignore[attr-defined]
            r.TokenBucket(rate=1e9, burst=1_000_000),  # type: ignore[attr-defined]
            r.Bulkhead(64),
        ]
    return alone


def peers_sync() -> dict[str, Callable[[], Any]]:
    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_random_exponential(multiplier=0.1, max=10))
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    semaphore = threading.BoundedSemaphore(64)
    limiter = MovingWindowRateLimiter(MemoryStorage())
    item = RateLimitItemPerSecond(1_000_000_000)

    def stack() -> Any:
        def attempt() -> Any:
            with semaphore:
                return breaker.call(noop)

        return retrying(attempt)

    def stack_limits() -> Any:
        def attempt() -> Any:
            if not limiter.hit(item, "bench"):
                raise RuntimeError("limited")
            with semaphore:
                return breaker.call(noop)

        return retrying(attempt)

    return {
        "peer: tenacity retry": lambda: retrying(noop),
        "peer: pybreaker": lambda: breaker.call(noop),
        "peer: limits moving window (memory)": lambda: limiter.hit(item, "bench"),
        "peer stack: tenacity+pybreaker+semaphore": stack,
        "peer stack: tenacity+pybreaker+limits+semaphore": stack_limits,
    }


def peers_async() -> dict[str, Callable[[], Awaitable[Any]]]:
    retry_kwargs: dict[str, Any] = {
        "stop": tenacity.stop_after_attempt(3),
        "wait": tenacity.wait_random_exponential(multiplier=0.1, max=10),
    }
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    semaphore = asyncio.Semaphore(64)
    limiter = AsyncMovingWindow(AsyncMemoryStorage())
    item = RateLimitItemPerSecond(1_000_000_000)

    async def tenacity_only() -> Any:
        async for attempt in tenacity.AsyncRetrying(**retry_kwargs):
            with attempt:
                return await anoop()

    async def breaker_only() -> Any:
        with breaker.calling():
            return await anoop()

    async def limits_only() -> Any:
        return await limiter.hit(item, "bench")

    async def stack() -> Any:
        async for attempt in tenacity.AsyncRetrying(**retry_kwargs):
            with attempt:
                async with semaphore:
                    with breaker.calling():
                        return await anoop()

    async def stack_limits() -> Any:
        async for attempt in tenacity.AsyncRetrying(**retry_kwargs):
            with attempt:
                if not await limiter.hit(item, "bench"):
                    raise RuntimeError("limited")
                async with semaphore:
                    with breaker.calling():
                        return await anoop()

    return {
        "peer: tenacity retry": tenacity_only,
        "peer: pybreaker": breaker_only,
        "peer: limits moving window (memory)": limits_only,
        "peer stack: tenacity+pybreaker+semaphore": stack,
        "peer stack: tenacity+pybreaker+limits+semaphore": stack_limits,
    }


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a rough look)")
    args = parser.parse_args()
    n, repeats = (5_000, 3) if args.quick else (40_000, 7)
    # Peers are 10-30 times slower: fewer iterations keep the run short with the same care.
    n_peer = max(1000, n // 8)

    rows: list[Row] = []
    bare_sync = time_sync(noop, n, repeats)
    bare_async = asyncio.run(time_async(anoop, n, repeats))
    rows.append(("bare call", bare_sync, bare_async))

    for name, make in policies().items():
        sync_pipeline = r.Pipeline(*make())
        async_pipeline = r.Pipeline(*make())
        s = time_sync(lambda p=sync_pipeline: p.call(noop), n, repeats)  # type: ignore[misc]
        a = asyncio.run(time_async(lambda p=async_pipeline: p.acall(anoop), n, repeats))  # type: ignore[misc]
        rows.append((name, s, a))
        for p in (sync_pipeline, async_pipeline):
            for policy in p.policies:
                close = getattr(policy, "close", None)
                if close is not None:
                    close()

    sync_peers = peers_sync()

    async def run_async_peers() -> dict[str, float]:
        return {name: await time_async(fn, n_peer, repeats) for name, fn in peers_async().items()}

    async_peers = asyncio.run(run_async_peers())
    for name, fn in sync_peers.items():
        rows.append((name, time_sync(fn, n_peer, repeats), async_peers.get(name)))

    peer_stack = {row[0]: row for row in rows}["peer stack: tenacity+pybreaker+semaphore"]
    peer_stack_limits = {row[0]: row for row in rows}["peer stack: tenacity+pybreaker+limits+semaphore"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    def ratio(v: float | None, base: float | None) -> str:
        return "-" if v is None or base is None else f"{v / base:.2f}"

    print(f"# Policy overhead per call — {datetime.date.today().isoformat()} — {machine()}")
    print(f"# best of {repeats} loops of {n:,} calls ({n_peer:,} for peers); ns per call")
    print()
    print("| what | sync ns | async ns | sync vs peer stack | async vs peer stack |")
    print("|---|---:|---:|---:|---:|")
    for name, s, a in rows:
        peer = peer_stack_limits if "RateLimit" in name or "TokenBucket" in name else peer_stack
        print(f"| {name} | {fmt(s)} | {fmt(a)} | {ratio(s, peer[1])} | {ratio(a, peer[2])} |")
    print()
    print("'vs peer stack': the Full rows compare with tenacity+pybreaker+limits+semaphore, the others with")
    print("tenacity+pybreaker+semaphore; below 1 means cheaper than the peers.")


if __name__ == "__main__":
    main()
