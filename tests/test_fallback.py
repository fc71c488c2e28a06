from __future__ import annotations

from typing import Any

import pytest

from resilience import Event, FakeClock, Fallback, FallbackInput, FallbackUsed, Pipeline

from .helpers import Script, run

MODES = ["sync", "async", "trio"]


@pytest.mark.parametrize("mode", MODES)
def test_value_on_error(mode: str, clock: FakeClock) -> None:
    events: list[Event] = []
    pipeline = Pipeline(Fallback("cached"), clock=clock, listeners=[events.append])
    assert run(mode, pipeline, Script(ConnectionError("down"))) == "cached"
    assert isinstance(events[0], FallbackUsed)
    assert isinstance(events[0].error, ConnectionError)


@pytest.mark.parametrize("mode", MODES)
def test_handler_sees_the_original_error(mode: str, clock: FakeClock) -> None:
    seen: list[FallbackInput] = []

    def handler(info: FallbackInput) -> str:
        seen.append(info)
        return f"fallback for {info.error!r}"

    pipeline = Pipeline(Fallback(handler=handler), clock=clock)
    assert run(mode, pipeline, Script(KeyError("k"))) == "fallback for KeyError('k')"
    assert isinstance(seen[0].error, KeyError)
    assert seen[0].context is not None


def test_async_handler_in_async_pipeline(clock: FakeClock) -> None:
    async def handler(info: FallbackInput) -> str:
        return "async answer"

    assert run("async", Pipeline(Fallback(handler=handler), clock=clock), Script(OSError())) == "async answer"


def test_async_handler_in_sync_pipeline_is_a_clear_error(clock: FakeClock) -> None:
    async def handler(info: FallbackInput) -> str:
        return "never"

    with pytest.raises(TypeError, match="async fallback handler cannot serve a sync call"):
        Pipeline(Fallback(handler=handler), clock=clock).call(Script(OSError()))


@pytest.mark.parametrize("mode", MODES)
def test_only_chosen_errors_fall_back(mode: str, clock: FakeClock) -> None:
    pipeline = Pipeline(Fallback("x", on=ConnectionError), clock=clock)
    with pytest.raises(ValueError, match="bad"):
        run(mode, pipeline, Script(ValueError("bad")))
    assert run(mode, pipeline, Script(ConnectionError())) == "x"


@pytest.mark.parametrize("mode", MODES)
def test_result_predicate_triggers_the_fallback(mode: str, clock: FakeClock) -> None:
    seen: list[Any] = []

    def handler(info: FallbackInput) -> str:
        seen.append(info.result)
        return "replaced"

    pipeline = Pipeline(Fallback(handler=handler, on_result=lambda r: r is None), clock=clock)
    assert run(mode, pipeline, Script(None)) == "replaced"
    assert seen == [None]
    assert run(mode, pipeline, Script("fine")) == "fine"


def test_fallback_needs_exactly_one_answer() -> None:
    with pytest.raises(ValueError, match="exactly one of value or handler"):
        Fallback()
    with pytest.raises(ValueError, match="exactly one of value or handler"):
        Fallback(1, handler=lambda i: 2)
    with pytest.raises(TypeError, match="on must be an exception type"):
        Fallback(1, on=42)  # type: ignore[arg-type]
