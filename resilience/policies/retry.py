"""Retry: try a failed call again, after a backoff, within limits."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .._validate import ErrorFilter, Seconds, error_predicate, integer, seconds
from ..context import CallContext
from ..errors import DeadlineExceededError, RetryBudgetExhaustedError
from ..events import RetryGaveUp, RetryScheduled, emit
from ..policy import AsyncNext, Policy, SyncNext
from .backoff import Backoff, ExponentialJitter
from .budget import RetryBudget

__all__ = ["Retry"]

_DEFAULT_BUDGET = object()


class _GiveUp:
    """Why the retry loop stops; the executors turn it into a return or a raise."""

    __slots__ = ("reason", "remaining", "wanted")

    def __init__(self, reason: str, wanted: float = 0.0, remaining: float = 0.0) -> None:
        self.reason = reason
        self.wanted = wanted
        self.remaining = remaining


_NOT_RETRYABLE = _GiveUp("not_retryable")


class Retry(Policy):
    """Tries a failed call again, up to ``attempts`` times in all.

    A failed attempt is retried when the call's classifier calls it retryable (by default
    any :class:`Exception` but the library's own rejections), it matches ``retry_on``, and:

    - attempts are left, and the call is idempotent (or ``retry_non_idempotent`` is set)
      and nothing of its result has reached the caller yet (``ctx.committed``);
    - the delay — the server's pushback when the attempt carried one
      (``ctx.pushback``, clamped to ``max_pushback``), else the ``backoff`` — ends before
      the call's deadline. A pushback that does not fit fails the call at once with
      :class:`~resilience.DeadlineExceededError`; a backoff that does not fit ends the
      call with what the last attempt gave;
    - the ``budget`` has room. When it has none, an error becomes
      :class:`~resilience.RetryBudgetExhaustedError` and a result is returned as it is.

    A result is retried when ``retry_if_result`` says so, or when the classifier calls it a
    retryable failure (an HTTP 503, say); a result that is retried is discarded through the
    classifier (a response is closed). When no attempt is left, the last result is
    returned, or the last error raised.

    Args:
        attempts: attempts in all, including the first, in [1, 100] (default 3).
        backoff: the delay curve (default :class:`ExponentialJitter` 0.1 s doubling to 10 s).
        retry_on: exception types, or a predicate, that may be retried (default: all).
        retry_if_result: a predicate on results that asks for a retry (default: none).
        budget: a shared :class:`RetryBudget`; ``None`` for no budget (default: a budget of
            20% of requests plus 10 retries per second, owned by this policy).
        max_pushback: the longest delay taken from a server's pushback, in seconds (default 60).
        retry_non_idempotent: retry calls marked non-idempotent too (default ``False``).
        rng: the random source for jitter (default: a private ``random.Random``).
        name: the policy's name in events (default ``"retry"``).
    """

    __slots__ = (
        "_retry_on",
        "attempts",
        "backoff",
        "budget",
        "max_pushback",
        "retry_if_result",
        "retry_non_idempotent",
        "rng",
    )

    def __init__(
        self,
        attempts: int = 3,
        *,
        backoff: Backoff | None = None,
        retry_on: ErrorFilter = Exception,
        retry_if_result: Callable[[Any], bool] | None = None,
        budget: RetryBudget | object | None = _DEFAULT_BUDGET,
        max_pushback: Seconds = 60.0,
        retry_non_idempotent: bool = False,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.attempts = integer("attempts", attempts, minimum=1, maximum=100)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff (Constant, Exponential, ...), got {backoff!r}")
        self.backoff: Backoff = backoff if backoff is not None else ExponentialJitter(0.1, 2.0, 10.0)
        self._retry_on = error_predicate("retry_on", retry_on)
        if retry_if_result is not None and not callable(retry_if_result):
            raise TypeError(f"retry_if_result must be a callable or None, got {retry_if_result!r}")
        self.retry_if_result = retry_if_result
        if budget is _DEFAULT_BUDGET:
            budget = RetryBudget()
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
        self.budget: RetryBudget | None = budget
        self.max_pushback = seconds("max_pushback", max_pushback, allow_zero=True)
        self.retry_non_idempotent = bool(retry_non_idempotent)
        self.rng = rng if rng is not None else random.Random()

    # -- the decision core, shared by both executors -------------------------------------

    def _wants_result_retry(self, ctx: CallContext, result: object) -> bool:
        if self.retry_if_result is not None and self.retry_if_result(result):
            return True
        return ctx.classifier.checks_results and ctx.classifier.retryable_result(result)

    def _step(self, ctx: CallContext, attempt: int, previous: float, error: BaseException | None) -> float | _GiveUp:
        """After a failed attempt: the delay before the next one, or why to stop."""
        if error is not None and not (ctx.classifier.retryable_error(error) and self._retry_on(error)):
            return _NOT_RETRYABLE
        pushback, ctx.pushback = ctx.pushback, None
        if attempt >= self.attempts:
            step: float | _GiveUp = _GiveUp("attempts")
        elif ctx.committed:
            step = _GiveUp("committed")
        elif not ctx.idempotent and not self.retry_non_idempotent:
            step = _GiveUp("non_idempotent")
        elif pushback is not None and pushback < 0:
            step = _GiveUp("pushback")
        else:
            if pushback is None:
                pushback = getattr(error, "retry_after", None)
            if pushback is not None:
                delay = min(float(pushback), self.max_pushback)
            else:
                delay = float(self.backoff.delay(attempt, previous, self.rng))
            now = ctx.clock.monotonic()
            if ctx.deadline is not None and now + delay >= ctx.deadline:
                reason = "deadline_pushback" if pushback is not None else "deadline"
                step = _GiveUp(reason, delay, ctx.deadline - now)
            elif self.budget is not None and not self.budget.try_withdraw(now):
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
        step, budget, result_check = self._step, self.budget, self.retry_if_result

        def retry_sync(ctx: CallContext) -> Any:
            clock = ctx.clock
            if budget is not None:
                budget.deposit(clock.monotonic())
            attempt, previous = 1, 0.0
            ctx.attempt = 1
            while True:
                try:
                    result = next(ctx)
                except Exception as exc:
                    delay = step(ctx, attempt, previous, exc)
                    if not isinstance(delay, float):
                        raise_ = self._error_to_raise(ctx, delay, exc)
                        if raise_ is not None:
                            raise raise_ from exc
                        raise
                else:
                    if result_check is None and not ctx.classifier.checks_results:
                        return result
                    if not self._wants_result_retry(ctx, result):
                        return result
                    delay = step(ctx, attempt, previous, None)
                    if not isinstance(delay, float):
                        raise_ = self._error_to_raise(ctx, delay, None)
                        if raise_ is not None:
                            ctx.classifier.discard(result)
                            raise raise_
                        return result
                    ctx.classifier.discard(result)
                if delay > 0:
                    clock.sleep(delay)
                previous = delay
                attempt += 1
                ctx.attempt = attempt
                ctx.pushback = None

        return retry_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        step, budget, result_check = self._step, self.budget, self.retry_if_result

        async def retry_async(ctx: CallContext) -> Any:
            clock = ctx.clock
            if budget is not None:
                budget.deposit(clock.monotonic())
            attempt, previous = 1, 0.0
            ctx.attempt = 1
            while True:
                try:
                    result = await next(ctx)
                except Exception as exc:
                    delay = step(ctx, attempt, previous, exc)
                    if not isinstance(delay, float):
                        raise_ = self._error_to_raise(ctx, delay, exc)
                        if raise_ is not None:
                            raise raise_ from exc
                        raise
                else:
                    if result_check is None and not ctx.classifier.checks_results:
                        return result
                    if not self._wants_result_retry(ctx, result):
                        return result
                    delay = step(ctx, attempt, previous, None)
                    if not isinstance(delay, float):
                        raise_ = self._error_to_raise(ctx, delay, None)
                        if raise_ is not None:
                            await ctx.classifier.adiscard(result)
                            raise raise_
                        return result
                    await ctx.classifier.adiscard(result)
                if delay > 0:
                    await clock.asleep(delay)
                previous = delay
                attempt += 1
                ctx.attempt = attempt
                ctx.pushback = None

        return retry_async

    def __repr__(self) -> str:
        return f"Retry(attempts={self.attempts}, backoff={self.backoff!r}, budget={self.budget!r})"
