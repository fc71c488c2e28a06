"""Policy sets into pipelines, and a later config into changes of them that keep state.

:func:`plan_sets` compares the sets in force with the sets of a new config and builds,
without touching anything in use, what the new config needs: a policy whose section did
not change is kept as it is (its object, its state); one whose options changed is kept
and given its new options (:meth:`~resilience.Reconfigurable.reconfigure`, at commit); one
whose identity changed (its ``name``, its budget turned on or off, a rate limit's storage
or strategy, a hedge's worker bound) or that is new is built anew. A set whose policies,
their order or the pipeline's clock and listeners changed gets a new pipeline, swapped
into the set's own with :meth:`~resilience.Pipeline.replace` at commit: adapters keep the
pipeline object they hold. Building may fail (a storage URI that does not work): then
nothing is committed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..events import Listener
from ..pipeline import Pipeline
from ..policies.budget import RetryBudget
from ..policies.bulkhead import Bulkhead
from ..policies.circuit_breaker import CircuitBreaker
from ..policies.concurrency import ConcurrencyLimit
from ..policies.fallback import Fallback
from ..policies.fault import FaultInjection
from ..policies.hedge import Hedge
from ..policies.rate_limit import RateLimit
from ..policies.retry import Retry
from ..policies.throttle import AdaptiveThrottle
from ..policies.timeout import Timeout
from ..policies.token_bucket import TokenBucket
from ..policy import Policy
from .schema_policies import PolicySetSection

__all__ = ["BuiltSet", "SetsPlan", "build_policy", "plan_sets"]

Shell = tuple[Clock, tuple[Listener, ...]]
"""What every pipeline of a set-up shares: the clock and the listeners."""


def _budget(section: Any) -> RetryBudget | None:
    return RetryBudget(options=section.options()) if section is not None else None


def build_policy(kind: str, section: Any, clock: Clock) -> Policy:
    """A new policy of ``kind`` from its section."""
    name = section.name
    if kind in ("timeout", "attempt_timeout"):
        return Timeout(options=section.options(), name=name or ("attempt_timeout" if kind != "timeout" else None))
    if kind == "retry":
        return Retry(options=section.options(), budget=_budget(section.budget), name=name)
    if kind == "hedge":
        return Hedge(options=section.options(), budget=_budget(section.budget), max_workers=section.max_workers,
                     name=name)  # fmt: skip
    if kind == "fallback":
        return Fallback(options=section.options(), name=name)
    if kind == "circuit_breaker":
        return CircuitBreaker(options=section.options(), clock=clock, name=name)
    if kind == "adaptive_throttle":
        return AdaptiveThrottle(options=section.options(), name=name)
    if kind == "rate_limit":
        return RateLimit(
            options=section.options(),
            storage=section.storage,
            async_storage=section.async_storage,
            storage_options=dict(section.storage_options) or None,
            name=name,
        )
    if kind == "token_bucket":
        return TokenBucket(options=section.options(), clock=clock, name=name)
    if kind == "bulkhead":
        return Bulkhead(options=section.options(), name=name)
    if kind == "concurrency_limit":
        return ConcurrencyLimit(options=section.options(), name=name)
    if kind == "fault_injection":
        return FaultInjection(options=section.options(), seed=section.seed, name=name)
    raise ValueError(f"unknown policy kind {kind!r}")


def _identity(kind: str, section: Any) -> tuple[Any, ...]:
    """What cannot change in place: a change of it builds a new policy."""
    if kind in ("retry", "hedge"):
        extra = (section.max_workers,) if kind == "hedge" else ()
        return (section.name, section.budget is None, *extra)
    if kind == "rate_limit":
        return (section.name, section.strategy, section.storage, section.async_storage, section.storage_options)
    if kind == "fault_injection":
        return (section.name, section.seed)
    return (section.name,)


@dataclass
class BuiltSet:
    """A policy set in force: its section, its policies by kind, and its pipeline (a stable object)."""

    name: str
    section: PolicySetSection
    policies: dict[str, Policy]
    pipeline: Pipeline


@dataclass
class SetsPlan:
    """What a new config does to the policy sets, built but not yet applied."""

    sets: dict[str, BuiltSet]
    steps: list[Callable[[], None]] = field(default_factory=list)
    retired: list[Policy] = field(default_factory=list)
    built: list[Policy] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    def commit(self) -> None:
        """Apply the reconfigurations and the pipeline swaps (nothing here is expected to fail)."""
        for step in self.steps:
            step()


def _reconfigure(policy: Any, options: Any) -> Callable[[], None]:
    return lambda: policy.reconfigure(options)


def _pipeline(policies: Sequence[Policy], shell: Shell) -> Pipeline:
    clock, listeners = shell
    return Pipeline(*policies, clock=clock, listeners=listeners)


def plan_sets(
    current: dict[str, BuiltSet], sections: dict[str, PolicySetSection], shell: Shell, shell_changed: bool
) -> SetsPlan:
    """The plan taking the sets ``current`` to ``sections`` (see the module doc).

    Raises:
        Exception: a policy could not be built (those built here are closed again).
    """
    plan = SetsPlan({})
    try:
        _plan(plan, current, sections, shell, shell_changed)
    except BaseException:
        close_policies(plan.built)
        raise
    return plan


def _plan(
    plan: SetsPlan,
    current: dict[str, BuiltSet],
    sections: dict[str, PolicySetSection],
    shell: Shell,
    shell_changed: bool,
) -> None:
    clock = shell[0]
    for name, section in sections.items():
        old = current.get(name)
        policies: dict[str, Policy] = {}
        structural = old is None or shell_changed or section.kinds() != old.section.kinds()
        for kind in section.kinds():
            new_section = section.section(kind)
            old_section = old.section.section(kind) if old is not None else None
            policy = old.policies.get(kind) if old is not None else None
            if (
                policy is not None
                and old_section is not None
                and _identity(kind, old_section) == _identity(kind, new_section)
            ):
                policies[kind] = policy
                if new_section != old_section:
                    plan.steps.append(_reconfigure(policy, new_section.options()))
                    budget = getattr(new_section, "budget", None)
                    if budget is not None and budget != old_section.budget:
                        plan.steps.append(_reconfigure(policy.budget, budget.options()))  # type: ignore[attr-defined]
                    plan.changes.append(f"policies.{name}.{kind}: reconfigured")
            else:
                policies[kind] = build_policy(kind, new_section, clock)
                plan.built.append(policies[kind])
                if policy is not None:
                    plan.retired.append(policy)
                structural = True
                plan.changes.append(f"policies.{name}.{kind}: {'rebuilt' if policy is not None else 'added'}")
        if old is not None:
            plan.retired.extend(p for k, p in old.policies.items() if k not in policies)
            plan.changes.extend(f"policies.{name}.{k}: removed" for k in old.policies if k not in policies)
        ordered = [policies[kind] for kind in section.kinds()]
        if old is None:
            pipeline = _pipeline(ordered, shell)
            plan.changes.append(f"policies.{name}: added")
        else:
            pipeline = old.pipeline
            if structural:
                fresh = _pipeline(ordered, shell)
                plan.steps.append(functools.partial(pipeline.replace, fresh))
        plan.sets[name] = BuiltSet(name, section, policies, pipeline)
    for name, old in current.items():
        if name not in sections:
            plan.retired.extend(old.policies.values())
            plan.changes.append(f"policies.{name}: removed")


def close_policies(policies: Sequence[Policy]) -> None:
    """Release what retired policies hold (a hedge's threads, a rate limit's storage)."""
    for policy in policies:
        close = getattr(policy, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # a storage that fails to close must not stop the others
                import logging

                logging.getLogger("resilience.config").exception("closing %r failed", policy)
