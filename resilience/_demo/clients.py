"""The demo's two clients per protocol, and what the resilient ones report through listeners.

- ``bare``: what one writes without this library. HTTP: one ``httpx.Client``, the replicas'
  URLs taken in turn; gRPC: one channel over the three addresses with gRPC's own
  ``round_robin`` policy. A 2 s timeout per call, nothing else.
- ``resilient``: ``ResilientTransport`` / ``ResilientChannel`` over the discovery, P2C
  Peak-EWMA with outlier ejection, a breaker per endpoint, and
  ``Timeout(2) -> Retry(3, budget) -> Hedge(50 ms) -> Timeout(1)``.

:class:`Collector` is a :class:`~resilience.CallListener` of the resilient pipelines and of
the per-endpoint breakers: it counts attempts, retries and hedges and keeps a short log of
what the policies decided.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import httpx

from interceptors.grpc import MethodPolicy
from interceptors.grpc_channel import ResilientChannel
from interceptors.httpx import ResilientTransport

from ..balancing import OutlierEjection, PeakEwma
from ..discovery import Discovery, Endpoint
from ..events import (
    AttemptEnded,
    AttemptStarted,
    CallListener,
    EndpointEjected,
    EndpointReturned,
    Event,
    Listener,
    RetryGaveUp,
    RetryScheduled,
)
from ..pipeline import Pipeline
from ..policies import (
    CircuitBreaker,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
    ExponentialJitter,
    Hedge,
    HedgeStarted,
    HedgeWon,
    Retry,
    Timeout,
)
from .fleet import CLIENT_HEADER, GRPC_METHOD, GRPC_SERVICE
from .stats import Stats

__all__ = ["GRPC_SERVICE_NAME", "HTTP_SERVICE", "Client", "Collector", "make_clients"]

HTTP_SERVICE = "demo-http"
GRPC_SERVICE_NAME = "demo-grpc"
TOTAL = 2.0  # seconds a call may take
ATTEMPT = 1.0  # seconds an attempt of the resilient client may take
HEDGE_DELAY = 0.05


def _short(error: BaseException | None) -> str:
    if error is None:
        return "a failed result"
    code = getattr(error, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:
            pass
    return type(error).__name__


@dataclass
class Collector(CallListener):
    """Counts what the resilient clients' policies did, per protocol (the pipeline's service).

    ``log`` keeps the last ``log_size`` lines (seconds since ``start``, protocol, text);
    ``on_line`` gets the lines worth printing at once (ejections, breaker transitions).
    """

    start: float = field(default_factory=time.monotonic)
    log_size: int = 12
    on_line: Callable[[str], None] | None = None
    attempts: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    hedges: Counter[str] = field(default_factory=Counter)
    hedges_won: Counter[str] = field(default_factory=Counter)
    gave_up: Counter[str] = field(default_factory=Counter)
    breaker_rejections: Counter[str] = field(default_factory=Counter)
    ejections: Counter[str] = field(default_factory=Counter)
    breakers: dict[str, CircuitState] = field(default_factory=dict)  # address -> state
    ejected: set[str] = field(default_factory=set)
    stats: dict[str, Stats] = field(default_factory=dict)  # protocol -> the resilient client's
    log: deque[str] = field(default_factory=deque)
    # A call's service: the discovery's name over HTTP, the gRPC service's over gRPC.
    protocols: dict[str, str] = field(
        default_factory=lambda: {HTTP_SERVICE: "http", GRPC_SERVICE_NAME: "grpc", GRPC_SERVICE: "grpc"}
    )
    addresses: dict[str, str] = field(default_factory=dict)  # a breaker's endpoint -> its protocol
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        super().__init__()

    def _protocol(self, event: Event) -> str:
        ctx = event.context
        if ctx is not None:
            return self.protocols.get(ctx.service, ctx.service)
        return self.addresses.get(event.policy.removeprefix("breaker "), "?")

    def _bump(self, counter: Counter[str], protocol: str) -> None:
        with self.lock:  # listeners run on many threads at once
            counter[protocol] += 1

    def note(self, protocol: str, text: str, loud: bool = False) -> None:
        line = f"{time.monotonic() - self.start:5.1f}s {protocol:>4} {text}"
        with self.lock:
            self.log.append(line)
            while len(self.log) > self.log_size:
                self.log.popleft()
        if loud and self.on_line is not None:
            self.on_line(line)

    def __call__(self, event: Event) -> None:
        protocol = self._protocol(event)
        if isinstance(event, AttemptStarted):
            self._bump(self.attempts, protocol)
            stats = self.stats.get(protocol)
            if stats is not None:
                stats.attempted()
        elif isinstance(event, AttemptEnded):
            return
        elif isinstance(event, RetryScheduled):
            self._bump(self.retries, protocol)
            self.note(
                protocol, f"retry: attempt {event.attempt} {_short(event.error)}, again in {event.delay * 1000:.0f} ms"
            )
        elif isinstance(event, HedgeStarted):
            self._bump(self.hedges, protocol)
            why = "an attempt failed" if event.delay < HEDGE_DELAY else f"no answer in {HEDGE_DELAY * 1000:.0f} ms"
            self.note(protocol, f"hedge #{event.hedge} sent {event.delay * 1000:.0f} ms into the call ({why})")
        elif isinstance(event, HedgeWon):
            self._bump(self.hedges_won, protocol)
        elif isinstance(event, RetryGaveUp):
            self._bump(self.gave_up, protocol)
            self.note(protocol, f"retry gave up after attempt {event.attempt}: {event.reason}")
        elif isinstance(event, CircuitStateChanged):
            address = event.policy.removeprefix("breaker ")
            self.breakers[address] = event.new
            self.note(protocol, f"breaker {address}: {event.old.value} -> {event.new.value} ({event.reason})", True)
        elif isinstance(event, CircuitRejected):
            self._bump(self.breaker_rejections, protocol)
        elif isinstance(event, EndpointEjected):
            self._bump(self.ejections, protocol)
            self.ejected.add(event.address)
            self.note(
                protocol,
                f"ejected {event.address} for {event.duration:.0f} s ({event.reason}, #{event.ejections})",
                True,
            )
        elif isinstance(event, EndpointReturned):
            self.ejected.discard(event.address)
            self.note(protocol, f"returned {event.address} after {event.ejected_for:.1f} s", True)


class Client(Protocol):
    """One call of the demo's traffic: returns on success, raises on failure."""

    def call(self) -> None: ...

    def close(self) -> None: ...


