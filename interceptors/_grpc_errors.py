"""The library's errors as gRPC errors: what a call through the adapters raises.

Code written against a plain channel catches ``grpc.RpcError`` and reads ``code()``. When a
policy ends a call (a deadline, an open circuit, a full bulkhead...), the adapters raise an
error that is both: an instance of the library's own error class, with its context and
``retry_after``, and a ``grpc.RpcError`` (``grpc.aio.AioRpcError`` on aio channels) whose
``code()`` and ``details()`` say what happened. The table:

==============================  ======================  ==========================================
library error                   ``code()``              why
==============================  ======================  ==========================================
``DeadlineExceededError``       ``DEADLINE_EXCEEDED``   the call's ``timeout=`` or a ``Timeout``
``CircuitOpenError``            ``UNAVAILABLE``         the backend is considered down
``NoEndpointError``             ``UNAVAILABLE``         discovery has no endpoint to send to
``ThrottledError``              ``UNAVAILABLE``         the backend has been refusing calls
``BulkheadFullError``           ``RESOURCE_EXHAUSTED``  a local concurrency quota is used up
``ConcurrencyLimitError``       ``RESOURCE_EXHAUSTED``  the adaptive concurrency limit is reached
``RateLimitedError``            ``RESOURCE_EXHAUSTED``  a rate limit is exceeded
``RetryBudgetExhaustedError``   the last attempt's      the retry was refused; the last attempt's
                                                        status, details and trailers are kept
==============================  ======================  ==========================================

``details()`` starts with the policy's name (``"circuit_breaker: the circuit is open..."``).
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from resilience.balancing.base import NoEndpointError
from resilience.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitError,
    DeadlineExceededError,
    RateLimitedError,
    ResilienceError,
    RetryBudgetExhaustedError,
    ThrottledError,
)

__all__ = ["RpcStatusError", "rpc_error", "status_of"]

_S = grpc.StatusCode

_CODES: tuple[tuple[type[ResilienceError], grpc.StatusCode], ...] = (
    (DeadlineExceededError, _S.DEADLINE_EXCEEDED),
    (CircuitOpenError, _S.UNAVAILABLE),
    (NoEndpointError, _S.UNAVAILABLE),
    (ThrottledError, _S.UNAVAILABLE),
    (BulkheadFullError, _S.RESOURCE_EXHAUSTED),
    (ConcurrencyLimitError, _S.RESOURCE_EXHAUSTED),
    (RateLimitedError, _S.RESOURCE_EXHAUSTED),
)


class RpcStatusError(grpc.RpcError, grpc.Call):
    """A finished call's status, for the sync API: ``code()``, ``details()``, metadata.

    The errors the sync adapters raise for a policy's verdict derive from it and from the
    library's error class.
    """

    _code: grpc.StatusCode
    _details: str | None
    _initial_metadata: Any = None
    _trailing_metadata: Any = None

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details or ""

    def initial_metadata(self) -> Any:
        return self._initial_metadata if self._initial_metadata is not None else ()

    def trailing_metadata(self) -> Any:
        return self._trailing_metadata if self._trailing_metadata is not None else ()

    def debug_error_string(self) -> str:
        return f"{self._code.name}: {self._details}"

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


_MIXED: dict[tuple[type[BaseException], bool], type[BaseException]] = {}


def _mixed(cls: type[BaseException], aio: bool) -> type[BaseException]:
    key = (cls, aio)
    mixed = _MIXED.get(key)
    if mixed is None:
        base: type[BaseException] = grpc.aio.AioRpcError if aio else RpcStatusError
        # A new class per library error class: ``except CircuitOpenError`` and
        # ``except grpc.RpcError`` both catch the same object.
        mixed = _MIXED[key] = type(cls.__name__, (cls, base), {"__module__": cls.__module__})
    return mixed


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str | None, Any, Any] | None:
    """``(code, details, initial_metadata, trailing_metadata)`` for a library error, ``None`` when
    it has no gRPC meaning."""
    if isinstance(exc, RetryBudgetExhaustedError):
        last = exc.last_error
        if isinstance(last, grpc.RpcError):
            call: Any = last
            try:
                return call.code(), call.details(), call.initial_metadata(), call.trailing_metadata()
            except Exception:  # an error without a finished status
                return _S.UNAVAILABLE, str(exc), None, None
        if last is not None:
            inner = status_of(last)
            if inner is not None:
                return inner[0], str(exc), inner[2], inner[3]
        return _S.UNAVAILABLE, str(exc), None, None
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc), None, None
    return None


def rpc_error(exc: BaseException, *, aio: bool = False) -> BaseException | None:
    """``exc`` (a library error) as an error that is also a ``grpc.RpcError`` (an
    ``AioRpcError`` when ``aio``); ``None`` when ``exc`` is not such an error, or is one already.

    The new error keeps ``exc``'s attributes (``context``, ``retry_after``...), message,
    cause and traceback; raise it in place of ``exc``.
    """
    if isinstance(exc, grpc.RpcError) or not isinstance(exc, ResilienceError):
        return None
    status = status_of(exc)
    if status is None:
        return None
    code, details, initial, trailing = status
    cls = _mixed(type(exc), aio)
    mapped = cls.__new__(cls)
    mapped.args = exc.args
    mapped.__dict__.update(exc.__dict__)
    mapped._code = code  # type: ignore[attr-defined]
    mapped._details = details  # type: ignore[attr-defined]
    mapped._initial_metadata = initial  # type: ignore[attr-defined]
    mapped._trailing_metadata = trailing  # type: ignore[attr-defined]
    if aio:
        mapped._debug_error_string = f"{code.name}: {details}"  # type: ignore[attr-defined]
    mapped.__cause__ = exc.__cause__
    mapped.__suppress_context__ = exc.__suppress_context__
    mapped.__context__ = exc.__context__
    return mapped.with_traceback(exc.__traceback__)


def call_error(exc: BaseException, response_streaming: bool) -> BaseException | None:
    """What a sync adapter hands its caller for ``exc``, raised outside the ``except`` (so it
    does not chain the original): the library error as a ``grpc.RpcError`` (:func:`rpc_error`),
    or, for a response stream, an ``RpcError`` as it is (it ends the stream's call object).
    ``None``: re-raise ``exc`` unchanged."""
    error = rpc_error(exc)
    if error is None and response_streaming and isinstance(exc, grpc.RpcError):
        return exc
    return error
