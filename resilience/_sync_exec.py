"""The sync executor: runs any :class:`~resilience.permit.Gate` around the rest of a pipeline.

It does every wait a gate asks for (a reserved token, a place in a queue, a rejection
worth asking again) on the call's clock, and releases each permit exactly once: after
the call, whatever it did, and also when the wait itself is interrupted (an exception
raised into the waiting thread, such as ``KeyboardInterrupt`` from a signal handler).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .context import CallContext
from .outcome import Outcome, Pending
from .permit import DELAYED, QUEUED, REJECTED, Gate, Permit, Rejection, Ticket
from .policy import SyncNext

if TYPE_CHECKING:
    from .policies.retry import Retry, RetryOptions

__all__ = ["gate_sync", "gates_sync", "retry_sync", "wait_limit"]

_IGNORED = Outcome.IGNORED
_SUCCESS = Outcome.SUCCESS
_MIN_STEP = 0.001
"""The shortest sleep before asking a gate again, so that a stale window never spins."""


def wait_limit(ctx: CallContext, max_wait: float, waited: float) -> tuple[float, str]:
    """How much longer a call may wait, and what bounds it (``"max_wait"`` or ``"deadline"``)."""
    limit, reason = max_wait - waited, "max_wait"
    deadline = ctx.deadline
    if deadline is not None:
        remaining = deadline - ctx.clock.monotonic()
        if remaining < limit:
            limit, reason = remaining, "deadline"
    return limit, reason


def retry_delay(ctx: CallContext, rejection: Rejection, waited: float) -> float | None:
    """The sleep before asking again after ``rejection``, or ``None`` when it is final.

    A final rejection gets the bound that made it final as its ``reason``.
    """
    if rejection.max_wait <= 0.0:
        return None
    retry_after = rejection.retry_after
    delay = retry_after if retry_after is not None and retry_after > _MIN_STEP else _MIN_STEP
    limit, reason = wait_limit(ctx, rejection.max_wait, waited)
    if delay > limit:
        rejection.reason = reason
        return None
    return delay


def _release_after_error(gate: Gate, ctx: CallContext, permit: Permit, exc: BaseException, start: float) -> None:
    try:
        outcome = gate.judge_error(ctx, exc)
    except BaseException:
        now = ctx.clock.monotonic()
        gate.release(permit, _IGNORED, now - start, now, ctx)
        raise
    now = ctx.clock.monotonic()
    gate.release(permit, outcome, now - start, now, ctx)


def release_at_end(gate: Gate, ctx: CallContext, permit: Permit, pending: Pending, start: float) -> None:
    """Keep ``permit`` until ``pending`` ends, then release it with the end's outcome."""

    def ended(error: BaseException | None) -> None:
        try:
            outcome = gate.judge_result(ctx, pending) if error is None else gate.judge_error(ctx, error)
        except Exception:
            outcome = _IGNORED
        now = ctx.clock.monotonic()
        gate.release(permit, outcome, now - start, now, ctx)

    pending.on_end(ended)


def _release_after_result(gate: Gate, ctx: CallContext, permit: Permit, result: Any, start: float) -> None:
    if isinstance(result, Pending):
        release_at_end(gate, ctx, permit, result, start)
        return
    try:
        outcome = gate.judge_result(ctx, result)
    except BaseException:
        now = ctx.clock.monotonic()
        gate.release(permit, _IGNORED, now - start, now, ctx)
        ctx.classifier.discard(result)
        raise
    now = ctx.clock.monotonic()
    gate.release(permit, outcome, now - start, now, ctx)


