"""Hot reload: a watched file, a watched etcd key; each new valid config swaps in, an invalid one is refused.

Both watchers hand what they read to :meth:`~resilience.config.Setup.apply` (through
:meth:`~resilience.config.Setup.reload`): a config that is refused, or whose building
fails, is logged with its errors (logger ``resilience.config``, secrets masked) and the
config in force stays. A content already seen is not applied twice. ``on_reload`` is
called with each :class:`~resilience.config.ReloadResult`, on the watcher's thread.

**A file** is read on a daemon thread every ``interval`` seconds (``[0.01, 3600]``,
default 1): its content hash decides whether it changed, so an editor's rename, a
``touch`` or a same-second rewrite are all seen correctly. A file that is missing or
unreadable is logged once and the config in force kept; a half-written file fails to
parse and is refused, and the rest of the write is read at the next poll.

**An etcd key** holding the config (YAML, which JSON also is; or ``fmt="toml"``) is read
once at start (what it holds is applied then), then watched through the etcd backend's
watch loop (:mod:`resilience.discovery._etcd_watch`): a watch that breaks resumes from
the last revision seen, so no change is missed. A deleted key is logged and the config in
force kept. Starting while etcd does not answer raises
:class:`~resilience.discovery.etcd.EtcdUnavailableError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from random import Random
from typing import TYPE_CHECKING, Any

from .load import _SUFFIXES

if TYPE_CHECKING:
    from ..discovery._etcd_watch import WatchUpdate
    from ..policies.backoff import Backoff
    from .setup import ReloadResult, Setup

__all__ = ["EtcdWatcher", "FileWatcher"]

_log = logging.getLogger("resilience.config")

OnReload = Callable[["ReloadResult"], None]


def _report(on_reload: OnReload | None, result: ReloadResult) -> None:
    if on_reload is not None:
        try:
            on_reload(result)
        except Exception:
            _log.exception("on_reload callback %r failed", on_reload)


class FileWatcher:
    """Reloads a :class:`~resilience.config.Setup` from a file whenever its content changes.

    Args:
        setup: the set-up to reload.
        path: the config file.
        interval: seconds between two reads, in [0.01, 3600] (default 1).
        fmt: the file's format (default: by its suffix).
        environ: where ``${ENV}`` comes from (default ``os.environ``, read at each reload).
        on_reload: called with each result.
        apply_now: apply the file's content at once if it differs from the config in force
            (default ``False``: the set-up was built from it).
    """

    def __init__(
        self,
        setup: Setup,
        path: str | os.PathLike[str],
        *,
        interval: float = 1.0,
        fmt: str | None = None,
        environ: Mapping[str, str] | None = None,
        on_reload: OnReload | None = None,
        apply_now: bool = False,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0.01 <= interval <= 3600:
            raise ValueError(f"interval must be a number of seconds in [0.01, 3600], got {interval!r}")
        self.setup = setup
        self.path = Path(path)
        self.interval = float(interval)
        self._fmt = fmt or _SUFFIXES.get(self.path.suffix.lower(), "yaml")
        self._environ = environ
        self._on_reload = on_reload
        self._digest: str | None = None
        self._missing = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if not apply_now:
            content = self._read()
            self._digest = hashlib.sha256(content).hexdigest() if content is not None else None
        else:
            self.check()
        self._thread = threading.Thread(target=self._run, name=f"config-watch {self.path}", daemon=True)
        self._thread.start()

    def _read(self) -> bytes | None:
        try:
            content = self.path.read_bytes()
        except OSError as exc:
            if not self._missing:
                _log.warning("config file %s cannot be read (%s); keeping generation %d", self.path, exc,
                             self.setup.generation)  # fmt: skip
            self._missing = True
            return None
        self._missing = False
        return content

    def check(self) -> ReloadResult | None:
        """Read the file once; the result of applying it, or ``None`` when it did not change."""
        with self._lock:
            content = self._read()
            if content is None:
                return None
            digest = hashlib.sha256(content).hexdigest()
            if digest == self._digest:
                return None
            self._digest = digest
            result = self.setup.reload_text(content, self._fmt, source=str(self.path), environ=self._environ)
        _report(self._on_reload, result)
        return result

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a bug must not end the watch for good
                _log.exception("config watch of %s failed", self.path)

    def close(self) -> None:
        """Stop watching (waits for a reload in progress)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(10)

    def __enter__(self) -> FileWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileWatcher({str(self.path)!r}, interval={self.interval:g})"


