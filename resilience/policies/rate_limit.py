"""RateLimit: window rate limits from the ``limits`` package, local or shared through Redis.

``limits`` provides the strategies (fixed window, moving window, sliding-window counter)
and the storages (memory; Redis, so that one limit is shared by many processes and hosts;
Memcached, MongoDB). This policy adds what a call pipeline needs around them: keys from
the call context, a reject mode whose error says when the next permit comes, a wait mode
bounded by a maximum wait and by the call's deadline, and a chosen behaviour when the
storage is down.

Sync callers use ``limits``' strategies on a sync storage, asyncio callers ``limits.aio``'s
on an async storage; the decisions (keys, waits, errors, storage failures) are made once,
in this module, for both.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
from limits.errors import ConfigurationError, StorageError
from limits.util import WindowStats

from .._validate import Seconds, integer, seconds
from ..context import CallContext
from ..events import Event, emit
from ..policy import AsyncNext, Policy, SyncNext
from .token_bucket import KeyFunc, RateLimitRejected, RateLimitWaited, check_mode, compile_key, rejection, wait_limit

__all__ = ["RATE_LIMIT_STRATEGIES", "RateLimit", "RateLimitRejected", "RateLimitStorageState", "RateLimitWaited"]

_log = logging.getLogger("resilience")

RATE_LIMIT_STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
"""The ``strategy`` names, as ``limits`` spells them."""

_MIN_STEP = 0.001
"""The shortest sleep between two tries in wait mode, so that a stale window never spins."""


@dataclass(frozen=True, slots=True)
class RateLimitStorageState(Event):
    """The limit's storage failed (``available=False``, with the ``error``) or answered again.

    While it is down, calls are admitted (``fail_open``) or rejected, without asking the
    storage again for ``storage_recheck`` seconds.
    """

    key: str
    available: bool
    error: BaseException | None


def _parse_rate(rate: object) -> limits.RateLimitItem:
    if isinstance(rate, limits.RateLimitItem):
        return rate
    if isinstance(rate, str):
        try:
            items = limits.parse_many(rate)
        except ValueError:
            raise ValueError(
                f"rate must be a limits string such as '100/second' or '10 per 5 minutes', got {rate!r}"
            ) from None
        if len(items) != 1:
            raise ValueError(f"rate must be a single limit (use one RateLimit per limit), got {rate!r}")
        item = items[0]
    elif isinstance(rate, tuple) and len(rate) == 2:
        amount, per = rate
        integer("rate amount", amount, minimum=1)
        if isinstance(per, timedelta):
            per = per.total_seconds()
        window = seconds("rate period", per)
        if window != int(window):
            raise ValueError(f"rate period must be a whole number of seconds >= 1, got {rate[1]!r}")
        item = limits.RateLimitItemPerSecond(amount, int(window))
    else:
        raise TypeError(f"rate must be a limits string ('100/second') or (amount, per_seconds), got {rate!r}")
    if item.amount < 1:
        raise ValueError(f"rate amount must be >= 1, got {item.amount} in {rate!r}")
    return item


def _next_permit(stats: WindowStats) -> float:
    """When the next permit comes (wall-clock seconds), from the window stats after a refusal.

    Stats that still show permits left disagree with the refusal (the window moved on in
    between, or it is the very instant a permit leaves it): the next permit is due now.
    """
    return float(stats.reset_time) if stats.remaining <= 0 else 0.0


class RateLimit(Policy):
    """A window rate limit on calls, kept by ``limits``: in memory, or shared through Redis.

    Each call takes one permit from the limit of its key. When none is left:

    - mode ``"reject"`` (default): :class:`~resilience.RateLimitedError` at once, its
      ``retry_after`` the seconds until the next permit (from the strategy's window stats);
    - mode ``"wait"``: the call sleeps on its clock until the next permit and tries again,
      as long as the total wait stays within ``max_wait`` and before the call's deadline.
      When the next permit comes later than either allows, the call is rejected at once
      with :class:`~resilience.RateLimitedError` (no pointless sleep).

    **Strategies** (``limits``' names): ``"moving-window"`` (default) never admits more than
    the amount in any window of the period, at the cost of one stored entry per permit;
    ``"sliding-window-counter"`` approximates it with two counters per key;
    ``"fixed-window"`` is cheapest but admits up to twice the amount around a window's
    boundary.

    **Keys**: ``key`` is ``None`` for one limit over every call through this policy, a
    template such as ``"{service}:{method}:{tenant}"`` (``{service}`` and ``{method}``
    from the context, any other name a tag of the call), or a ``callable(ctx) -> str``.
    The storage key is made of the policy's ``name``, the key and the rate: processes that
    share a limit through Redis must use the same ``name``, ``key`` and ``rate``.

    **Storages**: ``storage`` is a ``limits`` storage URI (``"memory://"``,
    ``"redis://host:6379/0"``, ...) or a ``limits.storage.Storage``; asyncio callers use
    ``async_storage``, by default the same URI with ``limits``' ``async+`` scheme (Redis
    through redis-py's asyncio client). An in-process memory storage is shared by sync and
    asyncio callers: it never blocks. A Redis client created here is bound to the event loop
    of its first async use; call :meth:`close` / :meth:`aclose` when done.
    ``retry_after`` compares the storage's window times with ``ctx.clock.wall()``, which must
    therefore be the time the storage itself reads (the real clock, in production).

    **Storage failures** (Redis down): with ``fail_open`` (default) calls are admitted and
    the failure is logged once per outage; otherwise they are rejected with
    :class:`~resilience.RateLimitedError`. Either way the storage is not asked again for
    ``storage_recheck`` seconds, so an outage costs no round trip per call.

    Args:
        rate: a ``limits`` string (``"100/second"``, ``"10 per 5 minutes"``), an
            ``(amount, per_seconds)`` pair (amount >= 1, a whole number of seconds >= 1),
            or a ``limits.RateLimitItem``.
        strategy: one of :data:`RATE_LIMIT_STRATEGIES` (default ``"moving-window"``).
        storage: a storage URI or a sync ``limits`` storage (default ``"memory://"``).
        async_storage: a storage URI or a ``limits.aio`` storage for asyncio callers
            (default: derived from ``storage``, see above).
        storage_options: keyword arguments for the storages built from URIs (e.g. redis
            ``socket_timeout``); default none.
        key: the key template or callable, or ``None`` (default).
        mode: ``"reject"`` (default) or ``"wait"``.
        max_wait: in ``"wait"`` mode, the longest total wait in seconds, > 0, or ``None``
            for no limit other than the deadline (default ``None``).
        fail_open: admit calls while the storage fails (default ``True``).
        storage_recheck: seconds between two tries of a failed storage, > 0 (default 1).
        name: the policy's name in events and storage keys (default ``"ratelimit"``).

    Raises:
        ValueError: an option out of range, an unknown strategy, or a storage that does
            not support the strategy.
    """

    __slots__ = (
        "_alimiter",
        "_async_problem",
        "_down_until",
        "_errors",
        "_key",
        "_lock",
        "_owned",
        "_shared",
        "_sync_limiter",
        "fail_open",
        "item",
        "max_wait",
        "mode",
        "storage_recheck",
        "strategy",
    )

    def __init__(
        self,
        rate: str | tuple[int, Seconds] | limits.RateLimitItem,
        *,
        strategy: str = "moving-window",
        storage: str | limits.storage.Storage = "memory://",
        async_storage: str | limits.aio.storage.Storage | None = None,
        storage_options: dict[str, Any] | None = None,
        key: str | KeyFunc | None = None,
        mode: str = "reject",
        max_wait: Seconds | None = None,
        fail_open: bool = True,
        storage_recheck: Seconds = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.item = _parse_rate(rate)
        if strategy not in RATE_LIMIT_STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(RATE_LIMIT_STRATEGIES)}, got {strategy!r}")
        self.strategy = strategy
        self._key = compile_key(key)
        self.mode = check_mode(mode)
        self.max_wait = seconds("max_wait", max_wait, allow_none=True)
        self.fail_open = bool(fail_open)
        self.storage_recheck = seconds("storage_recheck", storage_recheck)
        options = dict(storage_options or {})
        self._owned: list[Any] = []

        sync_storage = self._build_storage("storage", storage, options, asynchronous=False)
        self._sync_limiter = self._limiter("storage", limits.strategies.STRATEGIES[strategy], sync_storage)
        # An in-process memory storage never blocks: asyncio callers share it with sync ones.
        self._shared = isinstance(sync_storage, limits.storage.MemoryStorage) and async_storage is None
        self._alimiter: Any = None
        self._async_problem = "when storage is a storage object other than memory"
        if not self._shared:
            if async_storage is not None:
                astorage = self._build_storage("async_storage", async_storage, options, asynchronous=True)
                self._alimiter = self._limiter("async_storage", limits.aio.strategies.STRATEGIES[strategy], astorage)
            elif isinstance(storage, str):
                # Derived from a sync URI: a missing async driver must not break sync callers,
                # so a failure here is only reported to the first asyncio caller.
                try:
                    astorage = self._build_storage("async_storage", "async+" + storage, options, asynchronous=True)
                    self._alimiter = self._limiter(
                        "async_storage", limits.aio.strategies.STRATEGIES[strategy], astorage
                    )
                except ValueError as exc:
                    self._async_problem = f"({exc})"

        errors: list[type[BaseException]] = [StorageError]
        for limiter in (self._sync_limiter, self._alimiter):
            if limiter is not None and not isinstance(
                limiter.storage, limits.storage.MemoryStorage | limits.aio.storage.MemoryStorage
            ):
                base = limiter.storage.base_exceptions
                errors.extend(base if isinstance(base, tuple) else (base,))
        self._errors: tuple[type[BaseException], ...] = tuple(dict.fromkeys(errors))
        self._lock = threading.Lock()
        self._down_until = 0.0

    # -- construction helpers -------------------------------------------------------------

    def _build_storage(self, option: str, storage: object, options: dict[str, Any], *, asynchronous: bool) -> Any:
        base = limits.aio.storage.Storage if asynchronous else limits.storage.Storage
        if isinstance(storage, base):
            return storage
        if not isinstance(storage, str):
            kind = "limits.aio.storage.Storage" if asynchronous else "limits.storage.Storage"
            raise TypeError(f"{option} must be a storage URI or a {kind}, got {storage!r}")
        scheme = urllib.parse.urlparse(storage).scheme
        if asynchronous != scheme.startswith("async+"):
            want = "an async+ scheme" if asynchronous else "a scheme without async+"
            raise ValueError(f"{option} must be a URI with {want}, got {storage!r}")
        kwargs = dict(options)
        kwargs.setdefault("wrap_exceptions", True)
        if asynchronous and scheme.startswith("async+redis"):
            kwargs.setdefault("implementation", "redispy")  # redis-py's asyncio client
        try:
            built = limits.storage.storage_from_string(storage, **kwargs)
        except ConfigurationError as exc:
            raise ValueError(f"{option} must be a storage URI limits supports, got {storage!r}: {exc}") from None
        self._owned.append(built)
        return built

    def _limiter(self, option: str, cls: Any, storage: Any) -> Any:
        try:
            return cls(storage)
        except NotImplementedError:
            raise ValueError(
                f"{option} {type(storage).__name__} does not support the {self.strategy!r} strategy"
            ) from None

    def _async_limiter(self) -> Any:
        if self._alimiter is None:
            raise TypeError(
                f"{self.name}: asyncio callers need async_storage (a limits.aio storage or URI) {self._async_problem}"
            )
        return self._alimiter

    # -- the decision core ----------------------------------------------------------------

    def _storage_down(self, ctx: CallContext) -> bool:
        """Whether to skip the storage (it failed less than ``storage_recheck`` ago)."""
        return bool(self._down_until) and ctx.clock.monotonic() < self._down_until

    def _storage_up(self, ctx: CallContext, key: str) -> None:
        with self._lock:
            was_down, self._down_until = bool(self._down_until), 0.0
        if was_down:
            _log.info("%s: rate limit storage answers again", self.name)
            if ctx.listeners:
                emit(ctx.listeners, RateLimitStorageState(self.name, ctx, key, True, None))

    def _storage_failed(self, ctx: CallContext, key: str, exc: BaseException | None) -> None:
        """Admit the call (fail open, returns) or raise (fail closed). ``exc`` is ``None`` when
        the storage was skipped because it failed recently."""
        if exc is not None:
            with self._lock:
                first = not self._down_until
                self._down_until = ctx.clock.monotonic() + self.storage_recheck
            if first:
                cause = exc.storage_error if isinstance(exc, StorageError) else exc
                _log.warning(
                    "%s: rate limit storage failed (%r); %s calls until it answers",
                    self.name,
                    cause,
                    "admitting" if self.fail_open else "rejecting",
                )
                if ctx.listeners:
                    emit(ctx.listeners, RateLimitStorageState(self.name, ctx, key, False, cause))
        if not self.fail_open:
            error = rejection(self.name, ctx, key, None, "storage")
            if exc is not None:
                raise error from exc
            raise error

    def _refused(self, ctx: CallContext, key: str, reset_time: float, waited: float) -> float:
        """After a refused hit: the delay to sleep before trying again, or raise."""
        retry_after = reset_time - ctx.clock.wall()
        if retry_after < 0.0:
            retry_after = 0.0
        if self.mode == "reject":
            raise rejection(self.name, ctx, key, retry_after, "limit")
        delay = retry_after if retry_after > _MIN_STEP else _MIN_STEP
        limit, reason = wait_limit(ctx, self.max_wait, waited)
        if delay > limit:
            raise rejection(self.name, ctx, key, retry_after, reason)
        if ctx.listeners:
            emit(ctx.listeners, RateLimitWaited(self.name, ctx, key, delay))
        return delay

    # -- storage access: the only part that differs between sync and async -------------

    def _hit(self, ctx: CallContext, key: str) -> float | None:
        """Take a permit: ``None`` when taken (or the storage failed open), else the reset time."""
        if self._down_until and self._storage_down(ctx):
            self._storage_failed(ctx, key, None)
            return None
        limiter, item, name = self._sync_limiter, self.item, self.name
        try:
            reset = None if limiter.hit(item, name, key) else _next_permit(limiter.get_window_stats(item, name, key))
        except self._errors as exc:
            self._storage_failed(ctx, key, exc)
            return None
        if self._down_until:
            self._storage_up(ctx, key)
        return reset

    async def _ahit(self, ctx: CallContext, key: str) -> float | None:
        """Async twin of :meth:`_hit`."""
        if self._down_until and self._storage_down(ctx):
            self._storage_failed(ctx, key, None)
            return None
        limiter, item, name = self._async_limiter(), self.item, self.name
        try:
            hit = await limiter.hit(item, name, key)
            reset = None if hit else _next_permit(await limiter.get_window_stats(item, name, key))
        except self._errors as exc:
            self._storage_failed(ctx, key, exc)
            return None
        if self._down_until:
            self._storage_up(ctx, key)
        return reset

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        keyfn, hit, refused = self._key, self._hit, self._refused

        def rate_limit_sync(ctx: CallContext) -> Any:
            key = keyfn(ctx) if keyfn is not None else ""
            waited = 0.0
            while (reset := hit(ctx, key)) is not None:
                delay = refused(ctx, key, reset, waited)
                ctx.clock.sleep(delay)
                waited += delay
            return next(ctx)

        return rate_limit_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        keyfn, refused = self._key, self._refused
        shared, hit, ahit = self._shared, self._hit, self._ahit

        async def rate_limit_async(ctx: CallContext) -> Any:
            key = keyfn(ctx) if keyfn is not None else ""
            waited = 0.0
            while (reset := hit(ctx, key) if shared else await ahit(ctx, key)) is not None:
                delay = refused(ctx, key, reset, waited)
                await ctx.clock.asleep(delay)
                waited += delay
            return await next(ctx)

        return rate_limit_async

    # -- introspection and cleanup ----------------------------------------------------------

    def remaining(self, key: str = "") -> int:
        """Permits left now for ``key`` (sync storage)."""
        return int(self._sync_limiter.get_window_stats(self.item, self.name, key).remaining)

    def reset(self, key: str = "") -> None:
        """Forget the permits taken for ``key`` (sync storage)."""
        self._sync_limiter.clear(self.item, self.name, key)

    def close(self) -> None:
        """Close the sync Redis client this policy created, if any."""
        for storage in self._owned:
            client = getattr(storage, "storage", None)
            if isinstance(storage, limits.storage.Storage) and client is not None and hasattr(client, "close"):
                client.close()

    async def aclose(self) -> None:
        """Close the clients this policy created, sync and async (call it in the event loop used)."""
        self.close()
        for storage in self._owned:
            bridge = getattr(storage, "bridge", None)
            client = getattr(bridge, "storage", None)
            if client is not None and hasattr(client, "aclose"):
                await client.aclose()

    def __repr__(self) -> str:
        return f"RateLimit({str(self.item)!r}, strategy={self.strategy!r}, mode={self.mode!r})"
