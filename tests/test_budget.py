from __future__ import annotations

import math
import threading

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
def test_invalid_budget_options(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryBudget(**kwargs)
