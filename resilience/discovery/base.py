"""The discovery protocol and the base that backends build on.

A backend keeps, per service, a snapshot of its endpoints and tells subscribers when it
changes. :class:`BaseDiscovery` holds the snapshots and the subscribers; a backend
subclasses it and calls :meth:`BaseDiscovery._publish` with each new list, from any
thread (a watch thread, an asyncio task). The delivery rules are the base's, so every
backend gives the adapters the same guarantees:

- ``endpoints(service)`` is a dict read of a tuple, with no lock.
- A subscriber first receives the current list (possibly empty), before ``subscribe``
  returns, then every newer one. Lists arrive in publishing order and never twice; when
  lists are published faster than a subscriber takes them, it gets the newest and skips
  the ones in between (each list replaces the previous one, so nothing is lost by that).
  A subscriber registered while a publish runs sees the newest list exactly once.
- Callbacks run outside any lock of the discovery, never concurrently for one subscriber,
  on the thread that published (or subscribed), or in an event loop (``loop=``).
- Nothing is delivered after ``unsubscribe()`` returns: if the callback is running in
  another thread, ``unsubscribe()`` waits for it; from inside the callback it returns at once.
- A raising callback is logged; the others are still called.
- Each accepted publish increments the service's :meth:`~BaseDiscovery.version`;
  :meth:`~BaseDiscovery.changed` waits for the next one.
- After ``close()``, ``endpoints()`` keeps answering the last snapshot (what was working
  keeps working), ``_publish`` is ignored, and ``subscribe`` delivers that snapshot once
  (to a callback that wants it) and returns an unsubscriber that does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from .endpoint import Endpoint
from .loop import in_loop
from .registry import register_scheme

__all__ = ["BaseDiscovery", "Discovery", "Endpoint", "Subscription", "subscribe_in_loop"]

_log = logging.getLogger("resilience.discovery")

Subscription = Callable[[], None]
"""Returned by :meth:`Discovery.subscribe`: call it to unsubscribe (calling it again does nothing)."""

Callback = Callable[[Sequence[Endpoint]], None]


@runtime_checkable
class Discovery(Protocol):
    """A source of endpoints per service name.

    ``endpoints()`` must be cheap (a snapshot kept up to date in the background): the
    adapters call it on every call. Subscribers are told of every change of a service's
    endpoint list, with the new list. :class:`BaseDiscovery` implements the delivery rules
    that adapters rely on; backends should subclass it.
    """

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        """The current endpoints of ``service`` (empty when unknown)."""
        ...

    def subscribe(self, service: str, callback: Callback) -> Subscription:
        """Call ``callback(endpoints)`` with the current list, then on every change; returns the unsubscriber."""
        ...

    def close(self) -> None:
        """Stop watching and release resources; the last endpoints stay readable."""
        ...

    async def aclose(self) -> None:
        """:meth:`close` for backends with async resources."""
        ...


class _Subscriber:
    """One callback of one service, and where its deliveries stand (guarded by the discovery's lock)."""

    __slots__ = ("callback", "calling", "delivering", "pending", "service")

    def __init__(self, service: str, callback: Callback) -> None:
        self.service = service
        self.callback = callback
        self.pending: tuple[Endpoint, ...] | None = None  # the newest list not delivered yet
        self.delivering: int | None = None  # the thread that drains ``pending`` now
        self.calling = False  # that thread is inside ``callback``

    def __repr__(self) -> str:
        return f"_Subscriber({self.service!r}, {self.callback!r})"


def _same(a: tuple[Endpoint, ...], b: tuple[Endpoint, ...]) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b, strict=True))


def _noop() -> None:
    return None