class EtcdWatcher:
    """Reloads a :class:`~resilience.config.Setup` from an etcd key whenever it changes.

    Args:
        setup: the set-up to reload.
        url: ``etcd://[user:password@]host:2379[,host...]`` (``etcds://`` for TLS; the path
            is ignored: ``key`` names the key).
        key: the key holding the config.
        fmt: ``yaml`` (default, JSON included) or ``toml``.
        environ: where ``${ENV}`` comes from (default ``os.environ``).
        on_reload: called with each result, on the watch thread.
        backoff: the wait between reconnects (default: full jitter from 0.1 s, at most 5 s).
        idle_timeout: seconds without a line after which a watch stream is reopened.
        options: the options of :func:`~resilience.discovery.etcd.parse_etcd_uri`
            (``username``, ``password``, ``ca``...).

    Raises:
        EtcdUnavailableError: no member answered at start.
    """

    def __init__(
        self,
        setup: Setup,
        url: str,
        key: str,
        *,
        fmt: str | None = None,
        environ: Mapping[str, str] | None = None,
        on_reload: OnReload | None = None,
        backoff: Backoff | None = None,
        idle_timeout: float | None = None,
        **options: Any,
    ) -> None:
        from ..discovery._etcd_client import EtcdClient
        from ..discovery._etcd_watch import Cursor, WatchControl
        from ..policies.backoff import ExponentialJitter

        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty etcd key, got {key!r}")
        self.setup = setup
        self.key = key
        self._fmt = fmt or "yaml"
        self._environ = environ
        self._on_reload = on_reload
        self._last: bytes | None = None
        self._stop = threading.Event()
        self.client = EtcdClient(url, **options)
        self._cursor = Cursor(key)
        self._control = WatchControl(backoff or ExponentialJitter(0.1, 2.0, 5.0), Random(), idle_timeout)
        self.revision = 0
        """The etcd revision of the last value applied or refused."""
        try:
            kvs, revision = self.client.range_prefix(key)
        except BaseException:
            self.client.close()
            raise
        self._sink(self._cursor.listed(kvs, revision))
        self._thread = threading.Thread(target=self._run, name=f"config-watch etcd {key}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ..discovery._etcd_watch import run_watch

        run_watch(self.client, self._cursor, self._sink, self._stop, self._control)

    def _sink(self, update: WatchUpdate) -> None:
        events = [event for event in update.events if event.key == self.key]
        if update.resync and not events:
            if self._last is not None or (update.revision and not self.revision):
                _log.warning("etcd key %s holds no config; keeping generation %d", self.key, self.setup.generation)
            return
        if not events:
            return
        event = events[-1]
        if event.type == "delete":
            _log.warning("etcd key %s was deleted; keeping generation %d", self.key, self.setup.generation)
            self._last = None
            return
        if event.value == self._last:
            return
        self._last = event.value
        self.revision = event.revision
        result = self.setup.reload_text(
            event.value, self._fmt, source=f"etcd {self.key}@{event.revision}", environ=self._environ
        )
        _report(self._on_reload, result)

    def close(self) -> None:
        """Stop the watch and close its connections."""
        self._stop.set()
        stream = self._control.stream
        if stream is not None:
            stream.interrupt()
        if self._thread is not threading.current_thread():
            self._thread.join(self.client.config.timeout + self.client.config.connect_timeout + 1.0)
        self.client.close()

    def __enter__(self) -> EtcdWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EtcdWatcher({self.client.config.where!r}, key={self.key!r})"
