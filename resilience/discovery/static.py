"""A fixed endpoint list per service, changeable by hand (tests, simple set-ups).

As a URI (``discovery_from_uri``), in one of two forms::

    static://ENDPOINTS                              the same endpoints for every service name
    static:///SERVICE=ENDPOINTS[;SERVICE=ENDPOINTS]  named services; other names have none

    ENDPOINTS = ADDRESS[,ADDRESS...]
    ADDRESS   = host:port | [ipv6]:port

For example ``static://127.0.0.1:5001,127.0.0.1:5002``, ``static://[::1]:50051``, and
``static:///orders=10.0.0.1:50051,10.0.0.2:50051;users=[::1]:50052``. The named form is
the one with a third slash (an empty authority). Spaces around items are ignored; empty
items, empty lists, repeated service names and ``SERVICE=`` in the simple form are errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .base import BaseDiscovery
from .endpoint import Endpoint

__all__ = ["StaticDiscovery"]

_SIMPLE = "static://host:port,host:port"
_NAMED = "static:///orders=host:port,host:port;users=[::1]:50051"


def _endpoints(service: str, items: Iterable[str | Endpoint]) -> tuple[Endpoint, ...]:
    if isinstance(items, str):
        raise TypeError(f"endpoints of {service!r} must be a list of 'host:port', got the string {items!r}")
    return tuple(e if isinstance(e, Endpoint) else Endpoint(e) for e in items)


def _parse_list(uri: str, text: str, where: str, *, named: bool) -> list[Endpoint]:
    endpoints = []
    for item in text.split(","):
        address = item.strip()
        if not address:
            raise ValueError(f"static discovery URI {uri!r}: empty endpoint in {where} {text!r} (expected host:port)")
        if "=" in address and not named:
            raise ValueError(
                f"static discovery URI {uri!r}: {address!r} is not host:port; "
                f"name services after a third slash: {_NAMED!r}"
            )
        try:
            endpoints.append(Endpoint(address))
        except ValueError as exc:
            raise ValueError(f"static discovery URI {uri!r}: bad endpoint {address!r} in {where}: {exc}") from None
    return endpoints


def _parse_uri(uri: str) -> tuple[dict[str, list[Endpoint]], list[Endpoint]]:
    """``(services, default)`` from a ``static://`` URI (grammar in the module doc).

    Raises:
        ValueError: naming the malformed part and the expected form.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() != "static":
        raise ValueError(f"not a static discovery URI: {uri!r} (expected {_SIMPLE!r} or {_NAMED!r})")
    if not rest.strip():
        raise ValueError(f"static discovery URI {uri!r} has no endpoints (expected {_SIMPLE!r} or {_NAMED!r})")
    if not rest.startswith("/"):
        return {}, _parse_list(uri, rest, "the endpoint list", named=False)
    services: dict[str, list[Endpoint]] = {}
    for part in rest[1:].split(";"):
        name, eq, text = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"static discovery URI {uri!r}: {part!r} is not SERVICE=ENDPOINTS (expected {_NAMED!r})")
        if name in services:
            raise ValueError(f"static discovery URI {uri!r}: service {name!r} is given twice")
        if any(c in name for c in ",/") or any(c.isspace() for c in name):
            raise ValueError(f"static discovery URI {uri!r}: bad service name {name!r} (expected {_NAMED!r})")
        services[name] = _parse_list(uri, text, f"service {name!r}", named=True)
    return services, []


class StaticDiscovery(BaseDiscovery, scheme="static"):
    """Endpoints given in code: ``StaticDiscovery({"orders": ["127.0.0.1:50051", "127.0.0.1:50052"]})``.

    :meth:`set` replaces a service's list and notifies subscribers, which makes it handy
    to simulate a discovery backend in tests. ``default`` is the list of every service not
    named (empty by default); it does not change.
    """

    def __init__(
        self,
        services: Mapping[str, Iterable[str | Endpoint]] | None = None,
        *,
        default: Iterable[str | Endpoint] = (),
    ) -> None:
        super().__init__()
        self._default = _endpoints("any service", default)
        for service, items in (services or {}).items():
            self._publish(service, _endpoints(service, items))

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> StaticDiscovery:
        """A static discovery from ``static://...`` (grammar in the module doc). Takes no options.

        Raises:
            ValueError: naming the malformed part and the expected form.
        """
        if options:
            raise TypeError(f"static discovery takes no options, got {sorted(options)}")
        services, default = _parse_uri(uri)
        return cls(services, default=default)

    def services(self) -> list[str]:
        """The service names known."""
        return sorted(self._snapshot)

    def set(self, service: str, endpoints: Iterable[str | Endpoint]) -> None:
        """Replace the endpoints of ``service`` and tell its subscribers (ignored once closed)."""
        self._publish(service, _endpoints(service, endpoints))

    def __repr__(self) -> str:
        services = {k: [e.address for e in v] for k, v in self._snapshot.items()}
        if self._default:
            return f"StaticDiscovery({services!r}, default={[e.address for e in self._default]!r})"
        return f"StaticDiscovery({services!r})"
