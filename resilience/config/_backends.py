"""The backends of a config: one discovery that routes each service to its source, and the balancers.

:class:`ConfigDiscovery` is the one discovery the adapters are given: it publishes each
configured service's endpoints from that service's own source (an etcd prefix, a
``static://`` URI, a list in the file). A reload that moves a service to another source
re-routes it here, so adapters follow without being rebuilt. Sources are made once per
distinct URI and options, shared by the services that name them, and closed once no
service uses them.

Balancers are kept across reloads while their kind, their zone (for
:class:`~resilience.WeightedRoundRobin`) and whether they eject stay the same; new
options reach them through ``reconfigure`` (a :class:`~resilience.PeakEwma`'s scores and
an ejection's counts live in the pools and are kept).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..balancing.base import Balancer, RoundRobin
from ..balancing.ejection import OutlierEjection
from ..balancing.p2c import PeakEwma
from ..balancing.weighted import WeightedRoundRobin
from ..discovery.base import BaseDiscovery, Discovery, Subscription
from ..discovery.endpoint import Endpoint
from .schema import ConfigSchema
from .schema_services import DiscoverySourceSection, EjectionSection

__all__ = ["BackendsPlan", "ConfigDiscovery", "make_balancer", "plan_backends"]

_log = logging.getLogger("resilience.config")

SourceKey = tuple[Any, ...]


class ConfigDiscovery(BaseDiscovery):
    """The endpoints of every service of a config, each taken from the service's own source."""

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[str, tuple[SourceKey, Subscription | None]] = {}

    def route(self, service: str, key: SourceKey, source: Discovery | None, static: tuple[Endpoint, ...]) -> None:
        """Publish ``service``'s endpoints from ``source`` (followed live), or ``static`` ones."""
        old = self._routes.get(service)
        if old is not None and old[0] == key:
            return
        subscription: Subscription | None = None
        if source is not None:

            def forward(endpoints: Any, service: str = service) -> None:
                self._publish(service, endpoints)

            subscription = source.subscribe(service, forward)  # delivers the current list at once
        else:
            self._publish(service, static)
        if old is not None and old[1] is not None:
            old[1]()
        self._routes[service] = (key, subscription)

    def unroute(self, service: str) -> None:
        """``service`` is no longer configured: it has no endpoints."""
        old = self._routes.pop(service, None)
        if old is not None and old[1] is not None:
            old[1]()
        self._publish(service, ())

    def routed(self) -> list[str]:
        return sorted(self._routes)

    def close(self) -> None:
        for _, subscription in self._routes.values():
            if subscription is not None:
                subscription()
        self._routes.clear()
        super().close()


def _source_key(section: DiscoverySourceSection) -> SourceKey:
    fallback = tuple(sorted((k, tuple(v)) for k, v in (section.fallback or {}).items()))
    return (section.uri, tuple(sorted(section.etcd_options().items())), section.idle_timeout, fallback)


def open_source(section: DiscoverySourceSection) -> Discovery:
    """The discovery backend a source section describes (an etcd one connects and lists now)."""
    scheme = section.uri.partition("://")[0].lower()
    if scheme in ("etcd", "etcds"):
        from ..discovery.etcd import EtcdDiscovery

        return EtcdDiscovery(
            section.uri, fallback=section.fallback, idle_timeout=section.idle_timeout, **section.etcd_options()
        )
    from ..discovery.registry import discovery_from_uri

    return discovery_from_uri(section.uri)


def make_balancer(section: Any, ejection: EjectionSection | None) -> Balancer:
    """A new balancer for a balancer section, with its outlier ejection."""
    eject = OutlierEjection(options=ejection.options()) if ejection is not None else None
    if section.kind == "peak_ewma":
        return PeakEwma(options=section.options(), ejection=eject)
    if section.kind == "weighted_round_robin":
        zone = section.zone.options() if section.zone is not None else None
        return WeightedRoundRobin(zone=zone, ejection=eject)
    return RoundRobin(ejection=eject)


