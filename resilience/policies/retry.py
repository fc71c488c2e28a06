"""Retry: try a failed call again, after a backoff, within limits.

The decision core (:meth:`Retry._step`) is pure: after a failed attempt it returns the
delay before the next one, or why to stop. The loops that run it — and do the sleeping —
are the shared executors' (:func:`resilience._sync_exec.retry_sync`,
:func:`resilience._async_exec.retry_async`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._async_exec import retry_async
from .._sync_exec import retry_sync
from .._validate import ErrorFilter, Seconds, as_seconds, error_predicate, integer, seconds
from ..context import CallContext
from ..errors import DeadlineExceededError, RejectedError, RetryBudgetExhaustedError
from ..events import RetryGaveUp, RetryScheduled, emit
from ..options import Options, Reconfigurable
from ..policy import AsyncNext, Policy, SyncNext
from .backoff import Backoff, ExponentialJitter
from .budget import RetryBudget

__all__ = ["Retry", "RetryOptions"]

_DEFAULT_BUDGET: Any = object()
_DEFAULT_BACKOFF = ExponentialJitter(0.1, 2.0, 10.0)  # a backoff is a pure curve: one instance serves all


RejectionFilter = bool | type[RejectedError] | tuple[type[RejectedError], ...] | Callable[[RejectedError], bool]
"""Which local rejections a :class:`Retry` tries again: ``True`` (all), ``False`` (none),
:class:`~resilience.RejectedError` subclasses, or a predicate on the rejection."""


def _always(exc: BaseException) -> bool:
    return True


_REJECTIONS_ALLOWED = (
    "True, False, RejectedError subclasses (CircuitOpenError, BulkheadFullError, RateLimitedError, "
    "ThrottledError, ConcurrencyLimitError, NoEndpointError...), a tuple of them, or a predicate"
)


def _rejection_predicate(value: object) -> Callable[[BaseException], bool] | None:
    """``retry_rejections`` as a predicate on rejections; ``None`` when none is retried."""
    if isinstance(value, bool):
        return _always if value else None
    if isinstance(value, type):
        types: tuple[type, ...] = (value,)
    elif isinstance(value, tuple) and all(isinstance(t, type) for t in value):
        types = value
    elif callable(value):
        return value
    else:
        raise TypeError(f"retry_rejections must be {_REJECTIONS_ALLOWED}, got {value!r}")
    for t in types:
        if not issubclass(t, RejectedError):
            raise TypeError(
                f"retry_rejections takes local rejections, subclasses of RejectedError; {t.__name__} is not "
                f"one (errors from the backend are chosen by retry_on), got {value!r}"
            )
    if not types:
        return None
    if RejectedError in types:
        return _always
    return lambda exc: isinstance(exc, types)


@dataclass(frozen=True, slots=True)
class RetryOptions(Options):
    """When and how a :class:`Retry` tries again.

    Attributes:
        attempts: attempts in all, including the first, in [1, 100] (default 3).
        backoff: the delay curve, a :class:`~resilience.Backoff` (default
            :class:`~resilience.ExponentialJitter` 0.1 s doubling to 10 s).
        retry_on: exception types, or a predicate, that may be retried (default: all).
        retry_if_result: a predicate on results that asks for a retry (default: none).
        max_pushback: the longest server pushback honoured, seconds >= 0; a longer one
            ends the retries
            (default 60); a ``timedelta`` is accepted too and stored as seconds.
        retry_non_idempotent: retry calls marked non-idempotent too (default ``False``).
        retry_rejections: the local rejections to try again: ``True`` (all), ``False`` (none,
            the default), :class:`~resilience.RejectedError` subclasses (one, or a tuple), or
            a predicate on the rejection. A rejection by a policy of this call (an open circuit,
            a full bulkhead, a rate limit, a throttle, a concurrency limit, no healthy
            endpoint: a :class:`~resilience.RejectedError`) reached no server, so it is not
            the classifier's to judge nor ``retry_on``'s: by default it ends the call at
            once. One that is retried waits its ``retry_after`` (when it has one, and it
            is at most ``max_pushback`` and fits before the deadline; else the retries
            end with the rejection) or the ``backoff``, for any call, idempotent or not.

    Raises:
        ValueError: an option is out of range.
        TypeError: an option has the wrong type.
    """

    attempts: int = 3
    backoff: Backoff = _DEFAULT_BACKOFF
    retry_on: ErrorFilter = Exception
    retry_if_result: Callable[[Any], bool] | None = None
    max_pushback: float = 60.0
    retry_non_idempotent: bool = False
    retry_rejections: RejectionFilter = False
    retry_predicate: Callable[[BaseException], bool] = field(init=False, default=_always, repr=False, compare=False)
    rejection_predicate: Callable[[BaseException], bool] | None = field(
        init=False, default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.set("attempts", integer("attempts", self.attempts, minimum=1, maximum=100))
        if self.backoff is None:
            self.set("backoff", _DEFAULT_BACKOFF)
        elif not isinstance(self.backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff (Constant, Exponential, ...), got {self.backoff!r}")
        self.set("retry_predicate", error_predicate("retry_on", self.retry_on))
        if self.retry_if_result is not None and not callable(self.retry_if_result):
            raise TypeError(f"retry_if_result must be a callable or None, got {self.retry_if_result!r}")
        self.set("max_pushback", seconds("max_pushback", self.max_pushback, allow_zero=True, bounded=True))
        self.set("retry_non_idempotent", bool(self.retry_non_idempotent))
        self.set("rejection_predicate", _rejection_predicate(self.retry_rejections))


class _GiveUp:
    """Why the retry loop stops; the executors turn it into a return or a raise."""

    __slots__ = ("reason", "remaining", "wanted")

    def __init__(self, reason: str, wanted: float = 0.0, remaining: float = 0.0) -> None:
        self.reason = reason
        self.wanted = wanted
        self.remaining = remaining

    def __repr__(self) -> str:
        return f"GiveUp({self.reason!r})"


_NOT_RETRYABLE = _GiveUp("not_retryable")
_REJECTED = _GiveUp("rejected")


class Retry(Reconfigurable[RetryOptions], Policy):
    """Tries a failed call again, up to ``attempts`` times in all.

    A failed attempt is retried when the call's classifier calls it retryable (by default
    any :class:`Exception` but the library's own rejections), it matches ``retry_on``, and:

    - attempts are left, and the call is idempotent (or ``retry_non_idempotent`` is set,
      or the attempt surely sent nothing: the classifier's ``unsent``, e.g. a refused
      connection)
      and nothing of its result has reached the caller yet (``ctx.committed``);
    - the delay — the server's pushback when the attempt carried one
      (``ctx.pushback``), else the ``backoff`` — ends before the call's deadline. A
      pushback is honoured or given up on, never shortened: one longer than
      ``max_pushback`` ends the retries with what the last attempt gave. A pushback that
      does not fit before the deadline fails the call at once with
      :class:`~resilience.DeadlineExceededError`; a backoff that does not fit ends the
      call with what the last attempt gave;
    - the ``budget`` has room (:meth:`RetryBudget.acquire`). When it has none, an error
      becomes :class:`~resilience.RetryBudgetExhaustedError` and a result is returned as
      it is.

    A result is retried when ``retry_if_result`` says so, or when the classifier calls it a
    retryable failure (an HTTP 503, say); a result that is retried is discarded through the
    classifier (a response is closed). When no attempt is left, the last result is
    returned, or the last error raised. Every call deposits one request in the budget.

    **Local rejections.** An attempt refused by a policy of the call itself (an open
    breaker, a full bulkhead, a rate limit, no endpoint whose health admits: a
    :class:`~resilience.RejectedError`) is not server pushback: it ends the call at once,
    with that rejection, whatever the classifier and ``retry_on`` say — waiting out an open
    breaker's ``retry_after`` on every call is what a breaker is there to prevent. With
    discovery, the endpoint pool already skips an endpoint whose health rejects, so a
    retry goes to a healthy one; the pool's rejection means none is left. ``retry_rejections``
    opts in to retrying chosen rejections (see :class:`RetryOptions`).

    **Options and reconfigure.** The keywords build a :class:`RetryOptions` (defaults and
    ranges there); ``options=`` takes one whole. A call reads the options once, when it
    starts: :meth:`reconfigure` applies to calls that start after it, and calls in flight
    finish their attempts under the options they started with. There is no state to keep
    but the budget, which is a shared object and is left as it is (reconfigure it apart).

    Args:
        attempts, backoff, retry_on, retry_if_result, max_pushback, retry_non_idempotent,
            retry_rejections: see :class:`RetryOptions`.
        options: the whole options object (instead of the keywords above).
        budget: a shared :class:`RetryBudget`; ``None`` for no budget (default: a budget of
            20% of requests plus 10 retries per second, owned by this policy).
        rng: the random source for jitter (default: a private ``random.Random``).
        name: the policy's name in events (default ``"retry"``).

    Raises:
        ValueError: an option is out of range.
        TypeError: an option, ``budget`` or ``options`` has the wrong type.
    """

    __slots__ = ("_options", "budget", "rng")

    options_type = RetryOptions

    def __init__(
        self,
        attempts: int = 3,
        *,
        options: RetryOptions | None = None,
        backoff: Backoff | None = None,
        retry_on: ErrorFilter = Exception,
        retry_if_result: Callable[[Any], bool] | None = None,
        budget: RetryBudget | None = _DEFAULT_BUDGET,
        max_pushback: Seconds = 60.0,
        retry_non_idempotent: bool = False,
        retry_rejections: RejectionFilter = False,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            options = RetryOptions(
                attempts=attempts,
                backoff=backoff if backoff is not None else _DEFAULT_BACKOFF,
                retry_on=retry_on,
                retry_if_result=retry_if_result,
                max_pushback=as_seconds(max_pushback),
                retry_non_idempotent=retry_non_idempotent,
                retry_rejections=retry_rejections,
            )
        elif not isinstance(options, RetryOptions):
            raise TypeError(f"options must be RetryOptions, got {options!r}")
        self._options = options
        if budget is _DEFAULT_BUDGET:
            budget = RetryBudget()
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
        self.budget: RetryBudget | None = budget
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random or None, got {rng!r}")
        self.rng = rng if rng is not None else random.Random()

    # Read-only views of the options, as before they were split out.

    @property
    def attempts(self) -> int:
        """Attempts in all, including the first."""
        return self._options.attempts

    @property
    def backoff(self) -> Backoff:
        """The delay curve."""
        return self._options.backoff

    @property
    def retry_if_result(self) -> Callable[[Any], bool] | None:
        """The predicate on results that asks for a retry, if any."""
        return self._options.retry_if_result

    @property
    def max_pushback(self) -> float:
        """The longest delay taken from a server's pushback, in seconds."""
        return self._options.max_pushback

    @property
    def retry_non_idempotent(self) -> bool:
        """Whether calls marked non-idempotent are retried too."""
        return self._options.retry_non_idempotent

    @property
    def retry_rejections(self) -> RejectionFilter:
        """The local rejections tried again (``False``: none)."""
        return self._options.retry_rejections

    # -- the decision core, shared by both executors -------------------------------------

    @staticmethod
    def _wants_result_retry(ctx: CallContext, options: RetryOptions, result: object) -> bool:
        check = options.retry_if_result
        if check is not None and check(result):
            return True
        return ctx.classifier.checks_results and ctx.classifier.retryable_result(result)

    def _step(
        self, ctx: CallContext, options: RetryOptions, attempt: int, previous: float, error: BaseException | None
    ) -> float | _GiveUp:
        """After failed attempt ``attempt``: the delay before the next one, or why to stop."""
        rejected = False
        if error is not None:
            if isinstance(error, RejectedError):
                # A policy of this call refused the attempt (an open breaker, no healthy
                # endpoint...): it reached no server, and its retry_after is no pushback.
                # Never the classifier's to judge (it may dress as a gRPC UNAVAILABLE).
                wanted = options.rejection_predicate
                if wanted is None or not wanted(error):
                    return _REJECTED
                rejected = True
            elif not (ctx.classifier.retryable_error(error) and options.retry_predicate(error)):
                return _NOT_RETRYABLE
        pushback, ctx.pushback = ctx.pushback, None
        if rejected:
            pushback = error.retry_after  # type: ignore[union-attr]
        if attempt >= options.attempts:
            step: float | _GiveUp = _GiveUp("attempts")
        elif ctx.committed:
            step = _GiveUp("committed")
        elif (
            not ctx.idempotent
            and not options.retry_non_idempotent
            and not rejected
            and (error is None or not ctx.classifier.unsent(error))
        ):
            step = _GiveUp("non_idempotent")  # an attempt that sent nothing may be retried anyway
        elif pushback is not None and pushback < 0:
            step = _GiveUp("pushback")
        else:
            if pushback is None:
                pushback = getattr(error, "retry_after", None)
            if pushback is not None:
                delay = float(pushback)
            else:
                delay = float(options.backoff.delay(attempt, previous, self.rng))
            now = ctx.clock.monotonic()
            budget = self.budget
            if pushback is not None and delay > options.max_pushback:
                # Honoured or given up on, never shortened (gRPC A6): retrying sooner than the
                # server asked is what the pushback was sent to prevent (and sooner than a
                # rejection's retry_after is only another rejection).
                step = _GiveUp("retry_after_too_long" if rejected else "pushback_too_long", delay, options.max_pushback)
            elif ctx.deadline is not None and now + delay >= ctx.deadline:
                # A rejection that cannot wait ends the call as itself, not as a deadline.
                reason = "deadline_pushback" if pushback is not None and not rejected else "deadline"
                step = _GiveUp(reason, delay, ctx.deadline - now)
            elif budget is not None and budget.acquire(ctx, now).kind:
                step = _GiveUp("budget")
            else:
                step = delay
        if ctx.listeners:
            if isinstance(step, float):
                emit(ctx.listeners, RetryScheduled(self.name, ctx, attempt, step, error))
            else:
                emit(ctx.listeners, RetryGaveUp(self.name, ctx, attempt, step.reason, error))
        return step

    def _error_to_raise(self, ctx: CallContext, stop: _GiveUp, error: BaseException | None) -> BaseException | None:
        """The error that ends the call, or ``None`` to end it with the last outcome as it is."""
        if stop.reason == "deadline_pushback":
            return DeadlineExceededError(
                f"{self.name}: the server asked to retry in {stop.wanted:.3f}s but only "
                f"{max(0.0, stop.remaining):.3f}s remain before the deadline",
                context=ctx,
            )
        if stop.reason == "budget" and error is not None:
            return RetryBudgetExhaustedError(
                f"{self.name}: retry budget exhausted after attempt {ctx.attempt}",
                context=ctx,
                last_error=error,
            )
        return None

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        return retry_sync(self, next)

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        return retry_async(self, next)

    def __repr__(self) -> str:
        options = self._options
        return f"Retry(attempts={options.attempts}, backoff={options.backoff!r}, budget={self.budget!r})"
