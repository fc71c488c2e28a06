"""Every policy with options: frozen, validated, swapped whole by reconfigure."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import resilience
from resilience import (
    AdaptiveThrottle,
    Bulkhead,
    CircuitBreaker,
    ConcurrencyLimit,
    DeadlineExceededError,
    FakeClock,
    Fallback,
    FaultInjection,
    Hedge,
    Pipeline,
    RateLimit,
    Retry,
    RetryBudget,
    Timeout,
    TimeoutOptions,
    TokenBucket,
)

POLICIES: list[Any] = [
    lambda: AdaptiveThrottle(),
    lambda: Bulkhead(4),
    lambda: Fallback("cached"),
    lambda: FaultInjection(0.1, delay=0.1),
    lambda: CircuitBreaker(),
    lambda: ConcurrencyLimit(8),
    lambda: Hedge(0.1),
    lambda: RateLimit("10/second"),
    lambda: Retry(3),
    lambda: RetryBudget(),
    lambda: Timeout(1.0),
    lambda: TokenBucket(10, 5),
]


@pytest.mark.parametrize("make", POLICIES)
def test_options_are_frozen_and_swapped_whole(make: Any) -> None:
    policy = make()
    options = policy.options
    assert isinstance(options, resilience.Options)
    assert dataclasses.is_dataclass(options)
    field = dataclasses.fields(options)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, field, getattr(options, field))
    policy.reconfigure(options)
    assert policy.options is options
    with pytest.raises(TypeError, match="reconfigure needs"):
        policy.reconfigure(object())


def test_every_exported_policy_with_state_has_options() -> None:
    stateful = {
        name
        for name in resilience.__all__
        if isinstance(getattr(resilience, name), type)
        and issubclass(getattr(resilience, name), resilience.Policy)
        and name != "Policy"
    }
    covered = {type(make()).__name__ for make in POLICIES}
    assert stateful <= covered | {"RetryBudget"}, stateful - covered


def test_timeout_options_are_checked() -> None:
    with pytest.raises(ValueError, match="seconds must be a finite number of seconds > 0, got 0"):
        Timeout(0)
    with pytest.raises(ValueError, match="at most"):
        Timeout(1e10)
    with pytest.raises(TypeError, match="needs seconds"):
        Timeout()
    assert Timeout(options=TimeoutOptions(2.5)).seconds == 2.5


async def test_a_reconfigured_timeout_applies_to_the_next_calls_only() -> None:
    clock = FakeClock()
    timeout = Timeout(10)
    pipeline = Pipeline(timeout, clock=clock)

    async def slow() -> str:
        timeout.reconfigure(TimeoutOptions(1))  # while this call runs under its 10 s
        await clock.asleep(5)
        return "done"

    assert await pipeline.acall(slow) == "done"
    assert clock.monotonic() == 5.0

    async def slower() -> str:
        await clock.asleep(5)
        return "late"

    with pytest.raises(DeadlineExceededError):
        await pipeline.acall(slower)
    assert clock.monotonic() == 6.0
