"""Fallback: an answer of last resort when the call fails."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._validate import ErrorFilter, error_predicate
from ..context import CallContext
from ..events import FallbackUsed, emit
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["Fallback", "FallbackInput"]

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class FallbackInput:
    """What the fallback handler is given.

    Attributes:
        error: the error that ended the call, or ``None`` when a result was rejected.
        result: the rejected result, or ``None`` when the call raised.
        context: the call's context.
    """

    error: BaseException | None
    result: Any
    context: CallContext


class Fallback(Policy):
    """Answers in place of a call that failed.

    Give either a fixed ``value`` or a ``handler`` called with a :class:`FallbackInput`
    (holding the original error). In an async pipeline the handler may be a coroutine
    function; in a sync pipeline it must be a plain function.

    Args:
        value: the value returned in place of the failed call.
        handler: a callable computing the value from a :class:`FallbackInput`.
        on: exception types, or a predicate on the error, that trigger the fallback
            (default: any :class:`Exception`).
        on_result: a predicate on results that also triggers it (default: none).
        name: the policy's name in events (default ``"fallback"``).

    Raises:
        ValueError: when neither or both of ``value`` and ``handler`` are given.
    """

    __slots__ = ("_handler", "_on", "_value", "on_result")

    def __init__(
        self,
        value: Any = _UNSET,
        *,
        handler: Callable[[FallbackInput], Any] | None = None,
        on: ErrorFilter = Exception,
        on_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if (value is _UNSET) == (handler is None):
            raise ValueError(
                "Fallback needs exactly one of value or handler, got "
                f"value={value if value is not _UNSET else '<unset>'!r} and handler={handler!r}"
            )
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        self._value = value
        self._handler = handler
        self._on = error_predicate("on", on)
        if on_result is not None and not callable(on_result):
            raise TypeError(f"on_result must be a callable or None, got {on_result!r}")
        self.on_result = on_result

    def _answer(self, ctx: CallContext, error: BaseException | None, result: Any) -> Any:
        """The fallback's value: a plain value, or the handler's return (maybe awaitable)."""
        if ctx.listeners:
            emit(ctx.listeners, FallbackUsed(self.name, ctx, error))
        if self._handler is None:
            return self._value
        return self._handler(FallbackInput(error, result, ctx))

    def wrap(self, next: SyncNext) -> SyncNext:
        on, on_result = self._on, self.on_result

        def fallback_sync(ctx: CallContext) -> Any:
            try:
                result = next(ctx)
            except Exception as exc:
                if not on(exc):
                    raise
                answer = self._answer(ctx, exc, None)
            else:
                if on_result is None or not on_result(result):
                    return result
                ctx.classifier.discard(result)
                answer = self._answer(ctx, None, result)
            if inspect.isawaitable(answer):
                close = getattr(answer, "close", None)
                if close is not None:
                    close()
                raise TypeError(f"{self.name}: an async fallback handler cannot serve a sync call")
            return answer

        return fallback_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        on, on_result = self._on, self.on_result

        async def fallback_async(ctx: CallContext) -> Any:
            try:
                result = await next(ctx)
            except Exception as exc:
                if not on(exc):
                    raise
                answer = self._answer(ctx, exc, None)
            else:
                if on_result is None or not on_result(result):
                    return result
                await ctx.classifier.adiscard(result)
                answer = self._answer(ctx, None, result)
            if inspect.isawaitable(answer):
                return await answer
            return answer

        return fallback_async

    def __repr__(self) -> str:
        what = f"handler={self._handler!r}" if self._handler is not None else f"value={self._value!r}"
        return f"Fallback({what})"
