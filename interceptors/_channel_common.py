"""What the two discovery-aware channels share: per-endpoint callables and the release of a pick."""

from __future__ import annotations

import asyncio
from typing import Any

from resilience.balancing.pool import EndpointPool, EndpointState, Selection
from resilience.context import CallContext
from resilience.outcome import Outcome

from ._grpc_common import ResolvedMethod

__all__: list[str] = []


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def channels(pool: EndpointPool[Any]) -> list[Any]:
    """The sub-channels made so far."""
    return [s.resource for s in pool.states if s.resource is not None]


def release(selection: Selection[Any], outcome: Outcome, start: float, ctx: CallContext) -> None:
    now = ctx.clock.monotonic()
    selection.release(outcome, now - start, now, ctx)


class ChannelCallable:
    """What the multicallables of both channels share: the method, its settings, per-endpoint callables."""

    __slots__ = ("_des", "_inner", "_kind", "_method", "_pool", "_resolved", "_ser")

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

    def _on(self, state: EndpointState[Any]) -> Any:
        inner = self._inner.get(state)
        if inner is None:
            if len(self._inner) > 64:
                self._inner = {s: c for s, c in self._inner.items() if not s.closed}
            inner = self._inner[state] = getattr(state.resource, self._kind)(self._method, self._ser, self._des)
        return inner


