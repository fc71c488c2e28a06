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

import bisect
import logging
import math
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.storage.memory
import limits.strategies
from limits.errors import ConfigurationError, StorageError
from limits.util import WindowStats

from .._validate import Seconds, as_seconds, integer, seconds
from ..context import CallContext
from ..errors import RateLimitedError
from ..events import Event, emit
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from ..permit import GateMixin, Permit, Rejection
from ..policy import Policy
from .rate_keys import KeyFunc, RateLimitRejected, RateLimitWaited, check_mode, compile_key
from .rate_keys import rejection as _rate_limited

__all__ = [
    "RATE_LIMIT_STRATEGIES",
    "RateLimit",
    "RateLimitOptions",
    "RateLimitRejected",
    "RateLimitStorageState",
    "RateLimitWaited",
]

_log = logging.getLogger("resilience")

RATE_LIMIT_STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
"""The ``strategy`` names, as ``limits`` spells them."""

REDIS_SOCKET_TIMEOUT = 0.5
"""Seconds a Redis storage built from a URI waits to connect, and for each answer, unless
``storage_options`` say otherwise."""

_READY = Permit()


@dataclass(frozen=True, slots=True)
class RateLimitStorageState(Event):
    """The limit's storage failed (``available=False``, with the ``error``) or answered again.

    While it is down, calls are admitted (``fail_open``) or rejected, without asking the
    storage again for ``storage_recheck`` seconds.
    """

    key: str
    available: bool
    error: BaseException | None


def _storage_time() -> float:
    """The wall time ``limits``' memory storage reads (its counters' time), so that the
    moving windows kept beside them read the same clock."""
    return float(limits.storage.memory.time.time())  # type: ignore[attr-defined]


class _Window:
    """One key's moving window: the times of its permits, oldest first, at most ``limit``."""

    __slots__ = ("expiry", "times")

    def __init__(self, expiry: float) -> None:
        self.expiry = expiry
        self.times: list[float] = []


