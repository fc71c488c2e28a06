"""The :class:`Pipeline`: policies composed around a call."""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar, cast, overload

from . import _observe
from ._async_exec import gates_async
from ._sync_exec import gates_sync
from .clock import SYSTEM_CLOCK, Clock
from .context import CallContext
from .events import Listener
from .outcome import DEFAULT_CLASSIFIER, Classifier
from .permit import Gate, GateMixin
from .policy import AsyncNext, Policy, SyncNext

__all__ = ["Pipeline"]

_log = logging.getLogger("resilience")

P = ParamSpec("P")
T = TypeVar("T")


_new = object.__new__


def _plain_gate(policy: Policy) -> bool:
    """A gate run by the shared executors as it is (its class keeps GateMixin's wraps)."""
    cls = type(policy)
    return cls.wrap is GateMixin.wrap and cls.wrap_async is GateMixin.wrap_async  # type: ignore[comparison-overlap]


def _gates(run: list[Policy], sync_next: SyncNext, async_next: AsyncNext) -> tuple[SyncNext, AsyncNext]:
    """Consecutive gates (``run`` innermost first) as one step each way."""
    gates = [cast(Gate, p) for p in reversed(run)]
    return gates_sync(gates, sync_next), gates_async(gates, async_next)


def _chain(policies: tuple[Policy, ...], sync_chain: SyncNext, async_chain: AsyncNext) -> tuple[SyncNext, AsyncNext]:
    """The steps of ``policies`` (the first outermost) around the innermost ones given."""
    run: list[Policy] = []  # consecutive plain gates, innermost first
    for policy in reversed(policies):
        if _plain_gate(policy):
            run.append(policy)
            continue
        if run:
            sync_chain, async_chain = _gates(run, sync_chain, async_chain)
            run = []
        sync_chain = policy.wrap(sync_chain)
        async_chain = policy.wrap_async(async_chain)
    if run:
        sync_chain, async_chain = _gates(run, sync_chain, async_chain)
    return sync_chain, async_chain


def _invoke(ctx: CallContext) -> Any:
    args = ctx.args
    if args is None:
        return ctx.fn(ctx)  # type: ignore[misc]
    kwargs = ctx.kwargs
    if kwargs is None:
        return ctx.fn(*args)  # type: ignore[misc]
    return ctx.fn(*args, **kwargs)  # type: ignore[misc]


