"""The ``grpc.aio`` discovery-aware channel: :class:`AioResilientChannel` (see :mod:`interceptors.grpc_channel`).

Its call objects are ``grpc.aio`` calls (``UnaryUnaryCall``, ``UnaryStreamCall``...), with
their whole API: the RPC starts when the call is made; ``code()``, metadata,
``add_done_callback()``, ``time_remaining()``, ``wait_for_connection()`` and ``cancel()``
work before, during and after it; awaiting a call twice sends it once. A request-streaming
call made without a request iterator takes its requests from ``write()`` and
``done_writing()``, and goes through the policies like any other (the writes are kept for
a retry, up to ``max_buffered_requests``). A call ended by a policy raises an error that is
both the library's and a ``grpc.aio.AioRpcError`` (see :mod:`interceptors._grpc_errors`).
A response stream holds its endpoint (and the permits of the policies around it) until it
ends, and is judged by how it ended.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, cast

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"interceptors.grpc_channel_aio needs the 'grpc' extra ({exc.name} is missing): "
        "pip install 'resilience-policies[grpc]'"
    ) from exc

from resilience._validate import Seconds, seconds
from resilience.balancing.base import Balancer
from resilience.balancing.pool import EndpointPool, EndpointState, HealthFactory
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.errors import ResilienceError
from resilience.outcome import Outcome, error_outcome

from ._channel_common import ChannelCallable as _Callable
from ._channel_common import channels as _channels
from ._channel_common import open_pool
from ._channel_common import release as _release
from ._channel_common import running_loop as _running_loop
from ._grpc_common import (
    GrpcPolicies,
    MethodPolicy,
    as_policies,
)
from ._grpc_errors import rpc_error
from ._wiring import Ejection, pick
from .grpc import attempt_timeout, traced_attempt
from .grpc_aio import AioStream, AioStreamStream, AioUnaryStream, AsyncReplayableRequests, aio_metadata, await_unary
from .grpc_aio import read_first as aread_first

__all__ = ["AioResilientChannel", "aio_resilient_channel"]

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
_SUCCESS = Outcome.SUCCESS
_DONE_WRITING: Any = object()
_LOCALLY_CANCELLED = "Locally cancelled by application!"
_FINISHED = "RPC already finished."
_HALF_CLOSED = 'RPC is half closed after calling "done_writing".'

# grpc-stubs make these generic; at run time they are plain classes.
if TYPE_CHECKING:
    _UnaryUnaryCall = grpc.aio.UnaryUnaryCall[Any, Any]
    _UnaryStreamCall = grpc.aio.UnaryStreamCall[Any, Any]
    _StreamUnaryCall = grpc.aio.StreamUnaryCall[Any, Any]
    _StreamStreamCall = grpc.aio.StreamStreamCall[Any, Any]
else:
    _UnaryUnaryCall = grpc.aio.UnaryUnaryCall
    _UnaryStreamCall = grpc.aio.UnaryStreamCall
    _StreamUnaryCall = grpc.aio.StreamUnaryCall
    _StreamStreamCall = grpc.aio.StreamStreamCall


# -- asyncio ---------------------------------------------------------------------------------


class _Writes:
    """The request stream of a call whose caller sends with ``write()``: what the attempts read.

    Not a generator, so an attempt cancelled while it waits for the next message (a retry,
    a hedge that lost) leaves the stream open for the next attempt.
    """

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    def __aiter__(self) -> _Writes:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if item is _DONE_WRITING:
            self._queue.put_nowait(_DONE_WRITING)  # every later attempt ends here too
            raise StopAsyncIteration
        return item

    async def put(self, item: Any) -> None:
        await self._queue.put(item)


class _ChannelCall:
    """What the four call objects of the aio channel share.

    The RPC starts when the call object is made, in a task of its own that runs the policies
    (as ``grpc.aio`` starts a call at once); awaiting or iterating the call object waits
    for that task, so awaiting it twice sends nothing twice. The task ends with the finished
    call (unary response) or with the live :class:`~interceptors.grpc_aio.AioStream` of the
    attempt that answered.
    """

    def __init__(self, owner: _AioCallable, request: Any, options: tuple[Any, ...]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("an AioResilientChannel call must be made in a running asyncio event loop") from None
        resolved = owner._resolved
        self._method = owner._method
        self._writes: _Writes | None = None
        self._half_closed = False
        if request is None and owner._kind.startswith("stream_"):
            self._writes = request = _Writes()
        ctx = resolved.context(options[0], owner._kind.endswith("_stream"))
        self._clock = ctx.clock
        self._deadline = ctx.deadline
        self._attempt_call: Any = None  # the call of the latest attempt
        self._attempt_made = asyncio.Event()
        self._callbacks: list[Callable[[Any], None]] = []
        self._finished: asyncio.Future[None] = loop.create_future()
        self._task: asyncio.Task[Any] = loop.create_task(owner._run(self, ctx, request, *options[1:]))
        self._task.add_done_callback(self._task_done)

    def __del__(self) -> None:
        # As grpc.aio's calls: a call dropped before it is done is cancelled.
        try:
            if not self.done():
                self.cancel()
        except Exception:  # the loop is closed, or the call was never fully made
            pass

    # -- what the task ended with -------------------------------------------------------------

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            result = task.result()
            if isinstance(result, AioStream) and not result.done():
                # Held weakly: a stream its caller dropped is cancelled when collected.
                me = weakref.ref(self)

                def stream_done(_stream: Any) -> None:
                    call = me()
                    if call is not None:
                        call._call_done()

                result.add_done_callback(stream_done)
                return
        self._call_done()

    def _call_done(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def _attempting(self, call: Any) -> None:
        """An attempt made ``call``: what :meth:`wait_for_connection` waits on."""
        self._attempt_call = call
        self._attempt_made.set()

    def _inner(self) -> Any:
        """The finished call or the live stream the caller's call stands for (the task is done, well)."""
        result = self._task.result()
        return result if isinstance(result, AioStream) else result[1]

    async def _outcome(self) -> Any:
        """The inner call, or the error the call ended with (as a value); waiting does not
        cancel the call when the waiter is cancelled."""
        task = self._task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # the waiter was cancelled, not the call
            return asyncio.CancelledError()
        except BaseException as exc:
            return exc
        return self._inner()

    # -- the call API ---------------------------------------------------------------------------

    def cancel(self) -> bool:
        task = self._task
        if not task.done():
            return task.cancel()
        if task.cancelled() or task.exception() is not None:
            return False
        return bool(self._inner().cancel())

    def cancelled(self) -> bool:
        task = self._task
        if not task.done():
            return False
        if task.cancelled():
            return True
        error = task.exception()
        if error is not None:
            return isinstance(error, grpc.RpcError) and _code_of(error) is grpc.StatusCode.CANCELLED
        return bool(self._inner().cancelled())

    def done(self) -> bool:
        task = self._task
        if not task.done():
            return False
        if task.cancelled() or task.exception() is not None:
            return True
        return bool(self._inner().done())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` once the call is done (at once when it is)."""
        if self._finished.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline (``None`` without one)."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._clock.monotonic())

    async def wait_for_connection(self) -> None:
        """Wait until an attempt has reached a server; raise the call's error when it ended without."""
        seen = None
        task = self._task
        while True:
            call = self._attempt_call
            if call is not None and call is not seen:
                seen = call
                try:
                    await call.wait_for_connection()
                except grpc.RpcError:
                    continue  # that attempt failed: a retry may follow, or the call ends with an error
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    continue  # that attempt was cancelled (a hedge that lost, a timeout)
                return
            if task.done():
                error = await self._outcome()
                if isinstance(error, BaseException):
                    raise error
                return
            self._attempt_made.clear()
            made = asyncio.ensure_future(self._attempt_made.wait())
            try:
                await asyncio.wait((made, task), return_when=asyncio.FIRST_COMPLETED)
            finally:
                made.cancel()

    async def code(self) -> grpc.StatusCode:
        outcome = await self._outcome()
        if isinstance(outcome, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        if isinstance(outcome, BaseException):
            return _code_of(outcome) or grpc.StatusCode.UNKNOWN
        code: grpc.StatusCode = await outcome.code()
        return code

    async def details(self) -> str:
        outcome = await self._outcome()
        if isinstance(outcome, asyncio.CancelledError):
            return _LOCALLY_CANCELLED
        if isinstance(outcome, grpc.RpcError):
            return str(cast(Any, outcome).details())
        if isinstance(outcome, BaseException):
            return str(outcome)
        details: str = await outcome.details()
        return details

    async def debug_error_string(self) -> str | None:
        outcome = await self._outcome()
        if isinstance(outcome, grpc.aio.AioRpcError):
            return outcome.debug_error_string()
        if isinstance(outcome, BaseException):
            return "" if isinstance(outcome, asyncio.CancelledError) else repr(outcome)
        text: str | None = await outcome.debug_error_string()
        return text

    async def initial_metadata(self) -> Any:
        outcome = await self._outcome()
        if isinstance(outcome, grpc.aio.AioRpcError):
            return outcome.initial_metadata()
        if isinstance(outcome, BaseException):
            return None
        return await outcome.initial_metadata()

    async def trailing_metadata(self) -> Any:
        outcome = await self._outcome()
        if isinstance(outcome, grpc.aio.AioRpcError):
            return outcome.trailing_metadata()
        if isinstance(outcome, BaseException):
            return None
        return await outcome.trailing_metadata()

    # -- requests written by the caller ------------------------------------------------------------

    async def write(self, request: Any) -> None:
        """Send one request message (a call made without a request iterator)."""
        writes = self._writes
        if writes is None:
            raise grpc.aio.UsageError("this call was given a request iterator: write() cannot be used with it")
        if self._half_closed:
            raise asyncio.InvalidStateError(_HALF_CLOSED)
        await self._put(writes, request)

    async def done_writing(self) -> None:
        """No more request messages (a call made without a request iterator); idempotent."""
        writes = self._writes
        if writes is None:
            raise grpc.aio.UsageError("this call was given a request iterator: done_writing() cannot be used with it")
        if self._half_closed:
            return
        self._half_closed = True
        if not self._finished.done():
            await self._put(writes, _DONE_WRITING)

    async def _put(self, writes: _Writes, item: Any) -> None:
        if self._finished.done():
            raise asyncio.InvalidStateError(_FINISHED)
        put = asyncio.ensure_future(writes.put(item))
        try:
            await asyncio.wait((put, self._finished), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
        if not put.done() or put.cancelled():
            raise asyncio.InvalidStateError(_FINISHED)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._method} {'done' if self.done() else 'running'}>"


class _UnaryResponse(_ChannelCall):
    def __await__(self) -> Generator[Any, None, Any]:
        response, _call = yield from self._task.__await__()
        return response


class _StreamResponse(_ChannelCall):
    _messages: AsyncIterator[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        messages = self._messages
        if messages is None:
            messages = self._messages = self._iterate()
        return messages

    async def _iterate(self) -> AsyncIterator[Any]:
        stream: AioStream = await self._task
        async for message in stream:
            yield message

    async def read(self) -> Any:
        """The next message, or ``grpc.aio.EOF`` after the last."""
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return _EOF


class _AioUnaryUnaryCall(_UnaryResponse, _UnaryUnaryCall):
    """A unary call of the aio channel (a ``grpc.aio.UnaryUnaryCall``)."""


class _AioUnaryStreamCall(_StreamResponse, _UnaryStreamCall):
    """A response-streaming call of the aio channel (a ``grpc.aio.UnaryStreamCall``)."""


class _AioStreamUnaryCall(_UnaryResponse, _StreamUnaryCall):
    """A request-streaming call of the aio channel (a ``grpc.aio.StreamUnaryCall``)."""


class _AioStreamStreamCall(_StreamResponse, _StreamStreamCall):
    """A bidirectional call of the aio channel (a ``grpc.aio.StreamStreamCall``)."""


_CALL_TYPES: dict[str, type[_ChannelCall]] = {
    "unary_unary": _AioUnaryUnaryCall,
    "unary_stream": _AioUnaryStreamCall,
    "stream_unary": _AioStreamUnaryCall,
    "stream_stream": _AioStreamStreamCall,
}


def _code_of(error: BaseException) -> grpc.StatusCode | None:
    try:
        code = cast(Any, error).code()
    except Exception:
        return None
    return code if isinstance(code, grpc.StatusCode) else None


class _AioCallable(_Callable):
    __slots__ = ()

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
        request_iterator: Any = None,
    ) -> Any:
        """Start a call; a streaming-request call takes its requests as ``request`` (or
        ``request_iterator=``), or, with neither, from ``write()``/``done_writing()``."""
        if request is None:
            request = request_iterator
        call_type = _CALL_TYPES[self._kind]
        return call_type(self, request, (timeout, metadata, credentials, wait_for_ready, compression))

    async def _run(
        self,
        outer: _ChannelCall,
        ctx: CallContext,
        request: Any,
        metadata: Any,
        credentials: Any,
        wait_for_ready: Any,
        compression: Any,
    ) -> Any:
        """The call through the policies: ``(response, call)``, or the live stream."""
        pool, resolved, kind = self._pool, self._resolved, self._kind
        response_streaming = kind.endswith("_stream")
        stream_type = AioStreamStream if kind == "stream_stream" else AioUnaryStream
        replay: AsyncReplayableRequests | None = None
        if kind.startswith("stream_") and resolved.replays:
            replay = AsyncReplayableRequests(request, resolved.buffer_limit, ctx)

        caller = weakref.ref(outer)  # the attempts do not keep the caller's call alive
        del outer
        picks = self._picks(ctx)

        async def attempt(ctx: CallContext) -> Any:
            selection = pick(pool, ctx, picks)
            start = ctx.clock.monotonic()
            try:
                inner = self._on(selection.state)
                sent_metadata = aio_metadata(metadata, ctx)
                if ctx.telemetry is not None:  # traced: the span's context sent, the contrib instrumentation quiet
                    inner, sent_metadata = traced_attempt(inner, ctx, sent_metadata, selection.address, aio=True)
                call = inner(
                    replay.attempt() if replay is not None else request,
                    timeout=attempt_timeout(ctx),
                    metadata=sent_metadata,
                    credentials=credentials,
                    wait_for_ready=wait_for_ready,
                    compression=compression,
                )
                made = caller()
                if made is not None:
                    made._attempting(call)
                if response_streaming:
                    stream = await aread_first(call, ctx, stream_type)
                else:
                    response = await await_unary(call, ctx)
            except BaseException as exc:
                # error_outcome: an attempt cut by an outer Timeout was too slow (a failure).
                _release(selection, error_outcome(ctx, exc), start, ctx)
                raise
            if not response_streaming:
                _release(selection, _SUCCESS, start, ctx)
                return response, call

            def ended(error: BaseException | None) -> None:
                _release(selection, _SUCCESS if error is None else error_outcome(ctx, error), start, ctx)

            stream.on_end(ended)  # the endpoint is judged when the stream ends
            return stream

        pipeline = resolved.pipeline
        try:
            if pipeline is not None:
                return await pipeline.aexecute(attempt, ctx)
            return await attempt(ctx)
        except ResilienceError as exc:
            error = rpc_error(exc, aio=True)
            if error is None:
                raise
        raise error


class AioResilientChannel(grpc.aio.Channel):
    """The ``grpc.aio`` twin of :class:`ResilientChannel` (same arguments; the factory
    makes ``grpc.aio`` channels, by default ``grpc.aio.insecure_channel(address, options)``).

    Sub-channels are made in the event loop of the calls that use them; close the
    channel with ``await channel.close()`` (or ``async with``).
    """

    def __init__(
        self,
        service: str,
        discovery: Discovery | str,
        balancer: Balancer | None = None,
        policies: GrpcPolicies | MethodPolicy | Any = None,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        drain_timeout: Seconds = 30.0,
        endpoint_health: HealthFactory | None = None,
        ejection: Ejection | None = None,
    ) -> None:
        self.policies = as_policies(policies)
        drain = seconds("drain_timeout", drain_timeout)
        opts = list(options)
        factory = channel_factory or (lambda address: grpc.aio.insecure_channel(address, options=opts))
        self._closing: set[asyncio.Task[Any]] = set()
        self._handles: set[asyncio.TimerHandle] = set()
        self._pool: EndpointPool[grpc.aio.Channel]
        self._pool, self._owned = open_pool(
            service,
            discovery,
            balancer,
            ejection=ejection,
            health=endpoint_health,
            make=lambda endpoint: factory(endpoint.address),
            close=self._close_state,
            drain_timeout=drain,
            schedule=self._schedule,
        )

    @property
    def pool(self) -> EndpointPool[grpc.aio.Channel]:
        """The endpoints, their state and their sub-channels."""
        return self._pool

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints known now."""
        return self._pool.endpoints

    def inflight(self) -> dict[str, int]:
        """Attempts in flight per endpoint address."""
        return self._pool.inflight()

    def _close_state(self, state: EndpointState[grpc.aio.Channel]) -> None:
        loop = state.loop
        if loop is None or loop.is_closed() or state.resource is None:
            return
        if _running_loop() is loop:
            self._spawn_close(state.resource)
        else:
            loop.call_soon_threadsafe(self._spawn_close, state.resource)

    def _spawn_close(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(None))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _schedule(self, delay: float, fn: Callable[[], None]) -> None:
        loop = _running_loop()
        if loop is None:
            loops = {s.loop for s in self._pool.states if s.loop is not None}
            if not loops:
                return
            loop = loops.pop()
            loop.call_soon_threadsafe(self._arm, loop, delay, fn)
        else:
            self._arm(loop, delay, fn)

    def _arm(self, loop: asyncio.AbstractEventLoop, delay: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            self._handles.discard(handle)
            fn()

        handle = loop.call_later(delay, run)
        self._handles.add(handle)

    def _callable(self, kind: str, method: str, ser: Any, des: Any) -> Any:
        return _AioCallable(self._pool, kind, method, ser, des, self.policies.resolve(method))

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._callable("unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._callable("unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._callable("stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._callable("stream_stream", method, request_serializer, response_deserializer)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        states = [channel.get_state(try_to_connect) for channel in _channels(self._pool)]
        if grpc.ChannelConnectivity.READY in states:
            return grpc.ChannelConnectivity.READY
        return states[0] if states else grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        channels = _channels(self._pool)
        if channels:
            await channels[0].wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        for channel in _channels(self._pool):
            await channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Stop following the discovery and close every sub-channel (waiting ``grace`` for calls)."""
        for handle in list(self._handles):
            handle.cancel()
        self._handles.clear()
        states = self._pool.close()
        await asyncio.gather(*(state.resource.close(grace) for state in states if state.resource is not None))
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    async def __aenter__(self) -> AioResilientChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)

    def __repr__(self) -> str:
        return f"AioResilientChannel({self._pool.service!r}, endpoints={[e.address for e in self.endpoints]})"


def aio_resilient_channel(
    service: str,
    discovery: Discovery | str,
    balancer: Balancer | None = None,
    policies: GrpcPolicies | MethodPolicy | Any = None,
    **kwargs: Any,
) -> AioResilientChannel:
    """An :class:`AioResilientChannel` (same arguments)."""
    return AioResilientChannel(service, discovery, balancer, policies, **kwargs)
