"""The ``grpc.aio`` discovery-aware channel: :class:`AioResilientChannel` (see :mod:`interceptors.grpc_channel`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from resilience._validate import Seconds, seconds
from resilience.balancing.base import Balancer
from resilience.balancing.pool import EndpointPool, EndpointState, HealthFactory
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.outcome import Outcome

from ._channel_common import ChannelCallable as _Callable
from ._channel_common import channels as _channels
from ._channel_common import release as _release
from ._channel_common import running_loop as _running_loop
from ._grpc_common import (
    GrpcPolicies,
    MethodPolicy,
    as_policies,
)
from .grpc import attempt_timeout
from .grpc_aio import AsyncReplayableRequests, aio_metadata, await_unary
from .grpc_aio import read_first as aread_first

__all__ = ["AioResilientChannel", "aio_resilient_channel"]

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


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
