"""The permit protocol: one shape for every stateful policy.

Every policy that keeps state about calls — a breaker, a bulkhead, a limit, a bucket, a
budget, the health of one endpoint — answers the same two questions:

- **may this call go now?** ``acquire(ctx, now)`` returns a :class:`Permit`, or a
  :class:`Rejection` with a ``reason`` and, when known, a ``retry_after``;
- **how did it end?** ``release(permit, outcome, duration, now, ctx)``, called exactly once
  per permit, whatever happened to the call.

Policies hold no loop of their own and never sleep: what has to wait — a permit whose
token is due later (``kind == DELAYED``), a place in a queue (``kind == QUEUED``), a
rejection that is worth trying again later (``Rejection.max_wait > 0``) — is done by the
one sync executor (:mod:`resilience._sync_exec`) and the one async executor
(:mod:`resilience._async_exec`), which also guarantee the single release on every path
(success, failure, exception, cancellation, a raising classifier, an exception raised
into a waiting thread). Telemetry has one place to listen to: the executors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from .outcome import Outcome, error_outcome

if TYPE_CHECKING:
    from .context import CallContext
    from .errors import RejectedError
    from .policy import AsyncNext, SyncNext

__all__ = ["Gate", "Permit", "Rejection"]

READY = 0
"""The permit admits the call now."""
DELAYED = 1
"""The permit is reserved: the call may go ``permit.delay`` seconds from now."""
QUEUED = 2
"""The call waits in line (a :class:`Ticket`) until the policy grants it a place."""
REJECTED = -1


class Permit:
    """What ``acquire`` hands out; give it back to ``release`` exactly once.

    Policies subclass it (with ``__slots__``) to carry what their ``release`` needs. A
    permit may be shared by many calls when it carries nothing of its own (a closed
    breaker's).
    """

    __slots__ = ()

    kind: ClassVar[int] = READY
    delay: float = 0.0


class DelayedPermit(Permit):
    """A reservation: the call may go ``delay`` seconds after it was acquired."""

    __slots__ = ("delay", "key")

    kind: ClassVar[int] = DELAYED

    def __init__(self, delay: float, key: str | None = None) -> None:
        self.delay = delay
        self.key = key

    def __repr__(self) -> str:
        return f"DelayedPermit(delay={self.delay!r})"


class Ticket(Permit):
    """A place in a policy's queue; becomes a permit when the policy grants it.

    ``granted`` is only changed under the policy's lock. The executor waits on the ticket
    with :meth:`wait` (threads) or with an async waiter it attaches through
    :meth:`attach`; the policy calls :meth:`wake` after granting, outside its lock.
    """

    __slots__ = ("_lock", "_waker", "granted", "max_wait")

    kind: ClassVar[int] = QUEUED

    def __init__(self, lock: threading.Lock, max_wait: float) -> None:
        self._lock = lock
        self.granted = False
        self.max_wait = max_wait
        self._waker: Callable[[], object] | None = None

    def wake(self) -> None:
        """The policy granted the ticket: wake its waiter, if one is attached."""
        waker = self._waker
        if waker is not None:
            waker()

    def attach(self, waker: Callable[[], object]) -> bool:
        """Attach the waiter's wake-up; ``False`` when the ticket was granted already."""
        with self._lock:
            if self.granted:
                return False
            self._waker = waker
            return True

    def wait(self, timeout: float) -> None:
        """Block the calling thread until woken or ``timeout`` seconds passed (``inf``: no limit)."""
        gate = threading.Lock()
        gate.acquire()
        if not self.attach(gate.release):
            return
        gate.acquire(timeout=-1 if timeout == float("inf") else max(0.0, min(timeout, threading.TIMEOUT_MAX)))

    def __repr__(self) -> str:
        return f"Ticket(granted={self.granted})"


class Rejection:
    """Why ``acquire`` refused a call.

    Attributes:
        reason: the policy's word for it (``"open"``, ``"full"``, ``"limit"``, ...).
        retry_after: seconds until a call could be admitted, when known.
        max_wait: how long the executor may wait and ask again (``retry_after`` later);
            ``0.0`` (the default) means the rejection is final.
        detail: whatever the policy wants to put in its error (counts, a key).
    """

    __slots__ = ("detail", "max_wait", "reason", "retry_after")

    kind: ClassVar[int] = REJECTED

    def __init__(
        self, reason: str, retry_after: float | None = None, *, max_wait: float = 0.0, detail: Any = None
    ) -> None:
        self.reason = reason
        self.retry_after = retry_after
        self.max_wait = max_wait
        self.detail = detail

    def __repr__(self) -> str:
        return f"Rejection({self.reason!r}, retry_after={self.retry_after!r})"


@runtime_checkable
class Gate(Protocol):
    """A stateful policy seen by the executors (see the module's docstring).

    Besides ``acquire`` and ``release``:

    - ``rejected(ctx, rejection)`` builds the error the caller gets (a
      :class:`~resilience.RejectedError`) and emits the policy's event;
    - ``judge_error(ctx, exc)`` and ``judge_result(ctx, result)`` say what an outcome
      means for this policy (the classifier, refined by the policy's own options); when
      they raise, the permit is released as ``IGNORED`` and their error reaches the caller;
    - ``judges_results``: whether a returned value must be judged at all (when ``False``
      a return is a success without a look at it);
    - ``abandon(ticket)`` takes a ticket out of the queue when its wait ends without a
      grant (``True``), or says it was granted meanwhile (``False``: it holds a place and
      must be released);
    - ``waiting(ctx, rejection, delay)`` is told before the executor sleeps on a rejection
      that allows waiting (for an event);
    - ``clocked``: whether ``acquire`` and ``release`` need the time right now. When it
      is false the executor passes ``now=0.0`` and ``duration=0.0`` on the success path
      (a failure or an error always gets the real time); a gate whose need changes with
      its state (a breaker that opens) sets it as it goes, and reads the clock itself if
      it finds it needs the time after all;
    - ``quiet_success``: a successful call's release would change nothing (an unclocked
      gate that keeps no count of calls in flight), so the executor may skip it.
    """

    name: str
    judges_results: bool
    clocked: bool
    quiet_success: bool

    def acquire(self, ctx: CallContext, now: float) -> Permit | Rejection: ...

    def release(
        self, permit: Permit, outcome: Outcome, duration: float, now: float, ctx: CallContext | None
    ) -> None: ...

    def rejected(self, ctx: CallContext, rejection: Rejection) -> RejectedError: ...

    def judge_error(self, ctx: CallContext, exc: BaseException) -> Outcome: ...

    def judge_result(self, ctx: CallContext, result: object) -> Outcome: ...

    def abandon(self, ticket: Ticket) -> bool: ...

    def waiting(self, ctx: CallContext, rejection: Rejection, delay: float) -> None: ...


class GateMixin:
    """Defaults for the optional parts of :class:`Gate`; policies override what they need."""

    __slots__ = ()

    judges_results: bool = False
    clocked: bool = True
    quiet_success: bool = False

    def judge_error(self, ctx: CallContext, exc: BaseException) -> Outcome:
        return error_outcome(ctx, exc)

    def judge_result(self, ctx: CallContext, result: object) -> Outcome:
        classifier = ctx.classifier
        return classifier.result(result) if classifier.checks_results else Outcome.SUCCESS

    def abandon(self, ticket: Ticket) -> bool:
        return True

    def waiting(self, ctx: CallContext, rejection: Rejection, delay: float) -> None:
        return None

    # A gate in a pipeline: the shared executors run it. A pipeline runs consecutive gates
    # that keep these two methods in one frame (``gates_sync``/``gates_async``).

    def wrap(self, next: SyncNext) -> SyncNext:
        from ._sync_exec import gate_sync

        return gate_sync(self, next)  # type: ignore[arg-type]

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        from ._async_exec import gate_async

        return gate_async(self, next)  # type: ignore[arg-type]
