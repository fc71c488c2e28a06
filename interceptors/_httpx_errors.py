"""The library's errors as httpx errors: what the transports raise when a policy ends a call.

Code written against a plain httpx client catches ``httpx.HTTPError``,
``httpx.TransportError`` or ``httpx.TimeoutException``. When a policy ends a call (a
deadline, an open circuit, a full bulkhead...), the transports raise an error that is
both: an instance of the library's own error class, with its attributes (``context``,
``retry_after``, ``timeout``), and an instance of an httpx exception class, with
``.request`` set to the caller's request. ``except CircuitOpenError`` and
``except httpx.HTTPError`` catch the same object. The table:

===============================  ==============================  =======================================
library error                    also an instance of             when
===============================  ==============================  =======================================
``DeadlineExceededError``        ``httpx.TimeoutException``      the call's ``timeout`` or ``deadline``
                                                                 option, a route's ``timeout`` or a
                                                                 ``Timeout`` policy ran out
``CircuitOpenError``             ``httpx.TransportError``        the breaker is open: nothing was sent
``BulkheadFullError``            ``httpx.TransportError``        no free slot in the bulkhead
``ConcurrencyLimitError``        ``httpx.TransportError``        the adaptive concurrency limit is
                                                                 reached
``RateLimitedError``             ``httpx.TransportError``        a rate limit is exceeded
``ThrottledError``               ``httpx.TransportError``        adaptive throttling refused the call
``NoEndpointError``              ``httpx.TransportError``        discovery lists no endpoint, or every
                                                                 endpoint's health rejects
any other ``RejectedError``      ``httpx.TransportError``        a policy refused the call
``RetryBudgetExhaustedError``    the last attempt's error class  a retry was due but the budget had no
                                 (``httpx.ConnectError``, ...)   room: ``except`` clauses written for
                                                                 the attempt's error still catch it
===============================  ==============================  =======================================

A rejection is a plain ``httpx.TransportError``, not a ``ConnectError``: nothing was tried,
so code that retries connect errors by itself does not retry a rejection by mistake.
A ``RetryBudgetExhaustedError`` whose last attempt failed with something other than an
httpx error or a library error (a bug in a custom transport) is raised as it is.
Errors raised by httpx itself pass through unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from resilience.errors import DeadlineExceededError, RejectedError, ResilienceError, RetryBudgetExhaustedError

__all__ = ["httpx_error"]

_lock = threading.Lock()
_MIXED: dict[tuple[type[BaseException], type[httpx.HTTPError]], type[BaseException]] = {}
# The httpx class each mixed class was made with: a mixed error met again (a transport
# nested in another) keeps its httpx class and does not stack library classes.
_HTTPX_CLASS: dict[type[BaseException], type[httpx.HTTPError]] = {}


def _httpx_class(exc: BaseException | None) -> type[httpx.HTTPError] | None:
    """The httpx class an error maps to, ``None`` when it has no httpx meaning."""
    if exc is None:
        return None
    known = _HTTPX_CLASS.get(type(exc))
    if known is not None:
        return known
    if isinstance(exc, httpx.HTTPError):
        return type(exc)
    if isinstance(exc, DeadlineExceededError):
        return httpx.TimeoutException
    if isinstance(exc, RejectedError):
        return httpx.TransportError
    if isinstance(exc, RetryBudgetExhaustedError):
        return _httpx_class(exc.last_error)
    return None


def _rebuild(
    cls: type[BaseException], base: type[httpx.HTTPError], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """Unpickles a mixed error."""
    mixed = _mixed(cls, base)
    error = mixed.__new__(mixed)
    error.args = args
    error.__dict__.update(state)
    return error


def _reduce(self: BaseException) -> tuple[Any, ...]:
    mixed = type(self)
    library = mixed.__mro__[1]
    return _rebuild, (library, _HTTPX_CLASS[mixed], self.args, dict(self.__dict__))


def _mixed(cls: type[BaseException], base: type[httpx.HTTPError]) -> type[BaseException]:
    key = (cls, base)
    mixed = _MIXED.get(key)
    if mixed is None:
        with _lock:
            mixed = _MIXED.get(key)
            if mixed is None:
                # A new class per (library class, httpx class): ``except CircuitOpenError``
                # and ``except httpx.TransportError`` both catch the same object. Its name
                # and module are the library class's, so tracebacks read as before.
                namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__reduce__": _reduce}
                mixed = type(cls.__name__, (cls, base), namespace)
                _HTTPX_CLASS[mixed] = base
                _MIXED[key] = mixed
    return mixed


def httpx_error(exc: BaseException, request: httpx.Request) -> BaseException | None:
    """``exc`` (a library error) as an error that is also an httpx exception, with ``.request``
    set to ``request``; ``None`` when ``exc`` has no httpx meaning or is an httpx error already.

    The new error keeps ``exc``'s attributes, message, cause, context and traceback; raise
    it in place of ``exc``. For a :class:`~resilience.RetryBudgetExhaustedError`, the
    attributes of the last attempt's httpx error come along too.
    """
    if isinstance(exc, httpx.HTTPError) or not isinstance(exc, ResilienceError):
        return None
    base = _httpx_class(exc)
    if base is None:
        return None
    mixed = _mixed(type(exc), base)
    error = mixed.__new__(mixed)
    error.args = exc.args
    if isinstance(exc, RetryBudgetExhaustedError) and isinstance(exc.last_error, httpx.HTTPError):
        error.__dict__.update(exc.last_error.__dict__)
    error.__dict__.update(exc.__dict__)
    error._request = request  # type: ignore[attr-defined]
    error.__cause__ = exc.__cause__
    error.__context__ = exc.__context__
    error.__suppress_context__ = exc.__suppress_context__
    return error.with_traceback(exc.__traceback__)
