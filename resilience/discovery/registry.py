"""Discovery backends by URI scheme: ``discovery_from_uri("static://10.0.0.1:50051")``.

A backend registers its scheme with :func:`register_scheme`, or by subclassing
:class:`~resilience.discovery.BaseDiscovery` with a ``scheme`` keyword::

    class EtcdDiscovery(BaseDiscovery, scheme="etcd"):
        @classmethod
        def from_uri(cls, uri: str, **options: Any) -> EtcdDiscovery: ...

Backends that need optional dependencies are imported on first use of their scheme, so
that importing the core never pulls them in.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Discovery

__all__ = ["DiscoveryFactory", "discovery_from_uri", "known_schemes", "register_scheme", "unregister_scheme"]

DiscoveryFactory = Callable[..., "Discovery"]
"""Makes a backend: called as ``factory(uri, **options)`` with the whole URI."""

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")

# Schemes whose backend lives in a module imported on first use (it registers itself).
_LAZY: dict[str, str] = {"etcd": "resilience.discovery.etcd", "etcds": "resilience.discovery.etcd"}

_lock = threading.Lock()
_factories: dict[str, DiscoveryFactory] = {}


def _check_scheme(scheme: str) -> str:
    if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
        raise ValueError(
            f"a discovery scheme must be lowercase letters, digits, '+', '-' or '.', starting with a letter; "
            f"got {scheme!r}"
        )
    return scheme


def register_scheme(scheme: str, factory: DiscoveryFactory, *, replace: bool = False) -> None:
    """Make ``discovery_from_uri("<scheme>://...")`` call ``factory(uri, **options)``.

    Registering the same factory again is a no-op.

    Raises:
        ValueError: on a malformed scheme, or a scheme taken by another factory (unless ``replace``).
    """
    _check_scheme(scheme)
    with _lock:
        current = _factories.get(scheme)
        if current is not None and current != factory and not replace:
            raise ValueError(f"discovery scheme {scheme!r} is already registered to {current!r}")
        _factories[scheme] = factory


def unregister_scheme(scheme: str) -> None:
    """Forget ``scheme`` (no error when unknown)."""
    with _lock:
        _factories.pop(scheme, None)


def known_schemes() -> list[str]:
    """The schemes :func:`discovery_from_uri` accepts, sorted."""
    with _lock:
        return sorted(set(_factories) | set(_LAZY))


def _factory(scheme: str, uri: str) -> DiscoveryFactory:
    with _lock:
        factory = _factories.get(scheme)
    if factory is not None:
        return factory
    module = _LAZY.get(scheme)
    if module is None:
        raise ValueError(f"unknown discovery scheme {scheme!r} in {uri!r}; known schemes: {', '.join(known_schemes())}")
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"discovery scheme {scheme!r} needs {module}, which cannot be imported: {exc}") from exc
    with _lock:
        factory = _factories.get(scheme)
    if factory is None:
        raise ValueError(f"discovery scheme {scheme!r}: {module} did not register it")
    return factory


def discovery_from_uri(uri: str, **options: Any) -> Discovery:
    """The discovery backend for ``uri``, chosen by its scheme.

    ``options`` go to the backend's factory. Examples: ``static://127.0.0.1:5001,127.0.0.1:5002``
    (see :class:`~resilience.discovery.StaticDiscovery` for its grammar), ``etcd://host:2379``.

    Raises:
        ValueError: when the URI has no ``scheme://``, the scheme is unknown (the message lists
            the known ones), or the backend finds the rest of the URI malformed.
    """
    if not isinstance(uri, str):
        raise TypeError(f"a discovery URI must be a string, got {type(uri).__name__}")
    scheme, sep, _ = uri.partition("://")
    if not sep or not scheme:
        raise ValueError(
            f"a discovery URI must look like 'scheme://...' (e.g. 'static://127.0.0.1:5001,127.0.0.1:5002'); "
            f"got {uri!r}; known schemes: {', '.join(known_schemes())}"
        )
    factory = _factory(scheme.lower(), uri)
    discovery = factory(uri, **options)
    from .base import Discovery  # the base imports this module to register subclasses

    if not isinstance(discovery, Discovery):
        raise TypeError(f"the factory of scheme {scheme.lower()!r} returned {discovery!r}, not a Discovery")
    return discovery
