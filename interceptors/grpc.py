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
A response stream is retried only until its first message arrives; a request stream is
kept (up to a limit) so that a retry can send it again.

The interceptor waits for the outcome of each attempt, so ``stub.Method.future(...)``
blocks until the call (all its attempts) ends when it goes through this interceptor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc

from resilience.context import CallContext

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

__all__ = ["GrpcClassifier", "GrpcPolicies", "MethodPolicy", "ResilienceInterceptor"]

_NOTHING: Any = object()


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


class StreamResponse:
    """A response stream whose first message was read while the call could still be retried.

    Iterating yields that message, then the rest of the stream; every other attribute
    (``cancel()``, ``code()``, ``trailing_metadata()``, ...) is the underlying call's.
    """

    __slots__ = ("_call", "_first")

    def __init__(self, call: Any, first: Any) -> None:
        self._call = call
        self._first = first

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        first = self._first
        if first is not _NOTHING:
            self._first = _NOTHING
            return first
        return next(self._call)

    next = __next__

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __repr__(self) -> str:
        return f"StreamResponse({self._call!r})"


def read_first(call: Any, ctx: CallContext) -> StreamResponse:
    """Wait for the first message of a response stream; an error before it fails the attempt."""
    try:
        first = next(call)
    except StopIteration:
        first = _NOTHING
    except grpc.RpcError as exc:
        record_pushback(ctx, exc)
        raise
    ctx.committed = True
    return StreamResponse(call, first)


def unary_outcome(outcome: Any, ctx: CallContext) -> Any:
    """The outcome of a unary-response attempt, raised when it is an error."""
    exc = outcome.exception()
    if exc is not None:
        record_pushback(ctx, exc)
        raise exc
    return outcome


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

    Args:
        policies: a :class:`GrpcPolicies` table, or a :class:`MethodPolicy` or
            :class:`~resilience.Pipeline` for every method (default: no policies).
    """

    __slots__ = ("policies",)

    def __init__(self, policies: GrpcPolicies | MethodPolicy | Any = None) -> None:
        self.policies = as_policies(policies)

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
        ctx = resolved.context(details.timeout)
        first_deadline = ctx.deadline
        replay: ReplayableRequests | None = None
        if request_streaming and resolved.replays:
            replay = ReplayableRequests(request, resolved.buffer_limit, ctx)

        def attempt(ctx: CallContext) -> Any:
            if ctx.attempt == 1 and ctx.hedge == 0 and ctx.deadline is first_deadline:
                this = details  # the first attempt goes out as the caller sent it
            else:
                this = _attempt_details(details, ctx)
            call = continuation(this, replay.attempt() if replay is not None else request)
            if response_streaming:
                return read_first(call, ctx)
            return unary_outcome(call, ctx)

        return pipeline.execute(attempt, ctx)

    def __repr__(self) -> str:
        return f"ResilienceInterceptor({self.policies!r})"
