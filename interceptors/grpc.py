"""Resilience for sync gRPC channels: one client interceptor for the four call kinds.

Usage::

    import grpc
    from interceptors.grpc import ResilienceInterceptor
    from interceptors._grpc_common import GrpcPolicies, MethodPolicy
    from resilience.pipeline import Pipeline
    from resilience.policies.retry import Retry
    from resilience.policies.timeout import Timeout

    pipeline = Pipeline(Timeout(2.0), Retry(3))
    channel = grpc.intercept_channel(
        grpc.insecure_channel("127.0.0.1:50051"),
        ResilienceInterceptor(GrpcPolicies(MethodPolicy(pipeline, idempotent=True))),
    )

Each call runs through the :class:`~resilience.Pipeline` chosen for its method; every
attempt is one call down the channel with the time left before the call's deadline as
its timeout, ``grpc-previous-rpc-attempts`` on retries, and the server's
``grpc-retry-pushback-ms`` read back for the retry policy (gRPC's retry design, A6).
A request stream is kept (up to a limit) so that a retry can send it again.

What the caller gets behaves as with a plain channel:

- **Errors** are ``grpc.RpcError`` s. A server's status comes as grpc raised it; a
  policy's verdict (a deadline, an open circuit, a full bulkhead...) is an error that is
  both the library's own (``except CircuitOpenError``) and a ``grpc.RpcError`` whose
  ``code()`` says what happened (``DEADLINE_EXCEEDED``, ``UNAVAILABLE``,
  ``RESOURCE_EXHAUSTED``; the table is in :mod:`interceptors._grpc_errors`).
- **``future()``** returns at once: the pipeline runs on a helper thread and the future
  (a ``grpc.Future`` and ``grpc.Call``) reports the outcome; ``cancel()`` cancels the
  attempt in flight and starts no other. A failed future reports the server's status,
  details and trailers.
- **Response streams** are judged when they end: one that fails after its first message
  counts as a failure for breakers and limits (it is not retried). When the pipeline may
  retry (a ``Retry`` or ``Hedge`` in it), a stream is retried until its first message:
  a server stream returns once that message came (or the call failed); a bidi stream
  returns at once and its attempts run on a helper thread until the first response, so a
  caller whose requests wait for responses (ping-pong) can write meanwhile — ``next()``
  waits for that response, ``cancel()`` stops the attempts. Without a retrying policy a
  stream is committed at once and returned as soon as it started. A stream that fails
  before it starts is a call object whose ``code()``, ``details()`` and trailers are the
  failure's and whose iteration raises it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

try:
    import grpc
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"interceptors.grpc needs the 'grpc' extra ({exc.name} is missing): pip install 'resilience-policies[grpc]'"
    ) from exc

from resilience.context import CallContext
from resilience.outcome import Pending
from resilience.pipeline import Pipeline

from . import _grpc_common as _c
from ._grpc_common import (
    PREVIOUS_ATTEMPTS_KEY,
    GrpcClassifier,
    GrpcPolicies,
    MethodPolicy,
    ReplayableRequests,
    as_policies,
    parse_pushback,
)
from ._grpc_errors import RpcStatusError, call_error, rpc_error

__all__ = ["GrpcClassifier", "GrpcPolicies", "MethodPolicy", "ResilienceInterceptor"]

_log = logging.getLogger("resilience")

_NOTHING: Any = object()
_S = grpc.StatusCode
_CANCELLED_DETAILS = "Locally cancelled by application!"


class _Details(
    NamedTuple(
        "_Details",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", Any),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,
):
    """The call details of one attempt."""


def attempt_metadata(metadata: Any, ctx: CallContext) -> Any:
    """``metadata`` plus ``grpc-previous-rpc-attempts`` when attempts came before this one."""
    previous = ctx.attempt - 1 + ctx.hedge
    if previous <= 0:
        return metadata
    extra = (PREVIOUS_ATTEMPTS_KEY, str(previous))
    if not metadata:
        return (extra,)
    return (*(m for m in metadata if m[0] != PREVIOUS_ATTEMPTS_KEY), extra)


def attempt_timeout(ctx: CallContext) -> float | None:
    """The transport timeout of the attempt: what is left of the call's deadline."""
    remaining = ctx.remaining()
    if remaining is None:
        return None
    return remaining if remaining > 0.0 else 0.0


