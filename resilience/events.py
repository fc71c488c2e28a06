"""Events that policies emit, and how listeners receive them.

A listener is any callable taking one :class:`Event`. Listeners are attached to a
:class:`~resilience.Pipeline`; when none is attached, policies build no event at all.
A listener that raises is logged and skipped: it never breaks a call. A
:class:`CallListener` also gets an event when each call and each attempt starts and ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import CallContext
    from .outcome import Outcome

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "BulkheadRejected",
    "CallEnded",
    "CallListener",
    "CallStarted",
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
"""Receives the events of a pipeline's policies (see :class:`CallListener` for more)."""


class CallListener:
    """A listener that also follows each call and each attempt.

    A plain listener gets the policies' events (a retry scheduled, a breaker opened...).
    One whose class sets ``follows_calls = True`` — this class, a subclass, or a function
    wrapped as ``CallListener(fn)`` — also gets :class:`CallStarted` and
    :class:`CallEnded` for every call of the pipelines it is given to, and
    :class:`AttemptStarted` and :class:`AttemptEnded` for every attempt sent. A pipeline
    with no such listener builds none of these events and runs its calls as before.

    Two optional methods are looked for once, when a pipeline is built with the listener:

    - ``active() -> bool``: asked at the start of each call; when every following
      listener of the pipeline says ``False``, the call runs as it would without them (no
      call or attempt event is built; the policies' events still come);
    - ``watch(pipeline)``: told of each pipeline built with it (to read its policies' state).

    Args:
        fn: the function that receives every event (default: none; subclasses override
            :meth:`__call__`).
    """

    __slots__ = ("_fn",)

    follows_calls: bool = True

    def __init__(self, fn: Listener | None = None) -> None:
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self._fn = fn

    def __call__(self, event: Event) -> None:
        if self._fn is not None:
            self._fn(event)

    def __repr__(self) -> str:
        return f"CallListener({self._fn!r})"


def follows_calls(listener: object) -> bool:
    """Whether ``listener`` wants the call and attempt events (see :class:`CallListener`)."""
    return getattr(listener, "follows_calls", False) is True


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


@dataclass(frozen=True, slots=True)
class CallStarted(Event):
    """A call entered a pipeline that has a :class:`CallListener` (``policy`` is ``"pipeline"``).

    ``policies``: the names of the pipeline's policies, outermost first.
    """

    policies: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CallEnded(Event):
    """The call of :class:`CallStarted` ended: what the caller got, after ``duration`` seconds.

    ``outcome`` is the classifier's verdict on what the caller got (a fallback's answer is
    a ``SUCCESS``); ``error`` what it raised, if anything. A call whose result is a stream
    (:class:`~resilience.outcome.Pending`) ends when the stream does.
    """

    outcome: Outcome
    duration: float
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class AttemptStarted(Event):
    """An attempt is about to be sent (``policy`` is ``"pipeline"``).

    One per send: the first attempt, each retry, each hedge (``hedge`` >= 1, on its own
    forked context). An attempt turned away by a gate before it was sent (an open breaker
    inside the retry) makes none: its rejection has its own event.

    Attributes:
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
        hedge: 0 for the primary, ``n`` for the ``n``-th hedge.
        endpoint: where the attempt goes, when that is known before it runs (an endpoint
            the adapter put in ``ctx.endpoint`` that this call has not tried yet);
            ``None`` when the attempt picks its endpoint itself (a balancing adapter: the
            pick is in :class:`AttemptEnded`).
    """

    attempt: int
    hedge: int
    endpoint: str | None


@dataclass(frozen=True, slots=True)
class AttemptEnded(Event):
    """The attempt of :class:`AttemptStarted` ended after ``duration`` seconds.

    Attributes:
        attempt, hedge: as in :class:`AttemptStarted`.
        endpoint: the endpoint it went to (``ctx.endpoint`` after it), or ``None``.
        outcome: what it means for the backend (``IGNORED`` for a hedge that lost and was
            cancelled, a local rejection, the caller's fault).
        error: what it raised, or ``None``.
        result: what it returned (``None`` when it raised), for listeners that read a
            status from it; a stream's result is the stream.
    """

    attempt: int
    hedge: int
    endpoint: str | None
    outcome: Outcome
    duration: float
    error: BaseException | None
    result: object
