"""The balancer interface and round robin."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from ..context import CallContext
from ..discovery.base import Endpoint
from ..errors import RejectedError
from ..outcome import Outcome

__all__ = ["Balancer", "NoEndpointError", "RoundRobin"]


class NoEndpointError(RejectedError):
    """No endpoint is known for the service (or every one is ejected)."""


class Balancer:
    """Picks the endpoint of each attempt; learns from how attempts ended.

    :meth:`pick` should avoid the endpoints in ``ctx.tried`` (the ones this call already
    used) when another is available, so that a retry or a hedge goes elsewhere. Adapters
    call :meth:`release` when the attempt ends, with its outcome and duration, so that
    load- and latency-aware balancers can keep score.
    """

    def pick(self, endpoints: Sequence[Endpoint], ctx: CallContext) -> Endpoint:
        raise NotImplementedError

    def release(self, endpoint: Endpoint, outcome: Outcome, duration: float) -> None:
        """An attempt sent to ``endpoint`` ended (default: nothing to learn)."""


def untried(endpoints: Sequence[Endpoint], ctx: CallContext) -> Sequence[Endpoint]:
    """The endpoints this call has not tried yet, or all of them when it tried every one."""
    tried = ctx.tried
    if not tried:
        return endpoints
    fresh = [e for e in endpoints if e.address not in tried]
    return fresh or endpoints


class RoundRobin(Balancer):
    """Each endpoint in turn, skipping those this call already tried."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, endpoints: Sequence[Endpoint], ctx: CallContext) -> Endpoint:
        candidates = untried(endpoints, ctx)
        if not candidates:
            raise NoEndpointError(f"no endpoint known for service {ctx.service!r}", context=ctx)
        return candidates[next(self._counter) % len(candidates)]

    def __repr__(self) -> str:
        return "RoundRobin()"
