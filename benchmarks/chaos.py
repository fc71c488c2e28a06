"""Chaos benchmark: three replicas per fleet on loopback, some of them slow, failing or dead.

Run: ``.venv/bin/python benchmarks/chaos.py [--quick] [--rounds 2] [--requests 2000]
[--concurrency 32] [--fleets healthy,mixed,dead,recovering]
[--stacks bare,tenacity+pybreaker,resilience] [--protocols grpc,http] [--json FILE]``.
The default run takes about four minutes on two cores; ``--quick`` is a smoke test.

**Replicas.** Three server processes (``benchmarks/_chaos_server.py``), each serving gRPC
(``grpc.aio``) and HTTP/1.1 (asyncio) on 127.0.0.1, so the servers share neither the
client's event loop nor its GIL. A dead replica is a loopback port bound by no listener
(connections are refused). The fleets, replicas 1 / 2 / 3:

- ``healthy``: healthy / healthy / healthy;
- ``mixed``: healthy / slow (20 % of calls wait 300 ms) / errors (50 % of calls fail at once);
- ``dead``: healthy / slow / refused;
- ``recovering``: healthy / slow / recovering (every call fails at once for the first
  ``--fail-for`` seconds of the run, 2 by default, then healthy).

A failure is ``UNAVAILABLE`` for gRPC and ``503`` for HTTP. The slow and error draws come
from a seeded generator in each replica.

**A run** is one stack against one fleet over one protocol, with a client built for it:
``--warmup`` requests (200) with every replica that listens healthy, which opens the
connections and gives the latency-based policies their first samples, as a client that has
been running would have (a refused replica is refused then too); a pause of 0.2 s; then the
replicas take the fleet's behaviour, their records are cleared, and ``--requests`` requests
(2,000) run from ``--concurrency`` tasks (32), each sending its next request when the
previous one ended. A recovering run goes on until ``--watch`` seconds (5) after the
recovery, so it holds more requests. ``--rounds`` (2) repeats every run, the rounds
interleaved so that a disturbed minute of a shared machine does not fall on one stack.
The stacks are described in ``benchmarks/_chaos_clients.py``.

**Figures.** Success rate and attempts per request over all rounds; p50, p99 and p99.9 of
the latency of every request, failed ones included, as the caller saw it: the median over
rounds of each round's figure (each round's p99 is printed too). Attempts are counted where
the client sends (a hedge, a retry and a refused connection count; an attempt a breaker
turned away does not); arrivals per replica are counted by the servers (a refused replica
has none), the mean of the rounds. For the recovering fleet: the time from the recovery to
the first 1 s window in which the recovered replica got at least 0.8x the arrivals of the
healthy replica 1, and the recovered replica's share of all arrivals in each half second.
Then the issue's goals for this project, PASS or FAIL with their figures: 100 % success on
every fleet, p99 under faults at most 2x the bare client's p99 on the healthy fleet (the
median over rounds of the ratio within a round, as a busy minute moves both), at most 1.1
attempts per request, the recovered replica back within 5 s. The script exits 0
whatever they say.

Every process started is stopped at the end, and on Ctrl-C (exit status 130).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# grpc's core logs each GOAWAY of a closing connection at INFO: keep the tables readable.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _chaos_chart
from _chaos_clients import STACKS, describe_ours, make_client

HERE = Path(__file__).resolve().parent

FLEETS: dict[str, tuple[str, str, str]] = {
    "healthy": ("healthy", "healthy", "healthy"),
    "mixed": ("healthy", "slow", "errors"),
    "dead": ("healthy", "slow", "refused"),
    "recovering": ("healthy", "slow", "recovering"),
}
PROTOCOLS = ("grpc", "http")
SLOW_SHARE, SLOW_DELAY, ERROR_SHARE = 0.2, 0.3, 0.5
SHARE_WINDOW = 1.0  # seconds: the window in which a recovered replica must get its share
SHARE_OF_HEALTHY = 0.8  # ... at least this much of the healthy replica's arrivals
BACK_WITHIN = 5.0  # seconds: the goal's "within seconds"
SETTLE = 0.2  # seconds of quiet between the warm-up and the measured requests
RUN_CAP = 120.0  # seconds any one run may take before it is cut


# -- the replicas -------------------------------------------------------------------------------


class ReplicaProcess:
    """One ``_chaos_server.py`` process and its command pipe (:meth:`ready` waits for its ports)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "_chaos_server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the benchmark alone, which then stops us
        )
        self.ports: dict[str, int] = {}

    def ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"replica process {self.process.pid} did not start")
        self.ports = json.loads(line)

    def command(self, **command: Any) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"replica process {self.process.pid} exited")
        return json.loads(line)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def replicas() -> Iterator[tuple[list[ReplicaProcess], int]]:
    """Three replica processes and a refused port (bound, never listening), stopped at the end."""
    started: list[ReplicaProcess] = []
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        dead.bind(("127.0.0.1", 0))
        for _ in range(3):
            started.append(ReplicaProcess())
        for process in started:  # started together, they import grpc side by side
            process.ready()
        yield started, dead.getsockname()[1]
    finally:
        for process in started:
            process.stop()
        dead.close()


