"""A fixed endpoint list per service, changeable by hand (tests, simple set-ups)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from .base import Endpoint, Subscription

__all__ = ["StaticDiscovery"]

_log = logging.getLogger("resilience.discovery")


def _endpoints(service: str, items: Iterable[str | Endpoint]) -> tuple[Endpoint, ...]:
    if isinstance(items, str):
        raise TypeError(f"endpoints of {service!r} must be a list of 'host:port', got the string {items!r}")
    return tuple(e if isinstance(e, Endpoint) else Endpoint(e) for e in items)


class StaticDiscovery:
    """Endpoints given in code: ``StaticDiscovery({"orders": ["127.0.0.1:50051", "127.0.0.1:50052"]})``.

    :meth:`set` replaces a service's list and notifies subscribers, which makes it handy
    to simulate a discovery backend in tests.
    """

    def __init__(self, services: Mapping[str, Iterable[str | Endpoint]] | None = None) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, tuple[Endpoint, ...]] = {}
        self._subscribers: dict[str, list[Callable[[Sequence[Endpoint]], None]]] = {}
        for service, items in (services or {}).items():
            self._services[service] = _endpoints(service, items)

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        return self._services.get(service, ())

    def services(self) -> list[str]:
        """The service names known."""
        return sorted(self._services)

    def set(self, service: str, endpoints: Iterable[str | Endpoint]) -> None:
        """Replace the endpoints of ``service`` and tell its subscribers."""
        new = _endpoints(service, endpoints)
        with self._lock:
            self._services[service] = new
            callbacks = list(self._subscribers.get(service, ()))
        for callback in callbacks:
            try:
                callback(new)
            except Exception:
                _log.exception("discovery subscriber %r failed", callback)

    def subscribe(self, service: str, callback: Callable[[Sequence[Endpoint]], None]) -> Subscription:
        with self._lock:
            self._subscribers.setdefault(service, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._subscribers.get(service, [])
                if callback in callbacks:
                    callbacks.remove(callback)

        return unsubscribe

    def close(self) -> None:
        with self._lock:
            self._subscribers.clear()

    def __repr__(self) -> str:
        return f"StaticDiscovery({ {k: [e.address for e in v] for k, v in self._services.items()} !r})"
