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

Calls behave as on a plain channel, as through :class:`~interceptors.grpc.ResilienceInterceptor`
(errors that are ``grpc.RpcError`` s, ``future()`` that returns at once, streams judged at
their end: an endpoint's pick is released when its stream ends, with the stream's outcome;
see :mod:`interceptors.grpc`). An aio call is a full ``grpc.aio`` call started at once
(see :mod:`interceptors.grpc_channel_aio`). One difference: ``subscribe``/``get_state``
report on the sub-channels as a whole (ready when any is).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"interceptors.grpc_channel needs the 'grpc' extra ({exc.name} is missing): "
        "pip install 'resilience-policies[grpc]'"
    ) from exc

from resilience._validate import Seconds, seconds
from resilience.balancing.base import Balancer
from resilience.balancing.pool import EndpointPool, EndpointState, HealthFactory, Selection
from resilience.context import CallContext
from resilience.discovery.base import Discovery, Endpoint
from resilience.outcome import Outcome, error_outcome

from . import _grpc_common as _c
from ._channel_common import ChannelCallable as _Callable
from ._channel_common import channels as _channels
from ._channel_common import open_pool
from ._channel_common import release as _release
from ._grpc_common import (
    GrpcPolicies,
    MethodPolicy,
    ReplayableRequests,
    as_policies,
)
from ._grpc_errors import call_error
from ._wiring import Ejection, pick
from .grpc import (
    Answered,
    BackgroundCall,
    FutureCall,
    PendingStream,
    SharedRequests,
    StreamCall,
    attempt_metadata,
    attempt_timeout,
    caller_error,
    caller_stream,
    future_outcome,
    read_first,
    record_pushback,
    traced_attempt,
)

__all__ = ["AioResilientChannel", "ResilientChannel", "aio_resilient_channel", "resilient_channel"]

_SUCCESS = Outcome.SUCCESS


# -- sync ----------------------------------------------------------------------------------

_CALL, _WITH_CALL, _FUTURE = 0, 1, 2


def _release_at_end(selection: Selection[Any], start: float, ctx: CallContext, error: BaseException | None) -> None:
    """Release a stream's pick once the stream has ended, with the outcome of its end."""
    _release(selection, _SUCCESS if error is None else error_outcome(ctx, error), start, ctx)


def _release_done(selection: Selection[Any], start: float, ctx: CallContext, future: Any) -> None:
    """Release the pick of a ``future()`` call made without policies, once it is done."""
    try:
        error = future.exception()
    except grpc.FutureCancelledError:
        outcome = Outcome.IGNORED
    else:
        outcome = _SUCCESS if error is None else error_outcome(ctx, error)
    _release(selection, outcome, start, ctx)