class _SweptMemoryStorage(limits.storage.MemoryStorage):
    """``limits``' memory storage whose moving windows free their idle keys.

    ``limits``' own ``MemoryStorage`` trims a key's expired permits but keeps its (empty)
    list for good: a key seen once costs memory forever (about 230 bytes per key, 23 MB
    per 100,000 tenants). Here each key's window keeps at most ``limit`` permit times
    (older ones can no longer decide anything), and a sweep drops every key whose newest
    permit has left its window. The sweep runs from the window calls themselves: a pass
    over the keys starts once per ``max(1 s, longest window)`` of storage time, and each
    call then checks the next 128 keys of it, so that no call pays for a whole pass. An
    idle key is dropped by the first pass after its window, done once keys / 128 calls
    have come.

    Decisions are exactly ``limits``' own (a permit exactly one period old still counts
    when admitting, not in the window stats). Fixed-window and sliding-window-counter
    counters are ``limits``' code unchanged; they already expire.
    """

    _SWEEP_CHUNK = 128

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any) -> None:
        self._windows: dict[str, _Window] = {}
        self._windows_lock = threading.Lock()
        self._next_sweep = 0.0
        self._sweep_every = 1.0
        self._pending: list[str] = []  # the keys the current sweep has yet to check
        self._pass_size = 0
        self._dropped = 0
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        del state["_windows_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._windows_lock = threading.Lock()

    @property
    def window_count(self) -> int:
        """Keys whose moving window is kept now."""
        return len(self._windows)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = _storage_time()
        with self._windows_lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(float(expiry))
                if expiry > self._sweep_every:
                    self._sweep_every = float(expiry)
            times = window.times
            decisive = len(times) - 1 - (limit - amount)  # the permit that must have left
            if decisive >= 0 and times[decisive] >= now - expiry:
                admitted = False
            else:
                times.extend([now] * amount)
                if len(times) > limit:
                    del times[: len(times) - limit]
                admitted = True
        if self._pending or now >= self._next_sweep:
            self._sweep(now)
        return admitted

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = _storage_time()
        with self._windows_lock:
            window = self._windows.get(key)
            times = list(window.times) if window is not None else None
        if self._pending or now >= self._next_sweep:
            self._sweep(now)
        if not times:
            return now, 0
        inside = len(times) - bisect.bisect_right(times, now - expiry)
        return (times[-inside] if inside else times[0]), inside

    def _sweep(self, now: float) -> None:
        """Check the next chunk of keys of the current pass (starting a pass when one is due)."""
        with self._windows_lock:
            pending = self._pending
            if not pending:
                if now < self._next_sweep:
                    return  # another thread started the pass
                self._next_sweep = now + self._sweep_every
                pending = self._pending = list(self._windows)
                self._pass_size, self._dropped = len(pending), 0
            windows = self._windows
            for _ in range(min(self._SWEEP_CHUNK, len(pending))):
                key = pending.pop()
                window = windows.get(key)
                if window is not None and (not window.times or window.times[-1] < now - window.expiry):
                    del windows[key]  # its newest permit has left: nothing it holds can decide
                    self._dropped += 1
            if not pending and self._dropped * 2 >= self._pass_size > 0:
                self._windows = dict(windows)  # a dict never shrinks its table by itself

    def clear(self, key: str) -> None:
        super().clear(key)
        with self._windows_lock:
            self._windows.pop(key, None)

    def reset(self) -> int | None:
        with self._windows_lock:
            count = len(self._windows)
            self._windows.clear()
            self._pending.clear()
        counted = super().reset()
        return max(count, counted or 0)


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


@dataclass(frozen=True, slots=True)
class RateLimitOptions(Options):
    """How a :class:`RateLimit` limits calls (its storages are given to the policy, not here).

    Attributes:
        rate: a ``limits`` string (``"100/second"``, ``"10 per 5 minutes"``), an
            ``(amount, per_seconds)`` pair (amount >= 1, a whole number of seconds >= 1, a
            ``timedelta`` accepted), or a ``limits.RateLimitItem`` (required); stored as the
            ``limits.RateLimitItem``.
        strategy: one of :data:`RATE_LIMIT_STRATEGIES` (default ``"moving-window"``).
        key: the key template or ``callable(ctx) -> str``, or ``None`` for one limit over
            every call (default ``None``); see :func:`~resilience.compile_key`.
        mode: ``"reject"`` (default) or ``"wait"``.
        max_wait: in ``"wait"`` mode, the longest total wait in seconds, > 0, or ``None``
            for no limit other than the deadline (default ``None``).
        fail_open: admit calls while the storage fails (default ``True``).
        storage_recheck: seconds between two tries of a failed storage, > 0 (default 1).

    Raises:
        ValueError: an option is out of range, or an unknown strategy.
        TypeError: an option has the wrong type.
    """

    rate: str | tuple[int, Seconds] | limits.RateLimitItem
    strategy: str = "moving-window"
    key: str | KeyFunc | None = None
    mode: str = "reject"
    max_wait: float | None = None
    fail_open: bool = True
    storage_recheck: float = 1.0
    keyfn: KeyFunc | None = field(init=False, default=None, repr=False, compare=False)
    """The compiled ``key`` (derived)."""

    def __post_init__(self) -> None:
        self.set("rate", _parse_rate(self.rate))
        if self.strategy not in RATE_LIMIT_STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(RATE_LIMIT_STRATEGIES)}, got {self.strategy!r}")
        self.set("keyfn", compile_key(self.key))
        self.set("mode", check_mode(self.mode))
        if self.max_wait is not None:
            self.set("max_wait", seconds("max_wait", self.max_wait, bounded=True))
        if not isinstance(self.fail_open, bool):
            raise TypeError(f"fail_open must be a bool, got {self.fail_open!r}")
        self.set("storage_recheck", seconds("storage_recheck", self.storage_recheck))

    @property
    def item(self) -> limits.RateLimitItem:
        """The rate as a ``limits.RateLimitItem``."""
        return cast(limits.RateLimitItem, self.rate)


_Active = tuple[RateLimitOptions, limits.RateLimitItem, Any, Any]
"""What one call reads at once: the options, the rate, the sync and the async limiter."""


