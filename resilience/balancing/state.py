"""What the pool keeps per endpoint, and the handles it gives out: a pick, a hold."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..context import CallContext
from ..discovery.base import Endpoint
from ..outcome import Outcome
from ..permit import Gate, Permit

if TYPE_CHECKING:
    from .pool import EndpointPool

__all__ = ["EndpointState", "Selection"]

R = TypeVar("R")


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
        failing: its last attempt that counted (success or failure) failed.
        ejected: outlier ejection keeps it out of picks for now.
        outlier: what outlier ejection counts for it (``None`` until its first attempt).
        resource: the adapter's per-endpoint object, made on first use.
        loop: the asyncio loop the resource was made in, if any.
    """

    __slots__ = (
        "__weakref__",
        "address",
        "closed",
        "ejected",
        "endpoint",
        "failing",
        "health",
        "held",
        "inflight",
        "loop",
        "outlier",
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
        self.failing = False
        self.ejected = False
        self.outlier: Any = None
        self.resource: R | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        flags = ", ejected" if self.ejected else ""
        return f"EndpointState({self.address}, inflight={self.inflight}, removed={self.removed}{flags})"


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