def _balancer_identity(section: Any, ejection: EjectionSection | None) -> tuple[Any, ...]:
    zone = section.zone if section.kind == "weighted_round_robin" else None
    return (section.kind, zone, ejection is None)


@dataclass
class BuiltBalancer:
    """A balancer in force and the sections it was made from."""

    section: Any
    ejection: EjectionSection | None
    balancer: Balancer


@dataclass
class BackendsPlan:
    """What a new config does to the sources, the routes and the balancers, built but not applied."""

    sources: dict[SourceKey, Discovery]
    opened: list[Discovery]
    routes: dict[str, tuple[SourceKey, Discovery | None, tuple[Endpoint, ...]]]
    balancers: dict[str, BuiltBalancer]
    steps: list[Callable[[], None]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    """Balancers made anew: adapters made before keep the old one."""

    def abandon(self) -> None:
        """The plan will not be committed: close the sources it opened."""
        for source in self.opened:
            source.close()


def _plan_balancer(
    plan: BackendsPlan, key: str, old: BuiltBalancer | None, section: Any, ejection: EjectionSection | None
) -> None:
    if old is not None and _balancer_identity(old.section, old.ejection) == _balancer_identity(section, ejection):
        balancer = old.balancer
        if section.kind == "peak_ewma" and section != old.section:
            options = section.options()
            plan.steps.append(functools.partial(balancer.reconfigure, options))  # type: ignore[attr-defined]
        if ejection is not None and ejection != old.ejection:
            options = ejection.options()
            assert balancer.ejection is not None
            plan.steps.append(functools.partial(balancer.ejection.reconfigure, options))
        plan.balancers[key] = BuiltBalancer(section, ejection, balancer)
        return
    if old is not None:
        plan.replaced.append(key)
    plan.balancers[key] = BuiltBalancer(section, ejection, make_balancer(section, ejection))


def plan_backends(
    data: ConfigSchema, sources: dict[SourceKey, Discovery], balancers: dict[str, BuiltBalancer]
) -> BackendsPlan:
    """Open the sources ``data`` needs that are not open yet; route its services; plan its balancers.

    Raises:
        Exception: a source could not be opened (those opened here are closed again).
    """
    plan = BackendsPlan({}, [], {}, {})
    try:
        for service, section in data.services.items():
            given = section.discovery
            if given is None:
                continue
            if isinstance(given, list):
                static = tuple(Endpoint(a) for a in given)
                plan.routes[service] = (("list", tuple(given)), None, static)
                continue
            source_section = data.discovery.get(given) or DiscoverySourceSection(uri=given)
            key = _source_key(source_section)
            source = plan.sources.get(key) or sources.get(key)
            if source is None:
                source = open_source(source_section)
                plan.opened.append(source)
            plan.sources[key] = source
            plan.routes[service] = (key, source, ())
    except BaseException:
        plan.abandon()
        raise
    for service, section in data.services.items():
        _plan_balancer(plan, f"services.{service}", balancers.get(f"services.{service}"), section.balancer,
                       section.ejection)  # fmt: skip
    _plan_balancer(plan, "http", balancers.get("http"), data.http.balancer, data.http.ejection)
    return plan


def commit_backends(
    plan: BackendsPlan, discovery: ConfigDiscovery, sources: dict[SourceKey, Discovery]
) -> list[Discovery]:
    """Route the services, reconfigure the balancers; the sources no longer used (to close)."""
    for service, (key, source, static) in plan.routes.items():
        discovery.route(service, key, source, static)
    for service in discovery.routed():
        if service not in plan.routes:
            discovery.unroute(service)
    for step in plan.steps:
        step()
    unused = [source for key, source in sources.items() if key not in plan.sources]
    sources.clear()
    sources.update(plan.sources)
    return unused


def close_sources(sources: list[Discovery]) -> None:
    for source in sources:
        try:
            source.close()
        except Exception:
            _log.exception("closing discovery source %r failed", source)
