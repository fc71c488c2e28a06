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
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._validate import Seconds, integer, number, seconds
from ..context import CallContext
from ..errors import RateLimitedError
from ..events import Event, emit
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["KeyFunc", "RateLimitRejected", "RateLimitWaited", "TokenBucket", "compile_key"]

KeyFunc = Callable[[CallContext], str]
"""Builds the limit's key from the call context."""

_MODES = ("reject", "wait")
_EPSILON = 1e-9
"""Float rounding allowance (seconds): a token due within a nanosecond is due now."""


@dataclass(frozen=True, slots=True)
class RateLimitRejected(Event):
    """A rate limit turned a call away.

    Attributes:
        key: the key of the limit that was exceeded.
        retry_after: seconds until the next permit, when known.
        reason: ``"limit"`` (reject mode), ``"max_wait"`` or ``"deadline"`` (the wait
            would have been too long), or ``"storage"`` (the limit's storage failed and
            the policy fails closed).
    """

    key: str
    retry_after: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RateLimitWaited(Event):
    """A rate limit in ``"wait"`` mode holds a call back for ``delay`` seconds."""

    key: str
    delay: float


def compile_key(key: str | KeyFunc | None) -> KeyFunc | None:
    """The key option as a function of the context; ``None`` means one key for all calls.

    A string is a template: ``{service}`` and ``{method}`` are the context's fields, any
    other ``{name}`` is the call's tag ``name`` (empty when the call has no such tag), so
    ``"{service}:{method}:{tenant}"`` gives one limit per service, method and tenant. A
    template without fields is a constant key. A callable gets the
    :class:`~resilience.CallContext` and returns the key.

    Raises:
        ValueError: a template field with an attribute, index, conversion or format spec.
        TypeError: ``key`` is neither a string, a callable nor ``None``.
    """
    if key is None:
        return None
    if isinstance(key, str):
        return _compile_template(key)
    if callable(key):
        return key
    raise TypeError(f"key must be a template string, a callable(ctx) -> str, or None, got {key!r}")


def _compile_template(template: str) -> KeyFunc:
    literal_parts: list[str] = []
    getters: list[Callable[[CallContext], str]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"key must be a valid template such as '{{service}}:{{tenant}}', got {template!r}: {exc}")
    fmt: list[str] = []
    for literal, field, spec, conversion in parsed:
        fmt.append(literal.replace("%", "%%"))
        literal_parts.append(literal)
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(
                f"key template fields must be plain names ({{service}}, {{method}} or a tag name), "
                f"got {{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} in {template!r}"
            )
        fmt.append("%s")
        getters.append(_field_getter(field))
    if not getters:
        constant = "".join(literal_parts)
        return lambda ctx: constant
    pattern = "".join(fmt)
    if len(getters) == 1:
        (only,) = getters
        return lambda ctx: pattern % only(ctx)
    return lambda ctx: pattern % tuple([get(ctx) for get in getters])


def _field_getter(field: str) -> Callable[[CallContext], str]:
    if field == "service":
        return lambda ctx: ctx.service
    if field == "method":
        return lambda ctx: ctx.method

    def tag(ctx: CallContext) -> str:
        tags = ctx.tags
        return tags.get(field, "") if tags is not None else ""

    return tag


def check_mode(mode: str) -> str:
    """``mode`` checked to be ``"reject"`` or ``"wait"``."""
    if mode not in _MODES:
        raise ValueError(f"mode must be 'reject' or 'wait', got {mode!r}")
    return mode


def wait_limit(ctx: CallContext, max_wait: float, waited: float) -> tuple[float, str]:
    """How much longer a call may wait for a permit, and what bounds it (``"max_wait"``/``"deadline"``)."""
    limit, reason = max_wait - waited, "max_wait"
    remaining = ctx.remaining()
    if remaining is not None and remaining < limit:
        limit, reason = remaining, "deadline"
    return limit, reason


def rejection(policy: str, ctx: CallContext, key: str, retry_after: float | None, reason: str) -> RateLimitedError:
    """The error (and event) for a call a rate limit turns away."""
    if ctx.listeners:
        emit(ctx.listeners, RateLimitRejected(policy, ctx, key, retry_after, reason))
    where = f" for key {key!r}" if key else ""
    if reason == "limit":
        why = "rate limit exceeded"
    elif reason == "storage":
        why = "rate limit storage unavailable (failing closed)"
    else:
        why = f"the next permit comes after the {'deadline' if reason == 'deadline' else 'longest wait'}"
    when = f", next permit in {retry_after:.3f}s" if retry_after is not None else ""
    return RateLimitedError(f"{policy}: {why}{where}{when}", context=ctx, retry_after=retry_after)


