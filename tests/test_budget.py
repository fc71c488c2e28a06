from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import RetryBudget


def test_budget_allows_ratio_of_requests_plus_minimum() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0, window=10)
    for _ in range(100):
        budget.deposit(0.0)
    granted = sum(budget.try_withdraw(0.5) for _ in range(50))
    assert granted == 20


def test_budget_minimum_per_second_lets_a_quiet_client_retry() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1, window=10)
    assert sum(budget.try_withdraw(0.0) for _ in range(30)) == 10


def test_deposits_and_withdrawals_expire_after_the_window() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10)
    for _ in range(5):
        budget.deposit(0.0)
    assert sum(budget.try_withdraw(1.0) for _ in range(10)) == 5
    assert not budget.try_withdraw(9.0)
    # At 11 s the first bucket (deposits and withdrawals of [0, 1)) has gone; the
    # withdrawals made at 1.0 still count but the deposits that paid for them do not.
    assert budget.available(10.5) == 0
    for _ in range(10):
        budget.deposit(20.0)
    assert budget.available(20.0) == 10


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.floats(min_value=0, max_value=2),
    minimum=st.floats(min_value=0, max_value=5),
    ops=st.lists(
        st.tuples(st.sampled_from(["deposit", "withdraw"]), st.floats(min_value=0, max_value=0.999)),
        max_size=200,
    ),
)
def test_budget_never_grants_more_than_its_formula_in_one_window(
    ratio: float, minimum: float, ops: list[tuple[str, float]]
) -> None:
    # All operations fall within one window, so nothing expires: the grants must equal
    # what a naive model allows at each step.
    budget = RetryBudget(ratio=ratio, min_per_second=minimum, window=10)
    requests = retries = 0
    for op, now in sorted(ops, key=lambda o: o[1]):
        if op == "deposit":
            budget.deposit(now)
            requests += 1
        else:
            expected = retries + 1 <= ratio * requests + minimum * 10
            assert budget.try_withdraw(now) is expected
            retries += expected
    assert math.isclose(budget.available(0.999), max(0.0, ratio * requests + minimum * 10 - retries), abs_tol=1e-9)


def test_budget_is_exact_under_threads() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, window=10)
    for _ in range(1000):
        budget.deposit(1.0)
    granted: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait(5)
        granted.append(sum(budget.try_withdraw(1.0) for _ in range(200)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(granted) == 500


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, r"ratio must be in \[0, 1000\], got -0.1"),
        ({"min_per_second": -1}, r"min_per_second must be in \[0, 1e\+09\], got -1"),
        ({"window": 0}, "window must be a finite number of seconds > 0, got 0"),
    ],
)
def test_invalid_budget_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryBudget(**kwargs)


def tally(budget: RetryBudget, now: float, n: int = 1) -> None:
    """Count ``n`` requests the way the retry executors do: a counter step, a clock reading when due."""
    for _ in range(n):
        mark = budget.tally()
        if mark >= budget.due:
            budget.stamp(now, mark)


def test_tallied_requests_count_like_deposits() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0, window=10)
    tally(budget, 0.0, 100)
    assert budget.available(0.5) == 20
    assert sum(budget.try_withdraw(0.5) for _ in range(50)) == 20


def test_tallied_requests_are_filed_at_the_next_clock_reading() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10)  # buckets of 1 s
    tally(budget, 0.5, 40)
    assert budget.available(0.9) == 40  # a reading files them all, in its bucket
    tally(budget, 5.0, 3)  # fewer than 16: no clock reading of their own
    assert budget.available(10.5) == 3  # t=0.5 has left the window; these are filed now, at 10.5
    assert budget.available(15.5) == 3  # so they outlive their own window (a bounded few)
    assert budget.available(20.5) == 0
    tally(budget, 30.0, 40)  # readings of their own: filed at 30
    assert budget.available(39.9) == 40
    assert budget.available(40.5) <= 16  # all but the few after the last reading have expired


def test_tallies_from_threads_lose_no_count() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait(5)
        tally(budget, 1.0, 1000)
        for _ in range(100):
            budget.deposit(1.0)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert budget.available(1.0) == 8 * 1100


def test_permit_protocol() -> None:
    from resilience import CallContext, Outcome, Rejection
    from resilience.permit import Gate, Permit

    budget = RetryBudget(ratio=0.0, min_per_second=0.2, window=10)  # two retries
    assert isinstance(budget, Gate)
    first, second = budget.acquire(None, 0.0), budget.acquire(None, 0.0)
    assert isinstance(first, Permit)
    assert first is second  # one shared permit: nothing allocated per retry
    budget.release(first, Outcome.SUCCESS, 0.0, 0.0)  # a spent retry stays spent
    refused = budget.acquire(None, 0.0)
    assert isinstance(refused, Rejection)
    assert refused.reason == "budget"
    assert budget.available(0.0) == 0
    ctx = CallContext()
    error = budget.rejected(ctx, refused)
    assert error.context is ctx
    assert "retry budget is exhausted" in str(error)


def test_options_are_frozen_and_validated() -> None:
    import dataclasses
    from datetime import timedelta

    from resilience.policies.budget import RetryBudgetOptions

    options = RetryBudgetOptions(ratio=0.5, min_per_second=1, window=timedelta(seconds=4))  # type: ignore[arg-type]
    assert options == RetryBudgetOptions(0.5, 1.0, 4.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.ratio = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1000\], got -1"):
        options.replace(ratio=-1)
    with pytest.raises(TypeError, match=r"options must be RetryBudgetOptions, got 0\.5"):
        RetryBudget(options=0.5)  # type: ignore[arg-type]
    budget = RetryBudget(options=options)
    assert (budget.ratio, budget.min_per_second, budget.window) == (0.5, 1.0, 4.0)
    assert repr(budget) == "RetryBudget(ratio=0.5, min_per_second=1.0, window=4.0)"


def test_reconfigure_keeps_the_counts_while_the_window_holds() -> None:
    from resilience.policies.budget import RetryBudgetOptions

    budget = RetryBudget(ratio=0.2, min_per_second=0, window=10)
    for _ in range(100):
        budget.deposit(0.0)
    assert sum(budget.try_withdraw(0.0) for _ in range(5)) == 5
    budget.reconfigure(RetryBudgetOptions(ratio=0.5, min_per_second=0, window=10))
    assert budget.available(0.0) == 45  # 100 requests and 5 retries kept, the new ratio at once
    budget.reconfigure(RetryBudgetOptions(ratio=0.5, min_per_second=1, window=5))
    assert budget.available(0.0) == 5  # a new window: empty counts, only the minimum
    for _ in range(10):
        budget.deposit(1.0)
    assert budget.available(1.0) == 10
    assert budget.available(6.0) == 5  # the new window's span


def test_reconfigure_needs_budget_options() -> None:
    budget = RetryBudget()
    with pytest.raises(TypeError, match=r"RetryBudget.reconfigure needs RetryBudgetOptions, got 0.1"):
        budget.reconfigure(0.1)  # type: ignore[arg-type]
