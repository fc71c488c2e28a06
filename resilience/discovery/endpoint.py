"""One instance of a service: its address and what discovery knows about it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Endpoint"]

MAX_WEIGHT = 1_000_000
"""The largest :attr:`Endpoint.weight` accepted."""

_FIELDS = ("address", "zone", "weight", "metadata")


def _address_problem(address: object) -> str | None:
    """Why ``address`` is not ``host:port`` / ``[ipv6]:port``, or ``None`` when it is."""
    if not isinstance(address, str):
        return "must be a string"
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return "must be 'host:port' or '[ipv6]:port'"
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return "needs a port in [1, 65535]"
    if host.startswith("["):
        if not host.endswith("]") or len(host) == 2 or "[" in host[1:] or "]" in host[:-1]:
            return "has a malformed bracketed IPv6 host (expected '[::1]:50051')"
    elif ":" in host or "]" in host:
        return "has an IPv6 host without brackets (write '[::1]:50051')"
    if any(c.isspace() or c in ",;/?#@" for c in host):
        return "has a character not allowed in a host"
    return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service.

    Two endpoints are equal (and hash alike) when their addresses are: the other fields
    describe an instance, they do not make it another one.

    Attributes:
        address: ``host:port`` (IPv6 hosts in brackets: ``[::1]:50051``).
        metadata: free-form labels from the discovery backend (version, ...). Default empty.
        zone: the instance's zone or locality, for zone-aware balancing. Default ``None``.
        weight: relative share of traffic, an int in [1, 1_000_000]. Default 1.

    Raises:
        ValueError: on a malformed address, a weight out of range or an empty zone.
    """

    address: str
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    zone: str | None = field(default=None, compare=False)
    weight: int = field(default=1, compare=False)

    def __post_init__(self) -> None:
        problem = _address_problem(self.address)
        if problem is not None:
            raise ValueError(f"endpoint address {problem}, got {self.address!r}")
        if self.zone is not None and (not isinstance(self.zone, str) or not self.zone):
            raise ValueError(f"endpoint zone must be a non-empty string or None, got {self.zone!r}")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"endpoint weight must be an int in [1, {MAX_WEIGHT}], got {weight!r}")

    @property
    def host(self) -> str:
        """The host part, without IPv6 brackets."""
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part."""
        return int(self.address.rpartition(":")[2])

    def same_as(self, other: Endpoint) -> bool:
        """Whether ``other`` is this endpoint with every field alike (``==`` compares addresses only)."""
        return (
            self.address == other.address
            and self.zone == other.zone
            and self.weight == other.weight
            and self.metadata == other.metadata
        )

    def to_dict(self) -> dict[str, object]:
        """The JSON form: ``{"address": ..., "zone": ..., "weight": ..., "metadata": {...}}``."""
        return {"address": self.address, "zone": self.zone, "weight": self.weight, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Endpoint:
        """An endpoint from its JSON form (see :meth:`to_dict`).

        ``address`` is required; ``zone`` (string or null), ``weight`` (int) and
        ``metadata`` (object of strings) are optional. Other keys are ignored, so that
        instances registered by a newer version stay usable.

        Raises:
            ValueError: naming the field that is missing or malformed.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an endpoint must be a JSON object with an 'address', got {type(data).__name__}")
        if "address" not in data:
            raise ValueError(f"endpoint field 'address' is missing (expected keys among {list(_FIELDS)})")
        address = data["address"]
        problem = _address_problem(address)
        if problem is not None or not isinstance(address, str):
            raise ValueError(f"endpoint field 'address' {problem}, got {address!r}")
        zone = data.get("zone")
        if zone is not None and (not isinstance(zone, str) or not zone):
            raise ValueError(f"endpoint field 'zone' must be a non-empty string or null, got {zone!r}")
        weight = data.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"endpoint field 'weight' must be an int in [1, {MAX_WEIGHT}], got {weight!r}")
        raw = data.get("metadata")
        metadata: dict[str, str] = {}
        if raw is not None:
            if not isinstance(raw, Mapping):
                raise ValueError(f"endpoint field 'metadata' must be an object of strings, got {raw!r}")
            for key, value in raw.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise ValueError(f"endpoint field 'metadata' must map strings to strings, got {key!r}: {value!r}")
                metadata[key] = value
        return cls(address, metadata, zone=zone, weight=weight)

    def __str__(self) -> str:
        return self.address
