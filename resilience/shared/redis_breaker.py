"""Circuit breaker state shared through Redis.

Many processes (on many hosts) protecting one backend each run their own
:class:`~resilience.policies.circuit_breaker.CircuitBreaker`; with a shared state on the
same ``key`` each one honours the others' decisions::

    shared = RedisBreakerState("redis://redis:6379/0", key="orders")
    breaker = CircuitBreaker(failure_threshold=5, break_duration=30, shared=shared)
    ...
    shared.close()

    # asyncio
    shared = AsyncRedisBreakerState("redis://redis:6379/0", key="orders")
    breaker = CircuitBreaker(failure_threshold=5, break_duration=30, shared=shared)
    async with shared:   # starts the background task; stops it on exit
        ...

**How.** The process that decides a transition publishes it: one Lua script takes the
next number from ``{prefix}{key}:epoch`` (INCR: a total order over all processes), sets
``{prefix}{key}:state`` to ``1|state|remaining_ms|origin|epoch`` (an open state expires
with its break) and PUBLISHes the same payload on ``{prefix}{key}:events``. A background
thread (sync) or task (asyncio) per shared state owns the subscription; it applies
each message whose epoch is newer than the last one it saw and that came from another
process, through :meth:`~resilience.policies.circuit_breaker.CircuitBreaker.apply_remote`:
an open opens for the rest of its break, a close closes, an isolation isolates; a
half-open is informative only (each process lets its own probes through when its break
ends, and the first to close tells the others). Every ``poll_interval`` seconds, and on
each (re)connection, it also reads the state key, in case a message was missed.

**Cost.** The breaker itself never talks to Redis: a local transition only sets a flag
that the background worker sees within ``tick`` seconds. A call in the closed state costs
no Redis round trip.

**Redis down.** The breaker keeps working on its own. The worker logs the outage once
(a warning on the ``resilience.shared`` logger, and an info line when it is back),
reconnects with a jittered exponential backoff between ``reconnect_min`` and
``reconnect_max`` seconds, and on return publishes the local state if it changed in the
meantime, then re-reads the shared one. Nothing is ever raised into a call.

**Consistency.** Eventual: the last decision (by epoch) wins. Epochs restart when Redis
loses its data (a restart without persistence); each worker forgets the last epoch it
saw when it reconnects, so numbering may start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any

try:
    import redis
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resilience.shared.redis_breaker needs the redis package: pip install 'resilience-policies[redis]'"
    ) from exc

from .._validate import Seconds, seconds
from ..clock import SYSTEM_CLOCK, Clock
from ..policies.circuit_breaker import CircuitState

if TYPE_CHECKING:
    from ..policies.circuit_breaker import CircuitBreaker

__all__ = ["AsyncRedisBreakerState", "RedisBreakerState"]

_log = logging.getLogger("resilience.shared")

_PUBLISH = """
local epoch = redis.call('INCR', KEYS[2])
local payload = '1|' .. ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. epoch
if ARGV[4] == '0' then
  redis.call('SET', KEYS[1], payload)
else
  redis.call('SET', KEYS[1], payload, 'PX', ARGV[4])
