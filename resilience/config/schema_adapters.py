"""Config sections of the adapters: which gRPC methods and HTTP requests get which policy set; telemetry.

**gRPC.** ``grpc`` holds the settings of every method; ``grpc.services.<pkg.Service>`` those
of one service, and ``...methods.<Method>`` those of one method. A setting left out is
inherited field by field: method, then service, then ``grpc``, then the built-in default.

**HTTP.** ``http`` holds the settings of every request; ``http.hosts.<glob>`` those of the
requests to matching hosts (tried in the order written, the first match wins), and each
host's ``routes`` (a path glob or ``^regex``, and HTTP methods) those of some of its
requests. A setting left out is inherited: route, then host, then ``http``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from .._grpc_status import GRPC_CODES, StatusName
from ._fields import Section
from .schema_retry import PolicyName
from .schema_services import BalancerSection, EjectionSection, RoundRobinSection
from .values import Bool, Duration, Float, Int

__all__ = [
    "GRPC_CODES",
    "GrpcMethodSection",
    "GrpcSection",
    "GrpcServiceSection",
    "HostSection",
    "HttpClassifierSection",
    "HttpSection",
    "RouteSection",
    "TelemetrySection",
]


_POLICY_DOC = "the name of a policy set in `policies` (inherited when left out; none at the top: no policies)"


class GrpcMethodSection(Section):
    """The settings of a gRPC method (``MethodPolicy``); each left out is inherited."""

    policy: PolicyName | None = Field(default=None, description=_POLICY_DOC)
    idempotent: Bool | None = Field(
        default=None, description="calls may be sent more than once (retries, hedges); built-in default false"
    )
    retryable_codes: list[StatusName] | None = Field(
        default=None, description="status codes that may be retried (built-in default [UNAVAILABLE])"
    )
    failure_codes: list[StatusName] | None = Field(
        default=None,
        description="status codes that count against the backend (built-in default UNAVAILABLE, "
        "RESOURCE_EXHAUSTED, ABORTED, DEADLINE_EXCEEDED, UNKNOWN, INTERNAL, DATA_LOSS)",
    )
    pushback_codes: list[StatusName] | None = Field(
        default=None, description="codes retried only with a server pushback (built-in default [RESOURCE_EXHAUSTED])"
    )
    tags: dict[str, str] | None = Field(default=None, description="labels put in each call's context")
    max_buffered_requests: Int | None = Field(
        default=None, ge=0, le=1_000_000, description="request messages kept for a retry (built-in default 256)"
    )


class GrpcServiceSection(GrpcMethodSection):
    """The settings of a gRPC service (``pkg.Service``) and of its methods."""

    methods: dict[str, GrpcMethodSection] = Field(
        default_factory=dict, description="settings per method name (`Create`, not the full path)"
    )


class GrpcSection(GrpcMethodSection):
    """gRPC: the settings of every method, and per service."""

    services: dict[str, GrpcServiceSection] = Field(
        default_factory=dict, description="settings per gRPC service, by full name (`shop.Orders`)"
    )


class RouteSettings(Section):
    """What a route (or a host, or ``http``) sets for its requests; each left out is inherited."""

    policy: PolicyName | None = Field(default=None, description=_POLICY_DOC)
    service: str | None = Field(
        default=None,
        min_length=1,
        description="the logical service name (default: the host); a service of `services` is balanced over "
        "its endpoints whatever the URL's host",
    )
    idempotent: Bool | None = Field(
        default=None, description="force retries and hedges on (true) or off (false); default: by method"
    )
    timeout: Duration | None = Field(default=None, gt=0, description="a deadline for the whole call")
    name: str | None = Field(default=None, min_length=1, description="the method name in the call's context")
    tags: dict[str, str] | None = Field(default=None, description="labels put in the call's context (merged)")


def _upper(methods: object) -> object:
    if isinstance(methods, list) and all(isinstance(m, str) for m in methods):
        return [m.upper() for m in methods]
    return methods


def _path(path: str) -> str:
    if path.startswith("^"):
        import re

        try:
            re.compile(path)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return path


class RouteSection(RouteSettings):
    """Some of a host's requests: by path and HTTP method."""

    path: Annotated[str, AfterValidator(_path)] | None = Field(
        default=None, min_length=1, description="a glob on the URL path (`/orders/*`), or a regex starting with ^"
    )
    methods: Annotated[list[str], BeforeValidator(_upper)] | None = Field(
        default=None, min_length=1, description="the HTTP methods matched (default all)"
    )


