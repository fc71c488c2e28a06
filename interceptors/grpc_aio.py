"""Resilience for ``grpc.aio`` channels: client interceptors for the four call kinds.

Usage::

    import grpc
    from interceptors.grpc_aio import aio_interceptors
    from interceptors._grpc_common import MethodPolicy
    from resilience.pipeline import Pipeline
    from resilience.policies.retry import Retry
    from resilience.policies.timeout import Timeout

    pipeline = Pipeline(Timeout(2.0), Retry(3))
    channel = grpc.aio.insecure_channel(
        "127.0.0.1:50051", interceptors=aio_interceptors(MethodPolicy(pipeline, idempotent=True))
    )

``grpc.aio`` registers an interceptor object that implements several call kinds for the
first kind only, so :func:`aio_interceptors` returns one small object per kind, all
sharing one policy table. Semantics are those of :mod:`interceptors.grpc`: one deadline
over all attempts, ``x-grpc-previous-rpc-attempts`` on retries, server pushback, streams
retried only until their first response message, request streams kept for a retry.

What the caller gets is what a plain ``grpc.aio`` channel gives. A call ended by a policy
raises an error that is both the library's (``DeadlineExceededError``,
``CircuitOpenError``...) and a ``grpc.aio.AioRpcError`` whose ``code()`` says what
happened (``DEADLINE_EXCEEDED``, ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``; see
:mod:`interceptors._grpc_errors`). A response stream is the call of the attempt that
answered (a hedge's, when a hedge won): ``code()``, trailers and ``cancel()`` act on it,
and it is judged when it ends, so a stream failing after its first message counts as a
failure for the breakers and limits around it (it is not retried).

A streaming call whose requests are sent with ``call.write()`` (no request iterator) goes
out without policies: grpc.aio lets those writes through only once the interceptors have
returned, so its outcome cannot be awaited inside them. Pass a request iterator instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"interceptors.grpc_aio needs the 'grpc' extra ({exc.name} is missing): pip install 'resilience-policies[grpc]'"
    ) from exc

from resilience.context import CallContext
from resilience.errors import ResilienceError
from resilience.outcome import Pending

from . import _grpc_common as _c
from ._grpc_common import (
    PREVIOUS_ATTEMPTS_KEY,
    GrpcPolicies,
    MethodPolicy,
    as_policies,
)
from ._grpc_errors import rpc_error
from .grpc import attempt_timeout, record_pushback

__all__ = ["AioResilienceInterceptor", "AioStream", "aio_interceptors"]

_NOTHING: Any = object()
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

# grpc-stubs make these generic; at run time they are plain classes.
if TYPE_CHECKING:
    _UnaryStreamCall = grpc.aio.UnaryStreamCall[Any, Any]
    _StreamStreamCall = grpc.aio.StreamStreamCall[Any, Any]
else:
    _UnaryStreamCall = grpc.aio.UnaryStreamCall
    _StreamStreamCall = grpc.aio.StreamStreamCall


def aio_metadata(metadata: Any, ctx: CallContext) -> Any:
    """``metadata`` plus the previous-attempts count when attempts came before this one."""
    previous = ctx.attempt - 1 + ctx.hedge
    if previous <= 0:
        return metadata
    items = [m for m in metadata if m[0] != PREVIOUS_ATTEMPTS_KEY] if metadata else []
    items.append((PREVIOUS_ATTEMPTS_KEY, str(previous)))
    return grpc.aio.Metadata(*items)


def _attempt_details(details: Any, ctx: CallContext) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        attempt_timeout(ctx),
        aio_metadata(details.metadata, ctx),
        details.credentials,
        details.wait_for_ready,
    )


async def traced_continuation(
    continuation: Callable[..., Any], details: Any, request: Any, ctx: CallContext, target: str | None
) -> Any:
    """One attempt of a traced call (``ctx.telemetry`` set): the attempt's span described and
    its trace context in the metadata, the call started with the contrib instrumentation
    suppressed (interceptors after this one, and the call's own task, see the keys)."""
    from resilience import telemetry

    pairs = telemetry.grpc_attempt(ctx, tuple(details.metadata) if details.metadata else None, target)
    this = grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*pairs) if pairs else details.metadata,
        details.credentials,
        details.wait_for_ready,
    )
    with telemetry.suppressed(ctx):
        return await continuation(this, request)


async def await_unary(call: Any, ctx: CallContext) -> Any:
    """The response of a unary-response call; a failed call raises (with its pushback recorded)."""
    try:
        return await call
    except grpc.RpcError as exc:
        record_pushback(ctx, exc)
        raise
    except asyncio.CancelledError:
        call.cancel()  # a timeout or a hedge that lost: stop the RPC too
        raise


