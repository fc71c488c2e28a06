"""What a call's result or error means for the backend.

Adapters know their protocol (an HTTP 503 is a failure, a 404 is the caller's fault,
a gRPC ``UNAVAILABLE`` is worth a retry); the core does not. A :class:`Classifier`
carries that knowledge into the policies through the call context.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import RejectedError

if TYPE_CHECKING:
    from .context import CallContext

__all__ = ["Classifier", "Outcome", "Pending", "error_outcome", "is_cancellation"]


class Outcome(enum.IntEnum):
    """How an attempt ended, from the backend's point of view."""

    SUCCESS = 0
    """The backend answered well."""
    FAILURE = 1
    """The backend failed or was too slow: counts against it."""
    IGNORED = 2
    """Neither: the caller's fault, a local rejection or a cancellation."""


class Classifier:
    """Classifies results and errors; adapters subclass it.

    The default treats any returned value as a success, any :class:`Exception` as a
    failure, and the library's own rejections (:class:`~resilience.RejectedError`) and
    cancellations as ignored. A failure is retryable unless a subclass says otherwise.
    """

    __slots__ = ()

    checks_results: bool = False
    """Whether :meth:`result` can call a returned value a failure. When ``False`` (the
    default), policies skip looking at results on the success path."""

    def error(self, exc: BaseException) -> Outcome:
        """The outcome of an attempt that raised ``exc``."""
        if isinstance(exc, RejectedError) or not isinstance(exc, Exception):
            return Outcome.IGNORED
        return Outcome.FAILURE

    def result(self, result: object) -> Outcome:
        """The outcome of an attempt that returned ``result``."""
        return Outcome.SUCCESS

    def unsent(self, exc: BaseException) -> bool:
        """Whether an attempt that raised ``exc`` surely sent nothing to the server (a refused
        connection, a wait for a pooled connection that ran out): retrying it is safe for any
        call, idempotent or not. The default knows no such error."""
        return False

    def retryable_error(self, exc: BaseException) -> bool:
        """Whether an attempt that raised ``exc`` may be tried again."""
        return self.error(exc) is Outcome.FAILURE

    def retryable_result(self, result: object) -> bool:
        """Whether an attempt that returned ``result`` should be tried again."""
        return self.result(result) is Outcome.FAILURE

    def discard(self, result: object) -> None:
        """Release a result that is thrown away (e.g. close a response before a retry)."""

    async def adiscard(self, result: object) -> None:
        """Async twin of :meth:`discard`."""
        self.discard(result)


DEFAULT_CLASSIFIER = Classifier()


# asyncio fires a timer up to its clock resolution before the time asked; a cancellation
# that close to the deadline is the deadline's.
_DEADLINE_SLACK = 1e-3


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is an asyncio or trio cancellation."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    return type(exc).__name__ == "Cancelled" and type(exc).__module__.startswith("trio")


def error_outcome(ctx: CallContext, exc: BaseException, now: float | None = None) -> Outcome:
    """The outcome of an attempt that raised ``exc``, for breakers, limits and balancers.

    The classifier decides, except for a cancellation that came when the call's deadline
    had passed: an attempt cut by an outer :class:`~resilience.Timeout` was too slow, which
    counts against the backend (``FAILURE``), where any other cancellation (a hedge that
    lost, a caller that gave up) is ``IGNORED``.
    """
    if is_cancellation(exc):
        deadline = ctx.deadline
        if deadline is not None:
            if now is None:
                now = ctx.clock.monotonic()
            if now + _DEADLINE_SLACK >= deadline:
                return Outcome.FAILURE
        return Outcome.IGNORED
    return ctx.classifier.error(exc)


EndCallback = Callable[[BaseException | None], None]


class Pending:
    """A result whose outcome is known only later: a response stream, judged at its end.

    An attempt that returns a ``Pending`` keeps the permits of the gates around it (a
    bulkhead slot, a breaker's verdict, a concurrency limit's sample) until :meth:`end` is
    called: with ``None`` when the result ended well, or the error it ended with (a
    cancellation included), which is then judged as an attempt's error would be. The
    executors only look for it when ``ctx.classifier.checks_results`` is true.

    Subclasses call :meth:`end` exactly once (later calls do nothing); callbacks registered
    after the end run at once. Thread-safe.
    """

    __slots__ = ("_end_callbacks", "_end_error", "_end_lock", "_ended")

    def __init__(self) -> None:
        self._end_callbacks: list[EndCallback] = []
        self._end_error: BaseException | None = None
        self._ended = False
        self._end_lock = threading.Lock()

    def on_end(self, fn: EndCallback) -> None:
        """Call ``fn(error)`` once the result has ended (at once when it has)."""
        with self._end_lock:
            if not self._ended:
                self._end_callbacks.append(fn)
                return
        fn(self._end_error)

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` was called."""
        return self._ended

    def end(self, error: BaseException | None = None) -> bool:
        """The result has ended (``error`` is ``None`` for a good end); ``False`` when it had already."""
        with self._end_lock:
            if self._ended:
                return False
            self._ended = True
            self._end_error = error
            callbacks, self._end_callbacks = self._end_callbacks, []
        for fn in callbacks:
            fn(error)
        return True
