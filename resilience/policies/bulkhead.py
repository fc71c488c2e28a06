"""Bulkhead: a bound on concurrent calls, with a bounded wait queue, behind the permit protocol."""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from dataclasses import dataclass

from .._validate import Seconds, as_seconds, integer, seconds
from ..context import CallContext
from ..errors import BulkheadFullError
from ..events import BulkheadRejected, emit
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from ..permit import GateMixin, Permit, Rejection, Ticket
from ..policy import Policy

__all__ = ["Bulkhead", "BulkheadOptions"]

_SLOT = Permit()
"""The permit of every call holding a slot (a slot carries nothing of its own)."""


@dataclass(frozen=True, slots=True)
class BulkheadOptions(Options):
    """How many calls a :class:`Bulkhead` lets in, and how long others may wait.

    Attributes:
        max_concurrent: calls allowed inside at once, in [1, 1_000_000] (required).
        max_queue: callers allowed to wait for a slot, in [0, 1_000_000] (default 0:
            reject at once when every slot is taken).
        max_wait: the longest wait for a slot in seconds, > 0, or ``None`` for no limit
            other than the call's deadline (default ``None``). A ``timedelta`` is
            accepted and stored as seconds.

    Raises:
        ValueError: an option is out of range.
        TypeError: an option has the wrong type.
    """

    max_concurrent: int
    max_queue: int = 0
    max_wait: float | None = None

    def __post_init__(self) -> None:
        self.set("max_concurrent", integer("max_concurrent", self.max_concurrent, minimum=1, maximum=1_000_000))
        self.set("max_queue", integer("max_queue", self.max_queue, minimum=0, maximum=1_000_000))
        if self.max_wait is not None:
            self.set("max_wait", seconds("max_wait", self.max_wait, bounded=True))