class Pipeline:
    """Policies composed around a call; the first policy given is the outermost.

    The recommended order, outermost first::

        Pipeline(Fallback(...), Timeout(total), Retry(...), Hedge(...), CircuitBreaker(...),
                 RateLimit(...), Bulkhead(...), Timeout(per_attempt))

    A :class:`~resilience.Timeout` outside the :class:`~resilience.Retry` bounds the whole
    call; one inside bounds each attempt.

    Use it with :meth:`call` (sync), :meth:`acall` (asyncio), or as a decorator on either
    kind of function. Adapters that need the context in each attempt use
    :meth:`execute` / :meth:`aexecute` with a function of the context.

    Args:
        *policies: the policies, outermost first.
        clock: the time source for every policy of this pipeline (default: the real clock).
        listeners: callables that receive every event of the pipeline's policies.
        classifier: what results and errors mean (default: exceptions are failures).
        service: the service name put in each call's context.
        method: the method name put in each call's context.
    """

    __slots__ = (
        "_async_chain",
        "_context_type",
        "_decorated",
        "_sync_chain",
        "classifier",
        "clock",
        "listeners",
        "method",
        "policies",
        "service",
    )

    def __init__(
        self,
        *policies: Policy,
        clock: Clock = SYSTEM_CLOCK,
        listeners: Iterable[Listener] = (),
        classifier: Classifier = DEFAULT_CLASSIFIER,
        service: str = "",
        method: str = "",
    ) -> None:
        for i, policy in enumerate(policies):
            if not isinstance(policy, Policy):
                raise TypeError(f"policies[{i}] must be a resilience Policy, got {policy!r}")
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock (SystemClock(), FakeClock(), ...), got {clock!r}")
        if not isinstance(classifier, Classifier):
            raise TypeError(f"classifier must be a Classifier, got {classifier!r}")
        listeners = tuple(listeners)
        for i, listener in enumerate(listeners):
            if not callable(listener):
                raise TypeError(f"listeners[{i}] must be callable, got {listener!r}")
        self.policies: tuple[Policy, ...] = policies
        self._decorated: weakref.WeakSet[Callable[..., Any]] | None = None
        self.clock = clock
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        self.classifier = classifier
        self.service = service
        self.method = method
        self._context_type = CallContext.for_pipeline(service, method, clock, classifier, self.listeners)
        sync_chain, async_chain = _chain(policies, _invoke, _invoke)
        follow = _observe.followers(self.listeners)  # call listeners: call and attempt events
        if follow:
            # A second chain with the attempt events innermost, for the calls they follow; the
            # others run the plain one (resilience._observe).
            observed = _chain(policies, *_observe.attempt_steps(follow, _invoke))
            sync_chain, async_chain = _observe.install(self, follow, (sync_chain, async_chain), observed)
        self._sync_chain = sync_chain
        self._async_chain = async_chain

    def replace(self, other: Pipeline) -> None:
        """Take ``other``'s policies, chain, clock, listeners, classifier, service and method, in place.

        What a hot reload uses when a pipeline's structure changes (a policy added, removed
        or moved): adapters that hold this pipeline see the new chain at once. A call reads
        the chain once, when it starts, so calls in flight finish under the policies they
        started with; the policy objects are ``other``'s, shared with it (their state too).
        Functions decorated with this pipeline are rebound to the new chain, clock and
        listeners (their calls pay nothing for it). Listeners with a ``watch`` method are
        told of this pipeline again.

        Raises:
            TypeError: ``other`` is not a :class:`Pipeline`.
        """
        if not isinstance(other, Pipeline):
            raise TypeError(f"replace needs a Pipeline, got {other!r}")
        self.clock = other.clock
        self.listeners = other.listeners
        self.classifier = other.classifier
        self.service = other.service
        self.method = other.method
        self._context_type = other._context_type
        # The chains one at a time: each is read once per call.
        self._sync_chain = other._sync_chain
        self._async_chain = other._async_chain
        self.policies = other.policies
        for wrapper in list(self._decorated or ()):
            self._rebind(wrapper)
        for listener in self.listeners:
            watch = getattr(listener, "watch", None)
            if callable(watch):
                try:
                    watch(self)
                except Exception:
                    _log.exception("resilience listener %r failed to watch %r", listener, self)

    def context(
        self,
        *,
        service: str | None = None,
        method: str | None = None,
        timeout: float | None = None,
        idempotent: bool = True,
        tags: dict[str, str] | None = None,
    ) -> CallContext:
        """A new context for one call of this pipeline (for :meth:`execute`)."""
        ctx = CallContext(
            self.service if service is None else service,
            self.method if method is None else method,
            idempotent=idempotent,
            tags=tags,
            clock=self.clock,
            classifier=self.classifier,
            listeners=self.listeners,
        )
        if timeout is not None:
            ctx.deadline = self.clock.monotonic() + timeout
        return ctx

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the sync callable ``fn(*args, **kwargs)`` through the policies."""
        ctx = _new(self._context_type)
        ctx.fn = fn
        ctx.args = args
        if kwargs:
            ctx.kwargs = kwargs
        result: T = self._sync_chain(ctx)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the async callable ``await fn(*args, **kwargs)`` through the policies."""
        ctx = _new(self._context_type)
        ctx.fn = fn
        ctx.args = args
        if kwargs:
            ctx.kwargs = kwargs
        result: T = await self._async_chain(ctx)
        return result

    def execute(self, fn: Callable[[CallContext], T], ctx: CallContext) -> T:
        """Run ``fn(ctx)`` through the policies; ``fn`` sees each attempt's context."""
        ctx.fn = fn
        ctx.args = None
        result: T = self._sync_chain(ctx)
        return result

    async def aexecute(self, fn: Callable[[CallContext], Awaitable[T]], ctx: CallContext) -> T:
        """Async twin of :meth:`execute`."""
        ctx.fn = fn
        ctx.args = None
        result: T = await self._async_chain(ctx)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a sync or an async function so that every call runs through the policies.

        The decorated function's calls build their context from a class that already holds
        the function, so a call stores only its arguments.
        """
        context_type = self._decorated_context(fn)
        if inspect.iscoroutinefunction(fn):
            async_chain = self._async_chain

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                ctx: CallContext = _new(context_type)
                ctx.args = args
                if kwargs:
                    ctx.kwargs = kwargs
                return await async_chain(ctx)

            self._remember(async_wrapper)
            return async_wrapper

        sync_chain = self._sync_chain

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            ctx: CallContext = _new(context_type)
            ctx.args = args
            if kwargs:
                ctx.kwargs = kwargs
            return sync_chain(ctx)

        self._remember(wrapper)
        return wrapper

    def _decorated_context(self, fn: Callable[..., Any]) -> type[CallContext]:
        """The context class of a function decorated by this pipeline: the function is in it."""
        return type(
            "CallContext",
            (self._context_type,),
            {"__module__": CallContext.__module__, "__qualname__": CallContext.__qualname__, "fn": staticmethod(fn)},
        )

    def _remember(self, wrapper: Callable[..., Any]) -> None:
        """Keep a weak reference to a decorated function, for :meth:`replace` to rebind."""
        if self._decorated is None:
            self._decorated = weakref.WeakSet()
        self._decorated.add(wrapper)

    def _rebind(self, wrapper: Callable[..., Any]) -> None:
        """Point a decorated function at this pipeline's chain and context (its closure's cells)."""
        cells = dict(zip(wrapper.__code__.co_freevars, wrapper.__closure__ or (), strict=True))
        context = cells["context_type"]
        context.cell_contents = self._decorated_context(context.cell_contents.fn)
        if "sync_chain" in cells:
            cells["sync_chain"].cell_contents = self._sync_chain
        if "async_chain" in cells:
            cells["async_chain"].cell_contents = self._async_chain

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(p.name for p in self.policies)})"
