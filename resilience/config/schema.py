"""The whole config: named policy sets, discovery sources, services, gRPC and HTTP assignment, telemetry.

Example (YAML)::

    policies:
      default:
        timeout: 5s
        retry: {attempts: 3, backoff: {kind: exponential_jitter, base: 100ms, cap: 2s}}
        circuit_breaker: {failure_threshold: 5, break_duration: 30s}
        bulkhead: 64
    discovery:
      registry: etcd://app:${ETCD_PASSWORD}@10.0.0.5:2379/services
    services:
      orders: {discovery: registry, balancer: peak_ewma, ejection: {consecutive_failures: 5}}
    grpc:
      policy: default
      services:
        shop.Orders: {idempotent: true, methods: {Create: {idempotent: false}}}
    http:
      policy: default
      hosts:
        api.example.com:
          routes:
            - {path: /orders/*, service: orders}

:func:`references` finds what the schema alone cannot: names of policy sets and sources
that are not defined.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import Field

from ._fields import Section
from .errors import ConfigIssue, did_you_mean, dotted
from .schema_adapters import GrpcSection, HttpSection, TelemetrySection
from .schema_policies import PolicySetSection
from .schema_services import DiscoverySourceSection, ServiceSection

__all__ = ["ConfigSchema", "references"]


class ConfigSchema(Section):
    """A resilience config: policy sets, and what uses them."""

    version: Literal[1] = Field(default=1, description="the config format's version (1)")
    policies: dict[str, PolicySetSection] = Field(
        default_factory=dict, description="named policy sets, each one pipeline"
    )
    discovery: dict[str, DiscoverySourceSection] = Field(
        default_factory=dict, description="named discovery sources: a URI, or {uri, options...}"
    )
    services: dict[str, ServiceSection] = Field(
        default_factory=dict, description="backends by discovery name: their endpoints and balancing"
    )
    grpc: GrpcSection = Field(default_factory=GrpcSection, description="which gRPC methods get which policies")
    http: HttpSection = Field(default_factory=HttpSection, description="which HTTP requests get which policies")
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection, description="OpenTelemetry")


def _get(data: object, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _items(data: object) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in data.items() if isinstance(k, str)] if isinstance(data, Mapping) else []


def _policy_refs(data: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    grpc, http = data.get("grpc"), data.get("http")
    yield ("grpc", "policy"), _get(grpc, "policy")
    for name, service in _items(_get(grpc, "services")):
        yield ("grpc", "services", name, "policy"), _get(service, "policy")
        for method, entry in _items(_get(service, "methods")):
            yield ("grpc", "services", name, "methods", method, "policy"), _get(entry, "policy")
    yield ("http", "policy"), _get(http, "policy")
    for host, section in _items(_get(http, "hosts")):
        yield ("http", "hosts", host, "policy"), _get(section, "policy")
        routes = _get(section, "routes")
        for i, route in enumerate(routes if isinstance(routes, list) else []):
            yield ("http", "hosts", host, "routes", i, "policy"), _get(route, "policy")


def references(data: Mapping[str, Any]) -> list[ConfigIssue]:
    """Problems with names in ``data`` (checked or not): a policy set or a discovery source
    used but not defined."""
    issues = []
    policies = data.get("policies")
    sets = [name for name, _ in _items(policies)]
    for loc, name in _policy_refs(data):
        if isinstance(name, str) and name not in sets:
            known = f"; defined: {', '.join(sets)}" if sets else "; `policies` defines none"
            issues.append(ConfigIssue(dotted(loc), f"unknown policy set {name!r}{did_you_mean(name, sets)}{known}"))
    sources = [name for name, _ in _items(data.get("discovery"))]
    for service, section in _items(data.get("services")):
        source = _get(section, "discovery")
        if isinstance(source, str) and "://" not in source and source not in sources:
            known = f"; defined: {', '.join(sources)}" if sources else ""
            issues.append(
                ConfigIssue(
                    dotted(("services", service, "discovery")),
                    f"unknown discovery source {source!r}{did_you_mean(source, sources)}{known} "
                    "(give a source name, a URI such as etcd://host:2379/prefix, or a list of addresses)",
                )
            )
    return issues