end
redis.call('PUBLISH', ARGV[5], payload)
return epoch
"""


class _Core:
    """What both flavours share: the wire format, the epoch rule, logging and backoff."""

    def __init__(
        self,
        key: str,
        prefix: str,
        poll_interval: Seconds,
        tick: Seconds,
        reconnect_min: Seconds,
        reconnect_max: Seconds,
        socket_timeout: Seconds,
        rng: random.Random | None,
        clock: Clock,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        self.key = key
        self.state_key = f"{prefix}{key}:state"
        self.epoch_key = f"{prefix}{key}:epoch"
        self.channel = f"{prefix}{key}:events"
        self.poll_interval = seconds("poll_interval", poll_interval)
        self.tick = seconds("tick", tick)
        self.reconnect_min = seconds("reconnect_min", reconnect_min)
        self.reconnect_max = seconds("reconnect_max", reconnect_max)
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(f"reconnect_max must be >= reconnect_min ({self.reconnect_min:g}), got {reconnect_max!r}")
        self.socket_timeout = seconds("socket_timeout", socket_timeout)
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self.origin = uuid.uuid4().hex
        self.breaker: CircuitBreaker | None = None
        self.dirty = False
        self.seen = 0
        self.down = False
        self.failures = 0
        self.published = 0
        self.applied = 0

    def attach(self, breaker: CircuitBreaker) -> None:
        if self.breaker is not None:
            raise ValueError(f"this shared state for key {self.key!r} is already attached to {self.breaker!r}")
        self.breaker = breaker

    # -- publishing ------------------------------------------------------------------------

    def take_publication(self) -> tuple[list[str], list[str]] | None:
        """The script's keys and args for the local state, or ``None`` if there is nothing to say."""
        if not self.dirty or self.breaker is None:
            return None
        self.dirty = False
        state, remaining = self.breaker.export_state()
        remaining_ms = int(remaining * 1000)
        if state is CircuitState.OPEN:
            if remaining_ms < 1:
                return None  # the break is over already: the coming half-open will be published
            ttl = str(remaining_ms)
        else:
            ttl = "0"
        return [self.state_key, self.epoch_key], [state.value, str(remaining_ms), self.origin, ttl, self.channel]

    def publication_failed(self) -> None:
        self.dirty = True

    def publication_done(self, epoch: object) -> None:
        self.published += 1
        if isinstance(epoch, int) and epoch > self.seen:
            self.seen = epoch

    # -- receiving -------------------------------------------------------------------------

    def receive(self, data: object, pttl_ms: object = None) -> None:
        """Apply a payload (from a message, or from the state key with its PTTL)."""
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        if not isinstance(data, str):
            return
        parts = data.split("|")
        try:
            if len(parts) != 5 or parts[0] != "1":
                raise ValueError(data)
            state = CircuitState(parts[1])
            remaining = int(parts[2]) / 1000.0
            origin = parts[3]
            epoch = int(parts[4])
        except ValueError:
            _log.warning("ignoring a malformed shared breaker state for key %r: %.100r", self.key, data)
            return
        if epoch <= self.seen:
            return
        self.seen = epoch
        if origin == self.origin or self.breaker is None:
            return
        if state is CircuitState.OPEN and isinstance(pttl_ms, int):
            remaining = pttl_ms / 1000.0  # the key's own expiry is the rest of the break
        if self.breaker.apply_remote(state, remaining):
            self.applied += 1

    # -- connection ------------------------------------------------------------------------

    def connected(self) -> None:
        self.seen = 0  # Redis may have lost its data (and its epochs) while we were away
        self.failures = 0
        if self.down:
            self.down = False
            _log.info("shared breaker %r: Redis is reachable again; resynchronising", self.key)

    def lost(self, exc: BaseException) -> float:
        """Note a failure; the delay before the next attempt."""
        if not self.down:
            self.down = True
            _log.warning(
                "shared breaker %r: Redis unreachable (%s: %s); the breaker works locally until it returns",
                self.key,
                type(exc).__name__,
                exc,
            )
        self.failures += 1
        ceiling = min(self.reconnect_max, self.reconnect_min * 2.0 ** min(self.failures - 1, 30))
        return ceiling / 2 + self.rng.uniform(0.0, ceiling / 2)


def _client_options(core: _Core) -> dict[str, Any]:
    return {
        "socket_timeout": core.socket_timeout,
        "socket_connect_timeout": core.socket_timeout,
        "retry": Retry(NoBackoff(), 0),  # we reconnect ourselves, with our own backoff
    }


