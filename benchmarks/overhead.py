"""Per-call overhead of the policies on a no-op call, before and after a change, next to peer libraries.

Run: ``make bench`` or ``.venv/bin/python benchmarks/overhead.py [--quick] [--rounds N] [--markdown FILE]``.

One run measures, in four worker processes of this same script:

- our policies as they were at commit ``6609f0d`` (``--before``): that tree is exported with
  ``git archive`` into a temporary directory, which the worker gets first on ``PYTHONPATH``;
- our policies in the working tree (the "after"), with the repository first on ``PYTHONPATH``;
- the same working tree again in a second process, the control: how far apart two processes
  running the same code come out is this method's own error, measured in the same run;
- the peers: tenacity, pybreaker, limits and a semaphore (what a Python user assembles
  today), nopanic and pyresilience. Each peer runs at its cheapest documented call form
  (a decorator applied once, or an instance built once); ours runs ``Pipeline.call`` /
  ``Pipeline.acall``, and for the rows marked "as a decorator" the same decorated form the
  peers get (``Pipeline(...)(noop)``, called through the same thunk).

Rounds are interleaved: each round asks every worker in turn for one pass over all its cases,
and the order rotates from round to round, so that a noisy moment on this shared machine hits
before, after and peers alike. Within a pass every case is the best of several timed loops
(the best loop is the one least disturbed), each loop preceded by a shorter loop of the bare
call. A case's figure for the round is its time less the bare call's, the bare call's being the
median of all bare loops of the run: one figure for the interpreter, not one per process. (Taking
each process's own bare call as the yardstick, by ratio or difference, was tried and dropped:
the bare async call of one process can run 40% slower than another's for reasons of its own,
while the cases do not, and every async row of that process then looked 1.4x off.) What is
printed is the median over rounds; every ratio (to a peer, after to before) is the median over
rounds of the ratio within one round. A case is an argument-free callable making one protected
call of the no-op, and the bare call goes through the same kind of callable, so that layer
cancels out.

The goals checked at the end are the issue's; the script exits 0 whatever they say.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
BEFORE_COMMIT = "6609f0d"
PEER_PACKAGES = ("tenacity", "pybreaker", "limits", "nopanic", "pyresilience")

SyncCase = Callable[[], Any]
AsyncCase = Callable[[], Awaitable[Any]]

# -- what is measured ---------------------------------------------------------------------------

RETRY = "Retry"
RETRY_NO_BUDGET = "Retry (no budget)"
CIRCUIT_BREAKER = "CircuitBreaker"
BULKHEAD = "Bulkhead"
TOKEN_BUCKET = "TokenBucket"
RATE_LIMIT = "RateLimit (limits moving window, memory)"
PIPELINE_TRB = "Pipeline: Timeout+Retry+Bulkhead"
FULL_RATE_LIMIT = "Full: T+R+CB+RateLimit(memory)+B"
FULL = "Full pipeline: T+R+CB+TokenBucket+B"
RETRY_DECORATED = "Retry, as a decorator"
FULL_DECORATED = "Full pipeline, as a decorator"
DECORATED = {RETRY_DECORATED, FULL_DECORATED}
"""Rows whose pipeline decorates the no-op once (``p(noop)``), the call form the peers use."""

TENACITY = "peer: tenacity retry"
PYBREAKER = "peer: pybreaker"
LIMITS = "peer: limits moving window (memory)"
TENACITY_STACK = "peer stack: tenacity+pybreaker+semaphore"
TENACITY_STACK_LIMITS = "peer stack: tenacity+pybreaker+limits+semaphore"
NOPANIC_RETRY = "peer: nopanic retry"
NOPANIC_BREAKER = "peer: nopanic CircuitBreaker"
NOPANIC_BULKHEAD = "peer: nopanic bulkhead"
NOPANIC_STACK = "peer stack: nopanic retry+breaker+bulkhead"
PYRES_RETRY = "peer: pyresilience retry"
PYRES_BREAKER = "peer: pyresilience circuit breaker"
PYRES_BULKHEAD = "peer: pyresilience bulkhead"
PYRES_STACK = "peer stack: pyresilience retry+breaker+bulkhead"

# Our rows: each builds the policies of one pipeline from the package ``r`` of its tree, so a
# constructor that changed or vanished in one tree makes that row n/a there, nothing more.
OUR_ROWS: list[tuple[str, Callable[[Any], list[Any]]]] = [
    ("Timeout", lambda r: [r.Timeout(10)]),
    (RETRY, lambda r: [r.Retry(3)]),
    (RETRY_NO_BUDGET, lambda r: [r.Retry(3, budget=None)]),
    (CIRCUIT_BREAKER, lambda r: [r.CircuitBreaker()]),
    (TOKEN_BUCKET, lambda r: [r.TokenBucket(1e9, 1_000_000)]),
    (BULKHEAD, lambda r: [r.Bulkhead(1000)]),
    ("Fallback", lambda r: [r.Fallback(0)]),
    (RATE_LIMIT, lambda r: [r.RateLimit("1000000000/second", strategy="moving-window")]),
    ("RateLimit (limits fixed window, memory)", lambda r: [r.RateLimit("1000000000/second", strategy="fixed-window")]),
    ("AdaptiveThrottle", lambda r: [r.AdaptiveThrottle()]),
    ("ConcurrencyLimit", lambda r: [r.ConcurrencyLimit()]),
    ("Hedge (answer before delay)", lambda r: [r.Hedge(delay=10)]),
    (PIPELINE_TRB, lambda r: [r.Timeout(10), r.Retry(3), r.Bulkhead(1000)]),
    (
        FULL_RATE_LIMIT,
        lambda r: [
            r.Timeout(10),
            r.Retry(3),
            r.CircuitBreaker(),
            r.RateLimit("1000000000/second", strategy="fixed-window"),
            r.Bulkhead(1000),
        ],
    ),
    (
        FULL,
        lambda r: [r.Timeout(10), r.Retry(3), r.CircuitBreaker(), r.TokenBucket(1e9, 1_000_000), r.Bulkhead(1000)],
    ),
    (RETRY_DECORATED, lambda r: [r.Retry(3)]),
    (
        FULL_DECORATED,
        lambda r: [r.Timeout(10), r.Retry(3), r.CircuitBreaker(), r.TokenBucket(1e9, 1_000_000), r.Bulkhead(1000)],
    ),
]

PEER_ROWS = [
    TENACITY,
    PYBREAKER,
    LIMITS,
    TENACITY_STACK,
    TENACITY_STACK_LIMITS,
    NOPANIC_RETRY,
    NOPANIC_BREAKER,
    NOPANIC_BULKHEAD,
    NOPANIC_STACK,
    PYRES_RETRY,
    PYRES_BREAKER,
    PYRES_BULKHEAD,
    PYRES_STACK,
]

# Which peers a row of ours is read against in the table, closest first.
COMPARED_WITH: dict[str, list[str]] = {
    RETRY: [NOPANIC_RETRY, TENACITY, PYRES_RETRY],
    RETRY_NO_BUDGET: [NOPANIC_RETRY],
    CIRCUIT_BREAKER: [NOPANIC_BREAKER, PYBREAKER, PYRES_BREAKER],
    BULKHEAD: [NOPANIC_BULKHEAD, PYRES_BULKHEAD],
    TOKEN_BUCKET: [LIMITS],
    RATE_LIMIT: [LIMITS],
    PIPELINE_TRB: [TENACITY_STACK],
    FULL_RATE_LIMIT: [TENACITY_STACK_LIMITS],
    FULL: [TENACITY_STACK_LIMITS, NOPANIC_STACK, PYRES_STACK],
    RETRY_DECORATED: [NOPANIC_RETRY],
    FULL_DECORATED: [TENACITY_STACK_LIMITS, NOPANIC_STACK],
}

# The goals: (label, our row, peer row, the largest ratio of added µs allowed).
GOALS = [
    ("(a)", FULL, TENACITY_STACK_LIMITS, 0.05),
    ("(b)", FULL, NOPANIC_STACK, 0.5),
    ("(c)", RETRY, NOPANIC_RETRY, 1.5),
    ("(a)", FULL_DECORATED, TENACITY_STACK_LIMITS, 0.05),
    ("(b)", FULL_DECORATED, NOPANIC_STACK, 0.5),
    ("(c)", RETRY_DECORATED, NOPANIC_RETRY, 1.5),
]


def noop() -> int:
    return 1


async def anoop() -> int:
    return 1


def thunk(decorated: Callable[[], Any]) -> Callable[[], Any]:
    """A decorated no-op behind one more call, like the bare call and our ``p.call(noop)``."""
    return lambda: decorated()


def build_ours(r: Any, na: dict[str, str]) -> tuple[dict[str, SyncCase], dict[str, AsyncCase], list[Any]]:
    """One sync and one async pipeline per row, built apart so they share no state."""
    sync_cases: dict[str, SyncCase] = {}
    async_cases: dict[str, AsyncCase] = {}
    built: list[Any] = []
    for name, make in OUR_ROWS:
        try:
            sync_pipeline = r.Pipeline(*make(r))
            async_pipeline = r.Pipeline(*make(r))
        except Exception as exc:
            na[name] = describe(exc)
            continue
        built += [sync_pipeline, async_pipeline]
        if name in DECORATED:
            sync_cases[name] = thunk(sync_pipeline(noop))
            async_cases[name] = thunk(async_pipeline(anoop))
        else:
            sync_cases[name] = lambda p=sync_pipeline: p.call(noop)
            async_cases[name] = lambda p=async_pipeline: p.acall(anoop)
    return sync_cases, async_cases, built


def tenacity_group() -> tuple[dict[str, SyncCase], dict[str, AsyncCase]]:
    import pybreaker
    import tenacity
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
    from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    def retry_options() -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(3),
            "wait": tenacity.wait_random_exponential(multiplier=0.1, max=10),
        }

    item = RateLimitItemPerSecond(1_000_000_000)

    retrying = tenacity.Retrying(**retry_options())
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    semaphore = threading.BoundedSemaphore(1000)
    limiter = MovingWindowRateLimiter(MemoryStorage())

    def guarded() -> Any:
        with semaphore:
            return breaker.call(noop)

    def guarded_limited() -> Any:
        if not limiter.hit(item, "bench"):
            raise RuntimeError("limited")
        with semaphore:
            return breaker.call(noop)

    sync_cases: dict[str, SyncCase] = {
        TENACITY: lambda: retrying(noop),
        PYBREAKER: lambda: breaker.call(noop),
        LIMITS: lambda: limiter.hit(item, "bench"),
        TENACITY_STACK: lambda: retrying(guarded),
        TENACITY_STACK_LIMITS: lambda: retrying(guarded_limited),
    }

    aretrying = tenacity.AsyncRetrying(**retry_options())
    abreaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    asemaphore = asyncio.Semaphore(1000)
    alimiter = AsyncMovingWindow(AsyncMemoryStorage())

    async def breaker_only() -> Any:
        with abreaker.calling():
            return await anoop()

    async def aguarded() -> Any:
        async with asemaphore:
            with abreaker.calling():
                return await anoop()

    async def aguarded_limited() -> Any:
        if not await alimiter.hit(item, "bench"):
            raise RuntimeError("limited")
        async with asemaphore:
            with abreaker.calling():
                return await anoop()

    async_cases: dict[str, AsyncCase] = {
        TENACITY: lambda: aretrying(anoop),
        PYBREAKER: breaker_only,
        LIMITS: lambda: alimiter.hit(item, "bench"),
        TENACITY_STACK: lambda: aretrying(aguarded),
        TENACITY_STACK_LIMITS: lambda: aretrying(aguarded_limited),
    }
    return sync_cases, async_cases


def nopanic_group() -> tuple[dict[str, SyncCase], dict[str, AsyncCase]]:
    import nopanic

    def policies() -> dict[str, Callable[[Any], Any]]:
        return {
            NOPANIC_RETRY: nopanic.retry(3),
            NOPANIC_BREAKER: nopanic.CircuitBreaker(),
            NOPANIC_BULKHEAD: nopanic.bulkhead(1000),
            NOPANIC_STACK: nopanic.compose(nopanic.retry(3), nopanic.CircuitBreaker(), nopanic.bulkhead(1000)),
        }

    # Decorated once, as nopanic advises for hot paths; sync and async get their own instances.
    sync_cases = {name: thunk(policy(noop)) for name, policy in policies().items()}
    async_cases = {name: thunk(policy(anoop)) for name, policy in policies().items()}
    return sync_cases, async_cases


def pyresilience_group() -> tuple[dict[str, SyncCase], dict[str, AsyncCase]]:
    from pyresilience import BulkheadConfig, CircuitBreakerConfig, RetryConfig, resilient

    def decorators() -> dict[str, Callable[[Any], Any]]:
        return {
            PYRES_RETRY: resilient(retry=RetryConfig(max_attempts=3)),
            PYRES_BREAKER: resilient(circuit_breaker=CircuitBreakerConfig()),
            PYRES_BULKHEAD: resilient(bulkhead=BulkheadConfig(max_concurrent=1000)),
            PYRES_STACK: resilient(
                retry=RetryConfig(max_attempts=3),
                circuit_breaker=CircuitBreakerConfig(),
                bulkhead=BulkheadConfig(max_concurrent=1000),
            ),
        }

    sync_cases = {name: thunk(decorate(noop)) for name, decorate in decorators().items()}
    async_cases = {name: thunk(decorate(anoop)) for name, decorate in decorators().items()}
    return sync_cases, async_cases


def build_peers(na: dict[str, str]) -> tuple[dict[str, SyncCase], dict[str, AsyncCase], list[Any]]:
    sync_cases: dict[str, SyncCase] = {}
    async_cases: dict[str, AsyncCase] = {}
    for label, group in (
        ("tenacity/pybreaker/limits", tenacity_group),
        ("nopanic", nopanic_group),
        ("pyresilience", pyresilience_group),
    ):
        try:
            s, a = group()
        except Exception as exc:
            na[label] = describe(exc)
            continue
        sync_cases.update(s)
        async_cases.update(a)
    return sync_cases, async_cases, []


# -- timing (in a worker) -----------------------------------------------------------------------


def loop_sync(fn: SyncCase, n: int) -> float:
    """ns per call over one loop of ``n`` calls."""
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


async def loop_async(fn: AsyncCase, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        await fn()
    return (time.perf_counter_ns() - start) / n


def time_sync(fn: SyncCase, n: int, bare: SyncCase, n_bare: int, repeats: int) -> tuple[float, float]:
    """The best of ``repeats`` loops of the case and of the bare call, each bare loop just before a case loop.

    Bare loops timed all through the run, under every load the cases met, give the bare call's
    median a fair sample.
    """
    best, best_bare = float("inf"), float("inf")
    for _ in range(repeats):
        best_bare = min(best_bare, loop_sync(bare, n_bare))
        best = min(best, loop_sync(fn, n))
    return best, best_bare


async def time_async(fn: AsyncCase, n: int, bare: AsyncCase, n_bare: int, repeats: int) -> tuple[float, float]:
    best, best_bare = float("inf"), float("inf")
    for _ in range(repeats):
        best_bare = min(best_bare, await loop_async(bare, n_bare))
        best = min(best, await loop_async(fn, n))
    return best, best_bare


def calibrate_sync(fn: SyncCase, target_ns: float) -> int:
    """Calls per loop so that one loop lasts about ``target_ns``; the first call also checks the case works."""
    fn()
    n = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter_ns() - start
        if elapsed >= target_ns / 8 or n >= 1 << 22:
            return max(1, round(n * target_ns / max(elapsed, 1)))
        n *= 4


async def calibrate_async(fn: AsyncCase, target_ns: float) -> int:
    await fn()
    n = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(n):
            await fn()
        elapsed = time.perf_counter_ns() - start
        if elapsed >= target_ns / 8 or n >= 1 << 22:
            return max(1, round(n * target_ns / max(elapsed, 1)))
        n *= 4


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:160]


class Worker:
    """The measuring side of one worker process: its cases, calibrated once, timed once per round."""

    def __init__(self, kind: str, target_ms: float, repeats: int) -> None:
        self.repeats = repeats
        self.target_ns = target_ms * 1e6
        self.na: dict[str, str] = {}
        self.loop = asyncio.new_event_loop()
        self.info: dict[str, Any] = {"kind": kind}
        if kind == "ours":
            import resilience

            self.info["origin"] = str(Path(resilience.__file__).resolve().parent.parent)
            self.sync_cases, self.async_cases, self.built = self._in_loop(lambda: build_ours(resilience, self.na))
        else:
            self.info["versions"] = {name: version(name) for name in PEER_PACKAGES}
            self.sync_cases, self.async_cases, self.built = self._in_loop(lambda: build_peers(self.na))
        self.bare_sync: SyncCase = lambda: noop()
        self.bare_async: AsyncCase = lambda: anoop()
        # The bare loops are shorter: one goes with each case loop, to sample the bare call throughout.
        self.n_sync = {"": calibrate_sync(self.bare_sync, self.target_ns / 5)}
        for name, fn in list(self.sync_cases.items()):
            try:
                self.n_sync[name] = calibrate_sync(fn, self.target_ns)
            except Exception as exc:
                self._drop(name, "sync", exc)
        self.n_async = self.loop.run_until_complete(self._calibrate_async())

    def _in_loop(self, build: Callable[[], Any]) -> Any:
        # Built inside the loop that times them, for the peers that bind a loop when constructed.
        async def inside() -> Any:
            return build()

        return self.loop.run_until_complete(inside())

    def _drop(self, name: str, mode: str, exc: BaseException) -> None:
        self.na[f"{name} ({mode})"] = describe(exc)
        (self.sync_cases if mode == "sync" else self.async_cases).pop(name, None)

    async def _calibrate_async(self) -> dict[str, int]:
        counts = {"": await calibrate_async(self.bare_async, self.target_ns / 5)}
        for name, fn in list(self.async_cases.items()):
            try:
                counts[name] = await calibrate_async(fn, self.target_ns)
            except Exception as exc:
                self._drop(name, "async", exc)
        return counts

    def one_pass(self) -> dict[str, Any]:
        """Every case once: ``{mode: {name: [ns per call, ns per bare call timed alongside]}}``."""
        sync: dict[str, tuple[float, float]] = {}
        for name, fn in list(self.sync_cases.items()):
            try:
                sync[name] = time_sync(fn, self.n_sync[name], self.bare_sync, self.n_sync[""], self.repeats)
            except Exception as exc:
                self._drop(name, "sync", exc)
        asynchronous = self.loop.run_until_complete(self._async_pass())
        return {"sync": sync, "async": asynchronous, "na": self.na}

    async def _async_pass(self) -> dict[str, tuple[float, float]]:
        timed: dict[str, tuple[float, float]] = {}
        for name, fn in list(self.async_cases.items()):
            try:
                timed[name] = await time_async(fn, self.n_async[name], self.bare_async, self.n_async[""], self.repeats)
            except Exception as exc:
                self._drop(name, "async", exc)
        return timed

    def close(self) -> None:
        for pipeline in self.built:
            for policy in getattr(pipeline, "policies", ()):
                close = getattr(policy, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()

        # Peers leave housekeeping tasks behind (limits' expiry loop): end them before the loop.
        async def drain() -> None:
            pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self.loop.run_until_complete(drain())
        self.loop.close()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_worker(kind: str, target_ms: float, repeats: int) -> None:
    """Answer each ``round`` line on stdin with one JSON line; anything else printed goes to stderr."""
    out: TextIO = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        worker = Worker(kind, target_ms, repeats)
    except Exception as exc:  # the tree cannot even be imported: say so, the parent shows n/a
        out.write(json.dumps({"kind": kind, "fatal": describe(exc)}) + "\n")
        out.flush()
        return
    out.write(json.dumps({**worker.info, "na": worker.na}) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip() != "round":
            break
        out.write(json.dumps(worker.one_pass()) + "\n")
        out.flush()
    worker.close()


# -- the parent: workers, rounds, figures -------------------------------------------------------


class Side:
    """One worker process, asked for a pass at a time."""

    def __init__(
        self, label: str, kind: str, pythonpath: str | None, args: argparse.Namespace, fatal: str | None = None
    ) -> None:
        self.label = label
        self.passes: list[dict[str, Any] | None] = []
        self.alive = False
        if fatal is not None:
            self.hello: dict[str, Any] = {"fatal": fatal}
            return
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            kind,
            "--target-ms",
            str(args.target_ms),
            "--repeats",
            str(args.repeats),
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self._read(timeout=300.0) or {"fatal": "the worker did not start"}
        self.alive = "fatal" not in self.hello

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.alive = False
            self.process.kill()
            return None
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self) -> None:
        if not self.alive:
            self.passes.append(None)
            return
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("round\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.alive = False
            self.passes.append(None)
            return
        self.passes.append(self._read(timeout=300.0))

    def close(self) -> None:
        if not hasattr(self, "process"):
            return
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=30)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self.process.kill()
            self.process.wait()

    @property
    def na(self) -> dict[str, str]:
        last = next((p for p in reversed(self.passes) if p is not None), None)
        notes: dict[str, str] = dict(self.hello.get("na", {}))
        if last is not None:
            notes.update(last.get("na", {}))
        return notes

    def times(self, name: str, mode: str) -> list[float | None]:
        """Per round: ns per protected call (``None`` where not measured)."""
        return [None if p is None or name not in p[mode] else p[mode][name][0] for p in self.passes]

    def bares(self, mode: str) -> list[float]:
        return [bare for p in self.passes if p is not None for _, bare in p[mode].values()]


def export_tree(commit: str, into: str) -> str | None:
    """Our packages as they were at ``commit``, extracted under ``into``; an error message if that fails."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "resilience", "interceptors"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return archive.stderr.decode(errors="replace").strip() or f"git archive {commit} failed"
    tar = subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, capture_output=True, check=False)
    if tar.returncode != 0:
        return tar.stderr.decode(errors="replace").strip() or "tar failed"
    return None


