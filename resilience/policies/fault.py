"""Fault injection: latency, errors, HTTP statuses or gRPC codes at a chosen rate, for tests and demos."""

from __future__ import annotations

import copy
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _validate
from .._grpc_status import GRPC_CODES
from ..context import CallContext
from ..options import Options, Reconfigurable
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["FaultInjection", "FaultInjectionOptions"]

_GRPC_CODE_NAMES = tuple(name for name in GRPC_CODES if name != "OK")
"""The gRPC status codes a :class:`FaultInjection` may fail with (every code but ``OK``)."""

Delay = float | int | tuple[float, float]
ErrorSpec = BaseException | type[BaseException]


def _delay(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"delay must be seconds or a (low, high) pair of seconds, got {value!r}")
        low = _validate.seconds("delay low", value[0], allow_zero=True, bounded=True)
        high = _validate.seconds("delay high", value[1], allow_zero=True, bounded=True)
        if high < low:
            raise ValueError(f"delay must be a (low, high) pair with low <= high, got {value!r}")
        return (low, high)
    seconds = _validate.seconds("delay", value, allow_zero=True, bounded=True)
    return (seconds, seconds)


def _grpc_code(value: object) -> str | None:
    if value is None:
        return None
    name = getattr(value, "name", value)  # a grpc.StatusCode, or its name
    if not isinstance(name, str) or name.upper() not in _GRPC_CODE_NAMES:
        allowed = ", ".join(_GRPC_CODE_NAMES)
        raise ValueError(f"grpc_code must be a grpc.StatusCode other than OK or its name ({allowed}), got {value!r}")
    return name.upper()


