"""Call and attempt events: the steps a pipeline with a call listener adds around its chain.

A pipeline built without a :class:`~resilience.events.CallListener` gets none of this:
its chain is what it was, and a call costs nothing more. With one, two steps are added,
sync and async alike, which send their events to the call listeners only:

- around the whole chain, the **call step**: it asks the call listeners that can say so
  whether they want this call (``active()``), marks the context ``observed``, and emits
  :class:`~resilience.events.CallStarted` and :class:`~resilience.events.CallEnded`;
- innermost, around the user's function, the **attempt step**, which emits
  :class:`~resilience.events.AttemptStarted` and :class:`~resilience.events.AttemptEnded`
  for every send (each retry, each hedge on its fork). A result that is a
  :class:`~resilience.outcome.Pending` (a stream) ends, for both steps, when the stream ends.

The policies are wrapped twice, once around the attempt step and once around the bare
function: a call the listeners follow runs the first chain, any other the second, so that
an inactive listener costs a call one step and one ``active()``, not a step per attempt.

Listeners are called on the thread (or in the task) of the attempt, before it is sent and
after it ended; what they raise is logged and dropped (:func:`~resilience.events.emit`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .context import CallContext
from .events import AttemptEnded, AttemptStarted, CallEnded, CallStarted, Listener, emit, follows_calls
from .outcome import Outcome, Pending, error_outcome
from .policy import AsyncNext, SyncNext

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["attempt_steps", "followers", "install"]

_log = logging.getLogger("resilience")
_SOURCE = "pipeline"
_SUCCESS = Outcome.SUCCESS
_IGNORED = Outcome.IGNORED

Followers = tuple[Listener, ...]


def followers(listeners: Sequence[Listener]) -> Followers:
    """The listeners that follow calls (:class:`~resilience.events.CallListener`)."""
    return tuple(listener for listener in listeners if follows_calls(listener))


def _result_outcome(ctx: CallContext, result: Any) -> Outcome:
    classifier = ctx.classifier
    if not classifier.checks_results:
        return _SUCCESS
    try:
        return classifier.result(result)
    except Exception:
        return _IGNORED


def _error_outcome(ctx: CallContext, error: BaseException) -> Outcome:
    try:
        return error_outcome(ctx, error)
    except Exception:
        return _IGNORED


def _endpoint_before(ctx: CallContext) -> str | None:
    """The endpoint an attempt goes to when known before it runs (see ``AttemptStarted``)."""
    endpoint = ctx.endpoint
    if endpoint is None:
        return None
    tried = ctx.tried
    if tried and endpoint in tried:
        return None  # a previous attempt's pick, not this one's
    return endpoint


# -- the call step ---------------------------------------------------------------------------


def _call_ended(to: Followers, ctx: CallContext, start: float, result: Any, error: BaseException | None) -> None:
    outcome = _result_outcome(ctx, result) if error is None else _error_outcome(ctx, error)
    emit(to, CallEnded(_SOURCE, ctx, outcome, ctx.clock.monotonic() - start, error))


def _call_result(to: Followers, ctx: CallContext, start: float, result: Any) -> None:
    if isinstance(result, Pending):
        result.on_end(lambda error: _call_ended(to, ctx, start, None if error is not None else result, error))
    else:
        _call_ended(to, ctx, start, result, None)


def _activity(to: Followers) -> Callable[[], bool] | None:
    """One check of whether any call listener wants the call now; ``None``: always."""
    checks: list[Callable[[], bool]] = []
    for listener in to:
        active = getattr(listener, "active", None)
        if not callable(active):
            return None
        checks.append(active)
    if len(checks) == 1:
        return checks[0]
    return lambda: any(check() for check in checks)


def _call_sync(to: Followers, policies: tuple[str, ...], plain: SyncNext, next: SyncNext) -> SyncNext:
    active = _activity(to)

    def observed_call_sync(ctx: CallContext) -> Any:
        if active is not None and not active():
            return plain(ctx)
        ctx.observed = True
        start = ctx.clock.monotonic()
        emit(to, CallStarted(_SOURCE, ctx, policies))
        try:
            result = next(ctx)
        except BaseException as exc:
            _call_ended(to, ctx, start, None, exc)
            raise
        _call_result(to, ctx, start, result)
        return result

    return observed_call_sync


def _call_async(to: Followers, policies: tuple[str, ...], plain: AsyncNext, next: AsyncNext) -> AsyncNext:
    active = _activity(to)

    def observed_call_async(ctx: CallContext) -> Awaitable[Any]:
        # A plain function: a call nobody follows gets the plain chain's own awaitable.
        if active is not None and not active():
            return plain(ctx)
        return observed(ctx)

    async def observed(ctx: CallContext) -> Any:
        ctx.observed = True
        start = ctx.clock.monotonic()
        emit(to, CallStarted(_SOURCE, ctx, policies))
        try:
            result = await next(ctx)
        except BaseException as exc:
            _call_ended(to, ctx, start, None, exc)
            raise
        _call_result(to, ctx, start, result)
        return result

    return observed_call_async


# -- the attempt step ------------------------------------------------------------------------


def _attempt_ended(
    to: Followers, ctx: CallContext, attempt: int, hedge: int, start: float, result: Any, error: BaseException | None
) -> None:
    outcome = _result_outcome(ctx, result) if error is None else _error_outcome(ctx, error)
    duration = ctx.clock.monotonic() - start
    emit(to, AttemptEnded(_SOURCE, ctx, attempt, hedge, ctx.endpoint, outcome, duration, error, result))


def _attempt_result(to: Followers, ctx: CallContext, attempt: int, hedge: int, start: float, result: Any) -> None:
    if isinstance(result, Pending):
        result.on_end(
            lambda error: _attempt_ended(to, ctx, attempt, hedge, start, result if error is None else None, error)
        )
    else:
        _attempt_ended(to, ctx, attempt, hedge, start, result, None)


def _attempt_sync(to: Followers, next: SyncNext) -> SyncNext:
    def observed_attempt_sync(ctx: CallContext) -> Any:
        if not ctx.observed:
            return next(ctx)
        attempt, hedge = ctx.attempt, ctx.hedge
        emit(to, AttemptStarted(_SOURCE, ctx, attempt, hedge, _endpoint_before(ctx)))
        start = ctx.clock.monotonic()
        try:
            result = next(ctx)
        except BaseException as exc:
            _attempt_ended(to, ctx, attempt, hedge, start, None, exc)
            raise
        _attempt_result(to, ctx, attempt, hedge, start, result)
        return result

    return observed_attempt_sync


def _attempt_async(to: Followers, next: AsyncNext) -> AsyncNext:
    def observed_attempt_async(ctx: CallContext) -> Awaitable[Any]:
        return observed(ctx) if ctx.observed else next(ctx)  # unobserved: the function's own awaitable

    async def observed(ctx: CallContext) -> Any:
        attempt, hedge = ctx.attempt, ctx.hedge
        emit(to, AttemptStarted(_SOURCE, ctx, attempt, hedge, _endpoint_before(ctx)))
        start = ctx.clock.monotonic()
        try:
            result = await next(ctx)
        except BaseException as exc:
            _attempt_ended(to, ctx, attempt, hedge, start, None, exc)
            raise
        _attempt_result(to, ctx, attempt, hedge, start, result)
        return result

    return observed_attempt_async


# -- what the pipeline calls -----------------------------------------------------------------


def attempt_steps(to: Followers, invoke: Callable[[CallContext], Any]) -> tuple[SyncNext, AsyncNext]:
    """The innermost steps of a pipeline with call listeners ``to``: ``invoke`` with attempt events."""
    return _attempt_sync(to, invoke), _attempt_async(to, invoke)


def install(
    pipeline: Pipeline, to: Followers, plain: tuple[SyncNext, AsyncNext], observed: tuple[SyncNext, AsyncNext]
) -> tuple[SyncNext, AsyncNext]:
    """The pipeline's entry steps for the call listeners ``to``: a call they follow runs the
    ``observed`` chains (built around :func:`attempt_steps`) with call events, any other the
    ``plain`` ones, as if there were no call listener.

    Every listener of the pipeline that has a ``watch`` method is told of it first.
    """
    for listener in pipeline.listeners:
        watch = getattr(listener, "watch", None)
        if callable(watch):
            try:
                watch(pipeline)
            except Exception:
                _log.exception("resilience listener %r failed to watch %r", listener, pipeline)
    policies = tuple(p.name for p in pipeline.policies)
    return _call_sync(to, policies, plain[0], observed[0]), _call_async(to, policies, plain[1], observed[1])