def round_ratios(top: list[float | None], bottom: list[float | None]) -> list[float]:
    return [a / b for a, b in zip(top, bottom, strict=True) if a is not None and b is not None and b > 0]


def median_ratio(top: list[float | None], bottom: list[float | None]) -> float | None:
    ratios = round_ratios(top, bottom)
    return statistics.median(ratios) if ratios else None


def median_error(values: list[float]) -> float:
    """The standard error of the median of ``values``, from their interquartile range (robust to a wild round)."""
    if len(values) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return 1.2533 * (q3 - q1) / 1.349 / len(values) ** 0.5


def median_of(series: list[float | None]) -> float | None:
    values = [v for v in series if v is not None]
    return statistics.median(values) if values else None


class Results:
    """The figures of a run: µs added per call, and ratios taken round by round."""

    def __init__(self, sides: dict[str, Side]) -> None:
        self.sides = sides
        self.bare_ns: dict[str, float] = {}
        for mode in ("sync", "async"):
            bares = [bare for side in sides.values() for bare in side.bares(mode)]
            self.bare_ns[mode] = statistics.median(bares) if bares else float("nan")

    def added(self, side: str, name: str, mode: str) -> list[float | None]:
        """Per round: ns the case adds to the bare call."""
        bare = self.bare_ns[mode]
        return [None if t is None else t - bare for t in self.sides[side].times(name, mode)]

    def us(self, side: str, name: str, mode: str) -> float | None:
        m = median_of(self.added(side, name, mode))
        return None if m is None else m / 1000

    def ratio(self, side: str, name: str, other_side: str, other: str, mode: str) -> float | None:
        return median_ratio(self.added(side, name, mode), self.added(other_side, other, mode))

    def ratio_error(self, side: str, name: str, other_side: str, other: str, mode: str) -> float:
        return median_error(round_ratios(self.added(side, name, mode), self.added(other_side, other, mode)))

    def worker_bares(self) -> str:
        parts = []
        for key, side in self.sides.items():
            figures = [side.bares(mode) for mode in ("sync", "async")]
            if all(figures):
                parts.append(f"{key} {statistics.median(figures[0]):.0f}/{statistics.median(figures[1]):.0f}")
        return ", ".join(parts)


