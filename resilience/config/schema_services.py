"""Config sections of backends: discovery sources, balancers, outlier ejection, zones."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from ..balancing.ejection import OutlierEjectionOptions
from ..balancing.p2c import PeakEwmaOptions
from ..balancing.zones import ZonePreference
from ._fields import Section, opt
from .schema_retry import MAX_WAIT, checked_options
from .values import Duration, Float, Int

__all__ = [
    "BalancerSection",
    "DiscoverySourceSection",
    "EjectionSection",
    "PeakEwmaSection",
    "RoundRobinSection",
    "ServiceSection",
    "WeightedRoundRobinSection",
    "ZoneSection",
    "check_source",
]


class ZoneSection(Section):
    """:class:`~resilience.ZonePreference`; ``zone: eu-west-1a`` stands for ``{zone: eu-west-1a}``."""

    zone: str = opt(ZonePreference, "zone", min_length=1)
    min_healthy: Float = opt(ZonePreference, "min_healthy", gt=0, le=1)
    refresh: Duration = opt(ZonePreference, "refresh", gt=0)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: object) -> object:
        return {"zone": value} if isinstance(value, str) else value

    def options(self) -> ZonePreference:
        return ZonePreference(self.zone, self.min_healthy, self.refresh)

    _check = model_validator(mode="after")(checked_options)


_OE = OutlierEjectionOptions


class EjectionSection(Section):
    """:class:`~resilience.OutlierEjection`: endpoints that fail far more than the others leave the picks."""

    consecutive_failures: Int | None = opt(_OE, "consecutive_failures", ge=1, le=1_000_000)
    success_rate_stdev: Float | None = opt(_OE, "success_rate_stdev", gt=0, le=100)
    failure_percentage: Float | None = opt(_OE, "failure_percentage", ge=0, lt=100)
    latency_factor: Float | None = opt(_OE, "latency_factor", gt=1, le=1000)
    min_hosts: Int = opt(_OE, "min_hosts", ge=1, le=1_000_000)
    min_requests: Int = opt(_OE, "min_requests", ge=1, le=1_000_000_000)
    interval: Duration = opt(_OE, "interval", gt=0, le=MAX_WAIT)
    base_ejection_time: Duration = opt(_OE, "base_ejection_time", gt=0)
    max_ejection_time: Duration | None = opt(_OE, "max_ejection_time", gt=0)
    max_ejection_percent: Float = opt(_OE, "max_ejection_percent", gt=0, le=100)

    def options(self) -> OutlierEjectionOptions:
        return OutlierEjectionOptions(**{name: getattr(self, name) for name in type(self).model_fields})

    _check = model_validator(mode="after")(checked_options)


def _zone(value: object) -> object:
    return {"zone": value} if isinstance(value, str) else value


Zone = Annotated[ZoneSection | None, BeforeValidator(_zone)]
_ZONE_DOC = "prefer the endpoints of this zone while it is healthy enough: a zone name or {zone, min_healthy, refresh}"


class RoundRobinSection(Section):
    """:class:`~resilience.RoundRobin`: each endpoint in turn (the default)."""

    kind: Literal["round_robin"]


class WeightedRoundRobinSection(Section):
    """:class:`~resilience.WeightedRoundRobin`: round robin by ``Endpoint.weight``, smooth."""

    kind: Literal["weighted_round_robin"]
    zone: Zone = Field(default=None, description=_ZONE_DOC)


_PE = PeakEwmaOptions


class PeakEwmaSection(Section):
    """:class:`~resilience.PeakEwma`: P2C with Peak-EWMA, the cheaper of two random endpoints."""

    kind: Literal["peak_ewma"]
    decay: Duration = opt(_PE, "decay", gt=0)
    probe_after: Duration = opt(_PE, "probe_after", gt=0)
    probe_share: Float = opt(_PE, "probe_share", ge=0, le=1)
    unknown_penalty: Float = opt(_PE, "unknown_penalty", gt=0, le=1e9)
    failure_penalty: Duration = opt(_PE, "failure_penalty", ge=0)
    zone: Zone = opt(_PE, "zone", doc=_ZONE_DOC)

    def options(self) -> PeakEwmaOptions:
        zone = self.zone.options() if self.zone is not None else None
        return PeakEwmaOptions(
            self.decay, self.probe_after, self.probe_share, self.unknown_penalty, self.failure_penalty, zone
        )

    _check = model_validator(mode="after")(checked_options)


def _balancer(value: object) -> object:
    return {"kind": value} if isinstance(value, str) else value


BalancerSection = Annotated[
    Annotated[RoundRobinSection | WeightedRoundRobinSection | PeakEwmaSection, Field(discriminator="kind")],
    BeforeValidator(_balancer),
]
"""A balancer: ``round_robin``, ``weighted_round_robin`` or ``peak_ewma``, as a name or ``{kind: ..., ...}``."""


class DiscoverySourceSection(Section):
    """A discovery source: a URI (``etcd://``, ``etcds://``, ``static://``) and the backend's options.

    Write ``${ETCD_PASSWORD}`` rather than a password: substituted values are never shown.
    """

    uri: str = Field(min_length=1, description="etcd://[user:password@]host:2379[,host...]/prefix, or static://...")
    username: str | None = Field(default=None, description="the etcd user (instead of user:password@ in the URI)")
    password: str | None = Field(default=None, description="that user's password; use ${ENV_VAR}")
    ca: str | None = Field(default=None, description="a CA bundle file (etcds://)")
    cert: str | None = Field(default=None, description="a client certificate file (etcds://)")
    key: str | None = Field(default=None, description="the client certificate's key file (etcds://)")
    timeout: Duration | None = Field(default=None, gt=0, description="seconds each etcd request may take (default 5)")
    connect_timeout: Duration | None = Field(default=None, gt=0, description="seconds to connect to a member (2)")
    idle_timeout: Duration | None = Field(default=None, gt=0, description="a silent watch stream is reopened after")
    fallback: dict[str, list[str]] | None = Field(
        default=None, description="endpoints per service to use if etcd does not answer at start"
    )

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: object) -> object:
        return {"uri": value} if isinstance(value, str) else value

    def etcd_options(self) -> dict[str, Any]:
        """The options of ``parse_etcd_uri`` this source sets."""
        names = ("username", "password", "ca", "cert", "key", "timeout", "connect_timeout")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @model_validator(mode="after")
    def _check(self) -> DiscoverySourceSection:
        if self.uri.partition("://")[0].lower() == "static" and (
            self.etcd_options() or self.idle_timeout is not None or self.fallback is not None
        ):
            raise ValueError("a static:// source takes no options")
        check_source(self.uri, self.etcd_options())
        return self


def check_source(uri: str, options: dict[str, Any]) -> None:
    """Check a discovery URI (and the etcd options) without connecting anywhere.

    Raises:
        ValueError: naming what is wrong.
    """
    scheme = uri.partition("://")[0].lower()
    try:
        if scheme in ("etcd", "etcds"):
            from ..discovery._etcd_config import parse_etcd_uri

            parse_etcd_uri(uri, **options)
        elif scheme == "static":
            from ..discovery.static import StaticDiscovery

            StaticDiscovery.from_uri(uri)
        else:
            from ..discovery.registry import known_schemes

            if "://" not in uri or scheme not in known_schemes():
                raise ValueError(f"must be a URI of one of the schemes {', '.join(known_schemes())}, got {uri!r}")
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _service_source(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, str) and "://" in value:
        check_source(value, {})
    elif isinstance(value, list):
        from ..discovery.endpoint import Endpoint

        if not value:
            raise ValueError("lists no address")
        for address in value:
            try:
                Endpoint(address)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"bad address {address!r}: {exc}") from None
    return value


class ServiceSection(Section):
    """A backend reached through discovery: where its endpoints come from, how they are picked."""

    discovery: Annotated[str | list[str] | None, AfterValidator(_service_source)] = Field(
        default=None,
        description="the name of a source in `discovery`, a URI (etcd://..., static://...), or a list of "
        "host:port addresses",
    )
    balancer: BalancerSection = Field(
        default_factory=lambda: RoundRobinSection(kind="round_robin"),
        description="round_robin (default), weighted_round_robin or peak_ewma, as a name or {kind: ..., ...}",
    )
    ejection: EjectionSection | None = Field(default=None, description="outlier ejection (default: none)")
    drain_timeout: Duration = Field(
        default=30.0, gt=0, description="gRPC channel: seconds a removed endpoint's calls may still run"
    )
    channel_options: dict[str, str | int] = Field(
        default_factory=dict, description="gRPC channel: options of each endpoint's channel"
    )