def admit_sync(gate: Gate, ctx: CallContext, permit: Permit | Rejection) -> Permit:
    """Turn what ``acquire`` gave into a permit held now: wait for it, or raise the rejection."""
    clock = ctx.clock
    waited = 0.0
    while permit.kind == REJECTED:
        assert isinstance(permit, Rejection)
        delay = retry_delay(ctx, permit, waited)
        if delay is None:
            raise gate.rejected(ctx, permit)
        gate.waiting(ctx, permit, delay)
        clock.sleep(delay)
        waited += delay
        permit = gate.acquire(ctx, clock.monotonic())
    assert isinstance(permit, Permit)
    if permit.kind == DELAYED:
        try:
            clock.sleep(permit.delay)
        except BaseException:
            now = clock.monotonic()
            gate.release(permit, _IGNORED, 0.0, now, ctx)
            raise
    elif permit.kind == QUEUED:
        assert isinstance(permit, Ticket)
        limit, reason = wait_limit(ctx, permit.max_wait, 0.0)
        try:
            permit.wait(limit)
        except BaseException:
            if not gate.abandon(permit):
                gate.release(permit, _IGNORED, 0.0, clock.monotonic(), ctx)
            raise
        if gate.abandon(permit):
            raise gate.rejected(ctx, Rejection("wait", None, detail=reason))
    return permit


def gate_sync(gate: Gate, next: SyncNext) -> SyncNext:
    """The sync step that runs ``next`` under ``gate``."""
    acquire, release = gate.acquire, gate.release

    def gated_sync(ctx: CallContext) -> Any:
        # A gate that needs no time (``clocked`` false: a free bulkhead slot, a closed
        # breaker counting consecutive failures) costs no clock reading on success.
        clocked = gate.clocked
        start = ctx.clock.monotonic() if clocked else 0.0
        permit = acquire(ctx, start)
        if permit.kind:
            permit = admit_sync(gate, ctx, permit)
            start = ctx.clock.monotonic()
            clocked = True
        try:
            result = next(ctx)
        except BaseException as exc:
            _release_after_error(gate, ctx, permit, exc, start)  # type: ignore[arg-type]
            raise
        if gate.judges_results or ctx.classifier.checks_results:
            _release_after_result(gate, ctx, permit, result, start)  # type: ignore[arg-type]
        elif clocked:
            now = ctx.clock.monotonic()
            release(permit, _SUCCESS, now - start, now, ctx)  # type: ignore[arg-type]
        elif not gate.quiet_success:
            release(permit, _SUCCESS, 0.0, 0.0, ctx)  # type: ignore[arg-type]
        return result

    gated_sync.__name__ = f"{type(gate).__name__.lower()}_sync"
    return gated_sync


def retry_sync(policy: Retry, next: SyncNext) -> SyncNext:
    """The sync loop of a :class:`~resilience.Retry` around ``next``.

    A first attempt that succeeds costs one read of the options, a count in the budget
    (a clock reading once in a while, see :meth:`~resilience.RetryBudget.stamp`) and the
    call; everything after a failure is in :func:`_retry_loop_sync`.
    """
    budget = policy.budget
    tally, stamp = (budget.tally, budget.stamp) if budget is not None else (None, None)

    def retry_sync(ctx: CallContext) -> Any:
        options = policy._options
        if tally is not None:
            mark = tally()
            if mark >= budget.due:  # type: ignore[union-attr]
                stamp(ctx.clock.monotonic(), mark)  # type: ignore[misc]
        if ctx.attempt != 1:  # a fresh context reads 1 from its class: no store
            ctx.attempt = 1
        try:
            result = next(ctx)
        except Exception as exc:
            error: Exception | None = exc
            result = None
        else:
            if options.retry_if_result is None and not ctx.classifier.checks_results:
                return result
            error = None
        return _retry_loop_sync(policy, next, ctx, options, result, error)

    return retry_sync


def _retry_loop_sync(
    policy: Retry, next: SyncNext, ctx: CallContext, options: RetryOptions, result: Any, error: Exception | None
) -> Any:
    """After the first attempt (``result``, or ``error`` when it raised): retry while the policy says so.

    Runs outside the first attempt's ``except`` block, so that a later error does not
    chain the earlier ones as its context.
    """
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
                    ctx.classifier.discard(result)
                    raise stop
                return result
            ctx.classifier.discard(result)
        if delay > 0:
            clock.sleep(delay)
        previous = delay
        attempt += 1
        ctx.attempt = attempt
        ctx.pushback = None
        try:
            result = next(ctx)
        except Exception as exc:
            error = exc
        else:
            error = None


