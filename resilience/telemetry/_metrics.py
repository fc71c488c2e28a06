"""The listener's metrics: counters and histograms fed by events, gauges read from state.

Counters and histograms (attributes in brackets):

- ``resilience.call.duration`` (s) [service, method, outcome]: calls by outcome (its
  count) and their latency, all attempts and waits included — outcome ``success``,
  ``fallback``, ``failure``, ``ignored`` or ``cancelled``;
- ``resilience.attempt.duration`` (s) [service, method, outcome, hedge (bool),
  ``error.type`` when failed]: attempts sent by outcome (its count) and their latency;
- ``resilience.rejections`` [policy, reason] — bulkhead, rate limit, throttle,
  concurrency limit, breaker;
- ``resilience.retries`` [policy], ``resilience.hedges`` [policy], ``resilience.fallbacks``
  [policy], ``resilience.endpoint.ejections`` [service, reason].

Observable gauges, read when the SDK collects, from what the listener watches (the
pipelines built with it, and what is given to :meth:`OpenTelemetryListener.watch`):

- ``resilience.circuit.state`` [policy, state]: 1 for a breaker's current state, 0 for the others;
- ``resilience.retry_budget.level`` [policy]: retries the budget would allow now;
- ``resilience.concurrency.limit`` [policy]: an adaptive limit's current limit;
- ``resilience.endpoints`` [service, state]: a pool's endpoints ``healthy`` and ``ejected``;
- ``resilience.balancer.score`` [service, endpoint]: a balancer's cost of each endpoint
  (Peak-EWMA: latency times calls in flight plus one), for balancers that have ``cost``.

``method`` is the call's method, except that an HTTP call named after its raw path
(``GET /items/42``) counts under its verb (``GET``), to keep the cardinality bounded.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from ..balancing.pool import EndpointPool
from ..clock import SYSTEM_CLOCK, Clock
from ..pipeline import Pipeline
from ..policies.budget import RetryBudget
from ..policies.circuit_breaker import CircuitBreaker, CircuitState
from ..policies.concurrency import ConcurrencyLimit

__all__ = ["Instruments", "Watched", "metric_method"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_SERVICE, _STATE = "resilience.service", "resilience.endpoint.state"
_MAX_WATCHED = 10_000
"""Policies watched at most: a program that builds pipelines without end does not grow the listener without end."""


def metric_method(method: str) -> str:
    """The ``method`` attribute of a call's metrics (see the module's docstring)."""
    verb, space, rest = method.partition(" ")
    return verb if space and rest.startswith("/") else method


class Watched:
    """The stateful objects whose state the gauges read (strong references, by identity)."""

    __slots__ = ("_lock", "breakers", "budgets", "limits", "pools", "sources")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.breakers: dict[int, CircuitBreaker] = {}
        self.budgets: dict[int, tuple[str, RetryBudget, Clock]] = {}
        self.limits: dict[int, ConcurrencyLimit] = {}
        self.pools: weakref.WeakSet[EndpointPool[Any]] = weakref.WeakSet()
        self.sources: weakref.WeakSet[Any] = weakref.WeakSet()  # adapters whose pools() grow

    def all_pools(self) -> list[EndpointPool[Any]]:
        """The pools watched, and those of the watched adapters now."""
        found = list(self.pools)
        for source in list(self.sources):
            found.extend(p for p in source.pools() if p not in found)
        return found

    def count(self) -> int:
        return len(self.breakers) + len(self.budgets) + len(self.limits)

    def add(self, obj: object, clock: Clock = SYSTEM_CLOCK, name: str | None = None) -> None:
        """Watch ``obj``: a Pipeline (its breakers, budgets and limits), one of those, an
        EndpointPool, a discovery channel (its ``pool``) or an httpx transport (its ``pools()``)."""
        with self._lock:
            self._add(obj, clock, name)

    def _add(self, obj: object, clock: Clock, name: str | None) -> None:
        if isinstance(obj, Pipeline):
            for policy in obj.policies:
                if isinstance(policy, CircuitBreaker | ConcurrencyLimit | RetryBudget):
                    self._add(policy, obj.clock, None)
                budget = getattr(policy, "budget", None)
                if isinstance(budget, RetryBudget):
                    self._add(budget, obj.clock, policy.name)
            return
        if isinstance(obj, EndpointPool):
            self.pools.add(obj)
            return
        pool = getattr(obj, "pool", None)
        if isinstance(pool, EndpointPool):  # a discovery channel
            self.pools.add(pool)
            return
        if callable(getattr(obj, "pools", None)):  # an httpx transport: a pool per service, made as it goes
            self.sources.add(obj)
            return
        if self.count() >= _MAX_WATCHED:
            return
        if isinstance(obj, CircuitBreaker):
            self.breakers[id(obj)] = obj
        elif isinstance(obj, ConcurrencyLimit):
            self.limits[id(obj)] = obj
        elif isinstance(obj, RetryBudget):
            self.budgets.setdefault(id(obj), (name or "retrybudget", obj, clock))
        else:
            raise TypeError(
                "watch takes a Pipeline, a CircuitBreaker, a ConcurrencyLimit, a RetryBudget, an "
                f"EndpointPool or an adapter with discovery (a channel, a transport), got {obj!r}"
            )

    def discard(self, obj: object) -> None:
        """Stop watching ``obj`` (and, for a Pipeline, its policies)."""
        with self._lock:
            objects = [obj]
            if isinstance(obj, Pipeline):
                objects += list(obj.policies) + [getattr(p, "budget", None) for p in obj.policies]
            for o in objects:
                for table in (self.breakers, self.budgets, self.limits):
                    table.pop(id(o), None)
                if isinstance(o, EndpointPool):
                    self.pools.discard(o)
                pool = getattr(o, "pool", None)
                if isinstance(pool, EndpointPool):
                    self.pools.discard(pool)
                if o in self.sources:
                    self.sources.discard(o)

    # -- what the gauges read -------------------------------------------------------------

    def circuit_states(self, options: CallbackOptions) -> Iterable[Observation]:
        for breaker in list(self.breakers.values()):
            state = breaker.state
            for each in CircuitState:
                attributes = {"resilience.policy": breaker.name, "resilience.circuit.state": each.value}
                yield Observation(1 if each is state else 0, attributes)

    def budget_levels(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, budget, clock in list(self.budgets.values()):
            yield Observation(budget.available(clock.monotonic()), {"resilience.policy": name})

    def concurrency_limits(self, options: CallbackOptions) -> Iterable[Observation]:
        for limit in list(self.limits.values()):
            yield Observation(limit.limit, {"resilience.policy": limit.name})

    def endpoints(self, options: CallbackOptions) -> Iterable[Observation]:
        for pool in self.all_pools():
            states = pool.states
            ejected = sum(1 for s in states if s.ejected)
            service = pool.service
            yield Observation(len(states) - ejected, {_SERVICE: service, _STATE: "healthy"})
            yield Observation(ejected, {_SERVICE: service, _STATE: "ejected"})

    def scores(self, options: CallbackOptions) -> Iterable[Observation]:
        for pool in self.all_pools():
            cost = getattr(pool.balancer, "cost", None)
            if not callable(cost):
                continue
            for state in pool.states:
                value = cost(state)
                if value is not None:
                    yield Observation(value, {"resilience.service": pool.service, "resilience.endpoint": state.address})


class Instruments:
    """The instruments of one listener, made from its meter."""

    __slots__ = (
        "attempt_duration",
        "call_duration",
        "ejections",
        "fallbacks",
        "gauges",
        "hedges",
        "rejections",
        "retries",
    )

    def __init__(self, meter: metrics.Meter, watched: Watched) -> None:
        # Calls and attempts are counted by their histograms (a histogram's count), as the
        # semantic conventions do for requests: one measurement each, not two.
        self.call_duration = meter.create_histogram(
            "resilience.call.duration",
            "s",
            "Calls, by how they ended, and their duration (all attempts and waits included)",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self.attempt_duration = meter.create_histogram(
            "resilience.attempt.duration",
            "s",
            "Attempts sent, by how they ended, and their duration",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self.rejections = meter.create_counter("resilience.rejections", "{call}", "Calls a policy turned away")
        self.retries = meter.create_counter("resilience.retries", "{retry}", "Retries scheduled")
        self.hedges = meter.create_counter("resilience.hedges", "{hedge}", "Hedged attempts started")
        self.fallbacks = meter.create_counter("resilience.fallbacks", "{call}", "Calls answered by a fallback")
        self.ejections = meter.create_counter("resilience.endpoint.ejections", "{ejection}", "Endpoints ejected")
        self.gauges = [
            meter.create_observable_gauge(
                "resilience.circuit.state", [watched.circuit_states], "1", "1 for a breaker's current state"
            ),
            meter.create_observable_gauge(
                "resilience.retry_budget.level", [watched.budget_levels], "{retry}", "Retries a budget allows now"
            ),
            meter.create_observable_gauge(
                "resilience.concurrency.limit", [watched.concurrency_limits], "{call}", "Current concurrency limit"
            ),
            meter.create_observable_gauge(
                "resilience.endpoints", [watched.endpoints], "{endpoint}", "Endpoints of a pool, healthy and ejected"
            ),
            meter.create_observable_gauge(
                "resilience.balancer.score", [watched.scores], "s", "A balancer's cost of each endpoint"
            ),
        ]
