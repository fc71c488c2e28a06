"""Everything a config describes, built once and changed in place by later configs.

A :class:`Setup` owns the pipelines of the policy sets, the discovery sources, the
balancers, and the adapters it hands out. :meth:`Setup.apply` takes a new config in two
phases: first everything the new config needs is built (policies, sources, transports)
without touching anything in use; then, if that worked, it is committed at once —
options reconfigured, pipelines swapped in place, routes re-pointed. A config refused, or
one whose building fails, leaves everything as it was.

What survives a reload: every policy whose settings did not change keeps its object and
state; one whose options changed keeps its state through ``reconfigure``; a pipeline
keeps its identity (adapters hold it) while its chain is replaced; balancers keep their
scores while their kind stays. See :mod:`resilience.config.build`,
:mod:`resilience.config._backends`, :mod:`resilience.config._grpc` and
:mod:`resilience.config._httpx` for each part's rules and limits.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..events import Listener
from ..pipeline import Pipeline
from ..policy import Policy
from ._backends import BuiltBalancer, ConfigDiscovery, SourceKey, close_sources, commit_backends, plan_backends
from ._outcome import ReloadResult, Source, close_listener, source_name, telemetry_listener
from .build import BuiltSet, close_policies, plan_sets
from .errors import ConfigError, ConfigIssue
from .load import Config, load, loads
from .schema_adapters import TelemetrySection

__all__ = ["ReloadResult", "Setup"]

_log = logging.getLogger("resilience.config")


class Setup:
    """The policies, discovery, balancers and adapters of a config; :meth:`apply` swaps in a new one.

    Args:
        config: a :class:`Config`, a dict, or a file name (see :func:`~resilience.config.load`).
        clock: the clock of every pipeline (default the real one; a ``FakeClock`` in tests).
        listeners: event listeners given to every pipeline, beside the telemetry one.

    Raises:
        ConfigError: the config is refused.
    """

    def __init__(self, config: Source, *, clock: Clock = SYSTEM_CLOCK, listeners: Iterable[Listener] = ()) -> None:
        self.clock = clock
        self._listeners = tuple(listeners)
        self._lock = threading.RLock()
        self._sets: dict[str, BuiltSet] = {}
        self._sources: dict[SourceKey, Any] = {}
        self._balancers: dict[str, BuiltBalancer] = {}
        self._retired: list[Policy] = []
        self._telemetry: tuple[TelemetrySection, Listener | None] | None = None
        self._shell_listeners: tuple[Listener, ...] = self._listeners
        self._empty = Pipeline(clock=clock, listeners=self._listeners)
        self._grpc: Any = None
        self._http: Any = None  # the httpx side (rules, views, transports): made on first use
        self._watchers: list[Any] = []
        self.discovery = ConfigDiscovery()
        """The one discovery the adapters are given: every configured service, from its own source."""
        self.generation = 0
        self._config: Config | None = None
        self._closed = False
        result = self.apply(load(config) if not isinstance(config, Config) else config)
        if not result.applied:
            assert result.error is not None
            self.close()
            raise result.error

    @property
    def config(self) -> Config:
        """The config in force."""
        assert self._config is not None
        return self._config

    # -- applying configs -------------------------------------------------------------------

    def apply(self, config: Config) -> ReloadResult:
        """Put ``config`` in force, or leave everything as it is if any part of it cannot be built."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the setup is closed")
            try:
                changes = self._apply(config)
            except Exception as exc:
                # What building raised may hold a secret (a URI with its password): only a
                # redacted account of it goes further.
                error = ConfigError(
                    [ConfigIssue("(building)", config.redact(f"{type(exc).__name__}: {exc}"))], config.source
                )
                _log.warning("%s\n  keeping generation %d", error, self.generation)
                return ReloadResult(False, self.generation, error=error, source=config.source)
            self.generation += 1
            self._config = config
            if self.generation > 1:
                _log.info(
                    "config %s applied (generation %d): %s",
                    config.source or "(dict)",
                    self.generation,
                    "; ".join(changes) or "no change",
                )
            return ReloadResult(True, self.generation, tuple(changes), source=config.source)

    def reload(self, source: Source) -> ReloadResult:
        """Load ``source`` and apply it; a refused config is logged with its errors and the old one kept."""
        try:
            config = load(source) if not isinstance(source, Config) else source
        except (ConfigError, OSError, ValueError) as exc:
            text = str(exc) if isinstance(exc, ConfigError) else f"config {source_name(source)} refused: {exc}"
            _log.warning("%s\n  keeping generation %d", text, self.generation)
            return ReloadResult(False, self.generation, error=exc, source=source_name(source))
        return self.apply(config)

    def reload_text(
        self,
        text: str | bytes,
        fmt: str | None = None,
        *,
        source: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ReloadResult:
        """:meth:`reload` from text (what the watchers read); ``fmt`` as :func:`~resilience.config.loads`."""
        try:
            config = loads(text, fmt, environ=environ, source=source)
        except ConfigError as exc:
            _log.warning("%s\n  keeping generation %d", exc, self.generation)
            return ReloadResult(False, self.generation, error=exc, source=source)
        return self.apply(config)

    def _apply(self, config: Config) -> list[str]:
        data = config.data
        old_telemetry = self._telemetry
        listener: Listener | None = None
        telemetry_changed = old_telemetry is None or old_telemetry[0] != data.telemetry
        if telemetry_changed:
            listener = telemetry_listener(data.telemetry)
        elif old_telemetry is not None:
            listener = old_telemetry[1]
        listeners = self._listeners + ((listener,) if listener is not None else ())
        shell_changed = listeners != self._shell_listeners
        try:
            sets = plan_sets(self._sets, data.policies, (self.clock, listeners), shell_changed)
            try:
                backends = plan_backends(data, self._sources, self._balancers)
                try:
                    http = self._http.plan(data, sets.sets, backends) if self._http is not None else None
                except BaseException:
                    backends.abandon()
                    raise
            except BaseException:
                close_policies(sets.built)
                raise
        except BaseException:
            if telemetry_changed and listener is not None:
                close_listener(listener)
            raise
        # -- commit: nothing below is expected to fail --------------------------------------
        if shell_changed:
            self._empty = Pipeline(clock=self.clock, listeners=listeners)
            self._shell_listeners = listeners
        sets.commit()
        self._sets = sets.sets
        unused = commit_backends(backends, self.discovery, self._sources)
        self._balancers = backends.balancers
        if self._grpc is not None:
            from ._grpc import method_table

            self._grpc.update(*method_table(data.grpc, self.pipelines()))
        if http is not None:
            http.commit()
        self._retired.extend(sets.retired)
        close_sources(unused)
        if telemetry_changed:
            self._telemetry = (data.telemetry, listener)
            if old_telemetry is not None and old_telemetry[1] is not None:
                close_listener(old_telemetry[1])
        changes = list(sets.changes)
        changes += [f"{key}: balancer replaced (adapters made before keep the old one)" for key in backends.replaced]
        old = self._config.data if self._config is not None else None
        if old is not None:
            changes += [f"services.{name}: changed" for name, section in data.services.items()
                        if old.services.get(name) not in (None, section)]  # fmt: skip
            for part in ("grpc", "http", "telemetry"):
                if getattr(old, part) != getattr(data, part):
                    changes.append(f"{part}: changed")
        if http is not None:
            changes += http.changes
        return changes

    # -- what a config sets up ------------------------------------------------------------------

    def pipelines(self) -> dict[str, Pipeline]:
        """The pipeline of every policy set, by name (each a stable object, changed in place)."""
        return {name: built.pipeline for name, built in self._sets.items()}

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline of policy set ``name``: the same object across reloads.

        Raises:
            KeyError: no such set (the message lists the sets).
        """
        built = self._sets.get(name)
        if built is None:
            raise KeyError(f"no policy set {name!r}; the config defines: {', '.join(self._sets) or 'none'}")
        return built.pipeline

    def empty_pipeline(self) -> Pipeline:
        """A pipeline without policies, with the set-up's clock and listeners (what unassigned calls get)."""
        return self._empty

    def balancer(self, service: str) -> Any:
        """The balancer of ``service`` (of ``services``), or of the httpx transports for ``"http"``."""
        key = "http" if service == "http" else f"services.{service}"
        built = self._balancers.get(key)
        if built is None:
            raise KeyError(f"service {service!r} is not in the config's services: {', '.join(self.services())}")
        return built.balancer

    def services(self) -> list[str]:
        """The services of the config (``services``)."""
        return list(self.config.data.services)

    # -- gRPC ---------------------------------------------------------------------------------------

    def grpc_policies(self) -> Any:
        """The method table of every gRPC adapter of this set-up (a ``GrpcPolicies``, kept current)."""
        with self._lock:
            if self._grpc is None:
                from ._grpc import ConfigGrpcPolicies, method_table

                default, methods = method_table(self.config.data.grpc, self.pipelines())
                self._grpc = ConfigGrpcPolicies(default, methods)
            return self._grpc

    def grpc_interceptor(self) -> Any:
        """A sync client interceptor: ``grpc.intercept_channel(channel, setup.grpc_interceptor())``."""
        from interceptors.grpc import ResilienceInterceptor

        return ResilienceInterceptor(self.grpc_policies())

    def grpc_aio_interceptors(self) -> list[Any]:
        """The ``grpc.aio`` client interceptors: ``grpc.aio.insecure_channel(target, interceptors=...)``."""
        from interceptors.grpc_aio import aio_interceptors

        return aio_interceptors(self.grpc_policies())

    def grpc_channel(self, service: str, *, aio: bool = False, **options: Any) -> Any:
        """A discovery-aware channel over the endpoints of ``service`` (of ``services``).

        Its balancer, drain timeout and channel options are the service's. ``options`` go to
        the channel (``channel_factory=``, ``endpoint_health=``). A reload reaches its
        policies and its endpoints; a balancer of another kind reaches channels made after it.
        """
        section = self.config.data.services.get(service)
        if section is None:
            raise KeyError(f"service {service!r} is not in the config's services: {', '.join(self.services())}")
        kwargs: dict[str, Any] = {
            "drain_timeout": section.drain_timeout,
            "options": list(section.channel_options.items()),
            **options,
        }
        if aio:
            from interceptors.grpc_channel_aio import AioResilientChannel

            return AioResilientChannel(service, self.discovery, self.balancer(service), self.grpc_policies(), **kwargs)
        from interceptors.grpc_channel import ResilientChannel

        return ResilientChannel(service, self.discovery, self.balancer(service), self.grpc_policies(), **kwargs)

    # -- httpx ----------------------------------------------------------------------------------------

    def httpx_transport(
        self,
        async_: bool = False,
        *,
        inner: Callable[[], Any] | None = None,
        endpoint_transport: Callable[[Any], Any] | None = None,
    ) -> Any:
        """An httpx transport (``AsyncConfigTransport`` with ``async_``) following this set-up's config.

        Args:
            async_: for an ``httpx.AsyncClient``.
            inner: makes the transport that sends (default ``httpx.HTTPTransport()``); a
                factory, since a reload may need a new one.
            endpoint_transport: makes each discovered endpoint's transport (see ``ResilientTransport``).
        """
        with self._lock:
            if self._http is None:
                from ._httpx_side import HttpSide

                self._http = HttpSide(self)
            http = self._http
            return http.transport(async_, inner, endpoint_transport)

    def httpx_client(self, async_: bool = False, **client_options: Any) -> Any:
        """An ``httpx.Client`` (``httpx.AsyncClient`` with ``async_``) over :meth:`httpx_transport`."""
        import httpx

        transport = self.httpx_transport(async_)
        if async_:
            return httpx.AsyncClient(transport=transport, **client_options)
        return httpx.Client(transport=transport, **client_options)

    # -- hot reload -------------------------------------------------------------------------------------

    def watch_file(self, path: str | os.PathLike[str], *, interval: float = 1.0, **options: Any) -> Any:
        """Reload from ``path`` whenever it changes (see :class:`~resilience.config.FileWatcher`)."""
        from .reload import FileWatcher

        watcher = FileWatcher(self, path, interval=interval, **options)
        self._watchers.append(watcher)
        return watcher

    def watch_etcd(self, url: str, key: str, **options: Any) -> Any:
        """Reload from the etcd key ``key`` whenever it changes (see :class:`~resilience.config.EtcdWatcher`)."""
        from .reload import EtcdWatcher

        watcher = EtcdWatcher(self, url, key, **options)
        self._watchers.append(watcher)
        return watcher

    def close(self) -> None:
        """Stop the watchers, close the transports, the discovery sources and the policies' resources."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for watcher in self._watchers:
            watcher.close()
        if self._http is not None:
            self._http.close()
        self.discovery.close()
        close_sources(list(self._sources.values()))
        self._sources.clear()
        close_policies(self._retired + [p for built in self._sets.values() for p in built.policies.values()])
        if self._telemetry is not None and self._telemetry[1] is not None:
            close_listener(self._telemetry[1])

    def __enter__(self) -> Setup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Setup(generation={self.generation}, policies={list(self._sets)})"