class RedisBreakerState:
    """A breaker's state shared through Redis, for sync (threaded) programs.

    Pass it as ``CircuitBreaker(..., shared=RedisBreakerState(url, key="orders"))``: the
    background thread starts when the breaker attaches it. :meth:`close` stops it. See the
    module's documentation for the protocol.

    Args:
        url: the Redis URL (``redis://host:6379/0``; ``rediss://`` for TLS).
        key: the name shared by every breaker protecting the same backend.
        prefix: prepended to Redis key and channel names (default ``"resilience:breaker:"``).
        poll_interval: seconds between reads of the state key, the fallback for missed
            messages, > 0 (default 1).
        tick: the longest a local transition waits to be published, seconds > 0 (default 0.05).
        reconnect_min: the first delay before reconnecting, seconds > 0 (default 0.1).
        reconnect_max: the longest delay, seconds >= ``reconnect_min`` (default 5).
        socket_timeout: the timeout of Redis connects and commands, seconds > 0 (default 2).
        rng: the random source of the reconnect jitter (default: a private one).
        clock: the time source of the poll schedule (default: the real clock).
    """

    def __init__(
        self,
        url: str,
        *,
        key: str,
        prefix: str = "resilience:breaker:",
        poll_interval: Seconds = 1.0,
        tick: Seconds = 0.05,
        reconnect_min: Seconds = 0.1,
        reconnect_max: Seconds = 5.0,
        socket_timeout: Seconds = 2.0,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._core = _Core(key, prefix, poll_interval, tick, reconnect_min, reconnect_max, socket_timeout, rng, clock)
        self._url = url
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return self._core.key

    @property
    def connected(self) -> bool:
        """Whether the worker is subscribed now."""
        return self._connected.is_set()

    def attach(self, breaker: CircuitBreaker) -> None:
        self._core.attach(breaker)
        self._thread = threading.Thread(target=self._run, name=f"resilience-breaker-{self._core.key}", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._core.dirty = True

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the worker is subscribed and synchronised; ``False`` on timeout."""
        return self._connected.wait(timeout)

    def close(self) -> None:
        """Stop the worker thread (the breaker goes on working locally)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._core.socket_timeout + self._core.tick + 1.0)

    def __enter__(self) -> RedisBreakerState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        core = self._core
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:  # never let the worker die: the breaker must not notice
                self._connected.clear()
                self._stop.wait(core.lost(exc))

    def _publish(self, client: redis.Redis, script: Any) -> None:
        core = self._core
        publication = core.take_publication()
        if publication is None:
            return
        try:
            epoch = script(keys=publication[0], args=publication[1], client=client)
        except BaseException:
            core.publication_failed()
            raise
        core.publication_done(epoch)

    def _poll(self, client: redis.Redis) -> None:
        core = self._core
        pipe = client.pipeline(transaction=False)
        pipe.get(core.state_key)
        pipe.pttl(core.state_key)
        data, pttl = pipe.execute()
        if data is not None:
            core.receive(data, pttl if isinstance(pttl, int) and pttl > 0 else None)

    def _session(self) -> None:
        core = self._core
        client = redis.Redis.from_url(self._url, **_client_options(core))
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        try:
            script = client.register_script(_PUBLISH)
            pubsub.subscribe(core.channel)
            deadline = core.clock.monotonic() + core.socket_timeout
            while True:  # wait for the subscription to be confirmed
                message = pubsub.get_message(timeout=core.tick)
                if message is not None and message["type"] == "subscribe":
                    break
                if core.clock.monotonic() > deadline:
                    raise redis.TimeoutError("no confirmation of the subscription")
                if self._stop.is_set():
                    return
            core.connected()
            self._publish(client, script)
            self._poll(client)
            self._connected.set()
            next_poll = core.clock.monotonic() + core.poll_interval
            while not self._stop.is_set():
                if core.dirty:
                    self._publish(client, script)
                message = pubsub.get_message(timeout=core.tick)
                if message is not None and message["type"] == "message":
                    core.receive(message["data"])
                if core.clock.monotonic() >= next_poll:
                    self._poll(client)
                    next_poll = core.clock.monotonic() + core.poll_interval
            self._publish(client, script)  # closing: still tell the others of a last transition
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()
            with contextlib.suppress(Exception):
                client.close()


class AsyncRedisBreakerState:
    """A breaker's state shared through Redis, for asyncio programs (``redis.asyncio``).

    Pass it as ``CircuitBreaker(..., shared=...)``, then start its background task in the
    running loop with ``async with shared:`` (or :meth:`start` and :meth:`aclose`). The
    options are those of :class:`RedisBreakerState`.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str,
        prefix: str = "resilience:breaker:",
        poll_interval: Seconds = 1.0,
        tick: Seconds = 0.05,
        reconnect_min: Seconds = 0.1,
        reconnect_max: Seconds = 5.0,
        socket_timeout: Seconds = 2.0,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._core = _Core(key, prefix, poll_interval, tick, reconnect_min, reconnect_max, socket_timeout, rng, clock)
        self._url = url
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()

    @property
    def key(self) -> str:
        return self._core.key

    @property
    def connected(self) -> bool:
        """Whether the worker is subscribed now."""
        return self._connected.is_set()

    def attach(self, breaker: CircuitBreaker) -> None:
        self._core.attach(breaker)

    def notify(self) -> None:
        self._core.dirty = True

    def start(self) -> None:
        """Start the background task in the running loop (again after :meth:`aclose` too)."""
        if self._core.breaker is None:
            raise RuntimeError("attach this shared state to a CircuitBreaker (shared=...) before starting it")
        if self._task is None or self._task.done():
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"resilience-breaker-{self.key}")

    async def wait_connected(self, seconds: float) -> bool:
        """Wait until the worker is subscribed and synchronised; ``False`` after ``seconds``."""
        try:
            await asyncio.wait_for(self._connected.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Stop the background task, after it published a last transition (the breaker goes on locally)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self._core.socket_timeout + self._core.tick + 1.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> AsyncRedisBreakerState:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the worker ------------------------------------------------------------------------

    async def _run(self) -> None:
        core = self._core
        while not self._stop.is_set():
            try:
                await self._session()
            except Exception as exc:  # never let the worker die: the breaker must not notice
                self._connected.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), core.lost(exc))

    async def _publish(self, client: aioredis.Redis, script: Any) -> None:
        core = self._core
        publication = core.take_publication()
        if publication is None:
            return
        try:
            epoch = await script(keys=publication[0], args=publication[1], client=client)
        except BaseException:
            core.publication_failed()
            raise
        core.publication_done(epoch)

    async def _poll(self, client: aioredis.Redis) -> None:
        core = self._core
        pipe = client.pipeline(transaction=False)
        pipe.get(core.state_key)
        pipe.pttl(core.state_key)
        data, pttl = await pipe.execute()
        if data is not None:
            core.receive(data, pttl if isinstance(pttl, int) and pttl > 0 else None)

    async def _session(self) -> None:
        core = self._core
        client = aioredis.Redis.from_url(self._url, **_client_options(core))
        pubsub = client.pubsub()
        try:
            script = client.register_script(_PUBLISH)
            await pubsub.subscribe(core.channel)
            deadline = core.clock.monotonic() + core.socket_timeout
            while True:
                message = await pubsub.get_message(timeout=core.tick)
                if message is not None and message["type"] == "subscribe":
                    break
                if core.clock.monotonic() > deadline:
                    raise redis.TimeoutError("no confirmation of the subscription")
                if self._stop.is_set():
                    return
            core.connected()
            await self._publish(client, script)
            await self._poll(client)
            self._connected.set()
            next_poll = core.clock.monotonic() + core.poll_interval
            while not self._stop.is_set():
                if core.dirty:
                    await self._publish(client, script)
                message = await pubsub.get_message(timeout=core.tick)
                if message is not None and message["type"] == "message":
                    core.receive(message["data"])
                if core.clock.monotonic() >= next_poll:
                    await self._poll(client)
                    next_poll = core.clock.monotonic() + core.poll_interval
            await self._publish(client, script)  # closing: still tell the others of a last transition
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await client.aclose()
