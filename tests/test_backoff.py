from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import Constant, DecorrelatedJitter, Exponential, ExponentialJitter, ExponentialPlusJitter

bases = st.floats(min_value=0.001, max_value=10.0)
caps = st.floats(min_value=0.001, max_value=1000.0)
attempts = st.integers(min_value=1, max_value=10_000)
seeds = st.integers(min_value=0, max_value=2**32)


@given(base=bases, extra=caps, attempt=attempts, seed=seeds)
def test_exponential_is_capped_and_never_below_base(base: float, extra: float, attempt: int, seed: int) -> None:
    cap = base + extra
    delay = Exponential(base, 2.0, cap).delay(attempt, 0.0, random.Random(seed))
    assert base <= delay <= cap
    if attempt == 1:
        assert delay == base


@given(base=bases, extra=caps, attempt=attempts, seed=seeds, multiplier=st.floats(min_value=1.0, max_value=10.0))
def test_full_jitter_stays_in_zero_to_capped_ceiling(
    base: float, extra: float, attempt: int, seed: int, multiplier: float
) -> None:
    cap = base + extra
    backoff = ExponentialJitter(base, multiplier, cap)
    ceiling = Exponential(base, multiplier, cap).delay(attempt, 0.0, random.Random(0))
    delay = backoff.delay(attempt, 0.0, random.Random(seed))
    assert 0.0 <= delay <= ceiling <= cap


@given(base=bases, extra=caps, seed=seeds, steps=st.integers(min_value=1, max_value=200))
def test_decorrelated_jitter_stays_within_base_and_cap(base: float, extra: float, seed: int, steps: int) -> None:
    cap = base + extra
    backoff = DecorrelatedJitter(base, cap)
    rng = random.Random(seed)
    previous = 0.0
    for attempt in range(1, steps + 1):
        previous = backoff.delay(attempt, previous, rng)
        assert base <= previous <= cap


def test_decorrelated_jitter_does_not_stick_at_the_cap() -> None:
    # The naive min(cap, U(base, 3*prev)) spends almost all its time at exactly the cap.
    backoff = DecorrelatedJitter(0.1, 10.0)
    rng = random.Random(7)
    previous = 0.0
    delays = []
    for attempt in range(1, 5001):
        previous = backoff.delay(attempt, previous, rng)
        delays.append(previous)
    late = delays[100:]
    at_cap = sum(1 for d in late if d >= 9.99) / len(late)
    assert at_cap < 0.01
    assert 1.5 < statistics.mean(late) < 7.5
    assert statistics.pstdev(late) > 1.5


def test_naive_decorrelated_jitter_would_stick_which_is_why_ours_differs() -> None:
    rng = random.Random(7)
    previous, at_cap = 0.1, 0
    for _ in range(5000):
        previous = min(10.0, rng.uniform(0.1, previous * 3))
        at_cap += previous == 10.0
    assert at_cap / 5000 > 0.2  # measured: 28% of all delays are exactly the cap


def test_constant() -> None:
    assert Constant(0.25).delay(9, 3.0, random.Random()) == 0.25
    assert Constant(0).delay(1, 0, random.Random()) == 0.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Exponential(base=0), "base must be a finite number of seconds > 0, got 0"),
        (lambda: Exponential(base=1, cap=0.5), r"cap must be >= base \(1.0\), got 0.5"),
        (lambda: Exponential(multiplier=0.5), r"multiplier must be in \[1, 1e\+06\], got 0.5"),
        (lambda: ExponentialJitter(cap=float("inf")), "cap must be a finite number of seconds > 0, got inf"),
        (lambda: DecorrelatedJitter(base=-1), "base must be a finite number of seconds > 0, got -1"),
        (lambda: Constant(-0.5), "delay must be a finite number of seconds >= 0, got -0.5"),
    ],
)
def test_invalid_backoff_options(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


# -- base * 2^n + U(0, jitter), capped (tenacity's wait_exponential_jitter; issue 9, item 21) ---------


@given(
    st.floats(0.01, 10),
    st.floats(0, 5),
    st.floats(0, 100),
    st.integers(1, 2000),
    st.integers(0, 2**32),
)
def test_exponential_plus_jitter_stays_between_the_curve_and_the_cap(
    base: float, jitter: float, extra: float, attempt: int, seed: int
) -> None:
    cap = base + extra
    curve = Exponential(base, 2, cap).delay(attempt, 0.0, random.Random(seed))
    delay = ExponentialPlusJitter(base, 2, cap, jitter).delay(attempt, 0.0, random.Random(seed))
    assert curve <= delay <= min(cap, curve + jitter) + 1e-9


def test_exponential_plus_jitter_follows_tenacitys_curve() -> None:
    rng = random.Random(3)
    backoff = ExponentialPlusJitter(1, 2, 60, jitter=1)
    delays = [backoff.delay(n, 0.0, rng) for n in range(1, 9)]
    floors = [1, 2, 4, 8, 16, 32, 60, 60]
    assert all(f <= d <= min(60, f + 1) for f, d in zip(floors, delays, strict=True))
    assert len({round(d - f, 6) for d, f in zip(delays[:6], floors[:6], strict=True)}) > 1  # the noise varies
    assert delays[-1] == 60  # capped, noise included


def test_exponential_plus_jitter_checks_its_options() -> None:
    with pytest.raises(ValueError, match="jitter must be a finite number of seconds >= 0, got -1"):
        ExponentialPlusJitter(jitter=-1)
    with pytest.raises(ValueError, match="cap must be >= base"):
        ExponentialPlusJitter(base=5, cap=1)