def _attempt_details(details: Any, ctx: CallContext) -> _Details:
    return _Details(
        details.method,
        attempt_timeout(ctx),
        attempt_metadata(getattr(details, "metadata", None), ctx),
        getattr(details, "credentials", None),
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def traced_call(continuation: Callable[..., Any], details: Any, request: Any, ctx: CallContext, target: Any) -> Any:
    """One attempt of a traced call (``ctx.telemetry`` set): the attempt's span described and
    its trace context in the metadata, the call made with the contrib instrumentation suppressed."""
    from resilience import telemetry

    metadata = telemetry.grpc_attempt(ctx, getattr(details, "metadata", None), target)
    this = _Details(
        details.method,
        getattr(details, "timeout", None),
        metadata,
        getattr(details, "credentials", None),
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )
    with telemetry.suppressed(ctx):
        return continuation(this, request)


class TracedCallable:
    """A sub-channel's multicallable for one traced attempt: the call is made with the contrib
    grpc instrumentation suppressed (what the discovery channels send through)."""

    __slots__ = ("_ctx", "_inner")

    def __init__(self, inner: Any, ctx: CallContext) -> None:
        self._inner = inner
        self._ctx = ctx

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from resilience.telemetry import suppressed

        with suppressed(self._ctx):
            return self._inner(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        from resilience.telemetry import suppressed

        with suppressed(self._ctx):
            return self._inner.with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        from resilience.telemetry import suppressed

        with suppressed(self._ctx):
            return self._inner.future(*args, **kwargs)


def traced_attempt(inner: Any, ctx: CallContext, metadata: Any, address: str, aio: bool = False) -> tuple[Any, Any]:
    """For a traced attempt of a discovery channel (``ctx.telemetry`` set) to ``address``: the
    multicallable to send through and the metadata with the attempt span's trace context."""
    from resilience import telemetry

    pairs = telemetry.grpc_attempt(ctx, tuple(metadata) if metadata else None, address)
    if aio and pairs:
        pairs = grpc.aio.Metadata(*pairs)
    return TracedCallable(inner, ctx), pairs


def record_pushback(ctx: CallContext, error: BaseException) -> None:
    """Put the server's ``grpc-retry-pushback-ms`` of a failed attempt into ``ctx.pushback``."""
    trailing = getattr(error, "trailing_metadata", None)
    if trailing is not None:
        try:
            pushback = parse_pushback(trailing())
        except Exception:  # a call object that failed before it had metadata
            return
        if pushback is not None:
            ctx.pushback = pushback


def status_error(code: grpc.StatusCode, details: str, trailing: Any = None) -> RpcStatusError:
    """A ``grpc.RpcError`` (and finished ``grpc.Call``) with this status."""
    error = RpcStatusError(f"{code.name}: {details}")
    error._code = code
    error._details = details
    error._trailing_metadata = trailing
    return error


def caller_error(exc: BaseException) -> BaseException:
    """What the caller gets for ``exc``: a library error as a ``grpc.RpcError`` too, else ``exc``."""
    mapped = rpc_error(exc)
    return exc if mapped is None else mapped


def _final_error(call: Any) -> BaseException | None:
    """The error a terminated call ended with, ``None`` when it ended OK."""
    code = call.code()
    if code is _S.OK:
        return None
    if isinstance(call, BaseException):
        return call
    return status_error(code, call.details() or "", call.trailing_metadata())


def _terminated(pending: Pending, ref: Callable[[], Any]) -> None:
    # grpc runs this on its channel thread when the call terminates; it must not raise.
    call = ref()
    try:
        error = _final_error(call) if call is not None else status_error(_S.CANCELLED, "the stream was dropped")
    except Exception as exc:
        error = exc
    try:
        pending.end(error)
    except Exception:
        _log.exception("releasing the policies of a finished gRPC stream failed")


class PendingStream(Pending):
    """An attempt's response stream as the policies see it: a
    :class:`~resilience.outcome.Pending` that ends when the call terminates — read to its
    end, failed, cancelled or dropped by the caller — with ``None`` for ``OK``, else the
    call's error, so the gates around the attempt judge the stream as a whole.

    The caller gets :meth:`take`'s :class:`ResponseStream`. This object holds the call
    only until then: grpc keeps the termination callback (and through it this object and
    whatever waits for its end) until the call is over, so holding the call here too would
    keep a call the caller dropped from being cancelled, as grpc cancels a dropped call.
    """

    __slots__ = ("_ref", "_stream")

    def __init__(self, call: Any, first: Any = _NOTHING) -> None:
        super().__init__()
        self._stream: ResponseStream | None = ResponseStream(call, first, self)
        try:
            self._ref: Callable[[], Any] = weakref.ref(call)
        except TypeError:  # a call object without weak references: hold it
            self._ref = functools.partial(lambda c: c, call)
        if not call.add_callback(functools.partial(_terminated, self, self._ref)):
            try:
                error = _final_error(call)
            except Exception as exc:
                error = exc
            self.end(error)

    def take(self) -> ResponseStream:
        """The stream for the caller (once)."""
        stream = self._stream
        if stream is None:
            raise RuntimeError("the stream was already handed over")
        self._stream = None
        return stream

    def cancel(self) -> bool:
        """Cancel the call (a stream thrown away: a hedge that lost, a retried result)."""
        stream = self._stream
        call = stream._call if stream is not None else self._ref()
        return bool(call.cancel()) if call is not None else False

    def __repr__(self) -> str:
        return f"PendingStream({self._ref()!r})"


class ResponseStream(grpc.Call, _c.Future):
    """The response stream the caller gets: the attempt's call, with the first message when
    one was read while the call could still be retried.

    Iterating yields that message, then the rest of the stream; every other method is the
    underlying call's.
    """

    __slots__ = ("_call", "_first", "_pending")

    def __init__(self, call: Any, first: Any, pending: Pending) -> None:
        self._call = call
        self._first = first
        self._pending = pending

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        first = self._first
        if first is not _NOTHING:
            self._first = _NOTHING
            return first
        try:
            return next(self._call)
        except StopIteration:
            self._pending.end(None)
            raise
        except grpc.RpcError as exc:
            self._pending.end(exc)
            raise

    next = __next__

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> Any:
        return self._call.code()

    def details(self) -> Any:
        return self._call.details()

    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> Any:
        return self._call.time_remaining()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._call.add_callback(callback))

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return bool(self._call.done())

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _: fn(self))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __repr__(self) -> str:
        return f"ResponseStream({self._call!r})"


