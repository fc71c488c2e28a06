"""Endpoints and the discovery protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Discovery", "Endpoint", "Subscription"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service.

    Attributes:
        address: ``host:port`` (IPv6 hosts in brackets: ``[::1]:50051``).
        metadata: free-form labels from the discovery backend (zone, version, ...).
    """

    address: str
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"endpoint address must be 'host:port' with a port in [1, 65535], got {self.address!r}")

    @property
    def host(self) -> str:
        """The host part, without IPv6 brackets."""
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part."""
        return int(self.address.rpartition(":")[2])

    def __str__(self) -> str:
        return self.address


Subscription = Callable[[], None]
"""Returned by :meth:`Discovery.subscribe`: call it to unsubscribe."""


@runtime_checkable
class Discovery(Protocol):
    """A source of endpoints per service name.

    ``endpoints()`` must be cheap (a snapshot kept up to date in the background): the
    adapters call it on every call. Subscribers are told of every change of a service's
    endpoint list, with the new list.
    """

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        """The current endpoints of ``service`` (empty when unknown)."""
        ...

    def subscribe(self, service: str, callback: Callable[[Sequence[Endpoint]], None]) -> Subscription:
        """Call ``callback(endpoints)`` on every change of ``service``; returns the unsubscriber."""
        ...

    def close(self) -> None:
        """Stop watching and release resources."""
        ...