class HostSection(RouteSettings):
    """The requests to the hosts matching a glob (`api.example.com`, `*.internal`, `*`)."""

    routes: list[RouteSection] = Field(default_factory=list, description="rules within this host, first match wins")


def _status(value: object) -> object:
    if isinstance(value, str):
        low, dash, high = value.partition("-")
        if dash and low.strip().isdigit() and high.strip().isdigit():
            return list(range(int(low), int(high) + 1))
    return [value]


def _statuses(value: object) -> object:
    if not isinstance(value, list):
        return value
    out: list[Any] = []
    for item in value:
        out.extend(_status(item))  # type: ignore[arg-type]
    return out


Statuses = Annotated[list[Annotated[Int, Field(ge=100, le=599)]], BeforeValidator(_statuses)]


class HttpClassifierSection(Section):
    """How HTTP responses count (``HttpxClassifier``)."""

    failure_statuses: Statuses | None = Field(
        default=None,
        description="statuses that count against the backend, numbers or ranges `500-599` (default 429 and 500-599)",
    )
    retryable_statuses: Statuses | None = Field(
        default=None, description="the failure statuses worth a retry (default: all failure statuses)"
    )
    drain_limit: Int = Field(default=65536, ge=0, description="the largest error body read before closing, bytes")


class HttpSection(RouteSettings):
    """HTTP (the httpx transports): the settings of every request, and per host."""

    hosts: dict[str, HostSection] = Field(default_factory=dict, description="settings per host glob, first match")
    classifier: HttpClassifierSection = Field(default_factory=HttpClassifierSection, description="what counts")
    idempotent_methods: Annotated[list[str], BeforeValidator(_upper)] = Field(
        default_factory=lambda: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"],
        description="methods retried without an opt-in",
    )
    rewrite_host_header: Bool = Field(default=False, description="send the endpoint's address as Host")
    balancer: BalancerSection = Field(
        default_factory=lambda: RoundRobinSection(kind="round_robin"),
        description="the transport's balancer, for every service it balances (default round_robin)",
    )
    ejection: EjectionSection | None = Field(default=None, description="the transport's outlier ejection")

    @model_validator(mode="after")
    def _check(self) -> HttpSection:
        if self.classifier.retryable_statuses is not None:
            failing = set(self.classifier.failure_statuses or [429, *range(500, 600)])
            extra = sorted(set(self.classifier.retryable_statuses) - failing)
            if extra:
                raise ValueError(f"classifier.retryable_statuses must be failure statuses, got {extra}")
        return self


class TelemetrySection(Section):
    """OpenTelemetry (``resilience.telemetry.configure``), applied when that package is installed."""

    enabled: Bool = Field(default=False, description="make spans and metrics of every call and attempt")
    service_name: str | None = Field(default=None, description="the service.name resource attribute")
    otlp_endpoint: str | None = Field(default=None, description="an OTLP endpoint to export to (default: none)")
    redact_query_params: list[str] = Field(default_factory=list, description="URL query parameters never recorded")
    sample_ratio: Float = Field(default=1.0, ge=0, le=1, description="the share of calls traced")

    def settings(self) -> dict[str, Any]:
        """The keywords of ``resilience.telemetry.configure``."""
        return {
            "enabled": self.enabled,
            "service_name": self.service_name,
            "otlp_endpoint": self.otlp_endpoint,
            "redact_query_params": tuple(self.redact_query_params),
            "sample_ratio": self.sample_ratio,
        }
