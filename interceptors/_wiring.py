"""What every adapter does with its ``discovery=`` and ``ejection=``, and with the picks of one call.

Shared by the httpx transports and both discovery-aware gRPC channels; no grpc or httpx here.

**The picks of one call.** A hedge runs on a fork of the call's context, made when it
starts: what the primary (or an earlier hedge) picks after that moment is not in the
fork's ``tried``, and what a hedge picks reaches the call's context only if that hedge
wins. A call that may be hedged therefore keeps a :class:`CallPicks`, shared by all its
attempts: each pick first adds every endpoint the call's attempts went to so far to the
attempt's ``tried``, so that a hedge never joins an attempt in flight, and a retry after
a hedged round avoids every endpoint of that round, whenever another endpoint is there.
"""

from __future__ import annotations

import threading
from typing import Any

from resilience.balancing.ejection import OutlierEjection, OutlierEjectionOptions
from resilience.balancing.pool import EndpointPool, Selection
from resilience.context import CallContext
from resilience.discovery.base import Discovery
from resilience.discovery.registry import discovery_from_uri
from resilience.pipeline import Pipeline
from resilience.policies.hedge import Hedge

__all__: list[str] = []

Ejection = OutlierEjection | OutlierEjectionOptions
"""What an adapter's ``ejection=`` takes: the ejection, or its options (for an ejection of its own)."""


def as_ejection(value: object) -> OutlierEjection | None:
    """``ejection=`` checked: an :class:`~resilience.OutlierEjection` (options are wrapped) or ``None``."""
    if value is None or isinstance(value, OutlierEjection):
        return value
    if isinstance(value, OutlierEjectionOptions):
        return OutlierEjection(options=value)
    raise TypeError(f"ejection must be an OutlierEjection, OutlierEjectionOptions or None, got {value!r}")


def as_discovery(value: object) -> tuple[Discovery, bool]:
    """``discovery=`` checked: the source, and whether it was made here from a URI (the
    adapter then owns it, and closes it with itself).

    Raises:
        TypeError: neither a Discovery nor a string.
        ValueError: a malformed URI or an unknown scheme (see ``discovery_from_uri``).
    """
    if isinstance(value, str):
        return discovery_from_uri(value), True
    if not isinstance(value, Discovery):
        raise TypeError(
            "discovery must implement the Discovery protocol or be a URI such as 'static://host:port,host:port' "
            f"or 'etcd://host:2379/prefix', got {value!r}"
        )
    return value, False


def hedges(pipeline: Pipeline | None) -> bool:
    """Whether ``pipeline`` may run attempts of one call at the same time."""
    return pipeline is not None and any(isinstance(p, Hedge) for p in pipeline.policies)


def may_race(ctx: CallContext) -> bool:
    """Whether the call of ``ctx``, under a pipeline that hedges, may be hedged."""
    return ctx.idempotent and ctx.hedgeable is not False


class CallPicks:
    """The endpoints the attempts of one call went to, in order (see the module's docstring)."""

    __slots__ = ("addresses", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.addresses: list[str] = []

    def pick(self, pool: EndpointPool[Any], ctx: CallContext) -> Selection[Any]:
        """``pool.pick(ctx)``, avoiding the endpoints of the call's other attempts.

        Under a lock of this call only, so that two of its attempts picking at once (a
        primary on one thread, a hedge on another) see each other's choice. ``pool.pick``
        never waits, which keeps this fine under asyncio too.
        """
        with self.lock:
            seen = self.addresses
            if seen:
                tried = ctx.tried
                if tried is None:
                    ctx.tried = list(seen)
                else:
                    tried.extend([a for a in seen if a not in tried])
            selection = pool.pick(ctx)
            if selection.address not in seen:
                seen.append(selection.address)
        return selection


def pick(pool: EndpointPool[Any], ctx: CallContext, picks: CallPicks | None) -> Selection[Any]:
    """The endpoint of one attempt: through ``picks`` when the call may be hedged."""
    if picks is None:
        return pool.pick(ctx)
    return picks.pick(pool, ctx)
