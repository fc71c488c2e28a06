"""Zone preference: the endpoints of the local zone first, while that zone is healthy enough.

**The rule.** With ``ZonePreference("eu-1")``, the *local* endpoints are those whose
:attr:`Endpoint.zone <resilience.Endpoint.zone>` is ``"eu-1"``. An endpoint is *healthy*
when it is not ejected (outlier ejection) and its last attempt that counted did not fail.
The local zone is *healthy enough* when at least ``min_healthy`` of its endpoints (a
share, rounded up, at least one) are healthy. While it is, a pick chooses among the
local endpoints only; otherwise among all. Within one pick, when every local endpoint is
ruled out (tried by the call, ejected, or rejected just now by its health gates), the
pick goes to the other zones at once. Without local endpoints, every endpoint is a
candidate.

**Cost.** The local list is built once per endpoint list (discovery change); the health
count is made again at most once per ``refresh`` seconds on the pick's clock, so a pick
stays O(1) and a verdict is at most ``refresh`` old.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import number, seconds
from ..options import Options
from .base import IdentityCache
from .state import EndpointState

__all__ = ["ZonePreference"]


@dataclass(frozen=True, slots=True)
class ZonePreference(Options):
    """Prefer the endpoints of one zone (see the module's docstring for the exact rule).

    Attributes:
        zone: the local zone, a non-empty string matched against ``Endpoint.zone``.
        min_healthy: the share of the local endpoints that must be healthy for the zone
            to be preferred, in (0, 1] (default 0.5).
        refresh: seconds between two counts of the zone's health, > 0 (default 1).

    Raises:
        TypeError, ValueError: an option has the wrong type or is out of range.
    """

    zone: str
    min_healthy: float = 0.5
    refresh: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.zone, str) or not self.zone:
            raise ValueError(f"zone must be a non-empty string, got {self.zone!r}")
        self.set("min_healthy", number("min_healthy", self.min_healthy, low=0.0, high=1.0, low_open=True))
        self.set("refresh", seconds("refresh", self.refresh))


def zone_preference(value: object) -> ZonePreference | None:
    """``zone=`` as a balancer takes it: a :class:`ZonePreference`, a zone name, or ``None``."""
    if value is None or isinstance(value, ZonePreference):
        return value
    if isinstance(value, str):
        return ZonePreference(value)
    raise TypeError(f"zone must be a ZonePreference, a zone name or None, got {value!r}")


class _Group:
    __slots__ = ("checked", "local", "needed", "states", "use_local", "zone")

    def __init__(self, states: tuple[EndpointState[Any], ...], zone: str, share: float) -> None:
        self.states = states
        self.zone = zone
        self.local = tuple(s for s in states if s.endpoint.zone == zone)
        self.needed = max(1, math.ceil(share * len(self.local) - 1e-9))
        self.use_local = bool(self.local)
        self.checked = -math.inf

    def fresh(self) -> bool:
        """Whether the local endpoints are still those of the zone (a list given twice, not a tuple)."""
        return self.local == tuple(s for s in self.states if s.endpoint.zone == self.zone)


class ZoneGroups:
    """The local endpoints of each endpoint list, and whether the zone is healthy enough now."""

    __slots__ = ("_cache", "preference")

    def __init__(self, preference: ZonePreference) -> None:
        self.preference = preference
        self._cache: IdentityCache[_Group] = IdentityCache(
            lambda states: _Group(states, preference.zone, preference.min_healthy), _Group.fresh
        )

    def candidates(self, states: Sequence[EndpointState[Any]], now: float) -> Sequence[EndpointState[Any]]:
        """The local endpoints while the zone is healthy enough, else ``states``."""
        group = self._cache.get(states)
        local = group.local
        if not local:
            return states
        if now - group.checked >= self.preference.refresh or now < group.checked:
            healthy = sum(1 for s in local if not (s.ejected or s.failing))
            group.use_local = healthy >= group.needed
            group.checked = now
        return local if group.use_local else states
