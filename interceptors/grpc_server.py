"""Server-side protection for gRPC servers (sync and ``grpc.aio``): shedding, rate limits, authentication.

Usage::

    from interceptors.grpc_server import ServerResilienceInterceptor
    from interceptors._grpc_common import GrpcPolicies
    from resilience.pipeline import Pipeline
    from resilience.policies.concurrency import ConcurrencyLimit
    from resilience.policies.token_bucket import TokenBucket

    guard = ServerResilienceInterceptor(
        GrpcPolicies(methods={"/shop.Orders/Create": Pipeline(TokenBucket(100, burst=20), ConcurrencyLimit(32))}),
        authenticate=lambda metadata, method: dict(metadata).get("x-api-key") == "secret",
    )
    server = grpc.server(pool, interceptors=[guard])          # or AioServerResilienceInterceptor for grpc.aio

Each call of a method with a pipeline runs its handler through that pipeline (rate
limits, concurrency limits, bulkheads: any policy). A call a policy rejects
(:class:`~resilience.RejectedError`) ends with ``RESOURCE_EXHAUSTED`` and, when the
rejection says when to come back (``retry_after``), a ``grpc-retry-pushback-ms`` trailer
that this library's client honours. The ``authenticate`` hook runs first; a falsy answer
ends the call with ``UNAUTHENTICATED``; a truthy one is the principal, which the handler
reads with :func:`current_principal`.

A response-streaming call (unary-stream, stream-stream) is covered for its whole life:
the permits of the pipeline's gates (a concurrency limit's slot, a bulkhead's place, a
breaker's verdict) are held until the handler's stream ends — exhausted, failed, or
given up by the client (a cancel, a deadline) — and the outcome recorded is that end: a
handler failing after its first message is a failure. A request-streaming call with a
single response is covered until its handler returns, as a unary call is.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"interceptors.grpc_server needs the 'grpc' extra ({exc.name} is missing): "
        "pip install 'resilience-policies[grpc]'"
    ) from exc

from resilience._validate import Seconds, seconds
from resilience.context import CallContext
from resilience.errors import RejectedError
from resilience.outcome import Outcome, Pending

from . import _grpc_common as _c
from ._grpc_common import PUSHBACK_KEY, GrpcClassifier, GrpcPolicies, MethodPolicy, ResolvedMethod, as_policies

__all__ = [
    "AioServerResilienceInterceptor",
    "Authenticator",
    "ServerResilienceInterceptor",
    "current_principal",
]

_log = logging.getLogger("resilience.grpc")

Authenticator = Callable[[Sequence[tuple[str, Any]], str], Any]
"""``authenticate(invocation_metadata, full_method) -> principal``: falsy rejects the call
with ``UNAUTHENTICATED``. The aio interceptor also accepts a coroutine function."""

_principal: contextvars.ContextVar[Any] = contextvars.ContextVar("resilience_grpc_principal", default=None)


def current_principal() -> Any:
    """The principal the ``authenticate`` hook returned for the call being handled (or ``None``)."""
    return _principal.get()


class _Base:
    """What the sync and aio server interceptors share: the table, the hook, the rejection."""

    __slots__ = ("authenticate", "default_pushback", "policies")

    def __init__(
        self,
        policies: GrpcPolicies | MethodPolicy | Any = None,
        *,
        authenticate: Authenticator | None = None,
        default_pushback: Seconds | None = None,
    ) -> None:
        self.policies = as_policies(policies)
        if authenticate is not None and not callable(authenticate):
            raise TypeError(f"authenticate must be a callable(metadata, method) or None, got {authenticate!r}")
        self.authenticate = authenticate
        self.default_pushback = (
            None if default_pushback is None else seconds("default_pushback", default_pushback, allow_zero=True)
        )

    def _rejection(self, error: RejectedError) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The details and the trailing metadata of a call a policy turned away."""
        retry_after = error.retry_after if error.retry_after is not None else self.default_pushback
        if retry_after is None:
            return str(error), ()
        millis = max(0, math.ceil(retry_after * 1000.0))
        return str(error), ((PUSHBACK_KEY, str(millis)),)

    def _context(self, resolved: ResolvedMethod, servicer_context: Any, streaming: bool = False) -> CallContext:
        remaining = servicer_context.time_remaining()
        # A call without a deadline reports a huge remaining time: no deadline then.
        ctx = resolved.context(remaining if remaining is not None and remaining < 1e8 else None)
        ctx.classifier = _server_classifier(resolved.classifier, streaming)
        return ctx

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policies!r})"


