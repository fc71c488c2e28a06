"""The endpoint pool: one service's endpoints, their per-endpoint state, and picks with handles.

Both adapters (the httpx transports and the gRPC discovery channels) keep their endpoints
here. The pool follows a :class:`~resilience.discovery.Discovery` source, keeps an
:class:`EndpointState` per endpoint (calls in flight, the balancer's score, the
endpoint's health gates, the adapter's resource: a connection pool or a sub-channel), and
hands out picks as :class:`Selection` handles.

**In flight from pick to release.** :meth:`EndpointPool.pick` counts the attempt in flight
on the endpoint it chose; :meth:`Selection.release` — called once, with the outcome, the
duration and ``now`` — takes it back, tells the balancer and the health gates, and closes
the resource of an endpoint that discovery dropped once nothing uses it. A second release
of the same selection does nothing, so counts cannot go negative, and a pick that returns
has nothing between the count and the handle that could raise.

**Health belongs to balancing.** ``health`` builds the gates of each endpoint (for
instance a :class:`~resilience.CircuitBreaker` per replica): a pick skips an endpoint
whose gates reject and chooses again among the others, so one failing replica gets no
first attempts while the rest serve. When every endpoint rejects, the pick fails with
:class:`NoEndpointError` (its ``retry_after`` the soonest any would admit again).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from ..context import CallContext
from ..discovery.base import BaseDiscovery, Discovery, Endpoint
from ..outcome import Outcome
from ..permit import READY, Gate, Permit, Rejection
from .base import Balancer, NoEndpointError, RoundRobin

__all__ = ["EndpointPool", "EndpointState", "Selection"]

R = TypeVar("R")

HealthFactory = Callable[[Endpoint], "Gate | Iterable[Gate]"]
"""Builds the health gates of a new endpoint."""


class EndpointState(Generic[R]):
    """One endpoint as balancing sees it.

    Attributes:
        endpoint: the endpoint.
        address: its ``host:port``.
        inflight: attempts picked and not yet released.
        held: uses of the resource that outlive their attempt (an open response body).
        removed: discovery dropped it; it drains, then its resource is closed.
        health: its gates (empty without ``health``).
        score: free for the balancer (an EWMA, a weight's running total...).
        resource: the adapter's per-endpoint object, made on first use.
        loop: the asyncio loop the resource was made in, if any.
    """

    __slots__ = (
        "__weakref__",
        "address",
        "closed",
        "endpoint",
        "health",
        "held",
        "inflight",
        "loop",
        "removed",
        "resource",
        "score",
    )

    def __init__(self, endpoint: Endpoint, health: tuple[Gate, ...]) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self.inflight = 0
        self.held = 0
        self.removed = False
        self.closed = False
        self.health = health
        self.score: Any = None
        self.resource: R | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"EndpointState({self.address}, inflight={self.inflight}, removed={self.removed})"


class Selection(Permit, Generic[R]):
    """One pick: the endpoint of one attempt, held until :meth:`release`."""

    __slots__ = ("_health", "_pool", "released", "state")

    def __init__(self, pool: EndpointPool[R], state: EndpointState[R], health: tuple[Permit, ...]) -> None:
        self._pool = pool
        self.state = state
        self._health = health
        self.released = False

    @property
    def endpoint(self) -> Endpoint:
        return self.state.endpoint

    @property
    def address(self) -> str:
        return self.state.address

    @property
    def resource(self) -> R:
        """The adapter's object for this endpoint (made by the pool's ``make``)."""
        resource = self.state.resource
        assert resource is not None
        return resource

    def release(self, outcome: Outcome, duration: float, now: float, ctx: CallContext | None = None) -> bool:
        """The attempt ended; ``False`` when this selection was released already."""
        return self._pool._release(self, outcome, duration, now, ctx)

    def hold(self) -> Hold:
        """Keep the endpoint's resource open past the release (a response body still to read).

        Take it before :meth:`release`; close the hold once the resource is free.
        """
        return self._pool._hold(self.state)

    def __repr__(self) -> str:
        return f"Selection({self.state.address}, released={self.released})"


class Hold:
    """Keeps one endpoint's resource open; :meth:`close` once (later calls do nothing)."""

    __slots__ = ("_pool", "state")

    def __init__(self, pool: EndpointPool[Any], state: EndpointState[Any]) -> None:
        self._pool: EndpointPool[Any] | None = pool
        self.state = state

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._unhold(self.state)


