"""Delivering endpoint changes into an asyncio event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

from .endpoint import Endpoint

__all__ = ["LoopCallback", "in_loop"]

_log = logging.getLogger("resilience.discovery")


class LoopCallback:
    """A subscriber callback that runs ``callback(endpoints)`` in ``loop``, latest list only.

    Call it from any thread (a backend's watch thread, another loop): it keeps the list and
    schedules one run with ``loop.call_soon_threadsafe``. Lists that arrive before that run
    replace each other, so a burst is delivered once, with the newest list. ``callback`` is
    sync and runs in the loop's thread; to do async work, start a task from it. A raising
    callback is logged. Once the loop is closed, lists are dropped.

    :meth:`cancel` stops deliveries: nothing is called after it returns. When the callback
    is running in the loop's thread at that moment, ``cancel()`` from another thread waits
    for it to return; from inside the callback it returns at once.
    """

    __slots__ = ("_callback", "_cancelled", "_idle", "_latest", "_lock", "_running", "_scheduled", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[Sequence[Endpoint]], None]) -> None:
        self.loop = loop
        self._callback = callback
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._latest: tuple[Endpoint, ...] | None = None
        self._scheduled = False
        self._cancelled = False
        self._running: int | None = None  # the thread running the callback now

    def __call__(self, endpoints: Sequence[Endpoint]) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._latest = tuple(endpoints)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            with self._lock:
                self._scheduled = False
                self._latest = None
            _log.warning("discovery update for %r dropped: its event loop is closed", self._callback)

    def _run(self) -> None:
        with self._lock:
            self._scheduled = False
            latest, self._latest = self._latest, None
            if latest is None:  # cancelled meanwhile
                return
            self._running = threading.get_ident()
        try:
            self._callback(latest)
        except Exception:
            _log.exception("discovery subscriber %r failed", self._callback)
        finally:
            with self._lock:
                self._running = None
                self._idle.notify_all()

    def cancel(self) -> None:
        """Deliver nothing more; wait for a run in progress in another thread."""
        me = threading.get_ident()
        with self._lock:
            self._cancelled = True
            self._latest = None
            while self._running is not None and self._running != me:
                self._idle.wait()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __repr__(self) -> str:
        return f"LoopCallback({self._callback!r}, cancelled={self._cancelled})"


def in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[Sequence[Endpoint]], None]) -> LoopCallback:
    """Wrap ``callback`` so that a subscription delivers into ``loop`` (see :class:`LoopCallback`).

    Cancel the wrapper when unsubscribing, or use ``subscribe(..., loop=loop)`` on a
    :class:`~resilience.discovery.BaseDiscovery` / :func:`~resilience.discovery.subscribe_in_loop`,
    which do both.
    """
    return LoopCallback(loop, callback)
