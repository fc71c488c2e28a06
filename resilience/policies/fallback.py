"""Fallback: an answer of last resort when the call fails."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._validate import ErrorFilter, error_predicate
from ..context import CallContext
from ..events import FallbackUsed, emit
from ..options import Options, Reconfigurable
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["Fallback", "FallbackInput", "FallbackOptions"]

_UNSET: Any = object()


def _never(exc: BaseException) -> bool:
    return False


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


@dataclass(frozen=True, slots=True)
class FallbackOptions(Options):
    """What a :class:`Fallback` answers, and when.

    Attributes:
        value: the value returned in place of the failed call (give it or ``handler``).
        handler: a callable computing the value from a :class:`FallbackInput`; in an async
            pipeline it may be a coroutine function.
        on: exception types, or a predicate on the error, that trigger the fallback
            (default: any :class:`Exception`).
        on_result: a predicate on results that also triggers it (default: none).

    Raises:
        ValueError: neither or both of ``value`` and ``handler`` are given.
        TypeError: ``handler``, ``on`` or ``on_result`` is not callable (or exception types).
    """

    value: Any = _UNSET
    handler: Callable[[FallbackInput], Any] | None = None
    on: ErrorFilter = Exception
    on_result: Callable[[Any], bool] | None = None
    predicate: Callable[[BaseException], bool] = field(init=False, repr=False, compare=False, default=_never)

    def __post_init__(self) -> None:
        if (self.value is _UNSET) == (self.handler is None):
            raise ValueError(
                "Fallback needs exactly one of value or handler, got "
                f"value={self.value if self.value is not _UNSET else '<unset>'!r} and handler={self.handler!r}"
            )
        if self.handler is not None and not callable(self.handler):
            raise TypeError(f"handler must be callable, got {self.handler!r}")
        self.set("predicate", error_predicate("on", self.on))
        if self.on_result is not None and not callable(self.on_result):
            raise TypeError(f"on_result must be a callable or None, got {self.on_result!r}")


class Fallback(Reconfigurable[FallbackOptions], Policy):
    """Answers in place of a call that failed.

    Give either a fixed ``value`` or a ``handler`` called with a :class:`FallbackInput`
    (holding the original error). In an async pipeline the handler may be a coroutine
    function; in a sync pipeline it must be a plain function. :meth:`reconfigure` swaps
    the whole answer; there is no state.

    Args:
        value, handler, on, on_result: see :class:`FallbackOptions`.
        options: the whole options object, instead of the four above.
        name: the policy's name in events (default ``"fallback"``).

    Raises:
        ValueError: when neither or both of ``value`` and ``handler`` are given.
    """

    __slots__ = ("_options",)

    options_type = FallbackOptions

    def __init__(
        self,
        value: Any = _UNSET,
        *,
        handler: Callable[[FallbackInput], Any] | None = None,
        on: ErrorFilter = Exception,
        on_result: Callable[[Any], bool] | None = None,
        options: FallbackOptions | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            options = FallbackOptions(value, handler, on, on_result)
        elif not isinstance(options, FallbackOptions):
            raise TypeError(f"options must be FallbackOptions, got {options!r}")
        self._options = options

    @property
    def on_result(self) -> Callable[[Any], bool] | None:
        return self._options.on_result

    def _answer(self, ctx: CallContext, error: BaseException | None, result: Any) -> Any:
        """The fallback's value: a plain value, or the handler's return (maybe awaitable)."""
        if ctx.listeners:
            emit(ctx.listeners, FallbackUsed(self.name, ctx, error))
        options = self._options
        if options.handler is None:
            return options.value
        return options.handler(FallbackInput(error, result, ctx))

    def wrap(self, next: SyncNext) -> SyncNext:
        policy = self

        def fallback_sync(ctx: CallContext) -> Any:
            options = policy._options
            on, on_result = options.predicate, options.on_result
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
        policy = self

        async def fallback_async(ctx: CallContext) -> Any:
            options = policy._options
            on, on_result = options.predicate, options.on_result
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
        options = self._options
        what = f"handler={options.handler!r}" if options.handler is not None else f"value={options.value!r}"
        return f"Fallback({what})"