class AioStream(Pending):
    """A response stream whose first message was read while the call could still be retried.

    It stands for the attempt's call (the one that answered, a hedge's when a hedge won):
    iterating it, or :meth:`read`, yields that message, then the rest of the stream;
    ``cancel()``, ``code()``, metadata and done callbacks act on that call. It is judged
    at its end (:class:`~resilience.outcome.Pending`): :meth:`end` is called once, with
    ``None`` when the stream ended with ``OK``, else with the error it ended with, when
    the iteration ends or fails, or when the call finishes unread (cancelled, past its
    deadline, dropped by the consumer).
    """

    def __init__(self, call: Any, iterator: AsyncIterator[Any], first: Any) -> None:
        super().__init__()
        self._call = call
        self._it = iterator
        self._first = first
        self._messages: AsyncIterator[Any] | None = None
        self._judging: asyncio.Task[None] | None = None
        if first is _NOTHING:
            self.end(None)  # the first read met the end of a stream that ended with OK
        else:
            call.add_done_callback(self._call_done)

    # -- the end ------------------------------------------------------------------------------

    def _call_done(self, call: Any) -> None:
        if self.ended:
            return
        if call.cancelled():
            self.end(asyncio.CancelledError())
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to read the status in: the call is over all the same
            self.end(None)
            return
        self._judging = loop.create_task(self._end_with_status())

    async def _end_with_status(self) -> None:
        call = self._call
        try:
            code = await call.code()
            if code is grpc.StatusCode.OK:
                self.end(None)
                return
            error: BaseException = grpc.aio.AioRpcError(
                code,
                await call.initial_metadata(),
                await call.trailing_metadata(),
                await call.details(),
                await call.debug_error_string(),
            )
        except BaseException as exc:  # the status could not be read: judge what stopped it
            error = exc
        self.end(error)

    # -- messages -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Any]:
        messages = self._messages
        if messages is None:
            messages = self._messages = self._iterate()
        return messages

    async def _iterate(self) -> AsyncIterator[Any]:
        first = self._first
        if first is _NOTHING:
            return
        self._first = _NOTHING
        yield first
        iterator = self._it
        while True:
            try:
                message = await iterator.__anext__()
            except StopAsyncIteration:
                self.end(None)
                return
            except BaseException as exc:
                self.end(exc)
                raise
            yield message

    async def read(self) -> Any:
        """The next message, or ``grpc.aio.EOF`` after the last."""
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return _EOF

    # -- the call -----------------------------------------------------------------------------

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _call: callback(self))

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        details: str = await self._call.details()
        return details

    async def debug_error_string(self) -> str | None:
        text: str | None = await self._call.debug_error_string()
        return text

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._call!r})"


class AioUnaryStream(AioStream, _UnaryStreamCall):
    """The :class:`AioStream` of a unary-request call: a ``grpc.aio.UnaryStreamCall``."""


class AioStreamStream(AioStream, _StreamStreamCall):
    """The :class:`AioStream` of a bidirectional call: a ``grpc.aio.StreamStreamCall``."""

    async def write(self, request: Any) -> None:
        await self._call.write(request)

    async def done_writing(self) -> None:
        await self._call.done_writing()

    @property
    def _done_writing_flag(self) -> bool:  # read by grpc.aio's intercepted call
        return bool(getattr(self._call, "_done_writing_flag", False))


async def read_first(call: Any, ctx: CallContext, stream_type: type[AioStream] = AioUnaryStream) -> AioStream:
    """Wait for the first message of a response stream; an error before it fails the attempt."""
    iterator = call.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = _NOTHING
    except grpc.RpcError as exc:
        record_pushback(ctx, exc)
        raise
    except asyncio.CancelledError:
        call.cancel()
        raise
    ctx.committed = True
    return stream_type(call, iterator, first)


class AsyncReplayableRequests:
    """An async request stream recorded for retries (see :class:`ReplayableRequests`)."""

    __slots__ = ("_aiter", "_buffer", "_ctx", "_done", "_iter", "_limit", "_lock", "_overflowed")

    def __init__(self, source: Any, limit: int, ctx: CallContext) -> None:
        if hasattr(source, "__aiter__"):
            self._aiter: AsyncIterator[Any] | None = source.__aiter__()
            self._iter = None
        else:
            self._aiter = None
            self._iter = iter(source)
        self._buffer: list[Any] = []
        self._limit = limit
        self._lock = asyncio.Lock()
        self._done = False
        self._overflowed = False
        self._ctx = ctx

    async def attempt(self) -> AsyncIterator[Any]:
        if self._overflowed:
            raise RuntimeError("request stream already partly sent and not kept: cannot replay")
        index = 0
        while True:
            async with self._lock:
                if index < len(self._buffer):
                    item = self._buffer[index]
                elif self._done:
                    return
                else:
                    try:
                        if self._aiter is not None:
                            item = await self._aiter.__anext__()
                        else:
                            assert self._iter is not None
                            item = next(self._iter)
                    except (StopIteration, StopAsyncIteration):
                        self._done = True
                        return
                    if len(self._buffer) < self._limit:
                        self._buffer.append(item)
                    else:
                        self._overflowed = True
                        self._ctx.committed = True
            index += 1
            yield item