class Bulkhead(GateMixin, Reconfigurable[BulkheadOptions], Policy):
    """Lets at most ``max_concurrent`` calls run at once; others wait in a bounded queue.

    A call that finds every slot taken waits in line (first come, first served) if fewer
    than ``max_queue`` are already waiting, for at most ``max_wait`` seconds and never past
    its deadline; otherwise, or when the wait runs out, it is rejected with
    :class:`~resilience.BulkheadFullError`. One bulkhead serves threads and asyncio tasks
    alike, also both at once: a freed slot goes straight to the next in line.

    A slot is never lost: a waiter interrupted while it waits (cancelled, or hit by an
    exception such as ``KeyboardInterrupt`` in its thread) leaves the queue, or passes on
    the slot it was granted meanwhile without running its call.

    **Options and reconfigure.** The keywords build a :class:`BulkheadOptions`;
    ``options=`` takes one whole. :meth:`reconfigure` keeps the calls inside and the queue.
    A larger ``max_concurrent`` adds free slots at once, granted to waiters first; a
    smaller one takes slots away as calls release them (calls inside are never
    interrupted, so ``active`` may stay above the new limit until enough of them end). A
    smaller ``max_queue`` rejects no one already waiting: it only bounds who may join. A new
    ``max_wait`` applies to calls that join the queue after the change.

    **Permit protocol.** :meth:`acquire` gives a permit when a slot is free (while nobody
    waits a slot is taken and given back without the lock), a
    :class:`~resilience.permit.Ticket` when the call must queue, or a rejection
    (``"full"``); :meth:`release` frees the slot. The shared executors do the waiting.

    Args:
        max_concurrent, max_queue, max_wait: see :class:`BulkheadOptions`.
        options: the whole options object (instead of the keywords).
        name: the policy's name in events (default ``"bulkhead"``).

    Raises:
        ValueError: an option is out of range.
        TypeError: both ``max_concurrent`` and ``options``, or neither, are given.
    """

    __slots__ = ("_capacity", "_excess", "_lock", "_options", "_slots", "_waiters")

    options_type = BulkheadOptions
    clocked = False  # neither taking nor freeing a slot needs the time
    quiet_success = False  # but every release frees a slot

    def __init__(
        self,
        max_concurrent: int | None = None,
        *,
        max_queue: int = 0,
        max_wait: Seconds | None = None,
        options: BulkheadOptions | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            if max_concurrent is None:
                raise TypeError("Bulkhead needs max_concurrent (or options=BulkheadOptions(...))")
            options = BulkheadOptions(max_concurrent, max_queue, as_seconds(max_wait))
        elif not isinstance(options, BulkheadOptions):
            raise TypeError(f"options must be BulkheadOptions, got {options!r}")
        elif max_concurrent is not None:
            raise TypeError("give max_concurrent or options, not both")
        self._options = options
        self._lock = threading.Lock()
        # Free slots, one item each. deque.pop() and append() are atomic, which lets a call
        # take and give back a slot without the lock while nobody waits; the lock guards the
        # queue, every hand-over to a waiter, and the slot count.
        self._slots: deque[None] = deque([None] * options.max_concurrent)
        self._waiters: deque[Ticket] = deque()
        self._capacity = options.max_concurrent
        """Slots in existence: free ones plus those held by calls."""
        self._excess = 0
        """Held slots to take away as they are released (after a smaller max_concurrent)."""

    # -- options --------------------------------------------------------------------------

    def _reconfigure(self, options: BulkheadOptions) -> None:
        with self._lock:
            target, current = options.max_concurrent, self._capacity - self._excess
            if target > current:
                grow = target - current
                kept = min(grow, self._excess)  # slots not yet taken away are simply kept
                self._excess -= kept
                self._capacity += grow - kept
                self._slots.extend([None] * (grow - kept))
            elif target < current:
                self._excess += current - target
            self._options = options
            woken = self._settle()
        for ticket in woken:
            ticket.wake()

    @property
    def max_concurrent(self) -> int:
        """Calls allowed inside at once."""
        return self._options.max_concurrent

    @property
    def max_queue(self) -> int:
        """Callers allowed to wait."""
        return self._options.max_queue

    @property
    def max_wait(self) -> float:
        """The longest wait for a slot, in seconds (``inf``: only the deadline bounds it)."""
        max_wait = self._options.max_wait
        return math.inf if max_wait is None else max_wait

    # -- state ----------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Calls inside the bulkhead now."""
        return self._capacity - len(self._slots)

    @property
    def queued(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiters)

    # -- the permit protocol ----------------------------------------------------------------

    def acquire(self, ctx: CallContext | None, now: float) -> Permit | Rejection:
        """A permit when a slot is free, a :class:`~resilience.permit.Ticket` to wait for one,
        or ``Rejection("full")`` when the queue is full too."""
        if not self._waiters and not self._excess:
            try:
                self._slots.pop()
            except IndexError:
                pass
            else:
                return _SLOT
        return self._enter()

    def _enter(self) -> Permit | Rejection:
        with self._lock:
            woken = self._settle() if self._excess else []
            waiters = self._waiters
            if not waiters:
                try:
                    self._slots.pop()
                except IndexError:
                    pass
                else:
                    return _SLOT
            options = self._options
            if len(waiters) >= options.max_queue:
                rejection: Permit | Rejection = Rejection("full")
            else:
                max_wait = options.max_wait
                ticket = Ticket(self._lock, math.inf if max_wait is None else max_wait)
                waiters.append(ticket)
                # A slot freed since the first look, by a release that saw no waiter, goes
                # to the head of the queue now (the other half of this hand-shake is the
                # look at the queue that follows every release's append).
                woken += self._settle()
                if ticket.granted:
                    woken.remove(ticket)
                    rejection = _SLOT
                else:
                    rejection = ticket
        for other in woken:
            other.wake()
        return rejection

    def _settle(self) -> list[Ticket]:
        """Under the lock: take away excess slots, then give free slots to waiters; the
        caller wakes the returned tickets after releasing the lock."""
        slots, waiters = self._slots, self._waiters
        while self._excess and slots:
            try:
                slots.pop()
            except IndexError:  # taken meanwhile by a call that saw no waiter
                break
            self._excess -= 1
            self._capacity -= 1
        woken: list[Ticket] = []
        while waiters and slots:
            try:
                slots.pop()
            except IndexError:
                break
            ticket = waiters.popleft()
            ticket.granted = True
            woken.append(ticket)
        return woken

    def release(
        self, permit: Permit, outcome: Outcome, duration: float, now: float, ctx: CallContext | None = None
    ) -> None:
        """Free the slot ``permit`` holds: the next waiter gets it, if any."""
        self._slots.append(None)
        if self._waiters or self._excess:
            with self._lock:
                woken = self._settle()
            for ticket in woken:
                ticket.wake()

    def abandon(self, ticket: Ticket) -> bool:
        """A waiter stops waiting: ``True`` if it leaves the queue empty-handed, ``False``
        if it was granted a slot meanwhile (it holds it and must release it)."""
        with self._lock:
            if ticket.granted:
                return False
            with contextlib.suppress(ValueError):  # not there: abandoned twice
                self._waiters.remove(ticket)
            return True

    def rejected(self, ctx: CallContext, rejection: Rejection) -> BulkheadFullError:
        """The error for a call turned away (and its :class:`~resilience.BulkheadRejected` event)."""
        reason = rejection.reason
        if ctx.listeners:
            emit(ctx.listeners, BulkheadRejected(self.name, ctx, reason, self.active, len(self._waiters)))
        if reason == "full":
            options = self._options
            message = (
                f"{self.name}: all {options.max_concurrent} slots taken and the queue of {options.max_queue} is full"
            )
        else:
            bound = " (the call's deadline)" if rejection.detail == "deadline" else ""
            message = f"{self.name}: no slot freed within the wait limit{bound}"
        return BulkheadFullError(message, context=ctx)

    # -- executors ------------------------------------------------------------------------

    def __repr__(self) -> str:
        options = self._options
        return f"Bulkhead(max_concurrent={options.max_concurrent}, max_queue={options.max_queue})"
