"""Token bucket: a local, smooth rate limit with bursts (GCRA), and what rate limits share.

The bucket is kept as one number per key, the *theoretical arrival time* (TAT) of the
Generic Cell Rate Algorithm: the moment at which the bucket would be full again. A call
at ``now`` is admitted when ``max(TAT, now) + interval - burst * interval <= now``, and
then moves TAT forward by one ``interval`` (``1 / rate``). The same arithmetic says
exactly when the next token comes, which is what ``retry_after`` reports, and lets a
waiting caller *reserve* its token: it moves TAT forward at once and sleeps until its
slot, so waiters are served in order without polling.

This module also holds what :class:`TokenBucket` and
:class:`~resilience.policies.rate_limit.RateLimit` have in common: keys taken from the
call context (:func:`compile_key`), the two modes, and the events.
"""

from __future__ import annotations

import heapq
import math
import threading
from dataclasses import dataclass, field

from .._sync_exec import wait_limit
from .._validate import Seconds, as_seconds, integer, number, seconds
from ..clock import SYSTEM_CLOCK, Clock
from ..context import CallContext
from ..errors import RateLimitedError
from ..events import emit
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from ..permit import DELAYED, DelayedPermit, GateMixin, Permit, Rejection
from ..policy import Policy
from .rate_keys import KeyFunc, RateLimitRejected, RateLimitWaited, check_mode, compile_key
from .rate_keys import rejection as _rate_limited

__all__ = [
    "KeyFunc",
    "RateLimitRejected",
    "RateLimitWaited",
    "TokenBucket",
    "TokenBucketOptions",
]

_EPSILON = 1e-9
"""Float rounding allowance (seconds): a token due within a nanosecond is due now."""
_GIVE_BACK_MARGIN = 1e-3
"""A reservation released this long before its token is due never ran its call (a sleep
may end a little early, never this early)."""
_IGNORED = Outcome.IGNORED


@dataclass(frozen=True, slots=True)
class TokenBucketOptions(Options):
    """How a :class:`TokenBucket` admits calls.

    Attributes:
        rate: tokens per second, in (0, 1e9] (required), and large enough that
            ``burst / rate`` is a finite number of seconds.
        burst: the bucket's size: calls admitted at once from full, in [1, 1e9] (default 1).
        key: a key template, a ``callable(ctx) -> str``, or ``None`` for one bucket for
            all calls (default ``None``); see :func:`compile_key`.
        mode: ``"reject"`` (default) or ``"wait"``.
        max_wait: in ``"wait"`` mode, the longest wait in seconds, > 0, or ``None`` for no
            limit other than the call's deadline (default ``None``). A ``timedelta`` is
            accepted and stored as seconds.
        max_keys: the most keyed buckets kept, in [1, 10_000_000] (default 100_000).

    Raises:
        ValueError: an option is out of range, or a key template is malformed.
        TypeError: an option has the wrong type.
    """

    rate: float
    burst: int = 1
    key: str | KeyFunc | None = None
    mode: str = "reject"
    max_wait: float | None = None
    max_keys: int = 100_000
    keyfn: KeyFunc | None = field(init=False, default=None, repr=False, compare=False)
    """The compiled ``key`` (derived)."""

    def __post_init__(self) -> None:
        rate = number("rate", self.rate, low=0.0, high=1e9, low_open=True)
        burst = integer("burst", self.burst, minimum=1, maximum=1_000_000_000)
        interval = 1.0 / rate
        if math.isinf(interval) or math.isinf(burst * interval):
            # A subnormal rate: one token would take longer than a float can say.
            raise ValueError(
                f"rate must be large enough that burst / rate is a finite number of seconds, "
                f"got rate={self.rate!r} with burst={burst}"
            )
        self.set("rate", rate)
        self.set("burst", burst)
        self.set("keyfn", compile_key(self.key))
        self.set("mode", check_mode(self.mode))
        if self.max_wait is not None:
            self.set("max_wait", seconds("max_wait", self.max_wait, bounded=True))
        self.set("max_keys", integer("max_keys", self.max_keys, minimum=1, maximum=10_000_000))