def behaviour(role: str, now: float, fail_for: float, seed: int) -> dict[str, Any]:
    """The ``set`` command of a replica playing ``role`` in a run starting ``now``."""
    if role == "slow":
        return {"slow_share": SLOW_SHARE, "slow_delay": SLOW_DELAY, "seed": seed}
    if role == "errors":
        return {"error_share": ERROR_SHARE, "seed": seed}
    if role == "recovering":
        return {"fail_until": now + fail_for, "seed": seed}
    return {"seed": seed}


# -- one run ------------------------------------------------------------------------------------


@dataclass
class Result:
    protocol: str
    fleet: str
    stack: str
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    attempts: int = 0
    seconds: float = 0.0
    arrivals: list[list[float] | None] = field(default_factory=list)  # None: refused
    start: float = 0.0
    recovered_at: float | None = None
    cut: bool = False

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def success(self) -> float:
        return 1.0 - self.failures / self.requests if self.requests else math.nan

    def quantile(self, q: float) -> float:
        """Nearest rank, in seconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    @property
    def attempts_per_request(self) -> float:
        return self.attempts / self.requests if self.requests else math.nan

    def back_after(self) -> float | None:
        """Seconds from the recovery to the recovered replica's first window with its share."""
        if self.recovered_at is None:
            return None
        healthy, recovered = self.arrivals[0] or [], self.arrivals[2] or []
        end = max(healthy + recovered, default=self.recovered_at)
        t = self.recovered_at
        while t + SHARE_WINDOW <= end:
            mine = _count(recovered, t, t + SHARE_WINDOW)
            theirs = _count(healthy, t, t + SHARE_WINDOW)
            if theirs and mine >= SHARE_OF_HEALTHY * theirs:
                return t - self.recovered_at
            t += 0.05
        return None

    def shares(self, step: float = 0.5) -> list[float]:
        """The recovered replica's share of all arrivals in each ``step`` from the start."""
        everyone = [t for a in self.arrivals if a for t in a]
        mine = self.arrivals[2] or []
        out: list[float] = []
        t = self.start
        end = self.start + self.seconds
        while t + step <= end + 1e-9:  # whole bins only
            total = _count(everyone, t, t + step)
            out.append(_count(mine, t, t + step) / total if total else 0.0)
            t += step
        return out


def _count(stamps: list[float], low: float, high: float) -> int:
    return sum(1 for s in stamps if low <= s < high)


async def _drive(client: Any, result: Result | None, requests: int, concurrency: int, until: float | None) -> None:
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < requests or (until is not None and time.monotonic() < until):
            issued += 1
            began = time.perf_counter()
            ok = True
            try:
                await client.call()
            except Exception:
                ok = False
            if result is not None:
                result.latencies.append(time.perf_counter() - began)
                result.failures += not ok

    async def workers() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())

    await asyncio.wait_for(workers(), RUN_CAP)