def caller_stream(result: Any) -> Any:
    """What the caller gets for a response-streaming pipeline's result: the stream of a
    :class:`PendingStream`, anything else (a fallback's value) as it is."""
    return result.take() if isinstance(result, PendingStream) else result


def read_first(call: Any, ctx: CallContext) -> PendingStream:
    """Wait for the first message of a response stream; an error before it fails the attempt."""
    try:
        first = next(call)
    except StopIteration:
        first = _NOTHING
    except grpc.RpcError as exc:
        record_pushback(ctx, exc)
        raise
    ctx.committed = True
    return PendingStream(call, first)


class Answered(grpc.Call, _c.Future):
    """A finished ``OK`` call whose response no server sent: a fallback's answer."""

    __slots__ = ("_response",)

    def __init__(self, response: Any) -> None:
        self._response = response

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def code(self) -> Any:
        return _S.OK

    def details(self) -> Any:
        return ""

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> Any:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> Any:
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __repr__(self) -> str:
        return f"Answered({self._response!r})"


def unary_outcome(outcome: Any, ctx: CallContext) -> Any:
    """The outcome of a unary-response attempt, raised when it is an error."""
    exc = outcome.exception()
    if exc is not None:
        record_pushback(ctx, exc)
        raise exc
    return outcome


def future_outcome(future: Any, ctx: CallContext) -> Any:
    """Wait for a unary-response attempt made with ``future()``; raise its error (a cancelled
    attempt raises its own ``CANCELLED`` status)."""
    try:
        exc = future.exception()
    except grpc.FutureCancelledError:
        exc = future if isinstance(future, grpc.RpcError) else status_error(_S.CANCELLED, _CANCELLED_DETAILS)
    if exc is not None:
        record_pushback(ctx, exc)
        raise exc
    return future