CALLER_FAULT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.CANCELLED,
    }
)
"""Codes a handler aborts with for the caller's fault: such a call does not count against
the server (an adaptive limit does not shrink because clients send bad requests)."""


class _CallerFault(Exception):
    """Carries a handler's abort for the caller's fault through the pipeline, as ignored."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _ServerClassifier(GrpcClassifier):
    """The client's classifier, and a handler's abort for the caller's fault counts for nothing."""

    __slots__ = ()

    def error(self, exc: BaseException) -> Outcome:
        if isinstance(exc, _CallerFault):
            return Outcome.IGNORED
        return super().error(exc)


class _ServerStreamClassifier(_ServerClassifier):
    """The server classifier of response-streaming calls: their attempts return a
    :class:`_HandlerStream`, judged when it ends (``checks_results``)."""

    __slots__ = ()

    checks_results = True


_SERVER_CLASSIFIERS: dict[tuple[Any, ...], _ServerClassifier] = {}


def _server_classifier(client: GrpcClassifier, streaming: bool = False) -> _ServerClassifier:
    """The server's twin of a method's classifier, built once per set of codes and kind."""
    codes = (client.failure_codes, client.retryable_codes, client.pushback_codes)
    key = (*codes, streaming)
    found = _SERVER_CLASSIFIERS.get(key)
    if found is None:
        kind = _ServerStreamClassifier if streaming else _ServerClassifier
        found = _SERVER_CLASSIFIERS[key] = kind(*codes)
    return found


class _HandlerStream(Pending):
    """A handler's responses, judged when they end: the gates of the pipeline keep their
    permits until :meth:`end` (see :class:`~resilience.outcome.Pending`)."""

    __slots__ = ("responses",)

    def __init__(self, responses: Any) -> None:
        super().__init__()
        self.responses = responses

    def cancel(self) -> None:
        """Thrown away unread (a policy discarded it): close the responses, end as cancelled."""
        self.abandon(_gone())

    def abandon(self, error: BaseException) -> None:
        """Never to be read: close the responses (a generator, or a coroutine) and end with ``error``."""
        close = getattr(self.responses, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # a generator running in another thread
                _log.debug("could not close an abandoned response stream", exc_info=True)
        self.end(error)


def _gone() -> BaseException:
    """The end of a stream its client gave up (a cancel, a deadline): a cancellation, which
    counts against the server only when the call's deadline has passed
    (:func:`~resilience.outcome.error_outcome`), as a cancelled aio handler does."""
    return asyncio.CancelledError("the client cancelled the call or its deadline passed")


def _reset_principal(token: contextvars.Token[Any]) -> None:
    # A stream closed from another context (a finalizer) has nothing to restore.
    with contextlib.suppress(ValueError):
        _principal.reset(token)


def _caller_fault(context: Any, exc: BaseException) -> BaseException:
    """``exc`` wrapped as a caller's fault when the handler aborted with such a code, else itself."""
    if not isinstance(exc, Exception):  # a cancellation is judged as such
        return exc
    try:
        code = context.code()
    except Exception:  # a context that cannot say
        return exc
    return _CallerFault(exc) if code in CALLER_FAULT_CODES else exc


def _handler_like(handler: Any, unary_unary: Any, unary_stream: Any, stream_unary: Any, stream_stream: Any) -> Any:
    """A handler of the same kind and serializers as ``handler``, with new behaviours."""
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming:
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)
        return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
    return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)


