"""The live demo's run: the fleet, discovery, the traffic, the view, the trace and the summary.

:func:`run` starts everything, drives the same bounded traffic through the bare and the
resilient client of each protocol for ``duration`` seconds while the flaky replicas die and
come back, then prints one call's trace and the summary. SIGINT and SIGTERM end the run
early: everything started is stopped, the summary so far is printed, and the exit status is
``128 + signal`` (130 for Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..discovery import Discovery, Endpoint, StaticDiscovery
from ..errors import ResilienceError
from .clients import GRPC_SERVICE_NAME, HTTP_SERVICE, Client, Collector, describe_error, make_clients
from .fleet import Behaviour, Fleet, Replica
from .stats import Snapshot, Stats
from .trace import TraceKeeper, build_tree, render

if TYPE_CHECKING:
    from ..discovery.registration import Registrator

__all__ = ["DemoOptions", "etcd_uri", "make_fleet", "run"]

PROTOCOLS = ("http", "grpc")
CLIENTS = ("bare", "resilient")
ETCD_PREFIX = "/resilience-demo"
SERVICES = {"http": HTTP_SERVICE, "grpc": GRPC_SERVICE_NAME}


@dataclass
class DemoOptions:
    """What ``resilience demo`` was asked for.

    Attributes:
        duration: seconds of traffic (> 0); the flaky replicas die at 30 % of it and return at 60 %.
        live: the live view (``False``: plain lines every ``interval`` seconds).
        rate: calls per second of each client and protocol (four of them), > 0.
        workers: threads per client and protocol, >= 1.
        seed: the seed of the replicas' faults.
        etcd: etcd endpoints (``ETCD_ENDPOINTS``), or ``None`` for static discovery.
        interval: seconds between plain lines.
    """

    duration: float = 30.0
    live: bool = True
    rate: float = 40.0
    workers: int = 4
    seed: int = 1
    etcd: str | None = None
    interval: float = 2.0
    out: TextIO = field(default_factory=lambda: sys.stdout)

    def __post_init__(self) -> None:
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration!r}")
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0 calls per second, got {self.rate!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers!r}")
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval!r}")
        if self.etcd is not None:
            etcd_uri(self.etcd)  # a malformed ETCD_ENDPOINTS fails here, naming the bad entry


def etcd_uri(endpoints: str) -> str:
    """The ``etcd://`` URI of ``ETCD_ENDPOINTS`` (``http://127.0.0.1:2379`` or ``127.0.0.1:2379``,
    comma-separated; ``https://`` gives ``etcds://``), under the demo's prefix.

    Raises:
        ValueError: no endpoint, or one that is not ``[http[s]://]host:port``, naming it.
    """
    hosts: list[str] = []
    secure: set[bool] = set()
    for raw in endpoints.split(","):
        item = raw.strip().rstrip("/")
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if not sep:
            scheme, rest = "http", item
        if scheme not in ("http", "https"):
            raise ValueError(f"ETCD_ENDPOINTS: {raw.strip()!r} must be host:port or http[s]://host:port")
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"ETCD_ENDPOINTS: {raw.strip()!r} must be host:port or http[s]://host:port")
        hosts.append(rest)
        secure.add(scheme == "https")
    if not hosts:
        raise ValueError(f"ETCD_ENDPOINTS names no endpoint: {endpoints!r}")
    if len(secure) > 1:
        raise ValueError(f"ETCD_ENDPOINTS mixes http and https: {endpoints!r}")
    return f"{'etcds' if secure.pop() else 'etcd'}://{','.join(hosts)}{ETCD_PREFIX}"


def make_fleet(seed: int = 1) -> Fleet:
    """Three replicas per protocol: healthy, a slow tail (15 % of answers take 0.3-0.6 s), and
    flaky (20 % fail at once)."""
    replicas: list[Replica] = []
    for i, protocol in enumerate(PROTOCOLS):
        base = seed * 10 + i * 3
        replicas += [
            Replica(f"{protocol}-a", protocol, "healthy", Behaviour(seed=base)),
            Replica(f"{protocol}-b", protocol, "slow tail", Behaviour(slow_share=0.15, seed=base + 1)),
            Replica(f"{protocol}-c", protocol, "flaky", Behaviour(error_share=0.2, seed=base + 2)),
        ]
    return Fleet(replicas)


class _Signals:
    """SIGINT and SIGTERM set ``stop`` (in the main thread; elsewhere nothing is installed)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        self.stop.set()
        self._restore()  # a second Ctrl-C does what it did before (stops the process at once)

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


class Traffic:
    """``workers`` threads per client, each paced so the client sends ``rate`` calls a second at most."""

    def __init__(
        self, clients: dict[tuple[str, str], Client], stats: dict[tuple[str, str], Stats], rate: float, workers: int
    ) -> None:
        self.clients = clients
        self.stats = stats
        self.rate = rate
        self.workers = workers
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _work(self, key: tuple[str, str], offset: float) -> None:
        client, stats = self.clients[key], self.stats[key]
        bare = key[0] == "bare"
        period = self.workers / self.rate
        due = time.monotonic() + offset
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            started = time.monotonic()
            due = max(due + period, started)
            try:
                client.call()
            except Exception as exc:
                ended = time.monotonic()
                stats.add(ended, False, ended - started, 1 if bare else 0, describe_error(exc))
            else:
                ended = time.monotonic()
                stats.add(ended, True, ended - started, 1 if bare else 0)

    def start(self) -> None:
        period = self.workers / self.rate
        for key in self.clients:
            for n in range(self.workers):
                thread = threading.Thread(
                    target=self._work, args=(key, period * n / self.workers), name=f"demo {key[0]} {key[1]} {n}"
                )
                thread.daemon = True
                self.threads.append(thread)
                thread.start()

    def join(self, timeout: float = 10.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


class Shares:
    """What each replica received from each client over the last few seconds (the servers' counts)."""

    def __init__(self, fleet: Fleet, span: float = 5.0) -> None:
        self.fleet = fleet
        self.span = span
        self.history: list[tuple[float, dict[str, Counter[str]]]] = []

    def _counts(self) -> dict[str, Counter[str]]:
        return {r.name: Counter(r.arrivals) for r in self.fleet.replicas}

    def tick(self, now: float) -> None:
        self.history.append((now, self._counts()))
        while len(self.history) > 2 and self.history[1][0] < now - self.span:
            self.history.pop(0)

    def share(self, protocol: str, client: str, recent: bool = True) -> dict[str, float]:
        now = self._counts()
        then = self.history[0][1] if recent and self.history else {}
        names = [r.name for r in self.fleet.of(protocol)]
        counts = {n: now[n][client] - then.get(n, Counter())[client] for n in names}
        total = sum(counts.values())
        return {n: (c / total if total else 0.0) for n, c in counts.items()}


class Demo:
    """One run: built by :func:`run`."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        live = options.live
        self.console = Console(file=options.out, force_terminal=live or None, width=None if live else 140)
        self.stats = {(c, p): Stats() for c in CLIENTS for p in PROTOCOLS}
        self.collector = Collector(on_line=self._loud if not options.live else None)
        for p in PROTOCOLS:
            self.collector.stats[p] = self.stats["resilient", p]
        self.fleet = make_fleet(options.seed)
        self.shares = Shares(self.fleet)
        self.keeper = TraceKeeper()
        self.start = time.monotonic()
        self.phase = "all replicas up"
        self.registrators: dict[str, Registrator] = {}
        self.etcd: str | None = etcd_uri(options.etcd) if options.etcd else None
        self._print_lock = threading.Lock()

    # -- output ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        with self._print_lock:
            self.console.print(Text(text), highlight=False, soft_wrap=True)
            self.options.out.flush()

    def _loud(self, line: str) -> None:
        self.say(f"  event {line}")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def _line(self, now: float) -> list[str]:
        lines = [f"[{self.elapsed():5.1f}s] {self.phase}"]
        c = self.collector
        for p in PROTOCOLS:
            for client in CLIENTS:
                s = self.stats[client, p].recent(now)
                share = self.shares.share(p, client)
                spread = " ".join(f"{n.rsplit('-', 1)[1]} {v * 100:3.0f}%" for n, v in share.items())
                extra = ""
                if client == "resilient":
                    extra = f" | so far: retries {c.retries[p]} hedges {c.hedges[p]} ejections {c.ejections[p]}"
                lines.append(
                    f"  {p:>4} {client:<9} last 5 s: {s.calls:4d} calls {_pct(s.success):>6} ok "
                    f"p50 {_ms(s.p50):>9} p99 {_ms(s.p99):>9} | replicas {spread}{extra}"
                )
        return lines

    def view(self, now: float) -> Group:
        calls = Table(title=f"resilience demo  {self.elapsed():4.1f}s / {self.options.duration:.0f}s  —  {self.phase}")
        for column in (
            "protocol",
            "client",
            "calls",
            "success (5 s)",
            "p50",
            "p99",
            "success (all)",
            "replicas' share",
        ):
            calls.add_column(column, justify="right" if column not in ("protocol", "client") else "left")
        for p in PROTOCOLS:
            for client in CLIENTS:
                s = self.stats[client, p].recent(now)
                t = self.stats[client, p].total()
                share = self.shares.share(p, client)
                spread = "  ".join(f"{n.rsplit('-', 1)[1]} {v * 100:3.0f}%" for n, v in share.items())
                style = "green" if (s.success or 0) >= 0.999 else ("yellow" if (s.success or 0) >= 0.95 else "red")
                calls.add_row(
                    p, client, str(t.calls), Text(_pct(s.success), style=style), _ms(s.p50), _ms(s.p99),
                    _pct(t.success), spread,
                )  # fmt: skip
        replicas = Table(title="replicas")
        for column in ("replica", "role", "address", "state", "breaker (resilient)", "ejected"):
            replicas.add_column(column)
        c = self.collector
        for r in self.fleet.replicas:
            breaker = c.breakers.get(r.address)
            state = Text("up", style="green") if r.up else Text("DOWN (refusing)", style="bold red")
            b = Text(breaker.value if breaker else "-", style="red" if breaker and breaker.value != "closed" else "")
            replicas.add_row(
                r.name, r.role, r.address, state, b, Text("yes", style="red") if r.address in c.ejected else ""
            )
        counts = Table(title="resilient client's policies")
        for column in (
            "protocol",
            "attempts",
            "retries",
            "hedges",
            "hedges won",
            "retry gave up",
            "breaker skips",
            "ejections",
        ):
            counts.add_column(column, justify="right")
        for p in PROTOCOLS:
            counts.add_row(
                p, str(c.attempts[p]), str(c.retries[p]), str(c.hedges[p]), str(c.hedges_won[p]), str(c.gave_up[p]),
                str(c.breaker_rejections[p]), str(c.ejections[p]),
            )  # fmt: skip
        with c.lock:
            log = "\n".join(c.log) or "(nothing yet)"
        return Group(calls, replicas, counts, Panel(log, title="events (resilient clients)", height=c.log_size + 2))

    # -- the run --------------------------------------------------------------------------

    def _register(self, replica: Replica) -> None:
        from ..discovery.registration import Registrator

        assert self.etcd is not None
        reg = Registrator(self.etcd, SERVICES[replica.protocol], replica.address, ttl=5)
        reg.start()
        self.registrators[replica.name] = reg

    def _deregister(self, replica: Replica) -> None:
        reg = self.registrators.pop(replica.name, None)
        if reg is not None:
            reg.close()

    def _discovery(self, stack: ExitStack) -> Discovery:
        if self.etcd is None:
            return StaticDiscovery({SERVICES[p]: [Endpoint(r.address) for r in self.fleet.of(p)] for p in PROTOCOLS})
        from ..discovery.etcd import EtcdDiscovery

        for replica in self.fleet.replicas:
            self._register(replica)
        stack.callback(self._deregister_all)
        discovery = EtcdDiscovery(self.etcd)
        stack.callback(discovery.close)
        return discovery

    def _deregister_all(self) -> None:
        for name in list(self.registrators):
            self._deregister(self.fleet[name])

    def _kill(self, name: str) -> None:
        replica = self.fleet[name]
        if self.etcd is not None:
            self._deregister(replica)
        self.fleet.kill(name)
        gone = ", its etcd lease revoked" if self.etcd is not None else ""
        self.collector.note(replica.protocol, f"{name} died: {replica.address} refuses connections{gone}", True)

    def _revive(self, name: str) -> None:
        replica = self.fleet[name]
        self.fleet.revive(name)
        if self.etcd is not None:
            self._register(replica)
        again = ", registered again" if self.etcd is not None else ""
        self.collector.note(replica.protocol, f"{name} is back on {replica.address}{again}", True)

    def run(self) -> int:
        o = self.options
        stop = threading.Event()
        with _Signals(stop) as signals, ExitStack() as stack:
            self.fleet.start()
            stack.callback(self.fleet.stop)
            try:
                discovery = self._discovery(stack)
            except ResilienceError as exc:  # etcd did not answer, or refused
                self.say(f"resilience demo: etcd at {self.etcd}: {exc}")
                return 1
            self._header()
            provider, listener = self._telemetry()
            stack.callback(provider.shutdown)
            clients = make_clients(
                {p: [r.address for r in self.fleet.of(p)] for p in PROTOCOLS}, discovery, self.collector, [listener]
            )
            for client in clients.values():
                stack.callback(client.close)
            traffic = Traffic(clients, self.stats, o.rate, o.workers)
            stack.callback(traffic.join)
            self.start = self.collector.start = time.monotonic()
            traffic.start()
            self._drive(stop)
            traffic.join()
        # Everything is stopped here: servers, clients, registrations, the traffic's threads.
        self._report(interrupted=signals.received)
        if signals.received is not None:
            self.say(f"stopped by {signal.Signals(signals.received).name}: everything the demo started is stopped")
            return 128 + signals.received
        return 0

    def _header(self) -> None:
        o = self.options
        where = f"etcd {self.etcd} (the replicas register themselves)" if self.etcd else "static discovery"
        self.say(
            f"resilience demo: {o.duration:g} s, {o.rate:g} calls/s per client and protocol "
            f"({o.workers} workers each), {where}"
        )
        for r in self.fleet.replicas:
            reg = self.registrators.get(r.name)
            self.say(f"  replica {r.name:<7} {r.address:<16} {r.role}" + (f", registered as {reg.key}" if reg else ""))
        kill, back = 0.3 * o.duration, 0.6 * o.duration
        self.say(f"  the flaky replicas die at {kill:.1f} s and come back at {back:.1f} s")

    def _telemetry(self) -> tuple[Any, Any]:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        from ..telemetry import OpenTelemetryListener

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.keeper))
        return provider, OpenTelemetryListener(tracer_provider=provider)

    def _drive(self, stop: threading.Event) -> None:
        o = self.options
        kill_at, back_at = 0.3 * o.duration, 0.6 * o.duration
        flaky = [r.name for r in self.fleet.replicas if r.role == "flaky"]
        killed = revived = False
        next_line = o.interval
        with self._live() as live:
            while not stop.wait(0.25):
                t, now = self.elapsed(), time.monotonic()
                self.shares.tick(now)
                if not killed and t >= kill_at:
                    killed = True
                    for name in flaky:
                        self._kill(name)
                    self.phase = f"{' and '.join(flaky)} down"
                if killed and not revived and t >= back_at:
                    revived = True
                    for name in flaky:
                        self._revive(name)
                    self.phase = f"{' and '.join(flaky)} back"
                if live is not None:
                    live.update(self.view(now))
                elif t >= next_line:
                    next_line += o.interval
                    for line in self._line(now):
                        self.say(line)
                if t >= o.duration:
                    break

    @contextmanager
    def _live(self) -> Iterator[Live | None]:
        if not self.options.live:
            yield None
            return
        with Live(self.view(time.monotonic()), console=self.console, refresh_per_second=4, transient=False) as live:
            yield live

    def _report(self, interrupted: int | None) -> None:
        best = self.keeper.best()
        self.say("")
        if best is None:
            self.say("trace: no call retried or hedged (nothing to show)")
        else:
            tree = build_tree(best)
            self.say("one call's trace (the spans the OpenTelemetry listener made, as Jaeger shows them):")
            with self._print_lock:
                self.console.print(render(tree), highlight=False)
        self.say("")
        table = Table(title="summary" + (" (interrupted)" if interrupted is not None else ""))
        for column in ("protocol", "client", "calls", "success", "p50", "p99", "attempts per call"):
            table.add_column(column, justify="left" if column in ("protocol", "client") else "right")
        totals: dict[tuple[str, str], Snapshot] = {k: s.total() for k, s in self.stats.items()}
        for p in PROTOCOLS:
            for client in CLIENTS:
                t = totals[client, p]
                per = t.attempts_per_call
                table.add_row(
                    p,
                    client,
                    str(t.calls),
                    _pct(t.success),
                    _ms(t.p50),
                    _ms(t.p99),
                    "-" if per is None else f"{per:.2f}",
                )
        with self._print_lock:
            self.console.print(table)
        for p in PROTOCOLS:
            self.say(self._sentence(p, totals["bare", p], totals["resilient", p]))
        self.options.out.flush()

    def _sentence(self, protocol: str, bare: Snapshot, ours: Snapshot) -> str:
        c = self.collector
        errors = self.stats["bare", protocol].errors.most_common(3)
        why = ", ".join(f"{n} {e}" for e, n in errors)
        lost_bare, lost_ours = bare.calls - bare.ok, ours.calls - ours.ok
        names = {r.role: r.name for r in self.fleet.of(protocol)}
        share = self.shares.share(protocol, "resilient", recent=False)
        favourite = max(share, key=lambda n: share[n]) if share else None

        def n(count: int, word: str) -> str:
            return f"{count} {word}{'' if count == 1 else 's'}"

        text = f"{protocol}: the bare client lost {lost_bare} of {bare.calls} calls"
        text += f" ({why})" if why else ""
        text += f" and waited on {names.get('slow tail', '?')}'s slow tail (p99 {_ms(bare.p99)}); "
        text += f"the resilient one lost {lost_ours} of {ours.calls}"
        if favourite is not None:
            text += f", sent {share[favourite] * 100:.0f}% of its calls to {favourite} (Peak-EWMA)"
        text += (
            f", hid failures and the tail with {n(c.hedges[protocol], 'hedge')} ({c.hedges_won[protocol]} won) and "
            f"{n(c.retries[protocol], 'retry')}"
        ).replace("retrys", "retries")
        if c.hedges[protocol] and not c.retries[protocol]:
            text += " (no retry was needed: a failed attempt starts the hedge at once)"
        text += f", ejected a replica {c.ejections[protocol]} time{'' if c.ejections[protocol] == 1 else 's'}"
        per = ours.attempts_per_call
        text += f" (p99 {_ms(ours.p99)}, {per or 0:.2f} attempts per call)."
        return text


def run(options: DemoOptions) -> int:
    """Run the live demo; the exit status (0, or 128 + the signal that stopped it)."""
    return Demo(options).run()


def main_options(duration: float, live: bool | None, seed: int, rate: float) -> DemoOptions:
    """Options from the command line: ``live=None`` means live when stdout is a terminal."""
    if live is None:
        live = sys.stdout.isatty()
    return DemoOptions(
        duration=duration, live=live, seed=seed, rate=rate, etcd=os.environ.get("ETCD_ENDPOINTS") or None
    )