class _Reservation(DelayedPermit):
    """A token reserved for later: due at ``due``, after which the bucket's TAT was ``tat``."""

    __slots__ = ("due", "tat")

    def __init__(self, delay: float, key: str | None, due: float, tat: float) -> None:
        super().__init__(delay, key)
        self.due = due
        self.tat = tat


_READY = Permit()


def _convert(tat: float, now: float, old: TokenBucketOptions, new: TokenBucketOptions) -> float:
    """The TAT under ``new`` that leaves as many tokens at ``now`` as ``tat`` did under ``old``
    (at most ``new.burst``; fewer than none when waiters reserved tokens ahead)."""
    if tat <= now:
        return tat  # full, and full it stays
    old_interval = 1.0 / old.rate
    tokens = (old.burst * old_interval - (tat - now)) / old_interval
    if tokens >= new.burst:
        return now
    return now + (new.burst - tokens) / new.rate


class TokenBucket(GateMixin, Reconfigurable[TokenBucketOptions], Policy):
    """A local token bucket: ``rate`` calls per second on average, bursts of up to ``burst``.

    A full bucket holds ``burst`` tokens and refills at ``rate`` tokens per second; each
    call takes one. State lives in this process (use
    :class:`~resilience.policies.rate_limit.RateLimit` with Redis to share a limit between
    processes). It is cheap: one clock read, one lock and a few float operations per call.

    When the bucket is empty:

    - mode ``"reject"``: :class:`~resilience.RateLimitedError` at once, with
      ``retry_after`` = the exact time until the next token;
    - mode ``"wait"``: the call reserves the next token and sleeps on the call's clock
      until it is due, if that is within ``max_wait`` and before the call's deadline;
      otherwise it is rejected at once (no pointless sleep). Waiters are served in
      arrival order.

    **A waiter that never runs** (cancelled, or interrupted while it sleeps, at least a
    millisecond before its token is due) gives its token back when nobody reserved one
    after it; otherwise it forfeits it, since giving it back would then let two calls
    through in one slot. Calls that ran keep their token, whatever their outcome.

    **Keys**: with ``key`` set, each key has its own bucket (see :func:`compile_key`:
    ``"{service}:{method}:{tenant}"`` or a ``callable(ctx) -> str``). At most ``max_keys``
    buckets are kept: when a new key would pass that, full buckets (idle keys, whose state
    says nothing) are dropped first, then the fullest ones, down to 90% of ``max_keys``.
    A dropped key starts again with a full bucket.

    **Options and reconfigure.** The keywords build a :class:`TokenBucketOptions`;
    ``options=`` takes one whole. :meth:`reconfigure` keeps every bucket, the unkeyed one
    and the keyed ones (also under a new ``key``: buckets of keys no longer made are idle
    and go first when memory is bounded): each is converted so that the tokens it holds at
    the clock's now stay the same under the new ``rate`` and ``burst``, clamped to the new
    ``burst`` (tokens reserved ahead by waiters stay reserved). A smaller ``max_keys``
    drops buckets at once as above. Calls already sleeping on a reservation keep it.

    **Permit protocol.** :meth:`acquire` gives a permit, a
    :class:`~resilience.permit.DelayedPermit` in wait mode when the token is due later, or
    a rejection (``"limit"``; ``"max_wait"``/``"deadline"`` in wait mode); the executors
    sleep. :meth:`take` is the low-level GCRA step, without a context.

    Args:
        rate, burst, key, mode, max_wait, max_keys: see :class:`TokenBucketOptions`.
        options: the whole options object (instead of the keywords).
        clock: the time source of :meth:`reconfigure` (default: the real clock). Give the
            pipeline's clock.
        name: the policy's name in events (default ``"tokenbucket"``).

    Raises:
        ValueError: an option is out of range.
        TypeError: both ``rate`` and ``options``, or neither, are given.
    """

    __slots__ = (
        "_interval",
        "_lock",
        "_low_water",
        "_options",
        "_plain",
        "_slack",
        "_tat",
        "_tats",
        "clock",
    )

    options_type = TokenBucketOptions
    # The executors need not read the clock for this gate: acquire reads it itself, and a
    # release only matters for a reservation whose call never ran (after a wait, when the
    # executors pass the time anyway).
    clocked = False
    quiet_success = True

    def __init__(
        self,
        rate: float | None = None,
        burst: int = 1,
        *,
        key: str | KeyFunc | None = None,
        mode: str = "reject",
        max_wait: Seconds | None = None,
        max_keys: int = 100_000,
        options: TokenBucketOptions | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            if rate is None:
                raise TypeError("TokenBucket needs rate (or options=TokenBucketOptions(...))")
            options = TokenBucketOptions(rate, burst, key, mode, as_seconds(max_wait), max_keys)
        elif not isinstance(options, TokenBucketOptions):
            raise TypeError(f"options must be TokenBucketOptions, got {options!r}")
        elif rate is not None:
            raise TypeError("give rate or options, not both")
        if not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self.clock = clock
        self._lock = threading.Lock()
        self._tat = -math.inf
        self._tats: dict[str, float] = {}
        self._set(options)

    def _set(self, options: TokenBucketOptions) -> None:
        """Install ``options`` and what is derived from them (under the lock, but at construction)."""
        interval = 1.0 / options.rate
        self._interval = interval
        self._slack = options.burst * interval - interval
        self._low_water = max(1, options.max_keys * 9 // 10)
        # One bucket in reject mode: the common case, taken without a look at the options.
        self._plain = options.keyfn is None and options.mode != "wait"
        self._options = options

    # -- options --------------------------------------------------------------------------

    def _reconfigure(self, options: TokenBucketOptions) -> None:
        now = self.clock.monotonic()
        with self._lock:
            old = self._options
            if (old.rate, old.burst) != (options.rate, options.burst):
                self._tat = _convert(self._tat, now, old, options)
                tats = self._tats
                for key, tat in tats.items():
                    tats[key] = _convert(tat, now, old, options)
            self._set(options)
            if len(self._tats) > options.max_keys:
                self._evict(now)

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._options.rate

    @property
    def burst(self) -> int:
        """The bucket's size."""
        return self._options.burst

    @property
    def mode(self) -> str:
        """``"reject"`` or ``"wait"``."""
        return self._options.mode

    @property
    def max_wait(self) -> float:
        """The longest wait in wait mode, in seconds (``inf``: only the deadline bounds it)."""
        max_wait = self._options.max_wait
        return math.inf if max_wait is None else max_wait

    @property
    def max_keys(self) -> int:
        """The most keyed buckets kept."""
        return self._options.max_keys

    # -- the GCRA core --------------------------------------------------------------------

    def take(self, now: float, key: str | None = None, max_delay: float = 0.0) -> float:
        """Take a token at ``now`` if one is due within ``max_delay`` seconds.

        Returns the wait until the token is due. When it is ``<= max_delay`` the token is
        taken (reserved; ``0.0`` means now); when it is greater nothing is taken and it is
        the time until the next token (``retry_after``). ``key`` is ``None`` for the
        policy's single bucket.
        """
        if key is None:
            return self._take(now, max_delay)
        return self._take_keyed(key, now, max_delay)

    def _take(self, now: float, max_delay: float) -> float:
        with self._lock:
            tat = self._tat
            if tat < now:
                tat = now
            wait = tat - now - self._slack
            if wait > max_delay + _EPSILON:
                return wait
            self._tat = tat + self._interval
        return wait if wait > _EPSILON else 0.0

    def _take_keyed(self, key: str, now: float, max_delay: float) -> float:
        with self._lock:
            tats = self._tats
            tat = tats.get(key)
            if tat is None:
                if len(tats) >= self._options.max_keys:
                    self._evict(now)
                tat = now
            elif tat < now:
                tat = now
            wait = tat - now - self._slack
            if wait > max_delay + _EPSILON:
                return wait
            tats[key] = tat + self._interval
        return wait if wait > _EPSILON else 0.0

    def _reserve(self, key: str | None, now: float, max_delay: float, reason: str) -> Permit | Rejection:
        """Wait mode: take the token now or reserve it for later (the new TAT is kept for a give-back)."""
        with self._lock:
            if key is None:
                tat = self._tat
            else:
                tats = self._tats
                found = tats.get(key)
                if found is None and len(tats) >= self._options.max_keys:
                    self._evict(now)
                tat = now if found is None else found
            if tat < now:
                tat = now
            wait = tat - now - self._slack
            if wait > max_delay + _EPSILON:
                return Rejection(reason, wait, detail=key)
            tat += self._interval
            if key is None:
                self._tat = tat
            else:
                self._tats[key] = tat
        if wait <= _EPSILON:
            return _READY
        return _Reservation(wait, key, now + wait, tat)

    def _evict(self, now: float) -> None:
        # Caller holds the lock. A TAT in the past is a full bucket: dropping it loses
        # nothing. Evicting down to the low-water mark keeps this O(n) sweep rare.
        tats = self._tats
        for key in [k for k, tat in tats.items() if tat <= now]:
            del tats[key]
        excess = len(tats) - self._low_water
        if excess > 0:
            for key in heapq.nsmallest(excess, tats, key=tats.__getitem__):
                del tats[key]

    def available(self, now: float, key: str | None = None) -> float:
        """Tokens in the bucket at ``now`` (fractional while refilling), in ``[0, burst]``."""
        with self._lock:
            tat = self._tat if key is None else self._tats.get(key, -math.inf)
            interval, limit = self._interval, self._options.burst * self._interval
        if tat <= now:
            return float(self._options.burst)
        return max(0.0, (limit - (tat - now)) / interval)

    @property
    def keys(self) -> int:
        """Keyed buckets held now."""
        return len(self._tats)

    # -- the permit protocol ----------------------------------------------------------------

    def acquire(self, ctx: CallContext, now: float) -> Permit | Rejection:
        """A permit for a token taken at ``now``; in wait mode a
        :class:`~resilience.permit.DelayedPermit` for a token reserved for later; else a
        rejection with the exact ``retry_after``. ``now`` of ``0.0`` means "read
        ``ctx.clock``" (the executors pass no time to an unclocked gate)."""
        if not now:
            now = ctx.clock.monotonic()
        if self._plain:
            with self._lock:
                tat = self._tat
                if tat < now:
                    tat = now
                wait = tat - now - self._slack
                if wait <= _EPSILON:
                    self._tat = tat + self._interval
                    return _READY
            return Rejection("limit", wait)
        options = self._options
        keyfn = options.keyfn
        key = keyfn(ctx) if keyfn is not None else None
        if options.mode != "wait":
            wait = self._take(now, 0.0) if key is None else self._take_keyed(key, now, 0.0)
            if wait > 0.0:
                return Rejection("limit", wait, detail=key)
            return _READY
        max_wait = options.max_wait
        limit, reason = wait_limit(ctx, math.inf if max_wait is None else max_wait, 0.0)
        permit = self._reserve(key, now, limit if limit > 0.0 else 0.0, reason)
        if ctx.listeners and isinstance(permit, DelayedPermit):
            emit(ctx.listeners, RateLimitWaited(self.name, ctx, key or "", permit.delay))
        return permit

    def release(
        self, permit: Permit, outcome: Outcome, duration: float, now: float, ctx: CallContext | None = None
    ) -> None:
        """Nothing to free, but a reservation whose call never ran may give its token back."""
        if (
            outcome is _IGNORED
            and permit.kind == DELAYED
            and isinstance(permit, _Reservation)
            and now < permit.due - _GIVE_BACK_MARGIN
        ):
            with self._lock:
                key = permit.key
                if key is None:
                    if self._tat == permit.tat:
                        self._tat = permit.tat - self._interval
                elif self._tats.get(key) == permit.tat:
                    self._tats[key] = permit.tat - self._interval

    def rejected(self, ctx: CallContext, rejection: Rejection) -> RateLimitedError:
        """The error for a call turned away (and its :class:`RateLimitRejected` event)."""
        return _rate_limited(self.name, ctx, rejection.detail or "", rejection.retry_after, rejection.reason)

    # -- executors ------------------------------------------------------------------------

    def __repr__(self) -> str:
        options = self._options
        return f"TokenBucket(rate={options.rate!r}, burst={options.burst}, mode={options.mode!r})"
