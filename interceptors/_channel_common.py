"""What the two discovery-aware channels share: their pool, per-endpoint callables, the release of a pick."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from resilience.balancing.base import Balancer
from resilience.balancing.pool import EndpointPool, EndpointState, HealthFactory, Selection
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.outcome import Outcome

from ._grpc_common import ResolvedMethod
from ._wiring import CallPicks, as_discovery, as_ejection, hedges, may_race

__all__: list[str] = []


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def open_pool(
    service: str,
    discovery: Discovery | str,
    balancer: Balancer | None,
    *,
    ejection: object,
    health: HealthFactory | None,
    make: Callable[[Endpoint], Any],
    close: Callable[[EndpointState[Any]], None],
    drain_timeout: float,
    schedule: Callable[[float, Callable[[], None]], Any],
) -> tuple[EndpointPool[Any], Discovery | None]:
    """A channel's endpoint pool, and the discovery made here from a URI (closed with the channel)."""
    checked = as_ejection(ejection)
    source, owned = as_discovery(discovery)
    try:
        pool: EndpointPool[Any] = EndpointPool(
            service,
            source,
            balancer,
            health=health,
            make=make,
            close=close,
            drain_timeout=drain_timeout,
            schedule=schedule,
            ejection=checked,
        )
    except BaseException:
        if owned:
            source.close()
        raise
    return pool, source if owned else None


def channels(pool: EndpointPool[Any]) -> list[Any]:
    """The sub-channels made so far."""
    return [s.resource for s in pool.states if s.resource is not None]


def release(selection: Selection[Any], outcome: Outcome, start: float, ctx: CallContext) -> None:
    now = ctx.clock.monotonic()
    selection.release(outcome, now - start, now, ctx)


class ChannelCallable:
    """What the multicallables of both channels share: the method, its settings, per-endpoint callables."""

    __slots__ = ("_des", "_hedged", "_inner", "_kind", "_method", "_pool", "_resolved", "_ser")

    def __init__(
        self, pool: EndpointPool[Any], kind: str, method: str, ser: Any, des: Any, resolved: ResolvedMethod
    ) -> None:
        self._pool = pool
        self._kind = kind
        self._method = method
        self._ser = ser
        self._des = des
        self._resolved = resolved
        self._inner: dict[EndpointState[Any], Any] = {}
        self._hedged = hedges(resolved.pipeline)

    def _picks(self, ctx: CallContext) -> CallPicks | None:
        """What the attempts of a call that may be hedged share (see :mod:`interceptors._wiring`)."""
        return CallPicks() if self._hedged and may_race(ctx) else None

    def _on(self, state: EndpointState[Any]) -> Any:
        inner = self._inner.get(state)
        if inner is None:
            if len(self._inner) > 64:
                self._inner = {s: c for s, c in self._inner.items() if not s.closed}
            inner = self._inner[state] = getattr(state.resource, self._kind)(self._method, self._ser, self._des)
        return inner
