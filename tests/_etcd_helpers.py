"""Helpers of the etcd tests: unique prefixes, endpoint values, bounded waits, leftover threads."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio

from resilience.discovery._etcd_watch import WatchUpdate
from resilience.discovery.etcd import EtcdDiscovery

WAIT = 20.0  # generous bound for what must happen; never reached when the code is right

_counter = itertools.count()


def unique_prefix(name: str = "t") -> str:
    return f"/{name}{next(_counter)}-{time.monotonic_ns()}"


def value(address: str, **fields: Any) -> str:
    return json.dumps({"address": address, **fields})


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; whether it held."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(step)


async def await_until(predicate: Callable[[], bool], bound: float = WAIT, step: float = 0.02) -> bool:
    """:func:`wait_until` for a task, on asyncio or trio."""
    end = time.monotonic() + bound
    while True:
        if predicate():
            return True
        if time.monotonic() > end:
            return False
        await anyio.sleep(step)


def addresses(discovery: EtcdDiscovery, service: str) -> list[str]:
    return [e.address for e in discovery.endpoints(service)]


def etcd_threads() -> list[threading.Thread]:
    """Watch and lease threads still alive."""
    return [t for t in threading.enumerate() if t.name.startswith(("etcd-watch", "etcd-lease")) and t.is_alive()]


class Updates:
    """An ``on_update`` that records every update, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.updates: list[WatchUpdate] = []

    def __call__(self, update: WatchUpdate) -> None:
        with self.lock:
            self.updates.append(update)

    def events(self) -> list[tuple[str, str, int]]:
        """``(type, key, revision)`` of every event outside resyncs, in delivery order."""
        with self.lock:
            return [(e.type, e.key, e.revision) for u in self.updates if not u.resync for e in u.events]

    def resyncs(self) -> int:
        with self.lock:
            return sum(1 for u in self.updates if u.resync)