def _no_resource(endpoint: Endpoint) -> Any:
    return None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class EndpointPool(Generic[R]):
    """The endpoints of one service, balanced (see the module's docstring).

    Args:
        service: the service name asked of ``discovery``.
        discovery: where the endpoints come from, followed live.
        balancer: chooses among the candidates of each pick (default :class:`RoundRobin`).
        health: builds each new endpoint's health gates (default: none).
        make: builds the adapter's resource of an endpoint on its first pick (default: none).
        close: closes a resource once its endpoint is gone and drained, or at :meth:`close`.
        drain_timeout: seconds a removed endpoint's attempts may still run before its
            resource is closed anyway (default 30).
        schedule: ``schedule(delay, fn)`` runs ``fn`` later, for the drain timeout
            (default: a daemon ``threading.Timer``).
    """

    def __init__(
        self,
        service: str,
        discovery: Discovery,
        balancer: Balancer | None = None,
        *,
        health: HealthFactory | None = None,
        make: Callable[[Endpoint], R] = _no_resource,
        close: Callable[[EndpointState[R]], None] | None = None,
        drain_timeout: float = 30.0,
        schedule: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        if balancer is not None and not isinstance(balancer, Balancer):
            raise TypeError(f"balancer must be a Balancer, got {balancer!r}")
        if health is not None and not callable(health):
            raise TypeError(f"health must be a callable(endpoint) -> gate(s), got {health!r}")
        self.service = service
        self.discovery = discovery
        self.balancer: Balancer = balancer if balancer is not None else RoundRobin()
        self._health = health
        self._make = make
        self._close = close
        self.drain_timeout = drain_timeout
        self._schedule = schedule if schedule is not None else _timer
        self._lock = threading.Lock()
        self._states: dict[str, EndpointState[R]] = {}
        self.states: tuple[EndpointState[R], ...] = ()
        self.draining: dict[int, EndpointState[R]] = {}
        self.closed = False
        self._unsubscribe = discovery.subscribe(service, self.update)
        if not isinstance(discovery, BaseDiscovery):
            # A BaseDiscovery delivers the current list on subscribe, in order with later
            # changes; other sources may not, so read it once.
            self.update(discovery.endpoints(service))

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints known now."""
        return tuple(s.endpoint for s in self.states)

    def inflight(self) -> dict[str, int]:
        """Attempts in flight per address, draining endpoints included."""
        with self._lock:
            counts = {s.address: s.inflight for s in self.draining.values()}
            counts.update((s.address, s.inflight) for s in self.states)
        return counts

    def _gates(self, endpoint: Endpoint) -> tuple[Gate, ...]:
        if self._health is None:
            return ()
        made = self._health(endpoint)
        gates = (made,) if isinstance(made, Gate) else tuple(made)
        for gate in gates:
            if not isinstance(gate, Gate):
                raise TypeError(f"health must build gates (acquire/release), got {gate!r}")
        return gates

    # -- discovery -----------------------------------------------------------------------

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """The discovery's new list: add, keep (with their state), and drain what is gone."""
        new = tuple(endpoints)
        fresh = {e.address: self._gates(e) for e in new if e.address not in self._states}
        idle: list[EndpointState[R]] = []
        draining: list[EndpointState[R]] = []
        with self._lock:
            if self.closed:
                return
            states: dict[str, EndpointState[R]] = {}
            for endpoint in new:
                state = self._states.get(endpoint.address)
                if state is None:
                    state = EndpointState(endpoint, fresh.get(endpoint.address) or self._gates(endpoint))
                else:
                    state.endpoint = endpoint  # zone, weight, metadata may change
                states[endpoint.address] = state
            for address, state in self._states.items():
                if address not in states:
                    state.removed = True
                    if state.inflight == 0 and state.held == 0:
                        state.closed = True
                        idle.append(state)
                    else:
                        self.draining[id(state)] = state
                        draining.append(state)
            self._states = states
            self.states = tuple(states.values())
        for state in idle:
            self._close_state(state)
        for state in draining:
            self._schedule(self.drain_timeout, lambda state=state: self._force_close(state))  # type: ignore[misc]

    def _close_state(self, state: EndpointState[R]) -> None:
        if state.resource is not None and self._close is not None:
            self._close(state)

    def _force_close(self, state: EndpointState[R]) -> None:
        with self._lock:
            if state.closed:
                return
            state.closed = True
            self.draining.pop(id(state), None)
        self._close_state(state)

    # -- picks ---------------------------------------------------------------------------

    def pick(self, ctx: CallContext, now: float | None = None) -> Selection[R]:
        """The endpoint of one attempt, counted in flight until the selection is released.

        Prefers endpoints ``ctx`` has not tried; skips those whose health rejects; records
        the choice in ``ctx.endpoint`` and ``ctx.tried``.

        Raises:
            NoEndpointError: no endpoint is known, or every one's health rejects.
            ValueError: the pool is closed.
        """
        if now is None:
            now = ctx.clock.monotonic()
        candidates: Sequence[EndpointState[R]] = self.states
        if not candidates:
            raise NoEndpointError(f"no endpoint known for service {self.service!r}", context=ctx)
        tried = ctx.tried
        if tried:
            fresh = [s for s in candidates if s.address not in tried]
            if fresh:
                candidates = fresh
        soonest: float | None = None
        excluded: list[EndpointState[R]] | None = None
        changes = 0
        while True:
            state = self.balancer.pick(candidates, ctx, now)
            permits = self._admit(state, ctx, now)
            if isinstance(permits, Rejection):
                retry_after = permits.retry_after
                if retry_after is not None and (soonest is None or retry_after < soonest):
                    soonest = retry_after
                if excluded is None:
                    excluded = []
                excluded.append(state)
                candidates = [s for s in candidates if s not in excluded]
                if not candidates and tried and len(excluded) < len(self.states):
                    candidates = [s for s in self.states if s not in excluded]  # tried ones, healthy
                if not candidates:
                    raise NoEndpointError(
                        f"every endpoint of service {self.service!r} is unhealthy "
                        f"({', '.join(s.address for s in excluded)})",
                        context=ctx,
                        retry_after=soonest,
                    )
                continue
            selection = self._enter(state, permits, ctx)
            if selection is not None:
                return selection
            changes += 1  # removed between the choice and the count: choose from the new list
            candidates = self.states
            if not candidates or changes > 3:
                raise NoEndpointError(f"the endpoints of service {self.service!r} kept changing", context=ctx)

    def _admit(self, state: EndpointState[R], ctx: CallContext, now: float) -> tuple[Permit, ...] | Rejection:
        gates = state.health
        if not gates:
            return ()
        held: list[Permit] = []
        for gate in gates:
            permit = gate.acquire(ctx, now)
            if permit.kind != READY:
                if isinstance(permit, Permit):  # a health gate may not make a call wait
                    gate.release(permit, Outcome.IGNORED, 0.0, now, ctx)
                for done, taken in zip(gates, held, strict=False):
                    done.release(taken, Outcome.IGNORED, 0.0, now, ctx)
                return permit if isinstance(permit, Rejection) else Rejection("busy")
            assert isinstance(permit, Permit)
            held.append(permit)
        return tuple(held)

    def _enter(self, state: EndpointState[R], health: tuple[Permit, ...], ctx: CallContext) -> Selection[R] | None:
        """Count the attempt on ``state``; ``None`` when it was removed meanwhile (pick again)."""
        address = state.address
        ctx.endpoint = address  # recorded at once: a hedge forked while the resource is made goes elsewhere
        if ctx.tried is None:
            ctx.tried = [address]
        elif address not in ctx.tried:
            ctx.tried.append(address)
        if state.resource is None and self._make is not _no_resource:
            made = self._make(state.endpoint)  # adapter code: never under the lock
            with self._lock:
                if state.resource is None and not state.removed:
                    state.resource = made
                    state.loop = _running_loop()
                    made = None  # type: ignore[assignment]
            if made is not None and self._close is not None:
                spare: EndpointState[R] = EndpointState(state.endpoint, ())
                spare.resource = made
                spare.loop = _running_loop()
                self._close(spare)
        with self._lock:
            closed, gone = self.closed, state.removed
            if not closed and not gone:
                state.inflight += 1
        if closed or gone:
            now = ctx.clock.monotonic()
            for gate, permit in zip(state.health, health, strict=False):
                gate.release(permit, Outcome.IGNORED, 0.0, now, ctx)
            if closed:
                raise ValueError(f"the endpoint pool of {self.service!r} is closed")
            return None
        return Selection(self, state, health)

    def _release(
        self, selection: Selection[R], outcome: Outcome, duration: float, now: float, ctx: CallContext | None
    ) -> bool:
        state = selection.state
        with self._lock:
            if selection.released:
                return False
            selection.released = True
            state.inflight -= 1
            close = state.removed and state.inflight == 0 and state.held == 0 and not state.closed
            if close:
                state.closed = True
                self.draining.pop(id(state), None)
        try:
            for gate, permit in zip(state.health, selection._health, strict=False):
                gate.release(permit, outcome, duration, now, ctx)
            self.balancer.observe(state, outcome, duration, now)
        finally:
            if close:
                self._close_state(state)
        return True

    def _hold(self, state: EndpointState[R]) -> Hold:
        with self._lock:
            state.held += 1
        return Hold(self, state)

    def _unhold(self, state: EndpointState[Any]) -> None:
        with self._lock:
            state.held -= 1
            close = state.removed and state.inflight == 0 and state.held == 0 and not state.closed
            if close:
                state.closed = True
                self.draining.pop(id(state), None)
        if close:
            self._close_state(state)

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> list[EndpointState[R]]:
        """Stop following discovery; the states whose resources the adapter must close now."""
        with self._lock:
            if self.closed:
                return []
            self.closed = True
            states = [*self._states.values(), *self.draining.values()]
            for state in states:
                state.closed = True
            self.draining.clear()
        self._unsubscribe()
        return [s for s in states if s.resource is not None]

    def __repr__(self) -> str:
        return f"EndpointPool({self.service!r}, {[s.address for s in self.states]})"


def _timer(delay: float, fn: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.start()
    return timer
