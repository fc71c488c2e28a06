"""The httpx transports of a :class:`~resilience.config.Setup`: their rules, views and rebuilds (see ``_httpx``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from interceptors.httpx import AsyncResilientTransport, ResilientTransport

from ..pipeline import Pipeline
from ._httpx import AsyncConfigTransport, ConfigTransport, RuleShape, classifier, compile_rules, rules

if TYPE_CHECKING:
    from ._backends import BackendsPlan
    from .build import BuiltSet
    from .schema import ConfigSchema
    from .setup import Setup

__all__ = ["HttpSide"]

Maker = tuple[bool, Callable[[], Any] | None, Callable[[Any], Any] | None]
"""How a transport was asked for: async or not, its inner factory, its endpoint factory."""


@dataclass
class _State:
    shapes: list[RuleShape]
    policies: list[str | None]
    views: list[Pipeline]
    key: tuple[Any, ...]
    data: ConfigSchema
    balancer: Any


@dataclass
class HttpPlan:
    """What a new config does to the httpx side, built but not applied."""

    side: HttpSide
    state: _State
    sets: dict[str, BuiltSet]
    swaps: list[tuple[Any, Any]] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    def commit(self) -> None:
        self.side._point(self.state, self.sets)
        for wrapper, transport in self.swaps:
            wrapper.swap(transport)
        self.side.state = self.state

    def abandon(self) -> None:
        for _, transport in self.swaps:
            _close_quietly(transport)


def _close_quietly(transport: Any) -> None:
    # A transport never used holds no connection; its sync close releases its pools.
    close = getattr(transport, "close", None)
    if callable(close):
        close()


class HttpSide:
    """The rule table and the views in force, and every transport handed out."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.lock = threading.Lock()
        self.transports: dict[int, tuple[Any, Maker]] = {}
        self.state = self._state(setup.config.data, setup._balancers["http"].balancer, None)
        self._point(self.state, setup._sets)

    def _state(self, data: ConfigSchema, balancer: Any, old: _State | None) -> _State:
        compiled = compile_rules(data.http)
        shapes = [shape for shape, _ in compiled]
        policies = [policy for _, policy in compiled]
        http = data.http
        key = (tuple(shapes), http.classifier, tuple(http.idempotent_methods), http.rewrite_host_header, id(balancer))
        same = old is not None and old.key == key
        views = old.views if same and old is not None else [Pipeline(clock=self.setup.clock) for _ in shapes]
        return _State(shapes, policies, views, key, data, balancer)

    def _point(self, state: _State, sets: dict[str, BuiltSet]) -> None:
        """Give each view the chain of the policy set its rule names (or no policies)."""
        empty = self.setup.empty_pipeline()
        for view, policy in zip(state.views, state.policies, strict=True):
            view.replace(sets[policy].pipeline if policy is not None else empty)

    def _make(self, state: _State, maker: Maker) -> Any:
        async_, inner, endpoint_transport = maker
        http = state.data.http
        kwargs: dict[str, Any] = {
            "pipeline": state.views[-1],
            "routes": rules(state.shapes, state.views),
            "classifier": classifier(http),
            "discovery": self.setup.discovery,
            "balancer": state.balancer,
            "idempotent_methods": http.idempotent_methods,
            "rewrite_host_header": http.rewrite_host_header,
            "endpoint_transport": endpoint_transport,
            "inner": inner() if inner is not None else None,
        }
        return (AsyncResilientTransport if async_ else ResilientTransport)(**kwargs)

    def transport(self, async_: bool, inner: Callable[[], Any] | None, endpoint_transport: Any) -> Any:
        maker: Maker = (async_, inner, endpoint_transport)
        made = self._make(self.state, maker)
        wrapper: Any = (AsyncConfigTransport if async_ else ConfigTransport)(made, self._forget)
        with self.lock:
            self.transports[id(wrapper)] = (wrapper, maker)
        return wrapper

    def _forget(self, wrapper: Any) -> None:
        with self.lock:
            self.transports.pop(id(wrapper), None)

    def plan(self, data: ConfigSchema, sets: dict[str, BuiltSet], backends: BackendsPlan) -> HttpPlan:
        state = self._state(data, backends.balancers["http"].balancer, self.state)
        plan = HttpPlan(self, state, sets)
        if state.key != self.state.key:
            with self.lock:
                live = list(self.transports.values())
            try:
                for wrapper, maker in live:
                    plan.swaps.append((wrapper, self._make(state, maker)))
            except BaseException:
                plan.abandon()
                raise
            if live:
                plan.changes.append(
                    f"http: {len(live)} transport(s) rebuilt (the rules, classifier or balancer changed)"
                )
        return plan

    def close(self) -> None:
        with self.lock:
            live = [wrapper for wrapper, _ in self.transports.values()]
        for wrapper in live:
            if isinstance(wrapper, ConfigTransport):
                wrapper.close()
            # An async transport is closed by its client (aclose needs its event loop).
