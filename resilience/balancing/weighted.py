"""Weighted round robin, smooth: earliest deadline first over each endpoint's weight.

Endpoint ``i`` of weight ``w`` has its ``k``-th turn of a cycle due at ``(k + 0.5) / w``;
each pick takes the turn due first (ties in list order). Over a cycle of ``sum(weights)``
picks every endpoint gets exactly its weight in turns, spread out rather than in a run
(weights 5, 1, 1 give ``A A A B C A A``). Equal weights give plain round robin. A pick is
O(log n) (a heap); at the end of a cycle the turns start again in O(n), once per
``sum(weights)`` picks.

Turns skipped within a pick (an endpoint tried by the call, ejected, or rejected by its
health) stay due, so the endpoint gets them back later in the cycle.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..context import CallContext
from .base import Balancer, IdentityCache, Skip, check_ejection
from .state import EndpointState
from .zones import ZoneGroups, ZonePreference, zone_preference

if TYPE_CHECKING:
    from .ejection import OutlierEjection

__all__ = ["WeightedRoundRobin"]

_DRAWS = 8  # turns skipped before a pick looks over the whole list


class _Schedule:
    """The turns of one endpoint list."""

    __slots__ = ("counts", "heap", "lock", "states", "weights")

    def __init__(self, states: tuple[EndpointState[Any], ...]) -> None:
        self.states = states
        self.weights = [s.endpoint.weight for s in states]
        self.counts = [0] * len(states)
        self.heap = [(0.5 / w, i) for i, w in enumerate(self.weights)]
        heapq.heapify(self.heap)
        self.lock = threading.Lock()

    def fresh(self) -> bool:
        """Whether the weights are still those of the endpoints (a list given twice, not a tuple)."""
        return self.weights == [s.endpoint.weight for s in self.states]

    def _restart(self) -> None:
        """Every endpoint had its turns of the cycle: the next one starts."""
        counts, weights = self.counts, self.weights
        for i, w in enumerate(weights):
            counts[i] -= w
        self.heap = [((c + 0.5) / w, i) for i, (c, w) in enumerate(zip(counts, weights, strict=True))]
        heapq.heapify(self.heap)

    def _take_top(self) -> EndpointState[Any]:
        i = self.heap[0][1]
        self.counts[i] += 1
        heapq.heapreplace(self.heap, ((self.counts[i] + 0.5) / self.weights[i], i))
        return self.states[i]

    def next(self, skip: Skip | None) -> EndpointState[Any] | None:
        with self.lock:
            if not self.states:
                return None
            if self.heap[0][0] > 1.0:
                self._restart()
            if skip is None:
                return self._take_top()
            heap, states = self.heap, self.states
            skipped = []
            try:
                for _ in range(min(len(heap), _DRAWS)):
                    if not skip(states[heap[0][1]]):
                        return self._take_top()
                    skipped.append(heapq.heappop(heap))
            finally:
                for entry in skipped:
                    heapq.heappush(heap, entry)
            return self._scan(skip)

    def _scan(self, skip: Skip) -> EndpointState[Any] | None:
        """The endpoint ``skip`` allows whose turn is due first, by a look over the list."""
        counts, weights = self.counts, self.weights
        best: tuple[float, int] | None = None
        for i, state in enumerate(self.states):
            if not skip(state):
                due = ((counts[i] + 0.5) / weights[i], i)
                if best is None or due < best:
                    best = due
        if best is None:
            return None
        i = best[1]
        counts[i] += 1
        self.heap = [((c + 0.5) / w, j) for j, (c, w) in enumerate(zip(counts, weights, strict=True))]
        heapq.heapify(self.heap)
        return self.states[i]


class WeightedRoundRobin(Balancer):
    """Round robin by ``Endpoint.weight``, smooth (see :mod:`resilience.balancing.weighted`).

    Args:
        zone: prefer the endpoints of this zone while it is healthy enough: a
            :class:`~resilience.ZonePreference` or a zone name (default none; see
            :mod:`resilience.balancing.zones`).
        ejection: outlier ejection for the pools it serves (default none).
    """

    def __init__(self, *, zone: ZonePreference | str | None = None, ejection: OutlierEjection | None = None) -> None:
        self.zone = zone_preference(zone)
        self.ejection = check_ejection(ejection)
        self._zones = ZoneGroups(self.zone) if self.zone is not None else None
        self._schedules: IdentityCache[_Schedule] = IdentityCache(_Schedule, _Schedule.fresh)

    def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
        chosen = self.select(candidates, None, ctx, now)
        assert chosen is not None
        return chosen

    def select(
        self, states: Sequence[EndpointState[Any]], skip: Skip | None, ctx: CallContext, now: float
    ) -> EndpointState[Any] | None:
        group = states if self._zones is None else self._zones.candidates(states, now)
        chosen = self._schedules.get(group).next(skip)
        if chosen is None and group is not states:
            chosen = self._schedules.get(states).next(skip)
        return chosen

    def __repr__(self) -> str:
        return f"WeightedRoundRobin(zone={self.zone!r})"
