"""The ``resilience`` command.

``resilience demo`` runs the live demonstration (:mod:`resilience._demo`, the ``demo`` extra):
an embedded fleet of HTTP and gRPC replicas on loopback, a bare and a resilient client side
by side, one call's trace and a summary (``--duration``, ``--no-live``; etcd discovery when
``ETCD_ENDPOINTS`` is set). ``resilience demo --scenes [SCENE...]`` runs the narrated policy
scenes instead: pipelines around a flaky in-process backend, printing what each policy
decides as it happens; they need no network, no etcd and no Redis.

``resilience config check FILE`` checks a config file: it prints every problem and exits 1,
or prints what the config sets up; ``resilience config schema`` prints the JSON Schema of
config files for editors.

``resilience register SERVICE ADDRESS`` keeps an instance registered in etcd until it gets
SIGTERM or SIGINT (for processes not written in Python); ``resilience endpoints SERVICE``
lists what a client would see. Both take ``--etcd URL`` (default ``$RESILIENCE_ETCD``, else
``etcd://127.0.0.1:2379/services``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from . import __version__, _cli_config
from ._cli_etcd import DEFAULT_ETCD, endpoints, register
from .errors import BulkheadFullError, CircuitOpenError, RateLimitedError, ResilienceError
from .events import (
    BulkheadRejected,
    Event,
    FallbackUsed,
    RetryGaveUp,
    RetryScheduled,
    TimeoutExpired,
)
from .pipeline import Pipeline
from .policies import (
    Bulkhead,
    CircuitBreaker,
    CircuitRejected,
    CircuitStateChanged,
    Constant,
    ExponentialJitter,
    Fallback,
    FallbackInput,
    Hedge,
    HedgeStarted,
    HedgeWon,
    RateLimitRejected,
    Retry,
    Timeout,
    TokenBucket,
)

__all__ = ["main"]


class Narrator:
    """A listener that prints one line per event, with the time since the scene began."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.monotonic()
        self.lock = threading.Lock()

    def scene(self, title: str, text: str) -> None:
        self.start = time.monotonic()
        self.out.write(f"\n== {title}\n   {text}\n")

    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(f"   [{time.monotonic() - self.start:6.3f}s] {text}\n")
            self.out.flush()

    def __call__(self, event: Event) -> None:
        line = describe(event)
        if line is not None:
            self.say(f"{event.policy:>9}: {line}")


def describe(event: Event) -> str | None:
    """One line of plain words for an event."""
    if isinstance(event, RetryScheduled):
        return f"attempt {event.attempt} failed ({_err(event.error)}); retrying in {event.delay * 1000:.0f} ms"
    if isinstance(event, RetryGaveUp):
        return f"giving up after attempt {event.attempt} ({event.reason}: {_err(event.error)})"
    if isinstance(event, TimeoutExpired):
        return f"attempt exceeded {event.timeout * 1000:.0f} ms: cancelled"
    if isinstance(event, FallbackUsed):
        return f"answering with the fallback instead of {_err(event.error)}"
    if isinstance(event, BulkheadRejected):
        return f"rejected: {event.active} calls inside, {event.queued} waiting ({event.reason})"
    if isinstance(event, CircuitStateChanged):
        return f"circuit {event.old.value} -> {event.new.value} ({event.reason})"
    if isinstance(event, CircuitRejected):
        return "circuit open: call rejected without touching the backend"
    if isinstance(event, HedgeStarted):
        return f"primary slow after {event.delay * 1000:.0f} ms: hedge #{event.hedge} sent"
    if isinstance(event, HedgeWon):
        return f"hedge #{event.hedge} answered first; the slower attempt is cancelled"
    if isinstance(event, RateLimitRejected):
        retry = f"next permit in {event.retry_after * 1000:.0f} ms" if event.retry_after is not None else ""
        return f"rate limit reached for {event.key!r}; {retry}"
    return None


