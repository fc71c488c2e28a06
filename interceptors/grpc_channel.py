"""Discovery-aware gRPC channels (sync and ``grpc.aio``): one sub-channel per endpoint.

grpcio cannot take a name resolver or a load-balancing policy written in Python, so this
channel does the routing itself: every attempt of every call (retries and hedges
included) asks the :class:`~resilience.balancing.Balancer` for an endpoint, avoiding those
the call already tried when another one is there, and goes out on that endpoint's own
channel. The endpoint list follows the :class:`~resilience.discovery.Discovery` source
live; a removed endpoint's channel is closed once its calls in flight are over (or after
``drain_timeout``), so no call is dropped by a change.

The policies are applied by the channel itself, without grpc's interceptor machinery,
which makes a call through it cheaper than through an intercepted channel. Generated
stubs work as with any channel::

    channel = resilient_channel("orders", StaticDiscovery({"orders": ["10.0.0.1:50051", "10.0.0.2:50051"]}),
                                RoundRobin(), MethodPolicy(Pipeline(Timeout(2), Retry(3)), idempotent=True))
    stub = orders_pb2_grpc.OrdersStub(channel)

Differences from a plain channel: ``future()`` of the sync channel runs the call before it
returns (the future it gives is done); an aio call starts when it is awaited or iterated;
``subscribe``/``get_state`` report on the sub-channels as a whole (ready when any is).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from resilience._validate import Seconds, seconds
from resilience.balancing.base import Balancer
from resilience.balancing.pool import EndpointPool, EndpointState, HealthFactory, Selection
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.outcome import Outcome

from . import _grpc_common as _c
from ._grpc_common import (
    GrpcPolicies,
    MethodPolicy,
    ReplayableRequests,
    ResolvedMethod,
    as_policies,
)
from .grpc import attempt_metadata, attempt_timeout, read_first, record_pushback
from .grpc_aio import AsyncReplayableRequests, aio_metadata, await_unary
from .grpc_aio import read_first as aread_first

__all__ = ["AioResilientChannel", "ResilientChannel", "aio_resilient_channel", "resilient_channel"]

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _channels(pool: EndpointPool[Any]) -> list[Any]:
    """The sub-channels made so far."""
    return [s.resource for s in pool.states if s.resource is not None]


def _release(selection: Selection[Any], outcome: Outcome, start: float, ctx: CallContext) -> None:
    now = ctx.clock.monotonic()
    selection.release(outcome, now - start, now, ctx)


class _Callable:
    """What the multicallables of both channels share: the method, its settings, per-endpoint callables."""

    __slots__ = ("_des", "_inner", "_kind", "_method", "_pool", "_resolved", "_ser")

    def __init__(
        self, pool: EndpointPool[Any], kind: str, method: str, ser: Any, des: Any, resolved: ResolvedMethod
    ) -> None:
        self._pool = pool
        self._kind = kind
        self._method = method
        self._ser = ser
        self._des = des
        self._resolved = resolved
        self._inner: dict[EndpointState[Any], Any] = {}

    def _on(self, state: EndpointState[Any]) -> Any:
        inner = self._inner.get(state)
        if inner is None:
            if len(self._inner) > 64:
                self._inner = {s: c for s, c in self._inner.items() if not s.closed}
            inner = self._inner[state] = getattr(state.resource, self._kind)(self._method, self._ser, self._des)
        return inner


# -- sync ----------------------------------------------------------------------------------


class _DoneFuture(_c.Future):
    """The finished outcome of a sync call made through ``future()``."""

    def __init__(self, response: Any, call: Any, error: BaseException | None) -> None:
        self._response = response
        self._call = call
        self._error = error

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._response

    def exception(self, timeout: float | None = None) -> Any:
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:
        return None if self._error is None else self._error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __getattr__(self, name: str) -> Any:
        # code(), details(), trailing_metadata()... of the call (or of the error, which is a call too).
        return getattr(self._call if self._call is not None else self._error, name)


class _SyncCallable(_Callable):
    __slots__ = ()

    def _run(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: Any,
        compression: Any,
        request_streaming: bool,
        response_streaming: bool,
        with_call: bool = True,
    ) -> Any:
        pool, resolved = self._pool, self._resolved
        ctx = resolved.context(timeout)
        replay: ReplayableRequests | None = None
        if request_streaming and resolved.replays:
            replay = ReplayableRequests(request, resolved.buffer_limit, ctx)

        def attempt(ctx: CallContext) -> Any:
            selection = pool.pick(ctx)
            clock = ctx.clock
            start = clock.monotonic()
            outcome = Outcome.SUCCESS
            streaming = False
            try:
                inner = self._on(selection.state)
                requests = replay.attempt() if replay is not None else request
                args = (
                    requests,
                    attempt_timeout(ctx),
                    attempt_metadata(metadata, ctx),
                    credentials,
                    wait_for_ready,
                    compression,
                )
                if not response_streaming:
                    # A plain call needs no call object: grpc skips building one.
                    return inner.with_call(*args) if with_call else inner(*args)
                call = inner(*args)
                streaming = call.add_callback(lambda: _release(selection, outcome, start, ctx))
                return read_first(call, ctx)
            except BaseException as exc:
                outcome = ctx.classifier.error(exc)
                if isinstance(exc, grpc.RpcError):
                    record_pushback(ctx, exc)
                raise
            finally:
                if not streaming:
                    _release(selection, outcome, start, ctx)

        pipeline = resolved.pipeline
        return pipeline.execute(attempt, ctx) if pipeline is not None else attempt(ctx)


class _SyncUnary(_SyncCallable, _c.UnaryUnaryMultiCallable, _c.StreamUnaryMultiCallable):
    __slots__ = ()

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> tuple[Any, Any]:
        streaming = self._kind == "stream_unary"
        result: tuple[Any, Any] = self._run(
            request, timeout, metadata, credentials, wait_for_ready, compression, streaming, False
        )
        return result

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        streaming = self._kind == "stream_unary"
        return self._run(request, timeout, metadata, credentials, wait_for_ready, compression, streaming, False, False)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        try:
            response, call = self.with_call(request, timeout, metadata, credentials, wait_for_ready, compression)
        except Exception as exc:
            return _DoneFuture(None, None, exc)
        return _DoneFuture(response, call, None)


class _SyncStream(_SyncCallable, _c.UnaryStreamMultiCallable, _c.StreamStreamMultiCallable):
    __slots__ = ()

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        streaming = self._kind == "stream_stream"
        return self._run(request, timeout, metadata, credentials, wait_for_ready, compression, streaming, True)


class ResilientChannel(grpc.Channel):
    """A sync channel over every endpoint of a service, applying per-method policies.

    Args:
        service: the service name asked of ``discovery``.
        discovery: where the endpoints come from (followed live).
        balancer: picks the endpoint of each attempt (default :class:`RoundRobin`).
        policies: a :class:`~interceptors.grpc.GrpcPolicies` table, a
            :class:`~interceptors.grpc.MethodPolicy` or a :class:`~resilience.Pipeline`
            (default: no policies; calls are still balanced).
        channel_factory: ``callable(address) -> grpc.Channel`` for the sub-channels
            (default ``grpc.insecure_channel(address, options)``).
        options: channel options of the default factory.
        drain_timeout: seconds a removed endpoint's calls in flight may still run before
            its channel is closed, > 0 (default 30).
        endpoint_health: builds the health gates of each endpoint, e.g.
            ``lambda endpoint: CircuitBreaker(failure_threshold=5)`` for a breaker per
            replica: a pick skips an endpoint whose gates reject (default: none).
    """

    def __init__(
        self,
        service: str,
        discovery: Discovery,
        balancer: Balancer | None = None,
        policies: GrpcPolicies | MethodPolicy | Any = None,
        *,
        channel_factory: Callable[[str], grpc.Channel] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        drain_timeout: Seconds = 30.0,
        endpoint_health: HealthFactory | None = None,
    ) -> None:
        self.policies = as_policies(policies)
        drain = seconds("drain_timeout", drain_timeout)
        opts = list(options)
        factory = channel_factory or (lambda address: grpc.insecure_channel(address, options=opts))
        self._timers: set[threading.Timer] = set()
        self._timers_lock = threading.Lock()
        self._pool: EndpointPool[grpc.Channel] = EndpointPool(
            service,
            discovery,
            balancer,
            health=endpoint_health,
            make=lambda endpoint: factory(endpoint.address),
            close=self._close_state,
            drain_timeout=drain,
            schedule=self._schedule,
        )

    @property
    def pool(self) -> EndpointPool[grpc.Channel]:
        """The endpoints, their state and their sub-channels."""
        return self._pool

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints known now."""
        return self._pool.endpoints

    def inflight(self) -> dict[str, int]:
        """Attempts in flight per endpoint address (removed ones still draining included)."""
        return self._pool.inflight()

    @staticmethod
    def _close_state(state: EndpointState[grpc.Channel]) -> None:
        if state.resource is not None:
            state.resource.close()

    def _schedule(self, delay: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            with self._timers_lock:
                self._timers.discard(timer)
            fn()

        timer = threading.Timer(delay, run)
        timer.daemon = True
        with self._timers_lock:
            self._timers.add(timer)
        timer.start()

    def _callable(self, cls: type[_SyncCallable], kind: str, method: str, ser: Any, des: Any) -> Any:
        return cls(self._pool, kind, method, ser, des, self.policies.resolve(method))

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._callable(_SyncUnary, "unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._callable(_SyncStream, "unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._callable(_SyncUnary, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._callable(_SyncStream, "stream_stream", method, request_serializer, response_deserializer)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        # Connectivity is per sub-channel; callers of this API get the first endpoint's.
        for channel in _channels(self._pool)[:1]:
            channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        for channel in _channels(self._pool)[:1]:
            channel.unsubscribe(callback)

    def close(self) -> None:
        """Stop following the discovery and close every sub-channel."""
        with self._timers_lock:
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()
        for state in self._pool.close():
            self._close_state(state)

    def __enter__(self) -> ResilientChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResilientChannel({self._pool.service!r}, endpoints={[e.address for e in self.endpoints]})"


def resilient_channel(
    service: str,
    discovery: Discovery,
    balancer: Balancer | None = None,
    policies: GrpcPolicies | MethodPolicy | Any = None,
    **kwargs: Any,
) -> ResilientChannel:
    """A :class:`ResilientChannel` (same arguments)."""
    return ResilientChannel(service, discovery, balancer, policies, **kwargs)


# -- asyncio ---------------------------------------------------------------------------------


class _AioCall:
    """One call of the aio channel: awaitable (unary response) or async-iterable (stream)."""

    __slots__ = ("_call", "_owner", "_run_args", "_stream")

    def __init__(self, owner: _AioCallable, run_args: tuple[Any, ...]) -> None:
        self._owner = owner
        self._run_args = run_args
        self._call: Any = None
        self._stream: Any = None

    def __await__(self) -> Any:
        response, self._call = yield from self._owner._run(*self._run_args).__await__()
        return response

    async def _open(self) -> Any:
        if self._stream is None:
            self._stream, self._call = await self._owner._run(*self._run_args)
        return self._stream

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        stream = await self._open()
        async for message in stream:
            yield message

    async def read(self) -> Any:
        stream = await self._open()
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return _EOF

    def cancel(self) -> bool:
        return bool(self._call.cancel()) if self._call is not None else False

    def cancelled(self) -> bool:
        return bool(self._call.cancelled()) if self._call is not None else False

    def done(self) -> bool:
        return bool(self._call.done()) if self._call is not None else False

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        details: str = await self._call.details()
        return details

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()


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
    ) -> _AioCall:
        return _AioCall(self, (request, timeout, metadata, credentials, wait_for_ready, compression))

    async def _run(
        self,
        request: Any,
        timeout: float | None,  # noqa: ASYNC109 - the RPC's own deadline, handed to grpc
        metadata: Any,
        credentials: Any,
        wait_for_ready: Any,
        compression: Any,
    ) -> tuple[Any, Any]:
        pool, resolved, kind = self._pool, self._resolved, self._kind
        response_streaming = kind.endswith("_stream")
        ctx = resolved.context(timeout)
        replay: AsyncReplayableRequests | None = None
        if kind.startswith("stream_") and resolved.replays:
            replay = AsyncReplayableRequests(request, resolved.buffer_limit, ctx)

        async def attempt(ctx: CallContext) -> tuple[Any, Any]:
            selection = pool.pick(ctx)
            clock = ctx.clock
            start = clock.monotonic()
            outcome = Outcome.SUCCESS
            streaming = False
            try:
                inner = self._on(selection.state)
                call = inner(
                    replay.attempt() if replay is not None else request,
                    timeout=attempt_timeout(ctx),
                    metadata=aio_metadata(metadata, ctx),
                    credentials=credentials,
                    wait_for_ready=wait_for_ready,
                    compression=compression,
                )
                if response_streaming:
                    call.add_done_callback(lambda _call: _release(selection, outcome, start, ctx))
                    streaming = True
                    return await aread_first(call, ctx), call
                return await await_unary(call, ctx), call
            except BaseException as exc:
                outcome = ctx.classifier.error(exc)
                raise
            finally:
                if not streaming:
                    _release(selection, outcome, start, ctx)

        pipeline = resolved.pipeline
        if pipeline is not None:
            result: tuple[Any, Any] = await pipeline.aexecute(attempt, ctx)
            return result
        return await attempt(ctx)


class AioResilientChannel(grpc.aio.Channel):
    """The ``grpc.aio`` twin of :class:`ResilientChannel` (same arguments; the factory
    makes ``grpc.aio`` channels, by default ``grpc.aio.insecure_channel(address, options)``).

    Sub-channels are made in the event loop of the calls that use them; close the
    channel with ``await channel.close()`` (or ``async with``).
    """

    def __init__(
        self,
        service: str,
        discovery: Discovery,
        balancer: Balancer | None = None,
        policies: GrpcPolicies | MethodPolicy | Any = None,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        drain_timeout: Seconds = 30.0,
        endpoint_health: HealthFactory | None = None,
    ) -> None:
        self.policies = as_policies(policies)
        drain = seconds("drain_timeout", drain_timeout)
        opts = list(options)
        factory = channel_factory or (lambda address: grpc.aio.insecure_channel(address, options=opts))
        self._closing: set[asyncio.Task[Any]] = set()
        self._handles: set[asyncio.TimerHandle] = set()
        self._pool: EndpointPool[grpc.aio.Channel] = EndpointPool(
            service,
            discovery,
            balancer,
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

    async def __aenter__(self) -> AioResilientChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)

    def __repr__(self) -> str:
        return f"AioResilientChannel({self._pool.service!r}, endpoints={[e.address for e in self.endpoints]})"


def aio_resilient_channel(
    service: str,
    discovery: Discovery,
    balancer: Balancer | None = None,
    policies: GrpcPolicies | MethodPolicy | Any = None,
    **kwargs: Any,
) -> AioResilientChannel:
    """An :class:`AioResilientChannel` (same arguments)."""
    return AioResilientChannel(service, discovery, balancer, policies, **kwargs)