async def run(
    protocol: str, fleet: str, stack: str, procs: list[ReplicaProcess], dead_port: int, args: argparse.Namespace
) -> Result:
    roles = FLEETS[fleet]
    addresses = [
        f"127.0.0.1:{dead_port if role == 'refused' else procs[i].ports[protocol]}" for i, role in enumerate(roles)
    ]
    for process in procs:
        process.command(op="set")  # healthy for the warm-up
    result = Result(protocol, fleet, stack)
    client = make_client(protocol, stack, addresses)
    try:
        await _drive(client, None, args.warmup, args.concurrency, None)
        sent_before = client.attempts
        await asyncio.sleep(args.settle)
        now = time.monotonic()
        for i, role in enumerate(roles):
            if role != "refused":
                procs[i].command(op="set", **behaviour(role, now, args.fail_for, seed=1000 * i + 7))
        until = None
        if "recovering" in roles:
            result.recovered_at = now + args.fail_for
            until = result.recovered_at + args.watch
        result.start = time.monotonic()
        try:
            await _drive(client, result, args.requests, args.concurrency, until)
        except TimeoutError:
            result.cut = True
        result.seconds = time.monotonic() - result.start
        result.attempts = client.attempts - sent_before
    finally:
        await client.aclose()
    for i, role in enumerate(roles):
        result.arrivals.append(None if role == "refused" else procs[i].command(op="stats")[protocol])
    return result


# -- tables -------------------------------------------------------------------------------------


@dataclass
class Summary:
    """The rounds of one (protocol, fleet, stack): counts pooled, latency quantiles the median of the rounds'."""

    runs: list[Result]

    @property
    def first(self) -> Result:
        return self.runs[0]

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.runs)

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.runs)

    @property
    def success(self) -> float:
        return 1.0 - self.failures / self.requests if self.requests else math.nan

    def quantile(self, q: float) -> float:
        return statistics.median(r.quantile(q) for r in self.runs)

    @property
    def attempts_per_request(self) -> float:
        return sum(r.attempts for r in self.runs) / self.requests if self.requests else math.nan

    def arrivals(self) -> str:
        """Arrivals per replica, the mean of the rounds ("-": refused)."""
        cells = []
        for i, first in enumerate(self.first.arrivals):
            if first is None:
                cells.append("-")
            else:
                cells.append(str(round(statistics.mean(len(r.arrivals[i] or ()) for r in self.runs))))
        return " / ".join(cells)

    def back_after(self) -> float | None:
        """The median over rounds of the time back to share (``None``: not back in most rounds)."""
        times = [r.back_after() for r in self.runs]
        median = statistics.median(math.inf if t is None else t for t in times)
        return None if median == math.inf else median


def summarize(results: Sequence[Result]) -> list[Summary]:
    groups: dict[tuple[str, str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.protocol, r.fleet, r.stack), []).append(r)
    return [Summary(runs) for runs in groups.values()]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def table(summaries: Sequence[Summary], protocol: str, rounds: int) -> list[str]:
    title = {"grpc": "gRPC (grpc.aio)", "http": "HTTP (httpx.AsyncClient)"}[protocol]
    per_round = "  p99 per round" if rounds > 1 else ""
    lines = [
        title,
        f"{'fleet':<11} {'stack':<19} {'requests':>8} {'success':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'p99.9 ms':>8} {'attempts/req':>12}  {'arrivals r1 / r2 / r3':<22}{per_round}",
    ]
    for s in summaries:
        if s.first.protocol != protocol:
            continue
        cut = " (cut)" if any(r.cut for r in s.runs) else ""
        extra = "  " + " / ".join(_ms(r.quantile(0.99)) for r in s.runs) if rounds > 1 else ""
        lines.append(
            f"{s.first.fleet:<11} {s.first.stack:<19} {s.requests:>8} {s.success * 100:>7.2f}% {_ms(s.quantile(0.5)):>7} "
            f"{_ms(s.quantile(0.99)):>7} {_ms(s.quantile(0.999)):>8} {s.attempts_per_request:>12.3f}  "
            f"{s.arrivals():<22}{extra}{cut}"
        )
    return lines


def recovery_table(results: Sequence[Result]) -> list[str]:
    rows = [r for r in results if r.recovered_at is not None]
    if not rows:
        return []
    lines = [
        "recovering fleet: replica 3's share of all arrivals per 0.5 s from the start of the run "
        "(| marks the recovery)",
        f"{'protocol':<8} {'stack':<19} {'round':>5} {'back after':>10}  shares",
    ]
    rounds: dict[tuple[str, str], int] = {}
    for r in rows:
        n = rounds[r.protocol, r.stack] = rounds.get((r.protocol, r.stack), 0) + 1
        back = r.back_after()
        assert r.recovered_at is not None
        mark = round((r.recovered_at - r.start) / 0.5)
        shares = [f"{s:.2f}" for s in r.shares()]
        shares.insert(min(mark, len(shares)), "|")
        lines.append(
            f"{r.protocol:<8} {r.stack:<19} {n:>5} {'never' if back is None else f'{back:.2f} s':>10}  {' '.join(shares)}"
        )
    return lines