def _is_with_call(result: Any) -> bool:
    """Whether ``result`` is what ``with_call`` of an attempt gave: ``(response, call)``."""
    return isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], grpc.Call)


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
        mode: int = _CALL,
    ) -> Any:
        pool, resolved = self._pool, self._resolved
        pipeline = resolved.pipeline
        ctx = resolved.context(timeout, streaming=response_streaming)
        if pipeline is None and mode == _FUTURE:
            return self._future(request, ctx, metadata, credentials, wait_for_ready, compression)
        replays = resolved.replays  # something in the pipeline may send the call again
        replay: ReplayableRequests | None = None
        if request_streaming and replays:
            replay = SharedRequests(request, resolved.buffer_limit, ctx)
        background: BackgroundCall | None = None
        picks = self._picks(ctx)
        if response_streaming:
            if request_streaming and replays:
                background = StreamCall(ctx)
        elif mode == _FUTURE:
            background = FutureCall(ctx)

        def attempt(ctx: CallContext) -> Any:
            if background is not None:
                background.check()
            selection = pick(pool, ctx, picks)
            start = ctx.clock.monotonic()
            try:
                inner = self._on(selection.state)
                sent_metadata = attempt_metadata(metadata, ctx)
                if ctx.telemetry is not None:  # traced: the span's context sent, the contrib instrumentation quiet
                    inner, sent_metadata = traced_attempt(inner, ctx, sent_metadata, selection.address)
                args = (
                    replay.attempt() if replay is not None else request,
                    attempt_timeout(ctx),
                    sent_metadata,
                    credentials,
                    wait_for_ready,
                    compression,
                )
                if not response_streaming:
                    if mode == _FUTURE:
                        call = inner.future(*args)
                        if background is not None:
                            background.begin(call)
                        result = future_outcome(call, ctx)
                    else:
                        # A plain call needs no call object: grpc skips building one.
                        result = inner.with_call(*args) if mode == _WITH_CALL else inner(*args)
                else:
                    call = inner(*args)
                    if background is not None:
                        background.begin(call)
                    if replays:
                        result = read_first(call, ctx)
                    else:
                        ctx.committed = True
                        result = PendingStream(call)
            except BaseException as exc:
                if isinstance(exc, grpc.RpcError):
                    record_pushback(ctx, exc)
                _release(selection, error_outcome(ctx, exc), start, ctx)
                raise
            if response_streaming:
                # Judged at its end: a stream that fails after its first message counts against the endpoint.
                result.on_end(functools.partial(_release_at_end, selection, start, ctx))
            else:
                _release(selection, _SUCCESS, start, ctx)
            return result

        if background is not None:
            assert pipeline is not None
            background.start(pipeline, attempt, ctx)
            return background
        try:
            result = pipeline.execute(attempt, ctx) if pipeline is not None else attempt(ctx)
            if response_streaming:
                return caller_stream(result)
            if mode == _WITH_CALL and not _is_with_call(result):
                return result, Answered(result)  # a fallback's answer, with a call object
            return result
        except Exception as exc:
            error = call_error(exc, response_streaming)
            if error is None:
                raise
        if response_streaming:
            return StreamCall.failed(error, ctx)
        raise error

    def _future(
        self, request: Any, ctx: CallContext, metadata: Any, credentials: Any, wait_for_ready: Any, compression: Any
    ) -> Any:
        """``future()`` without policies: the endpoint's own future, its pick released when it is done."""
        try:
            selection = self._pool.pick(ctx)
        except Exception as exc:
            return FutureCall.failed(caller_error(exc), ctx)
        start = ctx.clock.monotonic()
        try:
            future = self._on(selection.state).future(
                request, attempt_timeout(ctx), metadata, credentials, wait_for_ready, compression
            )
        except BaseException as exc:
            _release(selection, error_outcome(ctx, exc), start, ctx)
            raise
        future.add_done_callback(functools.partial(_release_done, selection, start, ctx))
        return future


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
            request, timeout, metadata, credentials, wait_for_ready, compression, streaming, False, _WITH_CALL
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
        return self._run(request, timeout, metadata, credentials, wait_for_ready, compression, streaming, False)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        streaming = self._kind == "stream_unary"
        return self._run(
            request, timeout, metadata, credentials, wait_for_ready, compression, streaming, False, _FUTURE
        )


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
        discovery: where the endpoints come from (followed live): a source, or its URI
            (``"etcd://host:2379/prefix"``, ``"static://host:port,host:port"``; the channel
            then makes the source and closes it with itself).
        balancer: picks the endpoint of each attempt (default :class:`RoundRobin`); a
            retry or a hedge goes to an endpoint the call has not tried, when there is one.
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
            replica: a pick skips an endpoint whose gates reject, and the attempt goes to
            another one at once (default: none).
        ejection: outlier ejection, an :class:`~resilience.OutlierEjection` or its options;
            the events go to its listeners and the pipeline's (default: the balancer's).
    """

    def __init__(
        self,
        service: str,
        discovery: Discovery | str,
        balancer: Balancer | None = None,
        policies: GrpcPolicies | MethodPolicy | Any = None,
        *,
        channel_factory: Callable[[str], grpc.Channel] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        drain_timeout: Seconds = 30.0,
        endpoint_health: HealthFactory | None = None,
        ejection: Ejection | None = None,
    ) -> None:
        self.policies = as_policies(policies)
        drain = seconds("drain_timeout", drain_timeout)
        opts = list(options)
        factory = channel_factory or (lambda address: grpc.insecure_channel(address, options=opts))
        self._timers: set[threading.Timer] = set()
        self._timers_lock = threading.Lock()
        self._pool: EndpointPool[grpc.Channel]
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
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

    def __enter__(self) -> ResilientChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResilientChannel({self._pool.service!r}, endpoints={[e.address for e in self.endpoints]})"


def resilient_channel(
    service: str,
    discovery: Discovery | str,
    balancer: Balancer | None = None,
    policies: GrpcPolicies | MethodPolicy | Any = None,
    **kwargs: Any,
) -> ResilientChannel:
    """A :class:`ResilientChannel` (same arguments)."""
    return ResilientChannel(service, discovery, balancer, policies, **kwargs)


# The grpc.aio twin lives in its own module; it is also reachable from here.
from .grpc_channel_aio import AioResilientChannel, aio_resilient_channel  # noqa: E402
