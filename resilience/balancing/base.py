"""The balancer interface and round robin."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..context import CallContext
from ..errors import RejectedError
from ..outcome import Outcome

if TYPE_CHECKING:
    from .ejection import OutlierEjection
    from .state import EndpointState

__all__ = ["Balancer", "NoEndpointError", "RoundRobin"]

Skip = Callable[["EndpointState[Any]"], bool]
"""Says which endpoints a pick must not choose (tried by the call, ejected, rejected just now)."""


class NoEndpointError(RejectedError):
    """No endpoint is known for the service, or every one's health rejects."""


class _Addressed(Protocol):
    @property
    def address(self) -> str: ...


A = TypeVar("A", bound=_Addressed)
V = TypeVar("V")


class Balancer:
    """Chooses the endpoint of each attempt among candidates; learns from how attempts ended.

    The :class:`~resilience.balancing.EndpointPool` does the bookkeeping: it asks for
    an endpoint this call has not tried (when there are any) that is neither ejected
    nor rejected by its health, counts in flight from the pick to the release of its
    :class:`~resilience.balancing.Selection`, and calls :meth:`observe` once per
    attempt. A balancer only chooses, and keeps score in ``state.score``.
    Its methods run without the pool's lock; they must be thread-safe and cheap.

    A subclass implements :meth:`pick`; the pool calls :meth:`select`, whose default
    filters the endpoints and calls :meth:`pick` with what is left. A balancer whose
    pick must stay flat in the number of endpoints overrides :meth:`select` too.

    Attributes:
        ejection: outlier ejection for the pools this balancer serves (each pool keeps
            its own counts), used unless the pool is given its own; ``None`` by default.
    """

    ejection: OutlierEjection | None = None

    def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
        """One of ``candidates`` (never empty) for the attempt of ``ctx`` at ``now``."""
        raise NotImplementedError

    def select(
        self, states: Sequence[EndpointState[Any]], skip: Skip | None, ctx: CallContext, now: float
    ) -> EndpointState[Any] | None:
        """One of ``states`` that ``skip`` does not reject (any when ``skip`` is ``None``).

        ``None`` when ``skip`` rejects every one. ``states`` is the pool's whole list,
        the same object until discovery changes it.
        """
        if skip is None:
            return self.pick(states, ctx, now)
        candidates = [s for s in states if not skip(s)]
        return self.pick(candidates, ctx, now) if candidates else None

    def observe(self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float) -> None:
        """An attempt sent to ``state`` ended with ``outcome`` after ``duration`` seconds, at ``now``."""


def untried(endpoints: Sequence[A], ctx: CallContext) -> Sequence[A]:
    """The endpoints this call has not tried yet, or all of them when it tried every one."""
    tried = ctx.tried
    if not tried:
        return endpoints
    fresh = [e for e in endpoints if e.address not in tried]
    return fresh or endpoints


def check_ejection(ejection: object) -> OutlierEjection | None:
    """``ejection`` checked to be an :class:`~resilience.OutlierEjection` or ``None``."""
    from .ejection import OutlierEjection

    if ejection is not None and not isinstance(ejection, OutlierEjection):
        raise TypeError(f"ejection must be an OutlierEjection or None, got {ejection!r}")
    return ejection


class IdentityCache(Generic[V]):
    """What a balancer derives from an endpoint list, kept per list object (a few lists at most).

    The pool hands the same tuple until discovery changes it, and a new tuple after any
    change (weights and zones included), so a tuple is found by identity, in O(1). Another
    kind of sequence is compared item by item (O(n)) and its entry checked with ``fresh``.
    """

    __slots__ = ("_entries", "_fresh", "_lock", "_make", "size")

    def __init__(
        self,
        make: Callable[[tuple[EndpointState[Any], ...]], V],
        fresh: Callable[[V], bool] | None = None,
        size: int = 8,
    ) -> None:
        self._make = make
        self._fresh = fresh
        self.size = size
        self._entries: dict[int, tuple[tuple[EndpointState[Any], ...], V]] = {}
        self._lock = threading.Lock()

    def get(self, states: Sequence[EndpointState[Any]]) -> V:
        entry = self._entries.get(id(states))
        if entry is not None and entry[0] is states:
            return entry[1]
        key = states if isinstance(states, tuple) else tuple(states)
        with self._lock:
            if key is not states:
                for held, value in self._entries.values():
                    if held == key and (self._fresh is None or self._fresh(value)):
                        return value
            value = self._make(key)
            if len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[id(key)] = (key, value)  # the entry keeps the key alive: its id stays unique
        return value


class RoundRobin(Balancer):
    """Each candidate in turn (weights are not looked at: see :class:`~resilience.WeightedRoundRobin`).

    A first pick is O(1); a pick that must skip endpoints (a retry, an ejection) takes its
    turn among the others, which filters the list: O(n). :class:`~resilience.PeakEwma` and
    :class:`~resilience.WeightedRoundRobin` stay flat there too.

    Args:
        ejection: outlier ejection for the pools it serves (default none).
    """

    def __init__(self, *, ejection: OutlierEjection | None = None) -> None:
        self._counter = itertools.count()
        self.ejection = check_ejection(ejection)

    def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
        return candidates[next(self._counter) % len(candidates)]

    def __repr__(self) -> str:
        return "RoundRobin()"