def fmt_us(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.2f}"


def fmt_ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}" if v < 0.1 else f"{v:.2f}"


def table(res: Results) -> list[str]:
    lines = [
        "| what | sync µs | async µs | sync µs before | async µs before | after/before sync | after/before async"
        " | compared with | sync x peer | async x peer |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, _ in OUR_ROWS:
        cells = [
            name,
            fmt_us(res.us("after", name, "sync")),
            fmt_us(res.us("after", name, "async")),
            fmt_us(res.us("before", name, "sync")),
            fmt_us(res.us("before", name, "async")),
            fmt_ratio(res.ratio("after", name, "before", name, "sync")),
            fmt_ratio(res.ratio("after", name, "before", name, "async")),
        ]
        peers = COMPARED_WITH.get(name, [])
        if not peers:
            lines.append("| " + " | ".join([*cells, "-", "-", "-"]) + " |")
        for i, peer in enumerate(peers):
            head = cells if i == 0 else ["↳", "", "", "", "", "", ""]
            ratios = [fmt_ratio(res.ratio("after", name, "peers", peer, mode)) for mode in ("sync", "async")]
            lines.append("| " + " | ".join([*head, peer.split(": ", 1)[1], *ratios]) + " |")
    for name in PEER_ROWS:
        cells = [name, fmt_us(res.us("peers", name, "sync")), fmt_us(res.us("peers", name, "async"))]
        lines.append("| " + " | ".join([*cells, "-", "-", "-", "-", "-", "-", "-"]) + " |")
    return lines


def goal_lines(res: Results, tolerance: float, slack_us: float) -> list[str]:
    lines = []
    for label, ours, peer, limit in GOALS:
        for mode in ("sync", "async"):
            mine, theirs = res.us("after", ours, mode), res.us("peers", peer, mode)
            r = res.ratio("after", ours, "peers", peer, mode)
            what = f"{label} {ours} ≤ {limit:g}x {peer.split(': ', 1)[1]}, {mode}:"
            if r is None:
                lines.append(f"n/a  {what} not measured")
                continue
            verdict = "PASS" if r <= limit else "FAIL"
            over = "" if r <= limit else f", {r / limit:.2f}x the goal"
            lines.append(f"{verdict} {what} {fmt_us(mine)} µs vs {fmt_us(theirs)} µs added = {fmt_ratio(r)}x{over}")
    lines.append("")
    lines.append(
        f"after ≤ before (working tree vs {res.sides['before'].label}): after/before may reach 1 + the largest of"
        f" {tolerance:.0%}, twice the standard error of its median over rounds, and how far the control"
        f" (the working tree in a second process) came from the after; or after may exceed before by {slack_us:g} µs"
    )
    for name, _ in OUR_ROWS:
        for mode in ("sync", "async"):
            after, before = res.us("after", name, mode), res.us("before", name, mode)
            r = res.ratio("after", name, "before", name, mode)
            if after is None or before is None or r is None:
                lines.append(f"n/a  {name}, {mode}: before {fmt_us(before)}, after {fmt_us(after)}")
                continue
            control = res.ratio("control", name, "after", name, mode)
            spread = 0.0 if control is None else abs(control - 1)
            allowed = 1 + max(tolerance, 2 * res.ratio_error("after", name, "before", name, mode), spread)
            ok = r <= allowed or after - before <= slack_us
            lines.append(
                f"{'PASS' if ok else 'FAIL'} {name}, {mode}: {fmt_us(before)} → {fmt_us(after)} µs"
                f" (x{fmt_ratio(r)}; control x{fmt_ratio(control)}; allowed x{allowed:.2f})"
            )
    return lines


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


def working_tree() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "resilience", "interceptors"],
        capture_output=True,
        text=True,
    )
    changed = len(dirty.stdout.splitlines())
    return f"{head.stdout.strip() or '?'}" + (f" + {changed} uncommitted paths" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few and short loops: a smoke test, not a measurement")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 12, 2 with --quick)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table and the goals to FILE")
    parser.add_argument("--raw", metavar="FILE", help="also write every pass of every worker as JSON to FILE")
    parser.add_argument(
        "--before", default=BEFORE_COMMIT, help=f"the commit measured as before (default {BEFORE_COMMIT})"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.10, help="least share by which after may exceed before (0.10)"
    )
    parser.add_argument("--slack-us", type=float, default=0.03, help="... or by this many µs (0.03)")
    parser.add_argument("--max-seconds", type=float, default=170.0, help="start no round past this (default 170)")
    parser.add_argument("--worker", choices=["ours", "peers"], help=argparse.SUPPRESS)
    parser.add_argument("--target-ms", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.target_ms is None:
        args.target_ms = 1.0 if args.quick else 10.0
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.worker is not None:
        run_worker(args.worker, args.target_ms, args.repeats)
        return
    rounds = args.rounds if args.rounds is not None else 2 if args.quick else 12

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="overhead-before-") as before_tree:
        error = export_tree(args.before, before_tree)
        fatal = None if error is None else f"cannot export {args.before}: {error}"
        sides = {
            "before": Side(args.before, "ours", before_tree, args, fatal),
            "after": Side("working tree", "ours", str(ROOT), args),
            "peers": Side("peers", "peers", None, args),
            "control": Side("control", "ours", str(ROOT), args),
        }
        for side, root in (("before", before_tree), ("after", str(ROOT)), ("control", str(ROOT))):
            origin = sides[side].hello.get("origin")
            if sides[side].alive and origin != str(Path(root).resolve()):
                sides[side].hello = {"fatal": f"imported resilience from {origin}, not from {root}"}
                sides[side].alive = False
        order = list(sides)
        done = 0
        round_start = time.monotonic()
        for i in range(rounds):
            elapsed = time.monotonic() - started
            per_round = (time.monotonic() - round_start) / done if done else 0.0
            if done and elapsed + per_round > args.max_seconds:
                break
            for key in order[i % len(order) :] + order[: i % len(order)]:
                sides[key].ask()
            done += 1
            print(f"round {done}/{rounds} done at {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
        for side in sides.values():
            side.close()

    res = Results(sides)
    versions = sides["peers"].hello.get("versions", {})
    header = [
        f"# Policy overhead per call — {datetime.date.today().isoformat()} — {machine()}",
        f"# µs added to a no-op call (bare call: {res.bare_ns['sync']:.0f} ns sync, {res.bare_ns['async']:.0f} ns async;"
        f" per worker, ns sync/async: {res.worker_bares()});"
        f" median of {done} interleaved rounds (best of {args.repeats} loops of ~{args.target_ms:g} ms each)",
        f"# before: {args.before}; after: working tree at {working_tree()}; peers: "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    if done < rounds:
        header.append(f"# stopped after {done} of {rounds} rounds to stay within --max-seconds {args.max_seconds:g}")
    notes = []
    for key, side in sides.items():
        if "fatal" in side.hello:
            notes.append(f"- {key}: every row n/a: {side.hello['fatal']}")
        for what, why in side.na.items():
            notes.append(f"- n/a in {key}: {what}: {why}")
    body = table(res)
    goals = goal_lines(res, args.tolerance, args.slack_us)
    explain = [
        "'x peer': the row's added µs divided by the peer's, median over rounds; below 1 means cheaper than the peer.",
        "'before': the same script's worker run on the tree of the --before commit.",
    ]
    print("\n".join([*header, "", *body, "", *explain, *notes, "", *goals]))
    if args.raw:
        raw = {key: {"hello": side.hello, "passes": side.passes} for key, side in sides.items()}
        Path(args.raw).write_text(json.dumps(raw, indent=1))
    if args.markdown:
        text = "\n".join([*header, "", *body, "", *explain, *notes, "", "```", *goals, "```", ""])
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
