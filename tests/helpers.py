"""Run the same scenario through a pipeline's sync and async paths."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from resilience import CallContext, Pipeline


class Script:
    """A callable that plays a list of outcomes: exceptions are raised, other values returned."""

    def __init__(self, *outcomes: Any, clock: Any = None, durations: list[float] | None = None) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.contexts: list[tuple[int, float | None]] = []
        self.clock = clock
        self.durations = durations

    def _next(self) -> Any:
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        return outcome

    def __call__(self) -> Any:
        if self.durations and self.clock is not None:
            self.clock.advance(self.durations.pop(0))
        outcome = self._next()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def acall(self) -> Any:
        if self.durations and self.clock is not None:
            await self.clock.asleep(self.durations.pop(0))
        outcome = self._next()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def run(mode: str, pipeline: Pipeline, script: Script) -> Any:
    """Call ``script`` through ``pipeline`` in ``mode`` ("sync" or "async")."""
    if mode == "sync":
        return pipeline.call(script)
    return asyncio.run(pipeline.acall(script.acall))


def run_ctx(mode: str, pipeline: Pipeline, fn: Callable[[CallContext], Any], ctx: CallContext) -> Any:
    """Like :func:`run` with a function of the context (``execute``/``aexecute``)."""
    if mode == "sync":
        return pipeline.execute(fn, ctx)

    async def afn(c: CallContext) -> Any:
        return fn(c)

    return asyncio.run(pipeline.aexecute(afn, ctx))
