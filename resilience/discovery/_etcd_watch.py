"""Watching a key prefix of etcd for good: list, watch from the next revision, resume after any break.

:class:`Cursor` decides (pure, no I/O): where the watch stands, what each line of the
watch stream means, where to start again. The two loops, :func:`run_watch` for a thread
and :func:`arun_watch` for an asyncio or trio task, only do the I/O and the waiting.

**No event missed, none twice.** The cursor keeps ``applied``, the highest revision
whose events were delivered, and ``progress``, the highest revision etcd's progress
notifications said was complete. A stream is (re)opened at ``max(applied, progress) + 1``;
events at or below ``applied`` are dropped as already delivered. A start revision that etcd
has compacted away cancels the watch with ``compact_revision``: the prefix is listed
again and the listing replaces everything (a *resync*), then the watch goes on from the
listing's revision. Events of one revision come in one response (etcd does not split
them unless asked to fragment), so the per-response comparison is exact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

import httpx

from .. import _aio
from ..policies.backoff import Backoff
from ._etcd_client import AsyncEtcdClient, AsyncWatchStream, EtcdClient, KeyValue, WatchStream, kv_from, revision_of
from ._etcd_config import EtcdError, prefix_range

__all__ = ["Cursor", "WatchEvent", "WatchUpdate", "arun_watch", "run_watch"]

_log = logging.getLogger("resilience.discovery.etcd")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change of one key.

    Attributes:
        type: ``"put"`` or ``"delete"``.
        key: the key.
        value: the new value (empty for a deletion).
        revision: the revision of the change.
    """

    type: str
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """What the watch delivers: new events, or a listing that replaces everything.

    Attributes:
        revision: the revision the client's view is at after this update.
        events: the changes in revision order; for a resync, a put per key listed.
        resync: ``True`` when this is a full listing (at start, after a compaction):
            a key not in it no longer exists.
    """

    revision: int
    events: tuple[WatchEvent, ...]
    resync: bool = False


@dataclass(frozen=True, slots=True)
class Line:
    """What one line of the watch stream means for the loop."""

    update: WatchUpdate | None = None
    stop: str | None = None  # why the stream must be reopened; None: read on
    retry_now: bool = False  # reopen without waiting (resync, token renewal)
    reauth: bool = False  # the token was refused: drop it first


_GO_ON = Line()


def _is_auth(reason: str) -> bool:
    return any(s in reason for s in ("invalid auth token", "auth store is old", "Unauthenticated"))


