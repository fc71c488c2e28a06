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

**Outlier ejection.** With ``ejection`` (an :class:`~resilience.OutlierEjection`, or the
one the balancer carries), the pool keeps an :class:`~resilience.OutlierTracker` that
counts each release and ejects outliers (see :mod:`resilience.balancing.ejection`).
A pick prefers, in this order: an endpoint the call has not tried and that is not
ejected; one it tried that is not ejected; an ejected one (only when every other is
ruled out) — always among those whose health admits the attempt. Health gates and
ejection work side by side: a breaker per replica behaves as without ejection.
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
from .base import Balancer, NoEndpointError, RoundRobin, Skip, check_ejection
from .ejection import OutlierEjection, OutlierTracker
from .state import EndpointState, Hold, Selection

__all__ = ["EndpointPool", "EndpointState", "Selection"]

R = TypeVar("R")

HealthFactory = Callable[[Endpoint], "Gate | Iterable[Gate]"]
"""Builds the health gates of a new endpoint."""


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
        ejection: outlier ejection for this pool (default: the balancer's
            ``ejection``, if any).

    Attributes:
        outliers: the pool's :class:`~resilience.OutlierTracker` (``None`` without ejection).
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
        ejection: OutlierEjection | None = None,
    ) -> None:
        if balancer is not None and not isinstance(balancer, Balancer):
            raise TypeError(f"balancer must be a Balancer, got {balancer!r}")
        ejection = check_ejection(ejection)
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
        if ejection is None:
            ejection = check_ejection(getattr(self.balancer, "ejection", None))
        self.outliers: OutlierTracker | None = (
            ejection.tracker(service, lambda: self.states) if ejection is not None else None
        )
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

        Prefers endpoints ``ctx`` has not tried and that are not ejected; skips those whose
        health rejects; records the choice in ``ctx.endpoint`` and ``ctx.tried``.

        Raises:
            NoEndpointError: no endpoint is known, or every one's health rejects.
            ValueError: the pool is closed.
        """
        if now is None:
            now = ctx.clock.monotonic()
        states: Sequence[EndpointState[R]] = self.states
        if not states:
            raise NoEndpointError(f"no endpoint known for service {self.service!r}", context=ctx)
        outliers = self.outliers
        if outliers is not None and now >= outliers.due:
            outliers.tick(now, ctx)
        soonest: float | None = None
        excluded: list[EndpointState[R]] | None = None
        changes = 0
        while True:
            state = self._choose(states, ctx, now, excluded)
            if state is None:
                assert excluded
                raise NoEndpointError(
                    f"every endpoint of service {self.service!r} is unhealthy "
                    f"({', '.join(s.address for s in excluded)})",
                    context=ctx,
                    retry_after=soonest,
                )
            permits = self._admit(state, ctx, now)
            if isinstance(permits, Rejection):
                retry_after = permits.retry_after
                if retry_after is not None and (soonest is None or retry_after < soonest):
                    soonest = retry_after
                if excluded is None:
                    excluded = []
                excluded.append(state)
                continue
            selection = self._enter(state, permits, ctx)
            if selection is not None:
                return selection
            changes += 1  # removed between the choice and the count: choose from the new list
            states = self.states
            if not states or changes > 3:
                raise NoEndpointError(f"the endpoints of service {self.service!r} kept changing", context=ctx)

    def _choose(
        self,
        states: Sequence[EndpointState[R]],
        ctx: CallContext,
        now: float,
        excluded: list[EndpointState[R]] | None,
    ) -> EndpointState[R] | None:
        """The balancer's choice among the best tier of ``states`` (see the module's docstring)."""
        tried = ctx.tried
        outliers = self.outliers
        ejected = outliers is not None and outliers.any_ejected
        balancer = self.balancer
        if not tried and not ejected and not excluded:
            return balancer.select(states, None, ctx, now)  # the common case: no filter at all
        out = excluded or ()
        tiers: list[Skip] = []
        if tried:
            tiers.append(lambda s: s.ejected or s.address in tried or s in out)
        if ejected:
            tiers.append(lambda s: s.ejected or s in out)
        tiers.append(lambda s: s in out)
        for skip in tiers:
            state = balancer.select(states, skip, ctx, now)
            if state is not None:
                return state
        return None

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
            if outcome is not Outcome.IGNORED:
                state.failing = outcome is Outcome.FAILURE
            self.balancer.observe(state, outcome, duration, now)
            if self.outliers is not None:
                self.outliers.record(state, outcome, duration, now, ctx)
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