def _ratio(summary: Summary, reference: Summary) -> float:
    """The median over rounds of p99 / the reference's p99 in the same round (a busy minute
    of the machine moves both)."""
    pairs = zip(summary.runs, reference.runs, strict=False)
    return statistics.median(r.quantile(0.99) / b.quantile(0.99) for r, b in pairs)


def goals(summaries: Sequence[Summary]) -> list[str]:
    lines = ["goals for the resilience stack (issue 10, item 8; medians over rounds, counts pooled):"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    for protocol in PROTOCOLS:
        mine = [s for s in summaries if s.first.protocol == protocol and s.first.stack == "resilience"]
        if not mine:
            continue
        name = {"grpc": "gRPC", "http": "HTTP"}[protocol]
        success = ", ".join(f"{s.first.fleet} {s.success * 100:.2f}%" for s in mine)
        ok = all(s.failures == 0 for s in mine)
        lines.append(f"  {name}: 100% success on every fleet: {success}: {verdict(ok)}")
        bare = [
            s
            for s in summaries
            if s.first.protocol == protocol and s.first.stack == "bare" and s.first.fleet == "healthy"
        ]
        faulty = [s for s in mine if s.first.fleet != "healthy"]
        if bare and faulty:
            reference = bare[0]
            p99 = ", ".join(f"{s.first.fleet} {_ms(s.quantile(0.99))} ms ({_ratio(s, reference):.2f}x)" for s in faulty)
            ok = all(_ratio(s, reference) <= 2 for s in faulty)
            lines.append(
                f"  {name}: p99 under faults <= 2x bare healthy p99 ({_ms(reference.quantile(0.99))} ms; "
                f"ratios within a round): {p99}: {verdict(ok)}"
            )
        attempts = ", ".join(f"{s.first.fleet} {s.attempts_per_request:.3f}" for s in mine)
        ok = all(s.attempts_per_request <= 1.1 for s in mine)
        lines.append(f"  {name}: at most 1.1 attempts per request: {attempts}: {verdict(ok)}")
        for s in mine:
            if s.first.recovered_at is not None:
                back = s.back_after()
                figure = "never" if back is None else f"{back:.2f} s"
                ok = back is not None and back <= BACK_WITHIN
                lines.append(
                    f"  {name}: recovered replica back to its share within {BACK_WITHIN:g} s: {figure}: {verdict(ok)}"
                )
    return lines


def _versions() -> str:
    names = ("grpcio", "httpx", "httpcore", "tenacity", "pybreaker")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return f"Python {platform.python_version()}, " + ", ".join(found)


# -- main ---------------------------------------------------------------------------------------


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(f"--{what}: unknown {', '.join(bad) or '(none given)'}; allowed: {', '.join(allowed)}")
    return names


async def _main(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    with replicas() as (procs, dead_port):
        for n in range(1, args.rounds + 1):
            for protocol in args.protocols:
                for fleet in args.fleets:
                    for stack in args.stacks:
                        gc.collect()
                        result = await run(protocol, fleet, stack, procs, dead_port, args)
                        results.append(result)
                        print(
                            f"  round {n}: {protocol:<4} {fleet:<10} {stack:<19} "
                            f"{result.requests} requests in {result.seconds:.1f} s",
                            file=sys.stderr,
                            flush=True,
                        )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="measured requests per run (default 2000; 300 with --quick)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument(
        "--warmup", type=int, help="requests before each run, replicas healthy (default 200; 64 with --quick)"
    )
    parser.add_argument("--rounds", type=int, help="rounds of every run, interleaved (default 2; 1 with --quick)")
    parser.add_argument("--fleets", default=",".join(FLEETS), help=f"comma-separated, of {', '.join(FLEETS)}")
    parser.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated, of {', '.join(STACKS)}")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated, of grpc, http")
    parser.add_argument(
        "--fail-for", type=float, help="seconds the recovering replica fails (default 2; 0.5 with --quick)"
    )
    parser.add_argument(
        "--watch", type=float, help="seconds a recovering run goes on after the recovery (default 5; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="a small run for smoke testing; its numbers mean little")
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures to FILE")
    parser.add_argument(
        "--markdown", metavar="FILE", help="also write the tables as markdown to FILE, and the chart next to it"
    )
    parser.add_argument(
        "--chart",
        metavar="FILE",
        help="write the PNG chart here (default: the --markdown file with .png; needs matplotlib)",
    )
    args = parser.parse_args(argv)
    if args.markdown and not args.chart:
        args.chart = str(Path(args.markdown).with_suffix(".png"))
    args.fleets = _names(args.fleets, list(FLEETS), "fleets")
    args.stacks = _names(args.stacks, STACKS, "stacks")
    args.protocols = _names(args.protocols, PROTOCOLS, "protocols")
    quick = args.quick
    defaults = {
        "requests": (2000, 300),
        "warmup": (200, 64),
        "rounds": (2, 1),
        "fail_for": (2.0, 0.5),
        "watch": (5.0, 1.0),
    }
    for name, (normal, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else normal)
    args.settle = 0.05 if quick else SETTLE
    for name, low in (("requests", 1), ("concurrency", 1), ("rounds", 1), ("warmup", 0)):
        if getattr(args, name) < low:
            raise SystemExit(f"--{name} must be >= {low}, got {getattr(args, name)}")
    for name in ("fail_for", "watch"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")

    # Ctrl-C: stop the runs, then the replicas (the context manager), then exit 130.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"chaos benchmark: {_versions()}; {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs")
    print(
        f"{args.rounds} round(s); {args.requests} requests per run at concurrency {args.concurrency}, after "
        f"{args.warmup} warm-up requests; the recovering replica fails for {args.fail_for:g} s, its runs go on "
        f"{args.watch:g} s past that"
    )
    print("fleets (replicas 1 / 2 / 3): " + "; ".join(f"{f}: {' / '.join(FLEETS[f])}" for f in args.fleets))
    print(f"slow: {SLOW_SHARE:.0%} of calls wait {SLOW_DELAY * 1000:.0f} ms; errors: {ERROR_SHARE:.0%} of calls fail")
    print("resilience stack:\n  " + describe_ours().replace("\n", "\n  "))
    print(flush=True)
    try:
        results = asyncio.run(_main(args))
    except KeyboardInterrupt:
        print("interrupted: replicas stopped", file=sys.stderr)
        raise SystemExit(130) from None
    summaries = summarize(results)
    lines: list[str] = []
    for protocol in args.protocols:
        lines += table(summaries, protocol, args.rounds)
        lines.append("")
    recovery = recovery_table(results)
    if recovery:
        lines += [*recovery, ""]
    lines += goals(summaries)
    print("\n".join(lines))
    rows = [
        {
            "protocol": s.first.protocol,
            "fleet": s.first.fleet,
            "stack": s.first.stack,
            "requests": s.requests,
            "success": s.success,
            "p50": s.quantile(0.5),
            "p99": s.quantile(0.99),
            "attempts_per_request": s.attempts_per_request,
        }
        for s in summaries
    ]
    heading = f"chaos benchmark, {args.rounds} round(s) of {args.requests} requests at concurrency {args.concurrency}"
    if args.markdown:
        text = f"{heading}; {_versions()}\n\n{_chaos_chart.markdown(rows)}"
        blocks = [*recovery, "", *goals(summaries)] if recovery else goals(summaries)
        Path(args.markdown).write_text(text + "\n```text\n" + "\n".join(blocks) + "\n```\n")
        print(f"markdown: {args.markdown}")
    if args.chart:
        print(f"chart: {_chaos_chart.chart(rows, args.chart, title=heading)}")
    if args.json:
        figures = [
            {
                "protocol": r.protocol,
                "fleet": r.fleet,
                "stack": r.stack,
                "requests": r.requests,
                "success": r.success,
                "p50": r.quantile(0.5),
                "p99": r.quantile(0.99),
                "p999": r.quantile(0.999),
                "attempts_per_request": r.attempts_per_request,
                "arrivals": [None if a is None else len(a) for a in r.arrivals],
                "back_after": r.back_after(),
                "seconds": r.seconds,
                "cut": r.cut,
            }
            for r in results
        ]
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