@dataclass(frozen=True, slots=True)
class FaultInjectionOptions(Options):
    """What a :class:`FaultInjection` injects, and how often.

    A call is picked with probability ``rate``; a picked call waits ``delay`` (if given) and
    then meets the fault (if one is given): at most one of ``error``, ``http_status``,
    ``grpc_code`` and ``result``. Calls not picked go through untouched.

    Attributes:
        rate: the share of calls that are picked, in [0, 1] (default 0: none).
        delay: the latency added to a picked call, in seconds: a fixed delay, or a (low, high)
            pair for a delay drawn uniformly between them (stored as a pair); none by default.
        error: the exception a picked call raises: an instance (a copy is raised each time) or
            a class (made with a message naming the policy).
        http_status: the HTTP status a picked call answers with, as an ``httpx.Response``
            (for a :class:`~interceptors.httpx.ResilientTransport` pipeline), in [100, 599].
        grpc_code: the gRPC status a picked call fails with, as a ``grpc.RpcError`` (a
            ``grpc.aio.AioRpcError`` under asyncio): a ``grpc.StatusCode`` or its name, not OK.
        result: a function of the call's context whose return value a picked call returns
            instead of calling on.
        details: the message of the injected error or status (default "injected fault").
    """

    rate: float = 0.0
    delay: tuple[float, float] | None = None
    error: ErrorSpec | None = None
    http_status: int | None = None
    grpc_code: Any = None
    result: Callable[[CallContext], Any] | None = None
    details: str = "injected fault"

    def __post_init__(self) -> None:
        self.set("rate", _validate.number("rate", self.rate, low=0.0, high=1.0))
        self.set("delay", _delay(self.delay))
        error = self.error
        is_class = isinstance(error, type) and issubclass(error, BaseException)
        if error is not None and not isinstance(error, BaseException) and not is_class:
            raise TypeError(f"error must be an exception instance or class, got {error!r}")
        if self.http_status is not None:
            _validate.integer("http_status", self.http_status, minimum=100, maximum=599)
        self.set("grpc_code", _grpc_code(self.grpc_code))
        if self.result is not None and not callable(self.result):
            raise TypeError(f"result must be a function of the call's context, got {self.result!r}")
        if not isinstance(self.details, str):
            raise TypeError(f"details must be a string, got {self.details!r}")
        given = [n for n in ("error", "http_status", "grpc_code", "result") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of error, http_status, grpc_code and result, got {', '.join(given)}")
        if not given and self.delay is None:
            raise ValueError(
                "a FaultInjection needs something to inject: delay, error, http_status, grpc_code or result"
            )


class FaultInjection(Reconfigurable[FaultInjectionOptions], Policy):
    """Injects faults into the calls it wraps: for users' own tests, chaos drills and demos.

    Each call draws once from the policy's random generator: with probability ``rate`` it
    is picked, waits ``delay`` on the call's clock (so a :class:`~resilience.FakeClock`
    test needs no real sleep; a range draws a second number) and then raises the error,
    answers with the HTTP status or the result, or fails with the gRPC code. Given a
    ``seed`` (or a seeded ``rng``) the same calls in the same order meet the same faults,
    so a run replays exactly. Placed innermost in a pipeline it stands for the backend:
    retries, breakers and timeouts around it see the faults as they would see real ones.

    :meth:`reconfigure` swaps what is injected and the rate (``rate: 0`` switches it off);
    the random generator and the counts are kept.

    Args:
        rate, delay, error, http_status, grpc_code, result, details: see
            :class:`FaultInjectionOptions`.
        options: the whole options object, instead of the keywords.
        seed: a seed for a generator of the policy's own.
        rng: the ``random.Random`` to draw from, instead of ``seed``.
        name: the policy's name in messages (default ``"fault_injection"``).
    """

    __slots__ = ("_lock", "_options", "_rng", "calls", "injected")

    options_type = FaultInjectionOptions

    def __init__(
        self,
        rate: float | None = None,
        *,
        delay: Delay | None = None,
        error: ErrorSpec | None = None,
        http_status: int | None = None,
        grpc_code: Any = None,
        result: Callable[[CallContext], Any] | None = None,
        details: str | None = None,
        options: FaultInjectionOptions | None = None,
        seed: int | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name if name is not None else "fault_injection")
        keywords = {
            "rate": rate, "delay": delay, "error": error, "http_status": http_status,
            "grpc_code": grpc_code, "result": result, "details": details,
        }  # fmt: skip
        given = {k: v for k, v in keywords.items() if v is not None}
        if options is None:
            options = FaultInjectionOptions(**given)
        elif not isinstance(options, FaultInjectionOptions):
            raise TypeError(f"options must be FaultInjectionOptions, got {options!r}")
        elif given:
            raise TypeError(f"give options or keywords, not both (got {', '.join(given)})")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        if rng is not None and seed is not None:
            raise TypeError("give seed or rng, not both")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self._options = options
        self._rng = rng if rng is not None else random.Random(seed)
        self._lock = threading.Lock()
        self.calls = 0
        """Calls that went through the policy."""
        self.injected = 0
        """Calls that were picked."""

    def _draw(self) -> tuple[FaultInjectionOptions, float] | None:
        """The options and the delay of a picked call, or ``None`` for a call left alone."""
        options = self._options
        with self._lock:
            self.calls += 1
            if options.rate <= 0.0 or self._rng.random() >= options.rate:
                return None
            self.injected += 1
            delay = options.delay
            if delay is None:
                return options, 0.0
            low, high = delay
            return options, (low if low == high else self._rng.uniform(low, high))

    def _fault(self, options: FaultInjectionOptions, ctx: CallContext, aio: bool) -> Any:
        """Raise the picked call's fault, or return its answer (``_PASS``: call on)."""
        message = f"{self.name}: {options.details}"
        if options.error is not None:
            error = options.error
            raise copy.copy(error) if isinstance(error, BaseException) else error(message)
        if options.http_status is not None:
            return _http_response(options.http_status, message)
        if options.grpc_code is not None:
            raise _grpc_error(options.grpc_code, message, aio)
        if options.result is not None:
            return options.result(ctx)
        return _PASS

    def wrap(self, next: SyncNext) -> SyncNext:
        policy = self

        def fault_sync(ctx: CallContext) -> Any:
            picked = policy._draw()
            if picked is None:
                return next(ctx)
            options, delay = picked
            if delay > 0:
                ctx.clock.sleep(delay)
            answer = policy._fault(options, ctx, aio=False)
            return next(ctx) if answer is _PASS else answer

        return fault_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        policy = self

        async def fault_async(ctx: CallContext) -> Any:
            picked = policy._draw()
            if picked is None:
                return await next(ctx)
            options, delay = picked
            if delay > 0:
                await ctx.clock.asleep(delay)
            answer = policy._fault(options, ctx, aio=_in_asyncio())
            return await next(ctx) if answer is _PASS else answer

        return fault_async

    def __repr__(self) -> str:
        return f"FaultInjection({self._options!r})"


_PASS: Any = object()


def _in_asyncio() -> bool:
    from asyncio.events import _get_running_loop

    return _get_running_loop() is not None


def _http_response(status: int, message: str) -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - the httpx extra is not installed
        raise RuntimeError("http_status needs httpx: pip install the httpx extra") from None
    return httpx.Response(status, text=message)


def _grpc_error(name: str, message: str, aio: bool) -> BaseException:
    try:
        import grpc
    except ImportError:  # pragma: no cover - the grpc extra is not installed
        raise RuntimeError("grpc_code needs grpcio: pip install the grpc extra") from None
    code = grpc.StatusCode[name]
    if aio:
        import grpc.aio

        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), message, message)
    from interceptors.grpc import status_error

    return status_error(code, message)
