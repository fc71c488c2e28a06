"""What the gRPC adapters share: per-method policies, status-code classification, pushback.

Nothing here performs I/O; the sync interceptor, the asyncio interceptors, the
discovery-aware channels and the server interceptors build on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from resilience._validate import integer
from resilience.context import CallContext
from resilience.errors import DeadlineExceededError, RejectedError
from resilience.outcome import Classifier, Outcome
from resilience.pipeline import Pipeline
from resilience.policies.retry import Retry

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "DEFAULT_PUSHBACK_CODES",
    "DEFAULT_RETRYABLE_CODES",
    "PREVIOUS_ATTEMPTS_KEY",
    "PUSHBACK_KEY",
    "GrpcClassifier",
    "GrpcPolicies",
    "GrpcStreamClassifier",
    "MethodPolicy",
    "ResolvedMethod",
    "parse_pushback",
    "split_method",
]

PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""Trailing metadata key of the server's retry hint (gRPC A6), in milliseconds."""

PREVIOUS_ATTEMPTS_KEY = "x-grpc-previous-rpc-attempts"
"""Metadata key telling the server how many attempts of this call came before.

gRPC's retry design names it ``grpc-previous-rpc-attempts``, but grpcio's core owns that
key: it silently drops it from application metadata (seen with grpcio 1.85 on the wire),
so a retry made above the core carries the count under this ``x-`` name instead."""

# grpc-stubs make these generic; at run time they are plain classes.
if TYPE_CHECKING:
    UnaryUnaryClientInterceptor = grpc.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamClientInterceptor = grpc.UnaryStreamClientInterceptor[Any, Any]
    StreamUnaryClientInterceptor = grpc.StreamUnaryClientInterceptor[Any, Any]
    StreamStreamClientInterceptor = grpc.StreamStreamClientInterceptor[Any, Any]
    AioUnaryUnaryClientInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    AioUnaryStreamClientInterceptor = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    AioStreamUnaryClientInterceptor = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    AioStreamStreamClientInterceptor = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    Future = grpc.Future[Any]
    UnaryUnaryMultiCallable = grpc.UnaryUnaryMultiCallable[Any, Any]
    StreamUnaryMultiCallable = grpc.StreamUnaryMultiCallable[Any, Any]
    UnaryStreamMultiCallable = grpc.UnaryStreamMultiCallable[Any, Any]
    StreamStreamMultiCallable = grpc.StreamStreamMultiCallable[Any, Any]
    ServerInterceptor = grpc.ServerInterceptor[Any, Any]
    AioServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    UnaryUnaryClientInterceptor = grpc.UnaryUnaryClientInterceptor
    UnaryStreamClientInterceptor = grpc.UnaryStreamClientInterceptor
    StreamUnaryClientInterceptor = grpc.StreamUnaryClientInterceptor
    StreamStreamClientInterceptor = grpc.StreamStreamClientInterceptor
    AioUnaryUnaryClientInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    AioUnaryStreamClientInterceptor = grpc.aio.UnaryStreamClientInterceptor
    AioStreamUnaryClientInterceptor = grpc.aio.StreamUnaryClientInterceptor
    AioStreamStreamClientInterceptor = grpc.aio.StreamStreamClientInterceptor
    Future = grpc.Future
    UnaryUnaryMultiCallable = grpc.UnaryUnaryMultiCallable
    StreamUnaryMultiCallable = grpc.StreamUnaryMultiCallable
    UnaryStreamMultiCallable = grpc.UnaryStreamMultiCallable
    StreamStreamMultiCallable = grpc.StreamStreamMultiCallable
    ServerInterceptor = grpc.ServerInterceptor
    AioServerInterceptor = grpc.aio.ServerInterceptor

_S = grpc.StatusCode