def _behavior(handler: Any) -> Any:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


class ServerResilienceInterceptor(_Base, _c.ServerInterceptor):
    """A sync ``grpc.ServerInterceptor`` applying per-method policies and an authentication hook.

    Args:
        policies: a :class:`~interceptors.grpc.GrpcPolicies` table (only ``pipeline`` and
            ``tags`` matter here), or a :class:`~interceptors.grpc.MethodPolicy` or
            :class:`~resilience.Pipeline` for every method (default: no policies).
        authenticate: ``callable(invocation_metadata, full_method) -> principal``; falsy
            (or raising) rejects the call with ``UNAUTHENTICATED`` (default: no check).
        default_pushback: the pushback sent, in seconds, when a rejection does not say
            when to come back, >= 0, or ``None`` to send none (default ``None``).
    """

    __slots__ = ()

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        resolved = self.policies.resolve(method)
        pipeline = resolved.pipeline
        authenticate = self.authenticate
        if pipeline is None and authenticate is None:
            return handler
        principal = None
        if authenticate is not None:
            try:
                principal = authenticate(handler_call_details.invocation_metadata or (), method)
            except Exception:
                _log.exception("authenticate hook failed for %s", method)
                principal = None
            if not principal:
                return self._refusal(handler)
        behavior = _behavior(handler)

        def unary(request: Any, context: Any) -> Any:
            token = _principal.set(principal)
            try:
                if pipeline is None:
                    return behavior(request, context)

                def attempt(_ctx: CallContext) -> Any:
                    try:
                        return behavior(request, context)
                    except Exception as exc:
                        raise _caller_fault(context, exc) from None

                try:
                    return pipeline.execute(attempt, self._context(resolved, context))
                except RejectedError as error:
                    self._reject(context, error)
                except _CallerFault as fault:
                    raise fault.error from None
            finally:
                _reset_principal(token)

        def streaming(request: Any, context: Any) -> Iterator[Any]:
            token = _principal.set(principal)
            try:
                if pipeline is None:
                    yield from behavior(request, context)
                    return
                created: _HandlerStream | None = None

                def attempt(_ctx: CallContext) -> _HandlerStream:
                    nonlocal created
                    try:
                        created = _HandlerStream(behavior(request, context))
                    except Exception as exc:
                        raise _caller_fault(context, exc) from None
                    return created

                try:
                    result = pipeline.execute(attempt, self._context(resolved, context, streaming=True))
                except BaseException as exc:
                    if created is not None:  # the pipeline failed after the handler answered
                        created.abandon(exc)
                    if isinstance(exc, RejectedError):
                        self._reject(context, exc)
                    if isinstance(exc, _CallerFault):
                        raise exc.error from None
                    raise
                if not isinstance(result, _HandlerStream):  # a fallback's answer
                    yield from result
                    return
                stream = result
                # grpc drops the iterator of a call its client gave up at the next message it
                # sends; a handler blocked before that is still covered by this callback, which
                # runs as soon as the call ends.
                if not context.add_callback(lambda: stream.end(_gone())):
                    stream.end(_gone())
                    return
                try:
                    yield from stream.responses
                except GeneratorExit:
                    stream.end(_gone())
                    raise
                except BaseException as exc:
                    stream.end(_caller_fault(context, exc))
                    raise
                stream.end()
            finally:
                _reset_principal(token)

        return _handler_like(handler, unary, streaming, unary, streaming)

    def _reject(self, context: Any, error: RejectedError) -> None:
        details, trailing = self._rejection(error)
        if trailing:
            context.set_trailing_metadata(trailing)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)

    @staticmethod
    def _refusal(handler: Any) -> Any:
        def refuse(request: Any, context: Any) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failed")

        def refuse_stream(request: Any, context: Any) -> Iterator[Any]:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failed")
            yield  # pragma: no cover - abort raises

        return _handler_like(handler, refuse, refuse_stream, refuse, refuse_stream)