class SharedRequests(ReplayableRequests):
    """A request stream recorded for retries, read from its source by one attempt at a time.

    No lock is held while the source is read: the sender of an attempt whose call is over
    may still be waiting in the source (grpc's sender thread cannot be stopped), and the
    next attempt must meanwhile send what was recorded. A message that sender takes is
    recorded like any other, so the live attempt gets it; past the limit it goes to the
    newest attempt only, and an older one still reading ends with an error.
    """

    __slots__ = ("_cond", "_generation", "_pulling", "_unkept")

    def __init__(self, source: Iterable[Any], limit: int, ctx: CallContext) -> None:
        super().__init__(source, limit, ctx)
        self._cond = threading.Condition(self._lock)
        self._pulling = False
        self._generation = 0
        self._unkept: deque[Any] = deque()

    def attempt(self) -> Iterator[Any]:
        with self._cond:
            if self._overflowed:
                raise RuntimeError("request stream already partly sent and not kept: cannot replay")
            self._generation += 1
            return self._messages(self._generation)

    def _messages(self, generation: int) -> Iterator[Any]:
        cond, buffer = self._cond, self._buffer
        index = 0
        while True:
            pull = False
            with cond:
                while True:
                    if index < len(buffer):
                        item = buffer[index]
                        index += 1
                        break
                    if self._unkept and generation == self._generation:
                        item = self._unkept.popleft()
                        break
                    if self._done:
                        return
                    if self._overflowed and generation != self._generation:
                        raise RuntimeError("request stream taken over by a newer attempt")
                    if not self._pulling:
                        self._pulling = pull = True
                        break
                    cond.wait()
            if not pull:
                yield item
                continue
            try:
                item = next(self._source)
            except StopIteration:
                with cond:
                    self._done = True
                    self._pulling = False
                    cond.notify_all()
                return
            except BaseException:
                with cond:
                    self._pulling = False
                    cond.notify_all()
                raise
            with cond:
                self._pulling = False
                if len(buffer) < self._limit:
                    buffer.append(item)
                else:
                    self._overflowed = True
                    self._ctx.committed = True
                    self._unkept.append(item)
                cond.notify_all()


# -- calls whose pipeline runs on a helper thread ----------------------------------------------

_RUNNING, _DONE, _CANCELLED = 0, 1, 2