# -- several gates in one frame ---------------------------------------------------------------
#
# A pipeline's consecutive gates (a breaker, a limit, a bulkhead...) run in one generated
# function instead of one executor frame each: the nested ``try`` blocks of that function are
# exactly the nesting of ``gate_sync`` calls (a gate's release sees the error that came out of
# the gates inside it, a judgement that raises reaches the gates outside as an error), but
# without a call per gate. The code is generated once per number of gates.

_EXEC_GLOBALS: dict[str, Any] = {
    "admit_sync": admit_sync,
    "_release_after_error": _release_after_error,
    "_release_after_result": _release_after_result,
    "SUCCESS": _SUCCESS,
}
_GENERATED: dict[int, Callable[..., SyncNext]] = {}


def gates_source(io: tuple[bool, ...], asynchronous: bool) -> str:
    """The source of ``make(next, g0, a0, r0, ...)``, which returns the step running
    ``next`` under the gates ``g*`` (their ``acquire``/``aacquire`` ``a*``, ``release``
    ``r*``), the first one outermost. ``io[i]``: gate ``i`` is admitted by an awaited
    ``aacquire`` (async only). One source for both executors: the async one only awaits."""
    aw = "await " if asynchronous else ""
    kind = "async" if asynchronous else "sync"
    params = ", ".join(f"g{i}, a{i}, r{i}" for i in range(len(io)))
    lines = [f"def make(next, {params}):", f"    {'async ' if asynchronous else ''}def gates_{kind}(ctx):"]
    ind = " " * 8
    for i, awaited in enumerate(io):
        lines += [
            f"{ind}c{i} = g{i}.clocked",
            f"{ind}s{i} = ctx.clock.monotonic() if c{i} else 0.0",
            f"{ind}p{i} = {'await ' if awaited else ''}a{i}(ctx, s{i})",
            f"{ind}if p{i}.kind:",
            f"{ind}    p{i} = {aw}admit_{kind}(g{i}, ctx, p{i})",
            f"{ind}    s{i} = ctx.clock.monotonic()",
            f"{ind}    c{i} = True",
            f"{ind}try:",
        ]
        ind += "    "
    lines.append(f"{ind}result = {aw}next(ctx)")
    for i in reversed(range(len(io))):
        ind = ind[:-4]
        lines += [
            f"{ind}except BaseException as exc:",
            f"{ind}    _release_after_error(g{i}, ctx, p{i}, exc, s{i})",
            f"{ind}    raise",
            f"{ind}if g{i}.judges_results or ctx.classifier.checks_results:",
            f"{ind}    {aw}_release_after_result(g{i}, ctx, p{i}, result, s{i})",
            f"{ind}elif c{i}:",
            f"{ind}    now = ctx.clock.monotonic()",
            f"{ind}    r{i}(p{i}, SUCCESS, now - s{i}, now, ctx)",
            f"{ind}elif not g{i}.quiet_success:",
            f"{ind}    r{i}(p{i}, SUCCESS, 0.0, 0.0, ctx)",
        ]
    lines += [f"{ind}return result", f"    return gates_{kind}"]
    return "\n".join(lines)


def compile_gates(io: tuple[bool, ...], asynchronous: bool, namespace: dict[str, Any]) -> Callable[..., Any]:
    """``make`` of :func:`gates_source`, compiled with the executor's helpers in ``namespace``."""
    scope = dict(namespace)
    kind = "async" if asynchronous else "sync"
    exec(compile(gates_source(io, asynchronous), f"<resilience gates_{kind} x{len(io)}>", "exec"), scope)
    make: Callable[..., Any] = scope["make"]
    return make


def _generate(n: int) -> Callable[..., SyncNext]:
    return compile_gates((False,) * n, False, _EXEC_GLOBALS)


def gates_sync(gates: Sequence[Gate], next: SyncNext) -> SyncNext:
    """One sync step running ``next`` under ``gates``, the first outermost: ``gate_sync``
    nested once per gate, in one frame."""
    if len(gates) == 1:
        return gate_sync(gates[0], next)
    make = _GENERATED.get(len(gates))
    if make is None:
        make = _GENERATED[len(gates)] = _generate(len(gates))
    args: list[Any] = []
    for gate in gates:
        args += [gate, gate.acquire, gate.release]
    step = make(next, *args)
    step.__name__ = "_".join(type(g).__name__.lower() for g in gates) + "_sync"
    return step
