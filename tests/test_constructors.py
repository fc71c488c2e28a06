"""Every constructor refuses a bad value at once, naming it, or builds a policy that serves calls.

Issue 9, item 19: values at the float edges (5e-324, 1e10, inf, nan, negative zero) used to be
accepted and then fail every call, or lose a slot. Here hypothesis throws such values at each
duration, rate, count and window option; whatever a constructor accepts must then carry a
call, sync and async, on a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience import (
    AdaptiveThrottle,
    Bulkhead,
    CircuitBreaker,
    ConcurrencyLimit,
    Constant,
    DecorrelatedJitter,
    Exponential,
    ExponentialJitter,
    ExponentialPlusJitter,
    FakeClock,
    Fallback,
    Hedge,
    Pipeline,
    RejectedError,
    ResilienceError,
    Retry,
    RetryBudget,
    Timeout,
    TokenBucket,
)

EDGES = st.one_of(
    st.sampled_from([0.0, -0.0, -1.0, 5e-324, 1e-300, 1e-7, 1.0, 9.2e9, 9223372037.0, 1e10, 1e300, math.inf, math.nan]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 10**12),
)

BUILDERS: dict[str, Callable[[Any], Any]] = {
    "Timeout(seconds)": lambda v: Timeout(v),
    "Bulkhead(max_wait)": lambda v: Bulkhead(2, max_queue=1, max_wait=v),
    "Bulkhead(max_concurrent)": lambda v: Bulkhead(v),
    "TokenBucket(rate)": lambda v: TokenBucket(v, 1),
    "TokenBucket(max_wait)": lambda v: TokenBucket(1000, 10, mode="wait", max_wait=v),
    "Retry(max_pushback)": lambda v: Retry(2, max_pushback=v, budget=None),
    "Retry(attempts)": lambda v: Retry(v, budget=None),
    "RetryBudget(window)": lambda v: Retry(2, budget=RetryBudget(window=v)),
    "RetryBudget(ratio)": lambda v: Retry(2, budget=RetryBudget(ratio=v)),
    "AdaptiveThrottle(k)": lambda v: AdaptiveThrottle(k=v),
    "AdaptiveThrottle(window)": lambda v: AdaptiveThrottle(window=v),
    "CircuitBreaker(break_duration)": lambda v: CircuitBreaker(break_duration=v),
    "CircuitBreaker(window_duration)": lambda v: CircuitBreaker(window_duration=v),
    "CircuitBreaker(half_open_max_wait)": lambda v: CircuitBreaker(half_open_max_wait=v),
    "CircuitBreaker(slow_call_duration)": lambda v: CircuitBreaker(window_size=10, slow_call_duration=v),
    "Hedge(delay)": lambda v: Hedge(delay=v, budget=None),
    "ConcurrencyLimit(algorithm|limit)": lambda v: ConcurrencyLimit(v),
    "Constant(delay)": lambda v: Retry(2, backoff=Constant(v), budget=None),
    "Exponential(cap)": lambda v: Retry(2, backoff=Exponential(0.1, 2, v), budget=None),
    "ExponentialJitter(base)": lambda v: Retry(2, backoff=ExponentialJitter(v, 2, 10), budget=None),
    "ExponentialPlusJitter(jitter)": lambda v: Retry(2, backoff=ExponentialPlusJitter(1, 2, 60, v), budget=None),
    "DecorrelatedJitter(cap)": lambda v: Retry(2, backoff=DecorrelatedJitter(0.1, v), budget=None),
}


def _served(policy: Any) -> None:
    """Two calls through the policy: one failing, one answering, sync then async."""
    clock = FakeClock()
    pipeline = Pipeline(Fallback("fallback", on=RejectedError), policy, clock=clock)
    outcomes = iter([ConnectionError("down"), "ok", ConnectionError("down"), "ok"])

    def call() -> Any:
        outcome = next(outcomes, "ok")
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def acall() -> Any:
        return call()

    for run in (lambda: pipeline.call(call), lambda: asyncio.run(pipeline.acall(acall))):
        for _ in range(2):
            # the backend's failure passed on, or the library's own verdict (a budget spent): fine
            with contextlib.suppress(ConnectionError, ResilienceError):
                run()
    if isinstance(policy, Bulkhead):
        assert policy.active == 0 and policy.queued == 0
    if isinstance(policy, ConcurrencyLimit):
        assert policy.inflight == 0
    if isinstance(policy, Hedge):
        policy.close()


@pytest.mark.parametrize("name", sorted(BUILDERS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=EDGES)
def test_a_constructor_refuses_at_once_or_builds_a_policy_that_works(name: str, value: Any) -> None:
    option = name[name.index("(") + 1 : -1]
    try:
        policy = BUILDERS[name](value)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert any(word in message for word in option.split("|")), f"{name}: {message!r} does not name the option"
        assert repr(value) in message or str(value) in message or "got" in message, message
        return
    _served(policy)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Pipeline(clock=None), "clock must be a Clock"),
        (lambda: Pipeline(classifier=None), "classifier must be a Classifier"),
        (lambda: Pipeline(listeners=[1]), r"listeners\[0\] must be callable"),
        (lambda: Retry(rng=1), "rng must be a random.Random"),
        (lambda: AdaptiveThrottle(rng="x"), "rng must be a random.Random"),
        (lambda: Hedge(rng=object()), "rng must be a random.Random"),
        (lambda: CircuitBreaker(listeners=[None]), r"listeners\[0\] must be callable"),
        (lambda: Bulkhead(2, max_wait=1e10), "max_wait must be at most"),
        (lambda: RetryBudget(window=5e-324), "window must leave each of its 10 buckets"),
        (lambda: AdaptiveThrottle(k=math.inf), r"k must be in \[1, 1000\], got inf"),
    ],
)
def test_wiring_mistakes_are_refused_when_built(build: Callable[[], Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        build()


def test_a_seeded_rng_is_taken() -> None:
    assert isinstance(Retry(rng=random.Random(1)).rng, random.Random)