class _Failed(Exception):
    """An HTTP answer that is not a 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise _Failed(response.status_code)


class BareHttp:
    def __init__(self, addresses: list[str]) -> None:
        self.client = httpx.Client(timeout=TOTAL, headers={CLIENT_HEADER: "bare"})
        self._urls = itertools.cycle([f"http://{a}/echo" for a in addresses])
        self._lock = threading.Lock()

    def call(self) -> None:
        with self._lock:
            url = next(self._urls)
        _check(self.client.get(url))

    def close(self) -> None:
        self.client.close()


class BareGrpc:
    def __init__(self, addresses: list[str]) -> None:
        target = "ipv4:" + ",".join(addresses)
        self.channel = grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
        self.unary = self.channel.unary_unary(GRPC_METHOD, None, None)

    def call(self) -> None:
        self.unary(b"x", timeout=TOTAL, metadata=((CLIENT_HEADER, "bare"),))

    def close(self) -> None:
        self.channel.close()


def resilient_pipeline(listeners: list[Listener]) -> Pipeline:
    """The resilient clients' policies (one pipeline per client)."""
    return Pipeline(
        Timeout(TOTAL),
        Retry(3, backoff=ExponentialJitter(0.01, 2.0, 0.1)),
        Hedge(HEDGE_DELAY),
        Timeout(ATTEMPT),
        listeners=listeners,
    )


def _balancer() -> PeakEwma:
    # A first ejection of 2 s (the default 30 s is for fleets that recover slowly).
    return PeakEwma(ejection=OutlierEjection(consecutive_failures=5, base_ejection_time=2.0))


def _breakers(collector: Collector, protocol: str) -> Callable[[Endpoint], CircuitBreaker]:
    def outside_calls(event: Event) -> None:
        if event.context is None:  # a transition a call caused reaches the pipeline's listeners already
            collector(event)

    def make(endpoint: Endpoint) -> CircuitBreaker:
        collector.breakers.setdefault(endpoint.address, CircuitState.CLOSED)
        collector.addresses[endpoint.address] = protocol
        return CircuitBreaker(
            failure_rate=0.5,
            window_size=20,
            minimum_calls=10,
            break_duration=2.0,
            listeners=[outside_calls],
            name=f"breaker {endpoint.address}",
        )

    return make


class ResilientHttp:
    def __init__(self, discovery: Discovery, collector: Collector, listeners: list[Listener]) -> None:
        self.transport = ResilientTransport(
            pipeline=resilient_pipeline(listeners),
            discovery=discovery,
            balancer=_balancer(),
            endpoint_health=_breakers(collector, "http"),
        )
        self.client = httpx.Client(transport=self.transport, timeout=TOTAL, headers={CLIENT_HEADER: "resilient"})

    def call(self) -> None:
        _check(self.client.get(f"http://{HTTP_SERVICE}/echo"))

    def close(self) -> None:
        self.client.close()


class ResilientGrpc:
    def __init__(self, discovery: Discovery, collector: Collector, listeners: list[Listener]) -> None:
        self.channel = ResilientChannel(
            GRPC_SERVICE_NAME,
            discovery,
            _balancer(),
            MethodPolicy(resilient_pipeline(listeners), idempotent=True),
            endpoint_health=_breakers(collector, "grpc"),
        )
        self.unary = self.channel.unary_unary(GRPC_METHOD)

    def call(self) -> None:
        self.unary(b"x", timeout=TOTAL, metadata=((CLIENT_HEADER, "resilient"),))

    def close(self) -> None:
        self.channel.close()


def make_clients(
    addresses: dict[str, list[str]], discovery: Discovery, collector: Collector, extra: list[Listener]
) -> dict[tuple[str, str], Client]:
    """The four clients, keyed by (client, protocol)."""
    listeners: list[Listener] = [collector, *extra]
    made: dict[tuple[str, str], Client] = {}
    try:
        made["bare", "http"] = BareHttp(addresses["http"])
        made["resilient", "http"] = ResilientHttp(discovery, collector, listeners)
        made["bare", "grpc"] = BareGrpc(addresses["grpc"])
        made["resilient", "grpc"] = ResilientGrpc(discovery, collector, listeners)
    except BaseException:
        for client in made.values():
            client.close()
        raise
    return made


def describe_error(error: BaseException) -> str:
    """A short name for what a call raised (a status, a gRPC code, an exception class)."""
    if isinstance(error, _Failed):
        return f"HTTP {error.status}"
    return _short(error)
