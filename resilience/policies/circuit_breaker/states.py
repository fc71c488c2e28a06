"""The circuit breaker's vocabulary: its states, events, metrics, permits and shared-state seam."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ...events import Event
from ...permit import Permit

if TYPE_CHECKING:
    from .machine import CircuitBreaker

__all__ = [
    "CircuitMetrics",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "SharedCircuitState",
]


class CircuitState(enum.Enum):
    """The states of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls pass; outcomes are counted."""
    OPEN = "open"
    """Calls are rejected until the break ends."""
    HALF_OPEN = "half_open"
    """A few probe calls pass; their outcomes decide between closing and opening again."""
    ISOLATED = "isolated"
    """Opened by hand (:meth:`CircuitBreaker.isolate`): every call is rejected until :meth:`~CircuitBreaker.reset`."""


@dataclass(frozen=True, slots=True)
class CircuitStateChanged(Event):
    """The breaker moved from ``old`` to ``new``.

    ``reason`` is one of ``"failure_threshold"``, ``"failure_rate"``, ``"slow_call_rate"``
    (closed to open), ``"break_elapsed"`` (open to half-open), ``"probe_failed"``,
    ``"probe_slow"``, ``"probes_succeeded"``, ``"half_open_timeout"`` (out of half-open), ``"isolate"``, ``"reset"``
    (by hand) and ``"remote"`` (applied from a :class:`SharedCircuitState`). ``context`` is
    the call that caused it, or ``None``.
    """

    old: CircuitState
    new: CircuitState
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitRejected(Event):
    """The breaker turned a call away in ``state``; ``retry_after`` is the rest of the break, when known."""

    state: CircuitState
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class CircuitMetrics:
    """A snapshot of a breaker (see :meth:`CircuitBreaker.metrics`).

    Attributes:
        state: the state now.
        calls: calls in the sliding window (0 in consecutive mode).
        failures: failed calls in the window.
        slow_calls: slow calls in the window.
        failure_rate: ``failures / calls`` (0.0 when empty).
        slow_call_rate: ``slow_calls / calls`` (0.0 when empty).
        consecutive_failures: failures in a row (consecutive mode only, else 0).
        probes_in_flight: half-open probes running now.
        retry_after: seconds until the break ends (0.0 unless open).
    """

    state: CircuitState
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    consecutive_failures: int
    probes_in_flight: int
    retry_after: float


class CircuitPermit(Permit):
    """What :meth:`CircuitBreaker.acquire` hands out; give it back to :meth:`~CircuitBreaker.release`.

    A permit belongs to one period of one state (one closed period, one half-open period):
    an outcome reported after that period ended counts for nothing.
    """

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe

    def __repr__(self) -> str:
        return f"CircuitPermit(probe={self.probe})"


@runtime_checkable
class SharedCircuitState(Protocol):
    """A backend that shares one breaker's transitions with other processes.

    :meth:`attach` is called once by the breaker's constructor. :meth:`notify` is called
    after every local transition, from whatever thread made it: it must return at once and
    never raise. The backend reads the state to publish with :meth:`CircuitBreaker.export_state`
    and applies others' decisions with :meth:`CircuitBreaker.apply_remote`.
    """

    def attach(self, breaker: CircuitBreaker) -> None: ...

    def notify(self) -> None: ...
