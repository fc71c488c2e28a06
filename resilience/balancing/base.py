"""The balancer interface and round robin."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from ..context import CallContext
from ..errors import RejectedError
from ..outcome import Outcome

if TYPE_CHECKING:
    from .pool import EndpointState

__all__ = ["Balancer", "NoEndpointError", "RoundRobin"]


class NoEndpointError(RejectedError):
    """No endpoint is known for the service, or every one's health rejects."""


class _Addressed(Protocol):
    @property
    def address(self) -> str: ...


A = TypeVar("A", bound=_Addressed)


class Balancer:
    """Chooses the endpoint of each attempt among candidates; learns from how attempts ended.

    The :class:`~resilience.balancing.EndpointPool` does the bookkeeping: it passes only
    candidates this call has not tried (when there are any), skips a candidate whose
    health rejects and asks again without it, counts in flight from the pick to the
    release of its :class:`~resilience.balancing.Selection`, and calls :meth:`observe`
    once per attempt. A balancer only chooses, and keeps score in ``state.score``.
    Both methods run without the pool's lock; they must be thread-safe and cheap.
    """

    def pick(self, candidates: Sequence[EndpointState], ctx: CallContext, now: float) -> EndpointState:  # type: ignore[type-arg]
        """One of ``candidates`` (never empty) for the attempt of ``ctx`` at ``now``."""
        raise NotImplementedError

    def observe(self, state: EndpointState, outcome: Outcome, duration: float, now: float) -> None:  # type: ignore[type-arg]
        """An attempt sent to ``state`` ended with ``outcome`` after ``duration`` seconds, at ``now``."""


def untried(endpoints: Sequence[A], ctx: CallContext) -> Sequence[A]:
    """The endpoints this call has not tried yet, or all of them when it tried every one."""
    tried = ctx.tried
    if not tried:
        return endpoints
    fresh = [e for e in endpoints if e.address not in tried]
    return fresh or endpoints


class RoundRobin(Balancer):
    """Each candidate in turn."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[EndpointState], ctx: CallContext, now: float) -> EndpointState:  # type: ignore[type-arg]
        return candidates[next(self._counter) % len(candidates)]

    def __repr__(self) -> str:
        return "RoundRobin()"
