"""Events that policies emit, and how listeners receive them.

A listener is any callable taking one :class:`Event`. Listeners are attached to a
:class:`~resilience.Pipeline`; when none is attached, policies build no event at all.
A listener that raises is logged and skipped: it never breaks a call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import CallContext

__all__ = [
    "BulkheadRejected",
    "EndpointEjected",
    "EndpointReturned",
    "Event",
    "FallbackUsed",
    "Listener",
    "RetryGaveUp",
    "RetryScheduled",
    "TimeoutExpired",
]

_log = logging.getLogger("resilience")


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events.

    Attributes:
        policy: the name of the policy that emitted the event.
        context: the call it happened in (``None`` for events outside a call).
    """

    policy: str
    context: CallContext | None


Listener = Callable[[Event], None]


def emit(listeners: Sequence[Listener], event: Event) -> None:
    """Deliver ``event`` to each listener; a listener's error is logged, never raised."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            _log.exception("resilience listener %r failed on %r", listener, type(event).__name__)


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """An attempt failed and another one follows after ``delay`` seconds."""

    attempt: int
    delay: float
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class RetryGaveUp(Event):
    """The retry policy stopped: ``reason`` says why (``"attempts"``, ``"budget"``, ...)."""

    attempt: int
    reason: str
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class TimeoutExpired(Event):
    """An attempt or a call ran past its time limit of ``timeout`` seconds."""

    timeout: float


@dataclass(frozen=True, slots=True)
class FallbackUsed(Event):
    """The fallback answered in place of the failed call."""

    error: BaseException | None


@dataclass(frozen=True, slots=True)
class BulkheadRejected(Event):
    """The bulkhead turned a call away (``reason``: ``"full"`` or ``"wait"``)."""

    reason: str
    active: int
    queued: int


@dataclass(frozen=True, slots=True)
class EndpointEjected(Event):
    """Outlier ejection took ``address`` of ``service`` out of the picks for ``duration`` seconds.

    ``reason``: ``"consecutive_failures"``, ``"success_rate"``, ``"failure_percentage"`` or
    ``"latency"``; ``ejections``: its ejections in a row, this one included.
    """

    service: str
    address: str
    reason: str
    ejections: int
    duration: float


@dataclass(frozen=True, slots=True)
class EndpointReturned(Event):
    """An ejected endpoint is back in the picks after ``ejected_for`` seconds."""

    service: str
    address: str
    ejected_for: float
