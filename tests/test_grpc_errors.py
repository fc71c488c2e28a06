"""The library's errors as gRPC errors (interceptors._grpc_errors), and how the gRPC
classifier judges them when an outer adapter or policy sees them."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from interceptors._grpc_common import GrpcClassifier
from interceptors._grpc_errors import rpc_error
from resilience import (
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitError,
    DeadlineExceededError,
    NoEndpointError,
    Outcome,
    RateLimitedError,
    ResilienceError,
    RetryBudgetExhaustedError,
    ThrottledError,
)

S = grpc.StatusCode

CASES = [
    (DeadlineExceededError("timeout: exceeded its 1s timeout", timeout=1.0), S.DEADLINE_EXCEEDED),
    (CircuitOpenError("circuit_breaker: the circuit is open", retry_after=2.0), S.UNAVAILABLE),
    (NoEndpointError("no endpoint for orders"), S.UNAVAILABLE),
    (ThrottledError("throttle: throttled locally"), S.UNAVAILABLE),
    (BulkheadFullError("bulkhead: full"), S.RESOURCE_EXHAUSTED),
    (ConcurrencyLimitError("concurrency_limit: limit reached"), S.RESOURCE_EXHAUSTED),
    (RateLimitedError("rate_limit: exceeded", retry_after=0.5), S.RESOURCE_EXHAUSTED),
]


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
@pytest.mark.parametrize(("error", "code"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_a_library_error_becomes_an_rpc_error_and_stays_itself(
    error: ResilienceError, code: grpc.StatusCode, aio: bool
) -> None:
    mapped = rpc_error(error, aio=aio)
    assert mapped is not None
    assert isinstance(mapped, grpc.RpcError)
    assert isinstance(mapped, type(error))
    assert isinstance(mapped, grpc.aio.AioRpcError) is aio
    assert mapped.code() is code  # type: ignore[attr-defined]
    assert mapped.details() == str(error.args[0])  # type: ignore[attr-defined]
    assert mapped.__dict__.items() >= error.__dict__.items()  # context, retry_after, timeout kept
    with pytest.raises(grpc.RpcError):
        raise mapped


def test_a_refused_retry_keeps_the_last_attempts_status() -> None:
    last = grpc.aio.AioRpcError(S.UNAVAILABLE, None, (("grpc-retry-pushback-ms", "5"),), "backend down")
    error = RetryBudgetExhaustedError("retry_budget: no room", last_error=last)
    mapped = rpc_error(error)
    assert mapped is not None and isinstance(mapped, RetryBudgetExhaustedError)
    assert mapped.code() is S.UNAVAILABLE  # type: ignore[attr-defined]
    assert mapped.details() == "backend down"  # type: ignore[attr-defined]
    assert mapped.last_error is last


def test_errors_without_a_grpc_meaning_are_left_alone() -> None:
    assert rpc_error(ValueError("x")) is None
    already = grpc.aio.AioRpcError(S.INTERNAL, None, None, "x")
    assert rpc_error(already) is None


@pytest.mark.parametrize(("error", "code"), CASES[1:], ids=[type(e).__name__ for e, _ in CASES[1:]])
def test_a_rejection_raised_as_an_rpc_error_never_counts_against_the_backend(
    error: ResilienceError, code: grpc.StatusCode
) -> None:
    mapped = rpc_error(error)
    assert mapped is not None
    classifier = GrpcClassifier()
    assert classifier.error(mapped) is Outcome.IGNORED
    assert classifier.retryable_error(mapped) is False


def test_a_deadline_raised_as_an_rpc_error_is_a_failure() -> None:
    mapped = rpc_error(DeadlineExceededError("timeout: exceeded"))
    assert mapped is not None
    assert GrpcClassifier().error(mapped) is Outcome.FAILURE