class TokenBucket(Policy):
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
      arrival order. A waiter that is cancelled forfeits its reserved slot.

    **Keys**: with ``key`` set, each key has its own bucket (see :func:`compile_key`:
    ``"{service}:{method}:{tenant}"`` or a ``callable(ctx) -> str``). At most ``max_keys``
    buckets are kept: when a new key would pass that, full buckets (idle keys, whose state
    says nothing) are dropped first, then the fullest ones, down to 90% of ``max_keys``.
    A dropped key starts again with a full bucket.

    Args:
        rate: tokens per second, in (0, 1e9].
        burst: the bucket's size: calls admitted at once from full, in [1, 1e9] (default 1).
        key: a key template, a callable, or ``None`` for one bucket for all calls (default).
        mode: ``"reject"`` (default) or ``"wait"``.
        max_wait: in ``"wait"`` mode, the longest wait in seconds, > 0, or ``None`` for
            no limit other than the call's deadline (default ``None``).
        max_keys: the most keys kept, in [1, 10_000_000] (default 100_000).
        name: the policy's name in events (default ``"tokenbucket"``).
    """

    __slots__ = (
        "_interval",
        "_key",
        "_limit",
        "_lock",
        "_low_water",
        "_slack",
        "_tat",
        "_tats",
        "burst",
        "max_keys",
        "max_wait",
        "mode",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        key: str | KeyFunc | None = None,
        mode: str = "reject",
        max_wait: Seconds | None = None,
        max_keys: int = 100_000,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.rate = number("rate", rate, low=0.0, high=1e9, low_open=True)
        self.burst = integer("burst", burst, minimum=1, maximum=1_000_000_000)
        self._key = compile_key(key)
        self.mode = check_mode(mode)
        self.max_wait = seconds("max_wait", max_wait, allow_none=True)
        self.max_keys = integer("max_keys", max_keys, minimum=1, maximum=10_000_000)
        self._low_water = max(1, self.max_keys * 9 // 10)
        self._interval = 1.0 / self.rate
        self._limit = self.burst * self._interval
        self._slack = self._limit - self._interval
        self._lock = threading.Lock()
        self._tat = -math.inf
        self._tats: dict[str, float] = {}

    # -- the decision core ---------------------------------------------------------------

    def acquire(self, now: float, key: str | None = None, max_delay: float = 0.0) -> float:
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
                if len(tats) >= self.max_keys:
                    self._evict(now)
                tat = now
            elif tat < now:
                tat = now
            wait = tat - now - self._slack
            if wait > max_delay + _EPSILON:
                return wait
            tats[key] = tat + self._interval
        return wait if wait > _EPSILON else 0.0

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
        if tat <= now:
            return float(self.burst)
        return max(0.0, (self._limit - (tat - now)) / self._interval)

    @property
    def keys(self) -> int:
        """Keyed buckets held now."""
        return len(self._tats)

    def _max_delay(self, ctx: CallContext) -> tuple[float, str]:
        limit, reason = wait_limit(ctx, self.max_wait, 0.0)
        return (limit if limit > 0.0 else 0.0), reason

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        keyfn, name, acquire = self._key, self.name, self.acquire
        if self.mode == "reject" and keyfn is None:
            take = self._take

            def token_bucket_sync(ctx: CallContext) -> Any:
                retry_after = take(ctx.clock.monotonic(), 0.0)
                if retry_after > _EPSILON:
                    raise rejection(name, ctx, "", retry_after, "limit")
                return next(ctx)

            return token_bucket_sync

        def token_bucket_keyed_sync(ctx: CallContext) -> Any:
            key = keyfn(ctx) if keyfn is not None else None
            delay, reason = self._max_delay(ctx) if self.mode == "wait" else (0.0, "limit")
            wait = acquire(ctx.clock.monotonic(), key, delay)
            if wait > delay + _EPSILON:
                raise rejection(name, ctx, key or "", wait, reason)
            if wait > 0.0:
                if ctx.listeners:
                    emit(ctx.listeners, RateLimitWaited(name, ctx, key or "", wait))
                ctx.clock.sleep(wait)
            return next(ctx)

        return token_bucket_keyed_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        keyfn, name, acquire = self._key, self.name, self.acquire
        if self.mode == "reject" and keyfn is None:
            take = self._take

            async def token_bucket_async(ctx: CallContext) -> Any:
                retry_after = take(ctx.clock.monotonic(), 0.0)
                if retry_after > _EPSILON:
                    raise rejection(name, ctx, "", retry_after, "limit")
                return await next(ctx)

            return token_bucket_async

        async def token_bucket_keyed_async(ctx: CallContext) -> Any:
            key = keyfn(ctx) if keyfn is not None else None
            delay, reason = self._max_delay(ctx) if self.mode == "wait" else (0.0, "limit")
            wait = acquire(ctx.clock.monotonic(), key, delay)
            if wait > delay + _EPSILON:
                raise rejection(name, ctx, key or "", wait, reason)
            if wait > 0.0:
                if ctx.listeners:
                    emit(ctx.listeners, RateLimitWaited(name, ctx, key or "", wait))
                await ctx.clock.asleep(wait)
            return await next(ctx)

        return token_bucket_keyed_async

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, burst={self.burst}, mode={self.mode!r})"
