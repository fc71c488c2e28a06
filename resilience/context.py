"""The context of one call, shared by the policies, the adapter and the listeners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .clock import SYSTEM_CLOCK, Clock
from .events import Listener
from .outcome import DEFAULT_CLASSIFIER, Classifier

__all__ = ["CallContext"]


class CallContext:
    """What policies know about the call in progress.

    One context lives for one logical call; the retry policy updates ``attempt`` on it
    and a hedge works on a :meth:`fork`. Adapters fill it before the call and read it in
    each attempt (``deadline`` becomes the transport timeout, ``attempt`` the
    ``grpc-previous-rpc-attempts`` header, ``endpoint`` the address to send to).

    Attributes:
        service: the logical service called (``"orders"``, an HTTP host).
        method: the method called (a gRPC method, ``"GET /items"``).
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
        hedge: 0 for the primary attempt, ``n`` for the ``n``-th hedged attempt.
        deadline: absolute deadline on ``clock.monotonic()``, or ``None``.
        idempotent: whether the call may safely be sent more than once.
        hedgeable: whether copies may run at the same time (a hedge); ``None`` (the
            default) means "when idempotent". ``False`` for a call that may be retried but
            must not run twice at once, such as a POST made safe only by an
            ``Idempotency-Key`` (the server dedupes by key, not concurrent copies).
        committed: set by adapters once a result has been handed to the caller in part
            (a stream's first message): from then on nothing may retry or hedge it.
        tags: free-form labels (tenant, route, ...) for keys and telemetry.
        endpoint: the endpoint of the current attempt, once picked.
        tried: endpoints already tried in this call, most recent last.
        pushback: the server's hint from the last attempt, in seconds: when to retry
            (``Retry-After``, ``grpc-retry-pushback-ms``); a negative value means "do not retry".
        clock: the clock of the pipeline that runs the call.
        classifier: what results and errors mean for this call.
        listeners: where policies send their events (empty: no event is built).
        observed: the pipeline's listeners follow this call: its attempts emit
            :class:`~resilience.events.AttemptStarted` and ``AttemptEnded``.
        telemetry: what a tracing listener keeps for this call (the OpenTelemetry
            listener: the call's span, and on each attempt's context that attempt's);
            ``None`` otherwise. Adapters pass it on through :mod:`resilience.telemetry`
            (trace context into each attempt's headers).

    **What rides on it, and why.** The fields above are the call's data: who is called,
    how (idempotent? committed?), by when, and where each attempt went. Three more things
    ride along that are not data of the call but of the pipeline that runs it — ``clock``,
    ``classifier`` and ``listeners`` — because a policy instance may sit in several
    pipelines (one breaker shared by a sync and an async client, say) and must use the
    time, the protocol knowledge and the listeners of the pipeline running *this* call;
    putting them on the context spares every policy a reference to its pipeline and every
    executor an extra argument on the hot path. ``fn``, ``args`` and ``kwargs`` are the
    innermost step (the user's function), held here so that :meth:`Pipeline.call` builds
    no closure per call. Nothing else belongs here: policy state lives in the policies,
    options in their options objects.
    """

    # Defaults live on the class: a call stores only what differs from them, so building a
    # context is a handful of dictionary stores (it happens on every call). A pipeline
    # keeps a subclass of its own whose class attributes are its service, method, clock,
    # classifier and listeners (see :meth:`for_pipeline`).
    service: str = ""
    method: str = ""
    attempt: int = 1
    hedge: int = 0
    deadline: float | None = None
    idempotent: bool = True
    hedgeable: bool | None = None
    committed: bool = False
    tags: dict[str, str] | None = None
    endpoint: str | None = None
    tried: list[str] | None = None
    pushback: float | None = None
    clock: Clock = SYSTEM_CLOCK
    classifier: Classifier = DEFAULT_CLASSIFIER
    listeners: tuple[Listener, ...] = ()
    observed: bool = False
    telemetry: Any = None
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None

    def __init__(
        self,
        service: str = "",
        method: str = "",
        deadline: float | None = None,
        idempotent: bool = True,
        tags: dict[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        classifier: Classifier = DEFAULT_CLASSIFIER,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.service = service
        self.method = method
        self.deadline = deadline
        self.idempotent = idempotent
        self.tags = tags
        self.clock = clock
        self.classifier = classifier
        self.listeners = listeners

    @classmethod
    def for_pipeline(
        cls,
        service: str,
        method: str,
        clock: Clock,
        classifier: Classifier,
        listeners: tuple[Listener, ...],
    ) -> type[CallContext]:
        """A subclass whose defaults are one pipeline's: its contexts are built with ``__new__``."""
        return type(
            "CallContext",
            (cls,),
            {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "service": service,
                "method": method,
                "clock": clock,
                "classifier": classifier,
                "listeners": listeners,
            },
        )

    def remaining(self) -> float | None:
        """Seconds left until the deadline (may be negative), or ``None`` without one."""
        if self.deadline is None:
            return None
        return self.deadline - self.clock.monotonic()

    def set_timeout(self, seconds: float) -> None:
        """Set the deadline ``seconds`` from now, keeping an earlier one."""
        deadline = self.clock.monotonic() + seconds
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline

    def fork(self) -> CallContext:
        """A copy for a parallel attempt (a hedge): same call, its own attempt state."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        if self.tried is not None:
            other.tried = list(self.tried)
        if self.tags is not None:
            other.tags = dict(self.tags)
        return other

    def tag(self, key: str, default: str | None = None) -> str | None:
        """The tag ``key``, or ``default``."""
        if self.tags is None:
            return default
        return self.tags.get(key, default)

    def __repr__(self) -> str:
        return (
            f"CallContext(service={self.service!r}, method={self.method!r}, "
            f"attempt={self.attempt}, hedge={self.hedge}, endpoint={self.endpoint!r})"
        )