class Cursor:
    """Where the watch of ``prefix`` stands (see the module doc); not thread-safe, one loop owns it."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.key, self.range_end = prefix_range(prefix)
        self.applied = 0
        self.progress = 0
        self.need_list = True
        self.created = False

    @property
    def revision(self) -> int:
        """The revision the view is complete up to."""
        return max(self.applied, self.progress)

    def request(self) -> dict[str, Any]:
        """The ``create_request`` of the next stream."""
        self.created = False
        return {
            "key": self.key,
            "range_end": self.range_end,
            "start_revision": str(self.revision + 1),
            "progress_notify": True,
        }

    def listed(self, kvs: list[KeyValue], revision: int) -> WatchUpdate:
        """The prefix was listed at ``revision``: the resync to deliver."""
        self.applied = revision
        self.progress = max(self.progress, revision)
        self.need_list = False
        events = tuple(WatchEvent("put", kv.key, kv.value, kv.mod_revision) for kv in kvs)
        return WatchUpdate(revision, events, resync=True)

    def feed(self, data: dict[str, Any]) -> Line:
        """The meaning of one JSON line of the stream."""
        if "error" in data:
            error = data["error"] if isinstance(data["error"], dict) else {"message": data["error"]}
            return Line(stop=f"etcd ended the watch: {error.get('message')} (code {error.get('grpc_code')})")
        result = data.get("result")
        if not isinstance(result, dict):
            return Line(stop=f"etcd sent a watch line without a result: {str(data)[:200]}")
        if result.get("canceled"):
            compacted = int(result.get("compact_revision", 0))
            if compacted:
                self.need_list = True
                start = self.revision + 1
                return Line(
                    stop=f"revision {start} was compacted (etcd keeps {compacted} on): listing again", retry_now=True
                )
            reason = str(result.get("cancel_reason", ""))
            if _is_auth(reason):
                return Line(stop=f"etcd refused the token: {reason}", retry_now=True, reauth=True)
            return Line(stop=f"etcd cancelled the watch: {reason or 'no reason given'}")
        if result.get("created"):
            self.created = True
            return _GO_ON
        raw = result.get("events")
        if not raw:
            revision = revision_of(result)  # a progress notification: complete up to here
            if self.created and revision > self.progress:
                self.progress = revision
            return _GO_ON
        floor = self.applied
        events = []
        for item in raw:
            kv = kv_from(item.get("kv", {}))
            if kv.mod_revision > floor:
                kind = "delete" if item.get("type") == "DELETE" else "put"
                events.append(WatchEvent(kind, kv.key, kv.value, kv.mod_revision))
        if not events:
            return _GO_ON
        self.applied = max(e.revision for e in events)
        return Line(update=WatchUpdate(self.applied, tuple(events)))


Sink = Callable[[WatchUpdate], None]


@dataclass
class WatchControl:
    """What the owner of a watch loop shares with it: the stop flag, the stream to interrupt, the timing."""

    backoff: Backoff
    rng: Random
    idle_timeout: float | None = None
    stream: WatchStream | None = None
    failures: int = 0  # consecutive failures, 0 once a stream is established
    _previous: float = 0.0

    def next_delay(self, line: Line | None) -> float:
        self.failures += 1
        if line is not None and line.retry_now and self.failures == 1:
            return 0.0
        self._previous = self.backoff.delay(self.failures, self._previous, self.rng)
        return self._previous


def _warn(where: str, problem: str, delay: float, failures: int) -> None:
    level = logging.INFO if failures == 1 and delay == 0 else logging.WARNING
    _log.log(level, "etcd watch of %s: %s; again in %.2f s", where, problem, delay)


def run_watch(client: EtcdClient, cursor: Cursor, sink: Sink, stop: threading.Event, control: WatchControl) -> None:
    """Watch until ``stop`` is set, delivering every update to ``sink`` (runs in its own thread)."""
    where = client.config.where
    while not stop.is_set():
        line: Line | None = None
        try:
            if cursor.need_list:
                kvs, revision = client.range_prefix(cursor.prefix)
                sink(cursor.listed(kvs, revision))
            stream = client.watch(cursor.request(), idle_timeout=control.idle_timeout)
            token = client.token
            control.stream = stream  # before the check: close() sees the stream, or this sees the flag
            try:
                if stop.is_set():
                    return
                for data in stream:
                    line = cursor.feed(data)
                    if line.update is not None:
                        sink(line.update)
                    if cursor.created:
                        control.failures = 0
                    if line.stop is not None:
                        break
                else:
                    line = Line(stop="the watch stream ended")
            finally:
                control.stream = None
                stream.close()
            assert line is not None
            if line.reauth:
                client.invalidate_token(token)
            problem = str(line.stop)
        except (EtcdError, httpx.HTTPError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug must not end the watch for good; say it loudly
            _log.exception("etcd watch of %s failed", where)
            problem = f"{type(exc).__name__}: {exc}"
        if stop.is_set():
            return
        delay = control.next_delay(line)
        _warn(where, problem, delay, control.failures)
        stop.wait(delay)


async def arun_watch(client: AsyncEtcdClient, cursor: Cursor, sink: Sink, control: WatchControl) -> None:
    """:func:`run_watch` as an asyncio or trio task: cancel the task to stop it."""
    where = client.config.where
    while True:
        line: Line | None = None
        try:
            if cursor.need_list:
                kvs, revision = await client.range_prefix(cursor.prefix)
                sink(cursor.listed(kvs, revision))
            stream: AsyncWatchStream = await client.watch(cursor.request(), idle_timeout=control.idle_timeout)
            token = client.token
            try:
                async for data in stream:
                    line = cursor.feed(data)
                    if line.update is not None:
                        sink(line.update)
                    if cursor.created:
                        control.failures = 0
                    if line.stop is not None:
                        break
                else:
                    line = Line(stop="the watch stream ended")
            finally:
                await stream.aclose()
            assert line is not None
            if line.reauth:
                client.invalidate_token(token)
            problem = str(line.stop)
        except (EtcdError, httpx.HTTPError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            _log.exception("etcd watch of %s failed", where)
            problem = f"{type(exc).__name__}: {exc}"
        delay = control.next_delay(line)
        _warn(where, problem, delay, control.failures)
        await _aio.sleep(delay)
