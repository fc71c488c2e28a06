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

import threading
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

from . import _grpc_common as _c
from ._channel_common import ChannelCallable as _Callable
from ._channel_common import channels as _channels
from ._channel_common import release as _release
from ._grpc_common import (
    GrpcPolicies,
    MethodPolicy,
    ReplayableRequests,
    as_policies,
)
from .grpc import attempt_metadata, attempt_timeout, read_first, record_pushback

__all__ = ["AioResilientChannel", "ResilientChannel", "aio_resilient_channel", "resilient_channel"]


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


# The grpc.aio twin lives in its own module; it is also reachable from here.
from .grpc_channel_aio import AioResilientChannel, aio_resilient_channel  # noqa: E402
