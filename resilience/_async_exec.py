"""The async executor: runs any :class:`~resilience.permit.Gate` around the rest of an async pipeline.

The async twin of :mod:`resilience._sync_exec`, for asyncio and trio. Waits are made on
the call's clock; a permit is released exactly once on every path, cancellation included:
a task cancelled while it waits in a queue gives its place back (or passes on a place it
was granted in the same loop turn) and still raises its cancellation, never a rejection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _aio
from ._sync_exec import compile_gates, release_at_end, retry_delay, wait_limit
from .context import CallContext
from .outcome import Outcome, Pending
from .permit import DELAYED, QUEUED, REJECTED, Gate, Permit, Rejection, Ticket
from .policy import AsyncNext

if TYPE_CHECKING:
    from .policies.retry import Retry, RetryOptions

__all__ = ["admit_async", "gate_async", "gates_async", "retry_async"]

_IGNORED = Outcome.IGNORED
_SUCCESS = Outcome.SUCCESS


async def _release_after_result(gate: Gate, ctx: CallContext, permit: Permit, result: Any, start: float) -> None:
    if isinstance(result, Pending):
        release_at_end(gate, ctx, permit, result, start)
        return
    try:
        outcome = gate.judge_result(ctx, result)
    except BaseException:
        now = ctx.clock.monotonic()
        gate.release(permit, _IGNORED, now - start, now, ctx)
        await ctx.classifier.adiscard(result)
        raise
    now = ctx.clock.monotonic()
    gate.release(permit, outcome, now - start, now, ctx)


def _release_after_error(gate: Gate, ctx: CallContext, permit: Permit, exc: BaseException, start: float) -> None:
    try:
        outcome = gate.judge_error(ctx, exc)
    except BaseException:
        now = ctx.clock.monotonic()
        gate.release(permit, _IGNORED, now - start, now, ctx)
        raise
    now = ctx.clock.monotonic()
    gate.release(permit, outcome, now - start, now, ctx)


async def _wait_ticket(ctx: CallContext, ticket: Ticket, limit: float) -> bool:
    """Wait for a grant, at most ``limit`` seconds: ``True`` when woken, ``False`` when the wait ran out.

    Who holds the place is decided by the policy (``ticket.granted``, under its lock), not
    by how the wait ended: the caller asks the policy with ``abandon`` afterwards.
    """
    waiter = _aio.Waiter.new()
    if not ticket.attach(waiter.wake):
        return True
    deadline = None if limit == float("inf") else ctx.clock.monotonic() + max(0.0, limit)
    return await waiter.wait(ctx.clock, deadline)


async def admit_async(gate: Gate, ctx: CallContext, permit: Permit | Rejection) -> Permit:
    """Turn what ``acquire`` gave into a permit held now: wait for it, or raise the rejection."""
    clock = ctx.clock
    waited = 0.0
    while permit.kind == REJECTED:
        assert isinstance(permit, Rejection)
        delay = retry_delay(ctx, permit, waited)
        if delay is None:
            raise gate.rejected(ctx, permit)
        gate.waiting(ctx, permit, delay)
        await clock.asleep(delay)
        waited += delay
        aacquire = getattr(gate, "aacquire", None)
        if aacquire is not None:
            permit = await aacquire(ctx, clock.monotonic())
        else:
            permit = gate.acquire(ctx, clock.monotonic())
    assert isinstance(permit, Permit)
    if permit.kind == DELAYED:
        try:
            await clock.asleep(permit.delay)
        except BaseException:
            gate.release(permit, _IGNORED, 0.0, clock.monotonic(), ctx)
            raise
    elif permit.kind == QUEUED:
        assert isinstance(permit, Ticket)
        limit, reason = wait_limit(ctx, permit.max_wait, 0.0)
        try:
            await _wait_ticket(ctx, permit, limit)
        except BaseException:
            # Cancelled (or interrupted): never run the call. A place granted in the same
            # turn is passed on; the cancellation goes on as it came.
            if not gate.abandon(permit):
                gate.release(permit, _IGNORED, 0.0, clock.monotonic(), ctx)
            raise
        if gate.abandon(permit):
            raise gate.rejected(ctx, Rejection("wait", None, detail=reason))
    return permit


def gate_async(gate: Gate, next: AsyncNext) -> AsyncNext:
    """The async step that runs ``next`` under ``gate``.

    A gate whose admission needs I/O (a rate limit kept in Redis) has an
    ``async def aacquire(ctx, now)`` beside ``acquire``; the executor awaits it.
    """
    release = gate.release
    aacquire = getattr(gate, "aacquire", None)
    if aacquire is not None:
        return _gate_async_io(gate, aacquire, next)
    acquire = gate.acquire

    async def gated_async(ctx: CallContext) -> Any:
        # A gate that needs no time (``clocked`` false: a free bulkhead slot, a closed
        # breaker counting consecutive failures) costs no clock reading on success.
        clocked = gate.clocked
        start = ctx.clock.monotonic() if clocked else 0.0
        permit = acquire(ctx, start)
        if permit.kind:
            permit = await admit_async(gate, ctx, permit)
            start = ctx.clock.monotonic()
            clocked = True
        try:
            result = await next(ctx)
        except BaseException as exc:
            _release_after_error(gate, ctx, permit, exc, start)  # type: ignore[arg-type]
            raise
        if gate.judges_results or ctx.classifier.checks_results:
            await _release_after_result(gate, ctx, permit, result, start)  # type: ignore[arg-type]
        elif clocked:
            now = ctx.clock.monotonic()
            release(permit, _SUCCESS, now - start, now, ctx)  # type: ignore[arg-type]
        elif not gate.quiet_success:
            release(permit, _SUCCESS, 0.0, 0.0, ctx)  # type: ignore[arg-type]
        return result

    gated_async.__name__ = f"{type(gate).__name__.lower()}_async"
    return gated_async


def _gate_async_io(gate: Gate, aacquire: Any, next: AsyncNext) -> AsyncNext:
    release = gate.release

    async def gated_io_async(ctx: CallContext) -> Any:
        clock = ctx.clock
        start = clock.monotonic()
        permit = await aacquire(ctx, start)
        if permit.kind:
            permit = await admit_async(gate, ctx, permit)
            start = clock.monotonic()
        try:
            result = await next(ctx)
        except BaseException as exc:
            _release_after_error(gate, ctx, permit, exc, start)
            raise
        if gate.judges_results or ctx.classifier.checks_results:
            await _release_after_result(gate, ctx, permit, result, start)
        else:
            now = clock.monotonic()
            release(permit, Outcome.SUCCESS, now - start, now, ctx)
        return result

    return gated_io_async


def retry_async(policy: Retry, next: AsyncNext) -> AsyncNext:
    """The async loop of a :class:`~resilience.Retry` around ``next`` (see :func:`._sync_exec.retry_sync`)."""
    budget = policy.budget
    tally, stamp = (budget.tally, budget.stamp) if budget is not None else (None, None)

    async def retry_async(ctx: CallContext) -> Any:
        options = policy._options
        if tally is not None:
            mark = tally()
            if mark >= budget.due:  # type: ignore[union-attr]
                stamp(ctx.clock.monotonic(), mark)  # type: ignore[misc]
        if ctx.attempt != 1:  # a fresh context reads 1 from its class: no store
            ctx.attempt = 1
        try:
            result = await next(ctx)
        except Exception as exc:
            error: Exception | None = exc
            result = None
        else:
            if options.retry_if_result is None and not ctx.classifier.checks_results:
                return result
            error = None
        return await _retry_loop_async(policy, next, ctx, options, result, error)

    return retry_async


async def _retry_loop_async(
    policy: Retry, next: AsyncNext, ctx: CallContext, options: RetryOptions, result: Any, error: Exception | None
) -> Any:
    """The async twin of :func:`~resilience._sync_exec._retry_loop_sync`."""
    step, clock = policy._step, ctx.clock
    attempt, previous = 1, 0.0
    while True:
        if error is not None:
            delay = step(ctx, options, attempt, previous, error)
            if not isinstance(delay, float):
                stop = policy._error_to_raise(ctx, delay, error)
                if stop is not None:
                    raise stop from error
                raise error
        else:
            if not policy._wants_result_retry(ctx, options, result):
                return result
            delay = step(ctx, options, attempt, previous, None)
            if not isinstance(delay, float):
                stop = policy._error_to_raise(ctx, delay, None)
                if stop is not None:
                    await ctx.classifier.adiscard(result)
                    raise stop
                return result
            await ctx.classifier.adiscard(result)
        if delay > 0:
            await clock.asleep(delay)
        previous = delay
        attempt += 1
        ctx.attempt = attempt
        ctx.pushback = None
        try:
            result = await next(ctx)
        except Exception as exc:
            error = exc
        else:
            error = None


# -- several gates in one frame (see resilience._sync_exec.gates_sync) ------------------------

_EXEC_GLOBALS: dict[str, Any] = {
    "admit_async": admit_async,
    "_release_after_error": _release_after_error,
    "_release_after_result": _release_after_result,
    "SUCCESS": _SUCCESS,
}
_GENERATED: dict[tuple[bool, ...], Callable[..., AsyncNext]] = {}


def _generate(io: tuple[bool, ...]) -> Callable[..., AsyncNext]:
    return compile_gates(io, True, _EXEC_GLOBALS)


def gates_async(gates: Sequence[Gate], next: AsyncNext) -> AsyncNext:
    """One async step running ``next`` under ``gates``, the first outermost: ``gate_async``
    nested once per gate, in one frame."""
    if len(gates) == 1:
        return gate_async(gates[0], next)
    io = tuple(getattr(g, "aacquire", None) is not None for g in gates)
    make = _GENERATED.get(io)
    if make is None:
        make = _GENERATED[io] = _generate(io)
    args: list[Any] = []
    for gate in gates:
        aacquire = getattr(gate, "aacquire", None)
        args += [gate, aacquire if aacquire is not None else gate.acquire, gate.release]
    step = make(next, *args)
    step.__name__ = "_".join(type(g).__name__.lower() for g in gates) + "_async"
    return step
