"""The gRPC method table of a config, updated in place on reload (imports grpc).

:class:`ConfigGrpcPolicies` is a :class:`~interceptors.grpc.GrpcPolicies` whose table a
reload replaces. The adapters keep what they resolved: the interceptors resolve a method
on every call (from the cache), and a :class:`~interceptors.grpc_channel.ResilientChannel`
resolves it once per multicallable (a stub's method). So every
:class:`~interceptors._grpc_common.ResolvedMethod` handed out is kept here and updated in
place, field by field, when the table changes: a method moved to another policy set, or
given other codes, sees it in either kind of adapter. A call that starts during an update
may read some fields old and some new; a call in flight keeps the pipeline it read.

Limits: past 4096 methods, further ones are resolved afresh on every interceptor call
(always current) but a channel's multicallable of such a method keeps what it resolved.
A channel's multicallable decides once whether its calls may be hedged (to share their
picks between attempts): one made before a reload that adds a :class:`~resilience.Hedge`
still hedges, but its hedges may go to an endpoint the primary is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from interceptors._grpc_common import GrpcPolicies, MethodPolicy, ResolvedMethod, split_method

from ..pipeline import Pipeline
from .schema_adapters import GrpcMethodSection, GrpcSection

__all__ = ["ConfigGrpcPolicies", "method_table"]

_LIMIT = 4096


def _entry(section: GrpcMethodSection, pipelines: Mapping[str, Pipeline]) -> MethodPolicy:
    return MethodPolicy(
        pipeline=pipelines[section.policy] if section.policy is not None else None,
        idempotent=section.idempotent,
        retryable_codes=section.retryable_codes,
        failure_codes=section.failure_codes,
        pushback_codes=section.pushback_codes,
        tags=section.tags,
        max_buffered_requests=section.max_buffered_requests,
    )


def method_table(
    section: GrpcSection, pipelines: Mapping[str, Pipeline]
) -> tuple[MethodPolicy, dict[str, MethodPolicy]]:
    """The default entry and the entries per service and method that ``section`` describes."""
    methods: dict[str, MethodPolicy] = {}
    for service, entry in section.services.items():
        methods[service.strip("/")] = _entry(entry, pipelines)
        for method, settings in entry.methods.items():
            methods[f"{service.strip('/')}/{method.strip('/')}"] = _entry(settings, pipelines)
    return _entry(section, pipelines), methods


class ConfigGrpcPolicies(GrpcPolicies):
    """A :class:`~interceptors.grpc.GrpcPolicies` whose table :meth:`update` replaces (see the module doc)."""

    __slots__ = ()

    def _entries(self, full_method: str) -> list[MethodPolicy]:
        name = full_method.strip("/")
        service, _ = split_method(full_method)
        return [e for e in (self.methods.get(name), self.methods.get(service), self.default) if e is not None]

    def resolve(self, full_method: str) -> ResolvedMethod:
        """The settings of ``full_method``: one object per method, kept current by :meth:`update`."""
        resolved = self._cache.get(full_method)
        if resolved is not None:
            return resolved
        with self._lock:
            resolved = self._cache.get(full_method)
            if resolved is None:
                resolved = ResolvedMethod(full_method, self._entries(full_method))
                if len(self._cache) < _LIMIT:
                    self._cache[full_method] = resolved
        return resolved

    def update(self, default: MethodPolicy, methods: dict[str, MethodPolicy]) -> None:
        """Make ``default`` and ``methods`` the table, and bring every method resolved so far up to date."""
        with self._lock:
            self.default = default
            self.methods = methods
            for full_method, resolved in self._cache.items():
                fresh = ResolvedMethod(full_method, self._entries(full_method))
                _copy_into(resolved, fresh)


def _copy_into(resolved: ResolvedMethod, fresh: ResolvedMethod) -> None:
    slots: Any = ResolvedMethod.__slots__
    for slot in slots:
        if slot != "pipeline":
            setattr(resolved, slot, getattr(fresh, slot))
    resolved.pipeline = fresh.pipeline  # last: a call that read it reads the rest as new
