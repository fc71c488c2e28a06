"""A named policy set: the policies of one pipeline, in the README's order or an explicit one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ._fields import Section
from .schema_fault import FaultInjectionSection
from .schema_gates import (
    AdaptiveThrottleSection,
    BulkheadSection,
    CircuitBreakerSection,
    ConcurrencyLimitSection,
    FallbackSection,
    RateLimitSection,
    TimeoutSection,
    TokenBucketSection,
)
from .schema_retry import HedgeSection, RetrySection

__all__ = ["POLICY_ORDER", "PolicyKind", "PolicySetSection"]

POLICY_ORDER = (
    "fallback",
    "timeout",
    "retry",
    "hedge",
    "circuit_breaker",
    "adaptive_throttle",
    "rate_limit",
    "token_bucket",
    "bulkhead",
    "concurrency_limit",
    "attempt_timeout",
    "fault_injection",
)
"""The order a set's policies take, outermost first, unless the set gives ``order``: the
README's "Policy order" (``timeout`` bounds the whole call, ``attempt_timeout`` each attempt;
``fault_injection``, innermost, stands for the backend)."""

PolicyKind = Literal[
    "fallback",
    "timeout",
    "retry",
    "hedge",
    "circuit_breaker",
    "adaptive_throttle",
    "rate_limit",
    "token_bucket",
    "bulkhead",
    "concurrency_limit",
    "attempt_timeout",
    "fault_injection",
]


class PolicySetSection(Section):
    """The policies of one pipeline. Each is optional; they are applied outermost first in the
    order ``fallback, timeout, retry, hedge, circuit_breaker, adaptive_throttle, rate_limit,
    token_bucket, bulkhead, concurrency_limit, attempt_timeout, fault_injection``, or in ``order`` when given."""

    fallback: FallbackSection | None = Field(default=None, description="the answer of last resort (outermost)")
    timeout: TimeoutSection | None = Field(default=None, description="a deadline over the whole call, retries included")
    retry: RetrySection | None = Field(default=None, description="try a failed call again")
    hedge: HedgeSection | None = Field(default=None, description="another attempt when the first is slow")
    circuit_breaker: CircuitBreakerSection | None = Field(default=None, description="stop calling a failing backend")
    adaptive_throttle: AdaptiveThrottleSection | None = Field(default=None, description="shed calls locally")
    rate_limit: RateLimitSection | None = Field(default=None, description="a window rate limit (limits)")
    token_bucket: TokenBucketSection | None = Field(default=None, description="a local token bucket")
    bulkhead: BulkheadSection | None = Field(default=None, description="bound the calls in flight")
    concurrency_limit: ConcurrencyLimitSection | None = Field(default=None, description="an adaptive bulkhead")
    attempt_timeout: TimeoutSection | None = Field(default=None, description="a deadline for each attempt")
    fault_injection: FaultInjectionSection | None = Field(
        default=None, description="inject faults for tests and drills (innermost: stands for the backend)"
    )
    order: list[PolicyKind] | None = Field(
        default=None, description="the policies of this set, outermost first (default: the order above)"
    )

    @model_validator(mode="after")
    def _check_order(self) -> PolicySetSection:
        if self.order is None:
            return self
        present = {kind for kind in POLICY_ORDER if getattr(self, kind) is not None}
        seen: set[str] = set()
        for kind in self.order:
            if kind in seen:
                raise ValueError(f"order names {kind!r} twice")
            seen.add(kind)
        missing = sorted(present - seen, key=POLICY_ORDER.index)
        extra = sorted(seen - present, key=POLICY_ORDER.index)
        if missing:
            raise ValueError(f"order leaves out {', '.join(missing)}, which this set configures")
        if extra:
            raise ValueError(f"order names {', '.join(extra)}, which this set does not configure")
        return self

    def kinds(self) -> tuple[str, ...]:
        """The kinds of policy in this set, outermost first."""
        if self.order is not None:
            return tuple(self.order)
        return tuple(kind for kind in POLICY_ORDER if getattr(self, kind) is not None)

    def section(self, kind: str) -> Any:
        """The section of ``kind`` (``None`` when absent)."""
        return getattr(self, kind)
