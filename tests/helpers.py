"""Shared test helpers: run a scenario through a pipeline's sync and async paths, count calls inside."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import trio

from resilience import CallContext, Pipeline, RateLimitedError


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


MODES = ["sync", "async", "trio"]
"""The three ways a pipeline is driven: sync, under asyncio, under trio."""


def run_async(mode: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``await fn(*args)`` under asyncio (``mode == "async"``) or trio (``"trio"``)."""
    if mode == "trio":
        return trio.run(fn, *args)
    return asyncio.run(fn(*args))


def run(mode: str, pipeline: Pipeline, script: Script) -> Any:
    """Call ``script`` through ``pipeline`` in ``mode`` ("sync", "async" or "trio")."""
    if mode == "sync":
        return pipeline.call(script)
    return run_async(mode, pipeline.acall, script.acall)


def run_ctx(mode: str, pipeline: Pipeline, fn: Callable[[CallContext], Any], ctx: CallContext) -> Any:
    """Like :func:`run` with a function of the context (``execute``/``aexecute``)."""
    if mode == "sync":
        return pipeline.execute(fn, ctx)

    async def afn(c: CallContext) -> Any:
        return fn(c)

    return run_async(mode, pipeline.aexecute, afn, ctx)


def call(mode: str, pipeline: Pipeline, ctx: CallContext | None = None) -> Any:
    """A call that answers ``"ok"`` through ``pipeline`` in ``mode``."""
    return run_ctx(mode, pipeline, lambda c: "ok", ctx if ctx is not None else pipeline.context())


def outcome(mode: str, pipeline: Pipeline, ctx: CallContext | None = None) -> float | str:
    """``"ok"``, or the ``retry_after`` of the rate limit's rejection."""
    try:
        return str(call(mode, pipeline, ctx))
    except RateLimitedError as exc:
        retry_after = exc.retry_after
    assert retry_after is not None
    return retry_after


class Gauge:
    """Counts calls inside, remembering the peak; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.peak = 0
        self.admitted = 0

    def enter(self) -> None:
        with self.lock:
            self.inside += 1
            self.admitted += 1
            self.peak = max(self.peak, self.inside)

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1