DEFAULT_FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {_S.UNAVAILABLE, _S.RESOURCE_EXHAUSTED, _S.ABORTED, _S.DEADLINE_EXCEEDED, _S.UNKNOWN, _S.INTERNAL, _S.DATA_LOSS}
)
"""Codes that count against the backend. Every other code (``INVALID_ARGUMENT``, ``NOT_FOUND``,
``ALREADY_EXISTS``, ``PERMISSION_DENIED``, ``UNAUTHENTICATED``, ``FAILED_PRECONDITION``,
``OUT_OF_RANGE``, ``UNIMPLEMENTED``, ``CANCELLED``) is the caller's business: ``Outcome.IGNORED``."""

DEFAULT_RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset({_S.UNAVAILABLE})
"""Codes retried by default, as in gRPC's retry design (A6)."""

DEFAULT_PUSHBACK_CODES: frozenset[grpc.StatusCode] = frozenset({_S.RESOURCE_EXHAUSTED})
"""Codes retried only when the server sent a non-negative ``grpc-retry-pushback-ms``:
a server that sheds load and says when to come back is taken at its word."""

_BY_NAME = {code.name: code for code in grpc.StatusCode}
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def _codes(name: str, value: Iterable[grpc.StatusCode | str | int] | None) -> frozenset[grpc.StatusCode] | None:
    """Status codes given as ``grpc.StatusCode``, names (``"UNAVAILABLE"``) or numbers (14)."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a collection of status codes, got the string {value!r}")
    out = set()
    for item in value:
        if isinstance(item, grpc.StatusCode):
            out.add(item)
        elif isinstance(item, str) and item.upper() in _BY_NAME:
            out.add(_BY_NAME[item.upper()])
        elif isinstance(item, int) and not isinstance(item, bool) and item in _BY_VALUE:
            out.add(_BY_VALUE[item])
        else:
            raise ValueError(
                f"{name} must hold gRPC status codes (names like 'UNAVAILABLE' or numbers 0-16), got {item!r}"
            )
    return frozenset(out)


def parse_pushback(metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    """The server's ``grpc-retry-pushback-ms`` in seconds: ``None`` when absent, ``-1.0`` when
    negative or malformed (gRPC A6: such a value means "do not retry")."""
    if not metadata:
        return None
    for item in metadata:
        key, value = item[0], item[1]
        if key == PUSHBACK_KEY:
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            text = str(value).strip()
            if text.isdigit():
                return int(text) / 1000.0
            return -1.0
    return None


def _error_code(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    if code is None:
        return None
    try:
        value = code()
    except Exception:
        return None
    return value if isinstance(value, grpc.StatusCode) else None


def _error_pushback(exc: BaseException) -> float | None:
    trailing = getattr(exc, "trailing_metadata", None)
    if trailing is None:
        return None
    try:
        metadata = trailing()
    except Exception:
        return None
    return parse_pushback(metadata)


class GrpcClassifier(Classifier):
    """What a gRPC status code means for the backend, and whether it may be retried.

    Args:
        failure_codes: codes that count against the backend (default :data:`DEFAULT_FAILURE_CODES`);
            every other code is ignored (the caller's fault, or a cancellation).
        retryable_codes: codes that may be retried (default ``UNAVAILABLE``). A
            :class:`~resilience.DeadlineExceededError` from an attempt :class:`~resilience.Timeout`
            is retried when ``DEADLINE_EXCEEDED`` is among them.
        pushback_codes: codes retried only when the server sent a non-negative
            ``grpc-retry-pushback-ms`` (default ``RESOURCE_EXHAUSTED``).
    """

    __slots__ = ("failure_codes", "pushback_codes", "retryable_codes")

    def __init__(
        self,
        failure_codes: Iterable[grpc.StatusCode | str | int] | None = None,
        retryable_codes: Iterable[grpc.StatusCode | str | int] | None = None,
        pushback_codes: Iterable[grpc.StatusCode | str | int] | None = None,
    ) -> None:
        self.failure_codes = _codes("failure_codes", failure_codes) or (
            DEFAULT_FAILURE_CODES if failure_codes is None else frozenset()
        )
        retryable = _codes("retryable_codes", retryable_codes)
        self.retryable_codes = DEFAULT_RETRYABLE_CODES if retryable is None else retryable
        pushback = _codes("pushback_codes", pushback_codes)
        self.pushback_codes = DEFAULT_PUSHBACK_CODES if pushback is None else pushback

    def error(self, exc: BaseException) -> Outcome:
        if isinstance(exc, RejectedError):
            # A local rejection, even one raised as a grpc.RpcError by an inner adapter,
            # never reached the backend.
            return Outcome.IGNORED
        if isinstance(exc, grpc.RpcError):
            code = _error_code(exc)
            if code is None or code in self.failure_codes:
                return Outcome.FAILURE
            return Outcome.IGNORED
        if isinstance(exc, DeadlineExceededError):
            return Outcome.FAILURE if _S.DEADLINE_EXCEEDED in self.failure_codes else Outcome.IGNORED
        return super().error(exc)

    def retryable_error(self, exc: BaseException) -> bool:
        if isinstance(exc, RejectedError):
            return False
        if isinstance(exc, grpc.RpcError):
            code = _error_code(exc)
            if code in self.retryable_codes:
                return True
            if code in self.pushback_codes:
                pushback = _error_pushback(exc)
                return pushback is not None and pushback >= 0
            return False
        if isinstance(exc, DeadlineExceededError):
            return _S.DEADLINE_EXCEEDED in self.retryable_codes
        return False

    def unsent(self, exc: BaseException) -> bool:
        """An attempt that never reached a server: ``UNAVAILABLE`` because no connection
        could be made (grpc's "failed to connect"), the case gRPC retries transparently.
        Retrying it is safe for any method, idempotent or not."""
        if not isinstance(exc, grpc.RpcError) or _error_code(exc) is not _S.UNAVAILABLE:
            return False
        details = getattr(exc, "details", None)
        try:
            text = details() if callable(details) else ""
        except Exception:  # an aio error whose details need a running call
            return False
        return isinstance(text, str) and "failed to connect" in text.lower()

    def discard(self, result: object) -> None:
        # A result thrown away (a hedge that lost, a stream past its time) is a call to cancel.
        cancel = getattr(result, "cancel", None)
        if cancel is not None:
            cancel()

    def __repr__(self) -> str:
        names = sorted(c.name for c in self.retryable_codes)
        return f"GrpcClassifier(retryable_codes={names})"


class GrpcStreamClassifier(GrpcClassifier):
    """The classifier of response-streaming calls: their attempts return a
    :class:`~resilience.outcome.Pending` stream, judged when it ends, so the policies look
    at results (``checks_results``)."""

    __slots__ = ()

    checks_results = True


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """The policies and settings of a method, a service, or the default.

    A field left to ``None`` is inherited: method entry, then service entry, then the
    default, then the built-in default given below.

    Attributes:
        pipeline: the :class:`~resilience.Pipeline` calls run through (built-in default:
            none, calls pass straight through).
        idempotent: whether calls may be sent more than once (retries, hedges); default
            ``False``, as gRPC methods are not idempotent unless declared so. A
            :class:`~resilience.Retry` with ``retry_non_idempotent=True`` retries them anyway.
        retryable_codes: status codes that may be retried (default ``{UNAVAILABLE}``).
        failure_codes: status codes that count against the backend
            (default :data:`DEFAULT_FAILURE_CODES`).
        pushback_codes: codes retried only with a server pushback (default ``{RESOURCE_EXHAUSTED}``).
        tags: labels put in each call's context (default none).
        max_buffered_requests: request messages of a client-streaming call kept for a
            retry, in [0, 1_000_000] (default 256); past it the call is committed (no retry).
    """

    pipeline: Pipeline | None = None
    idempotent: bool | None = None
    retryable_codes: Iterable[grpc.StatusCode | str | int] | None = None
    failure_codes: Iterable[grpc.StatusCode | str | int] | None = None
    pushback_codes: Iterable[grpc.StatusCode | str | int] | None = None
    tags: Mapping[str, str] | None = None
    max_buffered_requests: int | None = None

    def __post_init__(self) -> None:
        if self.pipeline is not None and not isinstance(self.pipeline, Pipeline):
            raise TypeError(f"pipeline must be a resilience Pipeline or None, got {self.pipeline!r}")
        if self.idempotent is not None and not isinstance(self.idempotent, bool):
            raise TypeError(f"idempotent must be a bool or None, got {self.idempotent!r}")
        for name in ("retryable_codes", "failure_codes", "pushback_codes"):
            codes = _codes(name, getattr(self, name))
            if codes is not None:
                object.__setattr__(self, name, codes)
        if self.max_buffered_requests is not None:
            integer("max_buffered_requests", self.max_buffered_requests, minimum=0, maximum=1_000_000)


def split_method(full_method: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` as ``("pkg.Service", "Method")``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class ResolvedMethod:
    """Everything a call of one method needs, computed once per method and cached."""

    __slots__ = (
        "buffer_limit",
        "classifier",
        "clock",
        "idempotent",
        "listeners",
        "method",
        "pipeline",
        "replays",
        "service",
        "stream_classifier",
        "tags",
    )

    def __init__(self, full_method: str, entries: list[MethodPolicy]) -> None:
        def pick(name: str) -> Any:
            for entry in entries:
                value = getattr(entry, name)
                if value is not None:
                    return value
            return None

        self.service, self.method = split_method(full_method)
        self.pipeline: Pipeline | None = pick("pipeline")
        self.idempotent: bool = bool(pick("idempotent"))
        codes = (pick("failure_codes"), pick("retryable_codes"), pick("pushback_codes"))
        self.classifier = GrpcClassifier(*codes)
        self.stream_classifier = GrpcStreamClassifier(*codes)
        tags = pick("tags")
        self.tags: dict[str, str] | None = dict(tags) if tags else None
        limit = pick("max_buffered_requests")
        self.buffer_limit: int = 256 if limit is None else limit
        pipeline = self.pipeline
        # Request streams are only recorded for replay when something may send them again.
        self.replays = pipeline is not None and any(
            isinstance(p, Retry) or type(p).__name__ == "Hedge" for p in pipeline.policies
        )
        if pipeline is not None:
            self.clock = pipeline.clock
            self.listeners = pipeline.listeners
        else:
            from resilience.clock import SYSTEM_CLOCK

            self.clock = SYSTEM_CLOCK
            self.listeners = ()

    def context(self, timeout: float | None, streaming: bool = False) -> CallContext:
        """A new context for one call of this method; ``streaming`` for a response-streaming
        call, whose attempts return a :class:`~resilience.outcome.Pending` stream."""
        clock = self.clock
        ctx = CallContext(
            self.service,
            self.method,
            idempotent=self.idempotent,
            tags=dict(self.tags) if self.tags is not None else None,
            clock=clock,
            classifier=self.stream_classifier if streaming else self.classifier,
            listeners=self.listeners,
        )
        if timeout is not None:
            ctx.deadline = clock.monotonic() + timeout
        return ctx

    def __repr__(self) -> str:
        return f"ResolvedMethod({self.service}/{self.method}, pipeline={self.pipeline!r}, idempotent={self.idempotent})"


_CACHE_LIMIT = 4096


class GrpcPolicies:
    """Which policies and settings apply to which gRPC method.

    Keys of ``methods`` are full method names (``"/pkg.Service/Method"``, the leading
    slash optional) or service names (``"pkg.Service"``); a method entry overrides its
    service's entry field by field, which overrides ``default``. A bare
    :class:`~resilience.Pipeline` stands for ``MethodPolicy(pipeline=...)``.

    Example::

        GrpcPolicies(
            default=MethodPolicy(pipeline=Pipeline(Timeout(2), Retry(3), Bulkhead(64))),
            methods={
                "shop.Orders": MethodPolicy(idempotent=True),
                "/shop.Orders/Create": MethodPolicy(idempotent=False),
            },
        )

    Args:
        default: the entry of every method not listed (default: no policies).
        methods: entries per method or service.
    """

    __slots__ = ("_cache", "_lock", "default", "methods")

    def __init__(
        self,
        default: MethodPolicy | Pipeline | None = None,
        methods: Mapping[str, MethodPolicy | Pipeline] | None = None,
    ) -> None:
        self.default = _entry("default", default) if default is not None else MethodPolicy()
        table: dict[str, MethodPolicy] = {}
        for key, value in (methods or {}).items():
            if not isinstance(key, str) or not key.strip("/"):
                raise ValueError(f"methods keys must be '/pkg.Service/Method' or 'pkg.Service', got {key!r}")
            table[key.strip("/")] = _entry(f"methods[{key!r}]", value)
        self.methods = table
        self._cache: dict[str, ResolvedMethod] = {}
        self._lock = threading.Lock()

    def resolve(self, full_method: str) -> ResolvedMethod:
        """The settings of ``full_method`` (cached)."""
        resolved = self._cache.get(full_method)
        if resolved is not None:
            return resolved
        name = full_method.strip("/")
        service, _ = split_method(full_method)
        entries = [e for e in (self.methods.get(name), self.methods.get(service), self.default) if e is not None]
        resolved = ResolvedMethod(full_method, entries)
        with self._lock:
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[full_method] = resolved
        return resolved

    def __iter__(self) -> Iterator[str]:
        return iter(self.methods)

    def __repr__(self) -> str:
        return f"GrpcPolicies(default={self.default!r}, methods={sorted(self.methods)!r})"


def _entry(name: str, value: MethodPolicy | Pipeline) -> MethodPolicy:
    if isinstance(value, MethodPolicy):
        return value
    if isinstance(value, Pipeline):
        return MethodPolicy(pipeline=value)
    raise TypeError(f"{name} must be a MethodPolicy or a Pipeline, got {value!r}")


def as_policies(policies: GrpcPolicies | MethodPolicy | Pipeline | None) -> GrpcPolicies:
    """Accept the shorthand forms the adapters take."""
    if isinstance(policies, GrpcPolicies):
        return policies
    if policies is None or isinstance(policies, MethodPolicy | Pipeline):
        return GrpcPolicies(policies)
    raise TypeError(f"policies must be GrpcPolicies, a MethodPolicy, a Pipeline or None, got {policies!r}")


class ReplayableRequests:
    """A request stream recorded so that a retry can send it again.

    Each attempt iterates :meth:`attempt`: first the messages already taken from the
    source, then new ones taken under a lock (the previous attempt's sender may still be
    pulling). Past ``limit`` messages nothing more is kept and the call is committed.
    """

    __slots__ = ("_buffer", "_ctx", "_done", "_limit", "_lock", "_overflowed", "_source")

    def __init__(self, source: Iterable[Any], limit: int, ctx: CallContext) -> None:
        self._source = iter(source)
        self._buffer: list[Any] = []
        self._limit = limit
        self._lock = threading.Lock()
        self._done = False
        self._overflowed = False
        self._ctx = ctx

    def attempt(self) -> Iterator[Any]:
        if self._overflowed:
            raise RuntimeError("request stream already partly sent and not kept: cannot replay")
        index = 0
        while True:
            with self._lock:
                if index < len(self._buffer):
                    item = self._buffer[index]
                elif self._done:
                    return
                else:
                    try:
                        item = next(self._source)
                    except StopIteration:
                        self._done = True
                        return
                    if len(self._buffer) < self._limit:
                        self._buffer.append(item)
                    else:
                        self._overflowed = True
                        self._ctx.committed = True
            index += 1
            yield item