class BackgroundCall(grpc.Call, _c.Future):
    """What the caller holds while a call's pipeline runs on a helper thread.

    The pipeline's attempts call :meth:`check` before they start and :meth:`begin` with the
    call they started; :meth:`cancel` cancels those in flight, and any attempt after it
    fails with ``CANCELLED`` without being sent. The outcome (``_value`` or ``_error``) is
    set once, by the pipeline's end or by ``cancel()``, whichever comes first.
    """

    __slots__ = (
        "_calls",
        "_clock",
        "_cond",
        "_deadline",
        "_done_callbacks",
        "_error",
        "_rpc_callbacks",
        "_state",
        "_value",
    )

    def __init__(self, ctx: CallContext | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._state = _RUNNING
        self._calls: list[Any] = []
        self._value: Any = None
        self._error: BaseException | None = None
        self._done_callbacks: list[Callable[[Any], None]] = []
        self._rpc_callbacks: list[Callable[[], None]] = []
        self._clock = ctx.clock if ctx is not None else None
        self._deadline = ctx.deadline if ctx is not None else None

    @classmethod
    def failed(cls, error: BaseException, ctx: CallContext | None = None) -> Any:
        """A call that ended with ``error`` before it could start."""
        call = cls(ctx)
        call._state = _DONE
        call._error = error
        return call

    # -- the pipeline's side -------------------------------------------------------------

    def start(self, pipeline: Pipeline, attempt: Callable[[CallContext], Any], ctx: CallContext) -> None:
        """Run ``pipeline.execute(attempt, ctx)`` on a new daemon thread (in a copy of the
        caller's context variables)."""
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(self._run, pipeline, attempt, ctx), name="resilience-grpc-call", daemon=True
        )
        thread.start()

    def _run(self, pipeline: Pipeline, attempt: Callable[[CallContext], Any], ctx: CallContext) -> None:
        try:
            value = pipeline.execute(attempt, ctx)
        except BaseException as exc:  # the thread reports every ending
            self._finish(None, caller_error(exc))
        else:
            self._finish(value, None)

    def check(self) -> None:
        """Before an attempt: fail it with ``CANCELLED`` when the call was cancelled."""
        if self._state == _CANCELLED:
            raise status_error(_S.CANCELLED, _CANCELLED_DETAILS)

    def begin(self, call: Any) -> None:
        """An attempt started ``call``: cancel it with the call (at once when that came first)."""
        with self._cond:
            cancelled = self._state == _CANCELLED
            if not cancelled:
                self._calls.append(call)
        if cancelled:
            call.cancel()

    def _finish(self, value: Any, error: BaseException | None) -> bool:
        """Set the outcome; ``False`` when the call was cancelled first."""
        with self._cond:
            if self._state != _RUNNING:
                return False
            self._state = _DONE
            self._value, self._error = value, error
            self._calls = []
            self._cond.notify_all()
            done, self._done_callbacks = self._done_callbacks, []
            rpc, self._rpc_callbacks = self._rpc_callbacks, []
        self._announce(done, rpc)
        return True

    def _announce(self, done: list[Callable[[Any], None]], rpc: list[Callable[[], None]]) -> None:
        for fn in done:
            self._call_back(fn, self)
        for cb in rpc:
            self._call_back(cb)

    @staticmethod
    def _call_back(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            _log.exception("a gRPC call callback failed")

    # -- the caller's side ---------------------------------------------------------------

    def _wait(self, timeout: float | None) -> bool:
        with self._cond:
            if self._state == _RUNNING:
                self._cond.wait_for(lambda: self._state != _RUNNING, timeout)
            return self._state != _RUNNING

    def _outcome(self) -> Any:
        """The finished call whose status this call reports (waits for it)."""
        self._wait(None)
        return self._error if self._error is not None else self._value

    def cancel(self) -> bool:
        with self._cond:
            if self._state != _RUNNING:
                return False
            self._state = _CANCELLED
            self._error = status_error(_S.CANCELLED, _CANCELLED_DETAILS)
            calls, self._calls = self._calls, []
            self._cond.notify_all()
            done, self._done_callbacks = self._done_callbacks, []
            rpc, self._rpc_callbacks = self._rpc_callbacks, []
        for call in calls:
            try:
                call.cancel()
            except Exception:
                _log.exception("cancelling a gRPC attempt failed")
        self._announce(done, rpc)
        return True

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def running(self) -> bool:
        return self._state == _RUNNING

    def done(self) -> bool:
        return self._state != _RUNNING

    def result(self, timeout: float | None = None) -> Any:
        if not self._wait(timeout):
            raise grpc.FutureTimeoutError()
        if self._state == _CANCELLED:
            raise grpc.FutureCancelledError()
        if self._error is not None:
            raise self._error
        value = self._value
        return value.result() if isinstance(value, grpc.Future) else value  # else a fallback's value

    def exception(self, timeout: float | None = None) -> Any:
        if not self._wait(timeout):
            raise grpc.FutureTimeoutError()
        if self._state == _CANCELLED:
            raise grpc.FutureCancelledError()
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._cond:
            if self._state == _RUNNING:
                self._done_callbacks.append(fn)
                return
        fn(self)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._cond:
            if self._state == _RUNNING:
                self._rpc_callbacks.append(callback)
                return True
        return False

    def is_active(self) -> bool:
        return self._state == _RUNNING

    def time_remaining(self) -> Any:
        deadline, clock = self._deadline, self._clock
        if deadline is None or clock is None:
            return None
        return max(0.0, deadline - clock.monotonic())

    def initial_metadata(self) -> Any:
        return _status(self._outcome(), "initial_metadata", ())

    def trailing_metadata(self) -> Any:
        return _status(self._outcome(), "trailing_metadata", ())

    def code(self) -> Any:
        outcome = self._outcome()  # an error that is no grpc.Call is UNKNOWN; a fallback's value OK
        return _status(outcome, "code", _S.UNKNOWN if self._error is not None else _S.OK)

    def details(self) -> Any:
        outcome = self._outcome()
        return _status(outcome, "details", str(outcome) if self._error is not None else "")

    def __repr__(self) -> str:
        state = ("running", "done", "cancelled")[self._state]
        return f"<{type(self).__name__} {state}: {self._error if self._error is not None else self._value!r}>"


def _status(outcome: Any, name: str, default: Any) -> Any:
    method = getattr(outcome, name, None)
    return method() if callable(method) else default


class FutureCall(BackgroundCall):
    """A unary-response call made with ``future()``: a ``grpc.Future`` and ``grpc.Call``."""

    __slots__ = ()


class StreamCall(BackgroundCall):
    """A response-streaming call whose pipeline runs on a helper thread until the first
    response (or that failed before it started); once it has a stream, everything is the
    stream's."""

    __slots__ = ()

    def _stream(self) -> ResponseStream | None:
        return self._value if self._state == _DONE else None

    def _run(self, pipeline: Pipeline, attempt: Callable[[CallContext], Any], ctx: CallContext) -> None:
        try:
            value = pipeline.execute(attempt, ctx)
        except BaseException as exc:  # the thread reports every ending
            self._finish(None, caller_error(exc))
            return
        if not self._finish(caller_stream(value), None) and isinstance(value, PendingStream):
            value.cancel()  # cancelled meanwhile

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        self._wait(None)
        if self._error is not None:
            raise self._error
        return next(self._value)

    next = __next__

    def _announce(self, done: list[Callable[[Any], None]], rpc: list[Callable[[], None]]) -> None:
        stream = self._stream()
        if stream is None:
            super()._announce(done, rpc)
            return
        for fn in done:
            stream.add_done_callback(lambda _, fn=fn: fn(self))  # type: ignore[misc]
        for cb in rpc:
            if not stream.add_callback(cb):
                self._call_back(cb)

    def cancel(self) -> bool:
        stream = self._stream()
        return stream.cancel() if stream is not None else super().cancel()

    def cancelled(self) -> bool:
        stream = self._stream()
        return stream.cancelled() if stream is not None else super().cancelled()

    def running(self) -> bool:
        stream = self._stream()
        return stream.running() if stream is not None else super().running()

    def done(self) -> bool:
        stream = self._stream()
        return stream.done() if stream is not None else super().done()

    def is_active(self) -> bool:
        stream = self._stream()
        return stream.is_active() if stream is not None else super().is_active()

    def time_remaining(self) -> Any:
        stream = self._stream()
        return stream.time_remaining() if stream is not None else super().time_remaining()

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        stream = self._stream()
        if stream is None:
            with self._cond:
                if self._state == _RUNNING:
                    self._done_callbacks.append(fn)
                    return
            stream = self._stream()
            if stream is None:
                fn(self)
                return
        stream.add_done_callback(lambda _: fn(self))

    def add_callback(self, callback: Callable[[], None]) -> bool:
        stream = self._stream()
        if stream is None:
            if super().add_callback(callback):
                return True
            stream = self._stream()
            if stream is None:
                return False
        return stream.add_callback(callback)

    def result(self, timeout: float | None = None) -> Any:
        if not self._wait(timeout):
            raise grpc.FutureTimeoutError()
        stream = self._stream()
        return stream.result(timeout) if stream is not None else super().result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        if not self._wait(timeout):
            raise grpc.FutureTimeoutError()
        stream = self._stream()
        return stream.exception(timeout) if stream is not None else super().exception(timeout)


# -- the interceptor ---------------------------------------------------------------------------

_FUTURE_CODES: dict[Any, bool] = {}


def _is_future(continuation: Callable[..., Any]) -> bool:
    """Whether grpc calls the interceptor for ``future()``: its continuation then returns a
    running future (``_UnaryUnaryMultiCallable.future.<locals>.continuation``), where the
    blocking calls' continuation returns a finished outcome."""
    code = getattr(continuation, "__code__", None)
    if code is None:
        return False
    known = _FUTURE_CODES.get(code)
    if known is None:
        known = code.co_qualname.endswith(".future.<locals>.continuation")
        if len(_FUTURE_CODES) < 256:
            _FUTURE_CODES[code] = known
    return known


class ResilienceInterceptor(
    _c.UnaryUnaryClientInterceptor,
    _c.UnaryStreamClientInterceptor,
    _c.StreamUnaryClientInterceptor,
    _c.StreamStreamClientInterceptor,
):
    """Runs every call of a sync channel through the pipeline of its method.

    **Which calls a Retry retries.** An attempt that never reached a server (no connection
    could be made: ``UNAVAILABLE`` "failed to connect", the case gRPC itself retries
    transparently) is retried for every method. Beyond that, only methods marked idempotent
    are retried or hedged: ``MethodPolicy(pipeline, idempotent=True)`` for a method or as
    the table's default, since gRPC cannot tell a safe method from its name. A ``Retry``
    in the pipeline of a method not marked idempotent retries nothing else.

    **What the caller gets** is what a plain channel gives (see the module's notes):
    ``grpc.RpcError`` s, also the library's own error for a policy's verdict; ``future()``
    returning at once; streams judged at their end; bidi streams that the caller can
    write to before the first response.

    **Tracing.** With an :class:`~resilience.telemetry.OpenTelemetryListener` in the
    pipeline, each attempt carries its span's W3C trace context in its metadata and is
    sent with the contrib grpc instrumentation suppressed (one CLIENT span per attempt).

    Args:
        policies: a :class:`GrpcPolicies` table, or a :class:`MethodPolicy` or
            :class:`~resilience.Pipeline` for every method (default: no policies).
        target: the channel's target (``"host:port"``), recorded on attempt spans as
            ``server.address`` and ``server.port`` (default: not recorded).
    """

    __slots__ = ("policies", "target")

    def __init__(self, policies: GrpcPolicies | MethodPolicy | Any = None, *, target: str | None = None) -> None:
        if target is not None and (not isinstance(target, str) or not target):
            raise ValueError(f"target must be a non-empty 'host:port' string or None, got {target!r}")
        self.policies = as_policies(policies)
        self.target = target

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request, False, False)

    def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request, False, True)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator, True, False)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator, True, True)

    def _intercept(
        self,
        continuation: Callable[..., Any],
        details: Any,
        request: Any,
        request_streaming: bool,
        response_streaming: bool,
    ) -> Any:
        resolved = self.policies.resolve(details.method)
        pipeline = resolved.pipeline
        if pipeline is None:
            return continuation(details, request)
        ctx = resolved.context(details.timeout, streaming=response_streaming)
        first_deadline = ctx.deadline
        target = self.target
        replays = resolved.replays  # something in the pipeline may send the call again
        replay: ReplayableRequests | None = None
        if request_streaming and replays:
            replay = SharedRequests(request, resolved.buffer_limit, ctx)
        background: BackgroundCall | None = None
        if response_streaming:
            if request_streaming and replays:
                background = StreamCall(ctx)
        elif _is_future(continuation):
            background = FutureCall(ctx)

        def attempt(ctx: CallContext) -> Any:
            if background is not None:
                background.check()
            if ctx.attempt == 1 and ctx.hedge == 0 and ctx.deadline is first_deadline:
                this = details  # the first attempt goes out as the caller sent it
            else:
                this = _attempt_details(details, ctx)
            sent = replay.attempt() if replay is not None else request
            if ctx.telemetry is None:
                call = continuation(this, sent)
            else:
                call = traced_call(continuation, this, sent, ctx, target)
            if background is not None:
                background.begin(call)
            if response_streaming:
                if replays:
                    return read_first(call, ctx)
                ctx.committed = True
                return PendingStream(call)
            if background is not None:
                return future_outcome(call, ctx)
            return unary_outcome(call, ctx)

        if background is not None:
            background.start(pipeline, attempt, ctx)
            return background
        try:
            result = pipeline.execute(attempt, ctx)
            if response_streaming:
                return caller_stream(result)
            # grpc reads the response with ``result()``: an answer no attempt gave (a fallback's) is wrapped.
            return result if background is not None or isinstance(result, grpc.Future) else Answered(result)
        except Exception as exc:
            error = call_error(exc, response_streaming)
            if error is None:
                raise
        if response_streaming:
            return StreamCall.failed(error, ctx)
        raise error

    def __repr__(self) -> str:
        return f"ResilienceInterceptor({self.policies!r})"