class AioServerResilienceInterceptor(_Base, _c.AioServerInterceptor):
    """The ``grpc.aio.ServerInterceptor`` twin of :class:`ServerResilienceInterceptor`.

    Handlers must be ``async`` (coroutine functions or async generators). ``authenticate``
    may be a plain function or a coroutine function. Same arguments as the sync one.
    """

    __slots__ = ()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        resolved = self.policies.resolve(method)
        pipeline = resolved.pipeline
        authenticate = self.authenticate
        if pipeline is None and authenticate is None:
            return handler
        principal = None
        if authenticate is not None:
            try:
                principal = authenticate(handler_call_details.invocation_metadata or (), method)
                if inspect.isawaitable(principal):
                    principal = await principal
            except Exception:
                _log.exception("authenticate hook failed for %s", method)
                principal = None
            if not principal:
                return self._refusal(handler)
        behavior = _behavior(handler)

        async def unary(request: Any, context: Any) -> Any:
            token = _principal.set(principal)
            try:
                if pipeline is None:
                    return await behavior(request, context)

                async def attempt(_ctx: CallContext) -> Any:
                    try:
                        return await behavior(request, context)
                    except Exception as exc:
                        raise _caller_fault(context, exc) from None

                try:
                    return await pipeline.aexecute(attempt, self._context(resolved, context))
                except RejectedError as error:
                    await self._reject(context, error)
                except _CallerFault as fault:
                    raise fault.error from None
            finally:
                _reset_principal(token)

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            token = _principal.set(principal)
            stream: _HandlerStream | None = None
            try:
                if pipeline is None:
                    responses = behavior(request, context)
                else:
                    created: _HandlerStream | None = None

                    async def attempt(_ctx: CallContext) -> _HandlerStream:
                        nonlocal created
                        try:
                            created = _HandlerStream(behavior(request, context))
                        except Exception as exc:
                            raise _caller_fault(context, exc) from None
                        return created

                    try:
                        result = await pipeline.aexecute(attempt, self._context(resolved, context, streaming=True))
                    except BaseException as exc:
                        if created is not None:  # the pipeline failed after the handler answered
                            created.abandon(exc)
                        if isinstance(exc, RejectedError):
                            await self._reject(context, exc)
                        if isinstance(exc, _CallerFault):
                            raise exc.error from None
                        raise
                    if isinstance(result, _HandlerStream):
                        stream = result
                        responses = result.responses
                        # A call given up while its handler waits to send is cancelled in grpc's
                        # own write, not here: the end is seen when the call's task is done.
                        context.add_done_callback(lambda _context: result.end(_gone()))
                    else:  # a fallback's answer
                        responses = result
                try:
                    if hasattr(responses, "__aiter__"):
                        async for response in responses:
                            yield response
                    elif inspect.isawaitable(responses):
                        await responses  # a handler that answers with context.write()
                except GeneratorExit:
                    if stream is not None:
                        stream.end(_gone())
                    await _aclose(responses)
                    raise
                except BaseException as exc:
                    if stream is not None:
                        stream.end(_caller_fault(context, exc))
                    raise
                if stream is not None:
                    stream.end()
            finally:
                _reset_principal(token)

        return _handler_like(handler, unary, streaming, unary, streaming)

    async def _reject(self, context: Any, error: RejectedError) -> None:
        details, trailing = self._rejection(error)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details, trailing_metadata=trailing)

    @staticmethod
    def _refusal(handler: Any) -> Any:
        async def refuse(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failed")

        async def refuse_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failed")
            yield  # pragma: no cover - abort raises

        return _handler_like(handler, refuse, refuse_stream, refuse, refuse_stream)


async def _aclose(responses: Any) -> None:
    """Close a handler's responses left unfinished (an async generator, or a coroutine never awaited)."""
    aclose = getattr(responses, "aclose", None)
    if aclose is not None:
        await aclose()
        return
    close = getattr(responses, "close", None)
    if close is not None:
        close()