class BaseDiscovery:
    """Snapshots, subscribers and change delivery for discovery backends (see the module doc).

    Subclass it, call ``super().__init__()``, and call :meth:`_publish` on every change. A
    backend that owns resources overrides :meth:`close` (and :meth:`aclose` for async ones)
    and calls ``super().close()``. A ``scheme`` class keyword registers the class's
    :meth:`from_uri` for :func:`~resilience.discovery.discovery_from_uri`::

        class EtcdDiscovery(BaseDiscovery, scheme="etcd"): ...
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    """The URI schemes this class was registered for."""

    def __init_subclass__(cls, *, scheme: str | Iterable[str] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if scheme is None:
            cls.schemes = ()
            return
        names = (scheme,) if isinstance(scheme, str) else tuple(scheme)
        if cls.from_uri.__func__ is BaseDiscovery.from_uri.__func__:  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__name__} registers scheme(s) {list(names)} but does not define from_uri()")
        for name in names:
            register_scheme(name, cls.from_uri)
        cls.schemes = names

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> Self:
        """The backend described by ``uri``; subclasses that register a scheme define it.

        Raises:
            ValueError: naming the malformed part of ``uri`` and the expected form.
        """
        raise NotImplementedError(f"{cls.__name__} cannot be made from a URI")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a version moved, or closed
        self._idle = threading.Condition(self._lock)  # a callback returned
        self._snapshot: dict[str, tuple[Endpoint, ...]] = {}
        self._versions: dict[str, int] = {}
        self._subscribers: dict[str, list[_Subscriber]] = {}
        self._default: tuple[Endpoint, ...] = ()  # what an unknown service has
        self._closed = False

    # -- reading ---------------------------------------------------------------------

    def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        """The current endpoints of ``service`` (empty when unknown)."""
        return self._snapshot.get(service, self._default)

    def version(self, service: str) -> int:
        """How many changes of ``service`` were published: 0 before the first, then +1 each.

        Read the version before the endpoints: the list read after is at least as new.
        """
        return self._versions.get(service, 0)

    def changed(self, service: str, after_version: int, timeout: float | None = None) -> int:
        """Wait until ``service``'s version exceeds ``after_version``; return the version.

        Returns at once when it already does. The result is ``<= after_version`` only if
        ``timeout`` seconds passed or the discovery is closed. ``None`` waits without limit.
        """
        with self._lock:
            self._changed.wait_for(lambda: self._closed or self._versions.get(service, 0) > after_version, timeout)
            return self._versions.get(service, 0)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- subscribing -----------------------------------------------------------------

    def subscribe(
        self,
        service: str,
        callback: Callback,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        initial: bool = True,
    ) -> Subscription:
        """Call ``callback(endpoints)`` on every change of ``service``; returns the unsubscriber.

        Args:
            service: the service name.
            callback: a sync function taking the new endpoint list.
            loop: deliver in this event loop (via ``call_soon_threadsafe``, bursts
                coalesced to the newest list) instead of the publishing thread.
            initial: first deliver the current list (the default). Read the list through
                the callback rather than calling :meth:`endpoints` after subscribing: a
                list read that way may be older than one being delivered concurrently.
        """
        if loop is not None:
            wrapper = in_loop(loop, callback)
            unsubscribe = self.subscribe(service, wrapper, initial=initial)

            def unsubscribe_in_loop() -> None:
                unsubscribe()
                wrapper.cancel()

            return unsubscribe_in_loop
        sub = _Subscriber(service, callback)
        with self._lock:
            closed = self._closed
            if not closed:
                self._subscribers.setdefault(service, []).append(sub)
                if initial:
                    # Claimed before the lock is let go: a concurrent publish leaves its
                    # list to this thread instead of calling the callback alongside.
                    sub.pending = self._snapshot.get(service, self._default)
                    sub.delivering = threading.get_ident()
        if closed:
            if initial:
                self._call(sub, self._snapshot.get(service, self._default))
            return _noop
        if initial:
            self._drain(sub)
        return lambda: self._unsubscribe(sub)

    def _unsubscribe(self, sub: _Subscriber) -> None:
        me = threading.get_ident()
        with self._lock:
            sub.pending = None  # out of the list below, nothing will set it again
            subs = self._subscribers.get(sub.service)
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subscribers[sub.service]
            while sub.calling and sub.delivering != me:
                self._idle.wait()

    # -- publishing ------------------------------------------------------------------

    def _publish(self, service: str, endpoints: Iterable[Endpoint]) -> bool:
        """Make ``endpoints`` the list of ``service`` and deliver it; for backends.

        A list identical to the current one (same endpoints, same fields, same order) is
        not a change. Returns whether the list changed; ``False`` as well after close.
        Subscribers that another thread is delivering to at this moment get the list
        from that thread, right after their current callback; the others before this returns.
        """
        new = tuple(endpoints)
        for endpoint in new:
            if not isinstance(endpoint, Endpoint):
                raise TypeError(f"endpoints of {service!r} must be Endpoint objects, got {endpoint!r}")
        me = threading.get_ident()
        claimed: list[_Subscriber] = []
        with self._lock:
            if self._closed:
                return False
            old = self._snapshot.get(service)
            if old is not None and _same(old, new):
                return False
            # The snapshot before the version: a reader of the version, then the list, sees a list at least as new.
            self._snapshot[service] = new
            self._versions[service] = self._versions.get(service, 0) + 1
            for sub in self._subscribers.get(service, ()):
                sub.pending = new
                if sub.delivering is None:
                    sub.delivering = me
                    claimed.append(sub)
            self._changed.notify_all()
        for i, sub in enumerate(claimed):
            try:
                self._drain(sub)
            except BaseException:
                self._release(claimed[i + 1 :])
                raise
        return True

    def _drain(self, sub: _Subscriber) -> None:
        """Deliver ``sub``'s pending lists until there are none; the caller has claimed ``sub``."""
        try:
            while True:
                with self._lock:
                    sub.calling = False
                    endpoints = sub.pending
                    sub.pending = None
                    if endpoints is None:
                        sub.delivering = None
                        self._idle.notify_all()
                        return
                    sub.calling = True
                self._call(sub, endpoints)
        except BaseException:
            self._release([sub])
            raise

    def _release(self, subs: list[_Subscriber]) -> None:
        with self._lock:
            for sub in subs:
                sub.calling = False
                sub.delivering = None
            self._idle.notify_all()

    @staticmethod
    def _call(sub: _Subscriber, endpoints: tuple[Endpoint, ...]) -> None:
        try:
            sub.callback(endpoints)
        except Exception:
            _log.exception("discovery subscriber %r of %r failed", sub.callback, sub.service)

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop delivering; ``endpoints()`` keeps the last snapshot. Idempotent.

        Like ``unsubscribe()``, waits for callbacks running in other threads.
        """
        me = threading.get_ident()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subs = [sub for subs in self._subscribers.values() for sub in subs]
            self._subscribers.clear()
            for sub in subs:
                sub.pending = None
            self._changed.notify_all()
            for sub in subs:
                while sub.calling and sub.delivering != me:
                    self._idle.wait()

    async def aclose(self) -> None:
        """Close; backends with async resources override it (and call ``super().close()``)."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def subscribe_in_loop(
    discovery: Discovery, service: str, callback: Callback, loop: asyncio.AbstractEventLoop
) -> Subscription:
    """Subscribe ``callback`` to ``service`` with delivery in ``loop``, for any :class:`Discovery`.

    With a :class:`BaseDiscovery` this is ``subscribe(service, callback, loop=loop)``;
    otherwise the callback is wrapped with :func:`~resilience.discovery.in_loop`. Either
    way, nothing runs after the returned unsubscriber returns.
    """
    if isinstance(discovery, BaseDiscovery):
        return discovery.subscribe(service, callback, loop=loop)
    wrapper = in_loop(loop, callback)
    unsubscribe = discovery.subscribe(service, wrapper)

    def unsubscribe_in_loop() -> None:
        unsubscribe()
        wrapper.cancel()

    return unsubscribe_in_loop
