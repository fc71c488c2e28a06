from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilience import (
    CallContext,
    Constant,
    FakeClock,
    Fallback,
    Pipeline,
    Policy,
    Retry,
)
from resilience.policy import AsyncNext, SyncNext


class Trace(Policy):
    """Records the order in which policies see a call."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name)
        self.log = log

    def wrap(self, next: SyncNext) -> SyncNext:
        def step(ctx: CallContext) -> Any:
            self.log.append(f"{self.name}>")
            try:
                return next(ctx)
            finally:
                self.log.append(f"<{self.name}")

        return step

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        async def step(ctx: CallContext) -> Any:
            self.log.append(f"{self.name}>")
            try:
                return await next(ctx)
            finally:
                self.log.append(f"<{self.name}")

        return step


def test_first_policy_is_the_outermost() -> None:
    log: list[str] = []
    pipeline = Pipeline(Trace("a", log), Trace("b", log), Trace("c", log))
    assert pipeline.call(lambda: log.append("call") or 1) == 1
    assert log == ["a>", "b>", "c>", "call", "<c", "<b", "<a"]
    assert repr(pipeline) == "Pipeline(a, b, c)"


def test_async_order_matches_sync() -> None:
    log: list[str] = []
    pipeline = Pipeline(Trace("a", log), Trace("b", log))

    async def fn() -> int:
        log.append("call")
        return 2

    assert asyncio.run(pipeline.acall(fn)) == 2
    assert log == ["a>", "b>", "call", "<b", "<a"]


def test_fallback_outside_retry_answers_after_all_attempts(clock: FakeClock) -> None:
    attempts: list[int] = []

    def down() -> str:
        attempts.append(1)
        raise ConnectionError("down")

    pipeline = Pipeline(Fallback("fb"), Retry(3, backoff=Constant(0)), clock=clock)
    assert pipeline.call(down) == "fb"
    assert len(attempts) == 3


def test_decorator_on_a_sync_function(clock: FakeClock) -> None:
    failures = [ConnectionError("x")]

    @Pipeline(Retry(2, backoff=Constant(0)), clock=clock)
    def add(a: int, b: int, *, c: int = 0) -> int:
        """Adds."""
        if failures:
            raise failures.pop()
        return a + b + c

    assert add(1, 2, c=3) == 6
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."


def test_decorator_on_an_async_function(clock: FakeClock) -> None:
    failures = [ConnectionError("x")]

    @Pipeline(Retry(2, backoff=Constant(0)), clock=clock)
    async def fetch(key: str) -> str:
        if failures:
            raise failures.pop()
        return key.upper()

    assert asyncio.iscoroutinefunction(fetch)
    assert asyncio.run(fetch("k")) == "K"


def test_execute_passes_each_attempt_its_context(clock: FakeClock) -> None:
    seen: list[tuple[str, str, int]] = []

    def fn(ctx: CallContext) -> str:
        seen.append((ctx.service, ctx.method, ctx.attempt))
        if ctx.attempt < 2:
            raise ConnectionError("x")
        return "ok"

    pipeline = Pipeline(Retry(3, backoff=Constant(0)), clock=clock, service="orders", method="Get")
    assert pipeline.execute(fn, pipeline.context(tags={"tenant": "t1"})) == "ok"
    assert seen == [("orders", "Get", 1), ("orders", "Get", 2)]


def test_context_tags_and_fork() -> None:
    ctx = CallContext("svc", "m", tags={"tenant": "a"})
    ctx.tried = ["h:1"]
    fork = ctx.fork()
    fork.hedge = 1
    fork.tried.append("h:2")  # type: ignore[union-attr]
    assert ctx.tried == ["h:1"] and ctx.hedge == 0
    assert fork.tag("tenant") == "a" and ctx.tag("missing", "d") == "d"


def test_pipeline_rejects_what_is_not_a_policy() -> None:
    with pytest.raises(TypeError, match=r"policies\[1\] must be a resilience Policy, got 3"):
        Pipeline(Retry(), 3)  # type: ignore[arg-type]
