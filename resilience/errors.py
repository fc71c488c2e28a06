"""The library's errors.

Every error raised by a policy derives from :class:`ResilienceError` and carries the
:class:`~resilience.context.CallContext` of the call it stopped (``None`` when raised
outside a call). Rejections raised before the backend was reached derive from
:class:`RejectedError`: they are never the backend's fault and do not count against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import CallContext

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "ConcurrencyLimitError",
    "DeadlineExceededError",
    "IsolatedCircuitError",
    "RateLimitedError",
    "RejectedError",
    "ResilienceError",
    "RetryBudgetExhaustedError",
    "ThrottledError",
]


class ResilienceError(Exception):
    """Base of every error raised by this library's policies.

    Attributes:
        context: the call this error stopped, when known.
    """

    def __init__(self, message: str, *, context: CallContext | None = None) -> None:
        super().__init__(message)
        self.context = context


class RejectedError(ResilienceError):
    """A policy refused the call before it reached the backend.

    Attributes:
        retry_after: seconds after which a new call may be admitted, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        context: CallContext | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.retry_after = retry_after


class CircuitOpenError(RejectedError):
    """The circuit breaker is open (or half-open with all probes taken)."""


class IsolatedCircuitError(CircuitOpenError):
    """The circuit breaker was isolated by hand and rejects every call until reset."""


class BulkheadFullError(RejectedError):
    """The bulkhead had no free slot and no room (or time) to wait for one."""


class ConcurrencyLimitError(RejectedError):
    """The adaptive concurrency limit is reached."""


class RateLimitedError(RejectedError):
    """A rate limit is exceeded; ``retry_after`` says when the next permit comes."""


class ThrottledError(RejectedError):
    """Client-side adaptive throttling rejected the call locally."""


class DeadlineExceededError(ResilienceError, TimeoutError):
    """The call or the attempt ran out of time.

    Also a :class:`TimeoutError`, so ``except TimeoutError`` catches it.

    Attributes:
        timeout: the time limit that was exceeded, in seconds, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        context: CallContext | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.timeout = timeout


class RetryBudgetExhaustedError(ResilienceError):
    """A retry was due but the retry budget had no room for it.

    The error of the last attempt is the ``__cause__``, also kept as ``last_error``.
    """

    def __init__(
        self,
        message: str,
        *,
        context: CallContext | None = None,
        last_error: BaseException | None = None,
    ) -> None:
        super().__init__(message, context=context)
        self.last_error = last_error