class RateLimit(GateMixin, Reconfigurable[RateLimitOptions], Policy):
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
    The storage key is made of the policy's ``name``, the strategy, the key and the rate:
    processes that share a limit through Redis must use the same ``name``, ``strategy``,
    ``key`` and ``rate``. (Each strategy keeps records of its own shape, which must never
    meet under one storage key.)

    **Storages**: ``storage`` is a ``limits`` storage URI (``"memory://"``,
    ``"redis://host:6379/0"``, ...) or a ``limits.storage.Storage``; asyncio callers use
    ``async_storage``, by default the same URI with ``limits``' ``async+`` scheme (Redis
    through redis-py's asyncio client). An in-process memory storage is shared by sync and
    asyncio callers: it never blocks. The one built from ``"memory://"`` (the default)
    keeps a key only while its window holds permits: an idle key's entry is swept away
    soon after its window (``limits``' own ``MemoryStorage``, which a storage object
    passed here may be, keeps every key it has seen). A Redis client created here is bound to the event loop
    of its first async use; call :meth:`close` / :meth:`aclose` when done.
    ``retry_after`` compares the storage's window times with ``ctx.clock.wall()``, which must
    therefore be the time the storage itself reads (the real clock, in production).

    **Storage failures** (Redis down): with ``fail_open`` (default) calls are admitted and
    the failure is logged once per outage; otherwise they are rejected with
    :class:`~resilience.RateLimitedError`. Either way the storage is not asked again for
    ``storage_recheck`` seconds, so an outage costs no round trip per call.

    **Options and reconfigure.** The keywords (but the storages) build a
    :class:`RateLimitOptions`; ``options=`` takes one whole. Storages are the policy's own
    and :meth:`reconfigure` keeps them, with whatever they hold, and the storage's
    up-or-down state. Since storage keys include the rate and the strategy, a changed
    ``rate`` or ``strategy`` starts counting afresh (the old counts expire in the storage
    by themselves); with both unchanged the counts go on. A strategy the storage does not
    support is refused (``ValueError``) and nothing changes. A new ``key`` applies to the
    next calls, as do ``mode``, ``max_wait``, ``fail_open`` and ``storage_recheck``.

    **Permit protocol.** :meth:`acquire` (sync storage, and the in-process memory storage
    for asyncio callers too) and :meth:`aacquire` (async storage) give a permit or a
    rejection; in wait mode the rejection allows the executor to sleep and ask again.

    Args:
        rate, strategy, key, mode, max_wait, fail_open, storage_recheck: see
            :class:`RateLimitOptions`.
        options: the whole options object (instead of those keywords).
        storage: a storage URI or a sync ``limits`` storage (default ``"memory://"``).
        async_storage: a storage URI or a ``limits.aio`` storage for asyncio callers
            (default: derived from ``storage``, see above).
        storage_options: keyword arguments for the storages built from URIs; a Redis
            storage gets ``socket_timeout`` and ``socket_connect_timeout`` of
            :data:`REDIS_SOCKET_TIMEOUT` (0.5 s) unless given here, so that a stalled Redis
            fails open or closed as a refused one does (default none).
        name: the policy's name in events and storage keys (default ``"ratelimit"``).

    Raises:
        ValueError: an option out of range, an unknown strategy, or a storage that does
            not support the strategy.
        TypeError: both ``rate`` and ``options``, or neither, are given.
    """

    __slots__ = (
        "_active",
        "_astorage",
        "_async_problem",
        "_down_until",
        "_errors",
        "_lock",
        "_options",
        "_owned",
        "_shared",
        "_storage",
        "aacquire",
    )

    options_type = RateLimitOptions
    # Only a failed storage needs the monotonic time (when to ask it again), which acquire
    # then reads itself; a release changes nothing.
    clocked = False
    quiet_success = True

    def __init__(
        self,
        rate: str | tuple[int, Seconds] | limits.RateLimitItem | None = None,
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
        options: RateLimitOptions | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if options is None:
            if rate is None:
                raise TypeError("RateLimit needs rate (or options=RateLimitOptions(...))")
            options = RateLimitOptions(
                rate, strategy, key, mode, as_seconds(max_wait), bool(fail_open), as_seconds(storage_recheck)
            )
        elif not isinstance(options, RateLimitOptions):
            raise TypeError(f"options must be RateLimitOptions, got {options!r}")
        elif rate is not None:
            raise TypeError("give rate or options, not both")
        storage_kwargs = dict(storage_options or {})
        self._owned: list[Any] = []
        strategy = options.strategy

        self._storage: Any = self._build_storage("storage", storage, storage_kwargs, asynchronous=False)
        sync_limiter = self._limiter("storage", self._storage, strategy, asynchronous=False)
        # An in-process memory storage never blocks: asyncio callers share it with sync ones.
        self._shared = isinstance(self._storage, limits.storage.MemoryStorage) and async_storage is None
        self._astorage: Any = None
        self._async_problem = "when storage is a storage object other than memory"
        if not self._shared:
            if async_storage is not None:
                self._astorage = self._build_storage("async_storage", async_storage, storage_kwargs, asynchronous=True)
            elif isinstance(storage, str):
                # Derived from a sync URI: a missing async driver must not break sync callers,
                # so a failure here is only reported to the first asyncio caller.
                try:
                    self._astorage = self._build_storage(
                        "async_storage", "async+" + storage, storage_kwargs, asynchronous=True
                    )
                    self._limiter("async_storage", self._astorage, strategy, asynchronous=True)
                except ValueError as exc:
                    self._astorage = None
                    self._async_problem = f"({exc})"
        async_limiter = (
            None
            if self._astorage is None
            else self._limiter("async_storage", self._astorage, strategy, asynchronous=True)
        )

        errors: list[type[BaseException]] = [StorageError]
        for store in (self._storage, self._astorage):
            if store is not None and not isinstance(
                store, limits.storage.MemoryStorage | limits.aio.storage.MemoryStorage
            ):
                base = store.base_exceptions
                errors.extend(base if isinstance(base, tuple) else (base,))
        self._errors: tuple[type[BaseException], ...] = tuple(dict.fromkeys(errors))
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._options = options
        self._active: _Active = (options, options.item, sync_limiter, async_limiter)
        # The async executor awaits ``aacquire`` when a gate has one: not for the memory
        # storage shared with sync callers, whose ``acquire`` never blocks.
        self.aacquire: Callable[[CallContext, float], Awaitable[Permit | Rejection]] | None = (
            None if self._shared else self._aacquire
        )

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
        if "redis" in scheme:
            # Without them a stalled Redis blocks a call for good, past any Timeout: a stall
            # then fails open (or closed) like a refused connection does.
            kwargs.setdefault("socket_timeout", REDIS_SOCKET_TIMEOUT)
            kwargs.setdefault("socket_connect_timeout", REDIS_SOCKET_TIMEOUT)
        if asynchronous and scheme.startswith("async+redis"):
            kwargs.setdefault("implementation", "redispy")  # redis-py's asyncio client
        built: Any
        try:
            if scheme == "memory":
                # limits' own memory storage keeps every key it saw: ours frees idle ones.
                built = _SweptMemoryStorage(storage, **kwargs)
            else:
                built = limits.storage.storage_from_string(storage, **kwargs)
        except ConfigurationError as exc:
            raise ValueError(f"{option} must be a storage URI limits supports, got {storage!r}: {exc}") from None
        self._owned.append(built)
        return built

    @staticmethod
    def _limiter(option: str, storage: Any, strategy: str, *, asynchronous: bool) -> Any:
        cls = (limits.aio.strategies if asynchronous else limits.strategies).STRATEGIES[strategy]
        try:
            return cls(storage)
        except NotImplementedError:
            raise ValueError(f"{option} {type(storage).__name__} does not support the {strategy!r} strategy") from None

    # -- options --------------------------------------------------------------------------

    def _reconfigure(self, options: RateLimitOptions) -> None:
        old, _, limiter, alimiter = self._active
        if options.strategy != old.strategy:
            # Built before anything changes: a strategy the storage refuses leaves all as it was.
            limiter = self._limiter("storage", self._storage, options.strategy, asynchronous=False)
            if self._astorage is not None:
                alimiter = self._limiter("async_storage", self._astorage, options.strategy, asynchronous=True)
        with self._lock:
            self._options = options
            self._active = (options, options.item, limiter, alimiter)

    @property
    def item(self) -> limits.RateLimitItem:
        """The rate, as a ``limits.RateLimitItem``."""
        return self._active[1]

    @property
    def strategy(self) -> str:
        """The ``limits`` strategy's name."""
        return self._options.strategy

    @property
    def mode(self) -> str:
        """``"reject"`` or ``"wait"``."""
        return self._options.mode

    @property
    def max_wait(self) -> float:
        """The longest total wait in wait mode, in seconds (``inf``: only the deadline bounds it)."""
        max_wait = self._options.max_wait
        return math.inf if max_wait is None else max_wait

    @property
    def fail_open(self) -> bool:
        """Whether calls are admitted while the storage fails."""
        return self._options.fail_open

    @property
    def storage_recheck(self) -> float:
        """Seconds between two tries of a failed storage."""
        return self._options.storage_recheck

    # -- the decision core ----------------------------------------------------------------

    def _storage_up(self, ctx: CallContext, key: str) -> None:
        with self._lock:
            was_down, self._down_until = bool(self._down_until), 0.0
        if was_down:
            _log.info("%s: rate limit storage answers again", self.name)
            if ctx.listeners:
                emit(ctx.listeners, RateLimitStorageState(self.name, ctx, key, True, None))

    def _storage_failed(
        self, ctx: CallContext, options: RateLimitOptions, key: str, exc: BaseException | None, now: float
    ) -> Permit | Rejection:
        """Admit the call (fail open) or reject it (fail closed). ``exc`` is ``None`` when
        the storage was skipped because it failed recently."""
        if exc is not None:
            if not now:
                now = ctx.clock.monotonic()
            with self._lock:
                first = not self._down_until
                self._down_until = now + options.storage_recheck
            if first:
                cause = exc.storage_error if isinstance(exc, StorageError) else exc
                _log.warning(
                    "%s: rate limit storage failed (%r); %s calls until it answers",
                    self.name,
                    cause,
                    "admitting" if options.fail_open else "rejecting",
                )
                if ctx.listeners:
                    emit(ctx.listeners, RateLimitStorageState(self.name, ctx, key, False, cause))
        if options.fail_open:
            return _READY
        return Rejection("storage", None, detail=(key, exc))

    def _refused(self, ctx: CallContext, options: RateLimitOptions, key: str, stats: WindowStats) -> Rejection:
        retry_after = _next_permit(stats) - ctx.clock.wall()
        if retry_after < 0.0:
            retry_after = 0.0
        if options.mode == "wait":
            max_wait = options.max_wait
            return Rejection("limit", retry_after, max_wait=math.inf if max_wait is None else max_wait, detail=key)
        return Rejection("limit", retry_after, detail=key)

    # -- the permit protocol: storage access is the only part that differs between sync and async

    def acquire(self, ctx: CallContext, now: float) -> Permit | Rejection:
        """Take a permit from the sync storage (or the memory storage, for any caller).

        ``now`` of ``0.0`` means "read ``ctx.clock`` if the time is needed" (the executors
        pass no time to an unclocked gate).
        """
        options, item, limiter, _ = self._active
        keyfn = options.keyfn
        key = keyfn(ctx) if keyfn is not None else ""
        if self._down_until and (now or ctx.clock.monotonic()) < self._down_until:
            return self._storage_failed(ctx, options, key, None, now)
        name, strategy = self.name, options.strategy
        try:
            if limiter.hit(item, name, strategy, key):
                stats = None
            else:
                stats = limiter.get_window_stats(item, name, strategy, key)
        except self._errors as exc:
            return self._storage_failed(ctx, options, key, exc, now)
        if self._down_until:
            self._storage_up(ctx, key)
        return _READY if stats is None else self._refused(ctx, options, key, stats)

    async def _aacquire(self, ctx: CallContext, now: float) -> Permit | Rejection:
        """Async twin of :meth:`acquire`, on the async storage (the executors call it as ``aacquire``)."""
        options, item, _, limiter = self._active
        if limiter is None:
            raise TypeError(
                f"{self.name}: asyncio callers need async_storage (a limits.aio storage or URI) {self._async_problem}"
            )
        keyfn = options.keyfn
        key = keyfn(ctx) if keyfn is not None else ""
        if self._down_until and (now or ctx.clock.monotonic()) < self._down_until:
            return self._storage_failed(ctx, options, key, None, now)
        name, strategy = self.name, options.strategy
        try:
            if await limiter.hit(item, name, strategy, key):
                stats = None
            else:
                stats = await limiter.get_window_stats(item, name, strategy, key)
        except self._errors as exc:
            return self._storage_failed(ctx, options, key, exc, now)
        if self._down_until:
            self._storage_up(ctx, key)
        return _READY if stats is None else self._refused(ctx, options, key, stats)

    def release(
        self, permit: Permit, outcome: Outcome, duration: float, now: float, ctx: CallContext | None = None
    ) -> None:
        """Nothing to give back: a window counts the permits taken."""

    def waiting(self, ctx: CallContext, rejection: Rejection, delay: float) -> None:
        """Wait mode: the call sleeps ``delay`` seconds before asking again (a :class:`RateLimitWaited`)."""
        if ctx.listeners:
            emit(ctx.listeners, RateLimitWaited(self.name, ctx, rejection.detail or "", delay))

    def rejected(self, ctx: CallContext, rejection: Rejection) -> RateLimitedError:
        """The error for a call turned away (and its :class:`RateLimitRejected` event)."""
        detail = rejection.detail
        cause: BaseException | None = None
        if isinstance(detail, tuple):
            key, cause = detail
        else:
            key = detail or ""
        error = _rate_limited(self.name, ctx, key, rejection.retry_after, rejection.reason)
        if cause is not None:
            error.__cause__ = cause
        return error

    # -- executors ------------------------------------------------------------------------

    # -- introspection and cleanup ----------------------------------------------------------

    def remaining(self, key: str = "") -> int:
        """Permits left now for ``key`` (sync storage)."""
        options, item, limiter, _ = self._active
        return int(limiter.get_window_stats(item, self.name, options.strategy, key).remaining)

    def reset(self, key: str = "") -> None:
        """Forget the permits taken for ``key`` (sync storage)."""
        options, item, limiter, _ = self._active
        limiter.clear(item, self.name, options.strategy, key)

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
        options = self._options
        return f"RateLimit({str(options.item)!r}, strategy={options.strategy!r}, mode={options.mode!r})"