def _err(error: BaseException | None) -> str:
    if error is None:
        return "a failed result"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class FlakyBackend:
    """An in-process stand-in for a remote service: it fails, stalls and recovers on cue."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.failure_rate = 0.0
        self.slow_rate = 0.0
        self.slow_seconds = 0.3
        self.down = False
        self.calls = 0

    def get(self, item: str) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        if self.rng.random() < self.failure_rate:
            raise ConnectionError("connection reset by peer")
        return f"{item}: 42 in stock"

    async def aget(self, item: str) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        if self.rng.random() < self.slow_rate:
            await asyncio.sleep(self.slow_seconds)
        else:
            await asyncio.sleep(0.005)
        if self.rng.random() < self.failure_rate:
            raise ConnectionError("connection reset by peer")
        return f"{item}: 42 in stock"


def scene_retry(n: Narrator) -> None:
    n.scene("Retry", "A backend that drops 60% of calls; retries with jittered backoff hide it.")
    backend = FlakyBackend(seed=3)
    backend.failure_rate = 0.6
    pipeline = Pipeline(Retry(5, backoff=ExponentialJitter(0.02, 2, 0.2)), listeners=[n])
    for item in ("apples", "pears", "plums"):
        n.say(f"   caller: got {pipeline.call(backend.get, item)!r}")
    n.say(f"   backend saw {backend.calls} calls for 3 requests")


def scene_timeout(n: Narrator) -> None:
    n.scene("Timeout + Retry (asyncio)", "Some calls stall for 300 ms; each attempt gets 50 ms, then a retry.")
    backend = FlakyBackend(seed=11)
    backend.slow_rate = 0.5
    pipeline = Pipeline(Timeout(1.0), Retry(4, backoff=Constant(0.01)), Timeout(0.05), listeners=[n])

    async def run() -> None:
        for item in ("flour", "sugar", "salt"):
            started = time.monotonic()
            value = await pipeline.acall(backend.aget, item)
            n.say(f"   caller: got {value!r} in {(time.monotonic() - started) * 1000:.0f} ms")

    asyncio.run(run())


def scene_breaker(n: Narrator) -> None:
    n.scene(
        "Circuit breaker",
        "The backend goes down: after 3 failures the circuit opens and calls fail fast;\n"
        "   after 200 ms one probe goes through, and when the backend is back the circuit closes.",
    )
    backend = FlakyBackend()
    breaker = CircuitBreaker(failure_threshold=3, break_duration=0.2)
    pipeline = Pipeline(breaker, listeners=[n])
    backend.down = True
    for _ in range(5):
        try:
            pipeline.call(backend.get, "milk")
        except CircuitOpenError as exc:
            n.say(f"   caller: {type(exc).__name__}, retry after {exc.retry_after or 0:.2f}s")
        except ConnectionError as exc:
            n.say(f"   caller: {exc}")
    n.say(f"   backend saw {backend.calls} calls for 5 requests")
    time.sleep(0.22)
    backend.down = False
    n.say(f"   caller: got {pipeline.call(backend.get, 'milk')!r}")


def scene_bulkhead(n: Narrator) -> None:
    n.scene("Bulkhead", "6 threads call a slow backend through a bulkhead of 2 slots and a queue of 2.")
    bulkhead = Bulkhead(2, max_queue=2, max_wait=1.0)
    pipeline = Pipeline(bulkhead, listeners=[n])
    results: list[str] = []

    def slow() -> str:
        time.sleep(0.05)
        return "ok"

    def worker(i: int) -> None:
        try:
            results.append(pipeline.call(slow))
        except BulkheadFullError:
            results.append("rejected")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    n.say(f"   callers: {results.count('ok')} served, {results.count('rejected')} rejected at once")


def scene_rate_limit(n: Narrator) -> None:
    n.scene("Rate limit", "A token bucket of 20 calls/s with a burst of 3, per tenant.")
    limit = TokenBucket(20, burst=3, key="{tenant}")
    pipeline = Pipeline(limit, listeners=[n])
    for i in range(5):
        ctx = pipeline.context(tags={"tenant": "acme"})
        try:
            pipeline.execute(lambda c: "ok", ctx)
            n.say(f"   caller: call {i + 1} admitted")
        except RateLimitedError:
            n.say(f"   caller: call {i + 1} rejected")


def scene_hedge(n: Narrator) -> None:
    n.scene("Hedging (asyncio)", "One replica in three stalls; after 30 ms a second attempt goes out.")
    backend = FlakyBackend(seed=5)
    backend.slow_rate = 0.34
    backend.slow_seconds = 0.5
    pipeline = Pipeline(Hedge(0.03), listeners=[n])

    async def run() -> None:
        for item in ("tea", "coffee", "cocoa", "mate"):
            started = time.monotonic()
            value = await pipeline.acall(backend.aget, item)
            n.say(f"   caller: got {value!r} in {(time.monotonic() - started) * 1000:.0f} ms")

    asyncio.run(run())


def scene_fallback(n: Narrator) -> None:
    n.scene("Fallback", "All else failed: answer from a stale cache rather than with an error.")
    backend = FlakyBackend()
    backend.down = True
    cache = {"bread": "bread: 40 in stock (5 minutes ago)"}

    def from_cache(info: FallbackInput) -> str:
        return cache.get(str(info.context.args[0]) if info.context.args else "", "unknown")

    pipeline = Pipeline(Fallback(handler=from_cache), Retry(2, backoff=Constant(0.01)), listeners=[n])
    n.say(f"   caller: got {pipeline.call(backend.get, 'bread')!r}")


SCENES: dict[str, Callable[[Narrator], None]] = {
    "retry": scene_retry,
    "timeout": scene_timeout,
    "breaker": scene_breaker,
    "bulkhead": scene_bulkhead,
    "ratelimit": scene_rate_limit,
    "hedge": scene_hedge,
    "fallback": scene_fallback,
}


def demo(scenes: Sequence[str], out: TextIO | None = None) -> int:
    """Run the narrated scenes named, writing to ``out`` (default: ``sys.stdout`` at the call)."""
    out = sys.stdout if out is None else out
    narrator = Narrator(out)
    out.write("resilience demo: policies at work around a flaky in-process backend\n")
    for name in scenes:
        try:
            SCENES[name](narrator)
        except ResilienceError as exc:  # a scene ends on an error only if the demo is broken
            narrator.say(f"unexpected {type(exc).__name__}: {exc}")
            return 1
    out.write("\nDone. The same policies wrap gRPC channels and httpx clients: see the README.\n")
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def live_demo(duration: float, live: bool | None, seed: int, rate: float) -> int:
    """The live demo (:mod:`resilience._demo`); ``live=None``: live when stdout is a terminal."""
    try:
        from ._demo import run
        from ._demo.run import main_options
    except ImportError as exc:
        sys.stderr.write(f"resilience demo: {exc}\n")
        return 1
    try:
        options = main_options(duration, live, seed, rate)
    except ValueError as exc:
        sys.stderr.write(f"resilience demo: {exc}\n")
        return 2
    return run(options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resilience", description="Resilience policies for gRPC and httpx.")
    parser.add_argument("--version", action="version", version=f"resilience {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="a live demonstration: an embedded fleet, bare and resilient clients")
    run_demo.add_argument(
        "--duration", type=_positive, default=30.0, metavar="SECONDS", help="seconds of traffic (default 30)"
    )
    run_demo.add_argument(
        "--no-live", dest="live", action="store_false", default=None,
        help="plain periodic lines instead of the live view (the default when stdout is not a terminal)",
    )  # fmt: skip
    run_demo.add_argument("--seed", type=int, default=1, help="seed of the replicas' faults (default 1)")
    run_demo.add_argument(
        "--rate", type=_positive, default=40.0, help="calls per second of each of the four clients (default 40)"
    )
    run_demo.add_argument(
        "--scenes", nargs="*", metavar="SCENE", default=None,
        help=f"run the narrated policy scenes instead (default with no name: all of {list(SCENES)})",
    )  # fmt: skip
    etcd_help = f"etcd URI (default $RESILIENCE_ETCD, else {DEFAULT_ETCD})"
    run_register = commands.add_parser("register", help="keep an instance registered in etcd until SIGTERM")
    run_register.add_argument("service", metavar="SERVICE")
    run_register.add_argument("address", metavar="ADDRESS", help="host:port of the instance")
    run_register.add_argument("--ttl", type=int, default=10, help="lease in seconds, renewed every ttl/3 (default 10)")
    run_register.add_argument("--etcd", metavar="URL", help=etcd_help)
    run_register.add_argument("--id", help="instance id, the last part of the key (default: ADDRESS)")
    run_register.add_argument("--zone")
    run_register.add_argument("--weight", type=int, default=1)
    run_register.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    run_endpoints = commands.add_parser("endpoints", help="list a service's endpoints as a client sees them")
    run_endpoints.add_argument("service", metavar="SERVICE")
    run_endpoints.add_argument("--etcd", metavar="URL", help=etcd_help)
    run_endpoints.add_argument("--probe", action="store_true", help="connect to each endpoint once (TCP)")
    run_endpoints.add_argument("--timeout", type=float, default=1.0, help="seconds per probe (default 1)")
    _cli_config.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "config":
        return _cli_config.run(args)
    if args.command == "register":
        return register(args)
    if args.command == "endpoints":
        return endpoints(args)
    if args.command == "demo":
        if args.scenes is not None:
            unknown = [s for s in args.scenes if s not in SCENES]
            if unknown:
                parser.error(f"unknown scene {unknown[0]!r}; choose from {', '.join(SCENES)}")
            return demo(args.scenes or list(SCENES))
        return live_demo(args.duration, args.live, args.seed, args.rate)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