class AioResilienceInterceptor:
    """Shared part of the four per-kind interceptors: the policy table and the call itself."""

    __slots__ = ("policies", "target")

    def __init__(self, policies: GrpcPolicies | MethodPolicy | Any = None, target: str | None = None) -> None:
        self.policies = as_policies(policies)
        self.target = target

    async def _intercept(
        self,
        continuation: Callable[..., Any],
        details: Any,
        request: Any,
        request_streaming: bool,
        response_streaming: bool,
    ) -> Any:
        method = details.method
        resolved = self.policies.resolve(method.decode() if isinstance(method, bytes) else method)
        pipeline = resolved.pipeline
        if pipeline is None or (request_streaming and _written(request)):
            return await continuation(details, request)
        ctx = resolved.context(details.timeout, response_streaming)
        first_deadline = ctx.deadline
        target = self.target
        stream_type = AioStreamStream if request_streaming else AioUnaryStream
        replay = None
        if request_streaming and resolved.replays:
            replay = AsyncReplayableRequests(request, resolved.buffer_limit, ctx)

        async def attempt(ctx: CallContext) -> Any:
            if ctx.attempt == 1 and ctx.hedge == 0 and ctx.deadline is first_deadline:
                this = details  # the first attempt goes out as the caller sent it
            else:
                this = _attempt_details(details, ctx)
            sent = replay.attempt() if replay is not None else request
            if ctx.telemetry is None:
                call = await continuation(this, sent)
            else:
                call = await traced_continuation(continuation, this, sent, ctx, target)
            if response_streaming:
                return await read_first(call, ctx, stream_type)
            await await_unary(call, ctx)
            return call

        try:
            return await pipeline.aexecute(attempt, ctx)
        except ResilienceError as exc:
            error = rpc_error(exc, aio=True)
            if error is None:
                raise
        raise error  # grpc.aio hands what the interceptor raised to the caller, for every kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policies!r})"


def _written(request_iterator: Any) -> bool:
    """Whether the caller sends requests with ``call.write()`` rather than an iterator.

    grpc.aio then lets ``write()`` proceed only once the interceptors have returned the
    call, so such a call cannot be held for its outcome: it goes out without policies.
    """
    return getattr(request_iterator, "__qualname__", "").endswith("_proxy_writes_as_request_iterator")


class _UnaryUnary(AioResilienceInterceptor, _c.AioUnaryUnaryClientInterceptor):
    __slots__ = ()

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request, False, False)


class _UnaryStream(AioResilienceInterceptor, _c.AioUnaryStreamClientInterceptor):
    __slots__ = ()

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request, False, True)


class _StreamUnary(AioResilienceInterceptor, _c.AioStreamUnaryClientInterceptor):
    __slots__ = ()

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator, True, False)


class _StreamStream(AioResilienceInterceptor, _c.AioStreamStreamClientInterceptor):
    __slots__ = ()

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator, True, True)


def aio_interceptors(
    policies: GrpcPolicies | MethodPolicy | Any = None, *, target: str | None = None
) -> list[grpc.aio.ClientInterceptor]:
    """The four ``grpc.aio`` client interceptors, sharing one policy table.

    With an :class:`~resilience.telemetry.OpenTelemetryListener` in the pipeline, each
    attempt carries its span's W3C trace context in its metadata, and interceptors after
    these ones see the contrib instrumentation suppressed. ``GrpcAioInstrumentorClient``
    puts its own interceptors *before* the ones given to the channel: its span then covers
    the whole call, as the parent of ours (see :mod:`resilience.telemetry`).

    Args:
        policies: a :class:`~interceptors.grpc.GrpcPolicies` table, or a
            :class:`~interceptors.grpc.MethodPolicy` or :class:`~resilience.Pipeline`
            for every method (default: no policies).
        target: the channel's target (``"host:port"``), recorded on attempt spans as
            ``server.address`` and ``server.port`` (default: not recorded).

    Returns:
        The list to pass as ``interceptors=`` to ``grpc.aio.insecure_channel`` (or
        ``secure_channel``).
    """
    if target is not None and (not isinstance(target, str) or not target):
        raise ValueError(f"target must be a non-empty 'host:port' string or None, got {target!r}")
    table = as_policies(policies)
    # grpc-stubs type this list with a placeholder that asks for a cast.
    return cast(
        list[grpc.aio.ClientInterceptor],
        [
            _UnaryUnary(table, target),
            _UnaryStream(table, target),
            _StreamUnary(table, target),
            _StreamStream(table, target),
        ],
    )
