"""Resilience policies for gRPC and HTTP clients: one core for sync and asyncio callers.

Compose policies in a :class:`Pipeline` (the first one given is the outermost) and run
calls through it, or let the adapters in the ``interceptors`` package do it for your
gRPC channels and httpx clients.
"""

from typing import TYPE_CHECKING

from .balancing import Balancer, NoEndpointError, RoundRobin
from .clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock, TimerHandle
from .context import CallContext
from .discovery import Discovery, Endpoint, StaticDiscovery, Subscription
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitError,
    DeadlineExceededError,
    IsolatedCircuitError,
    RateLimitedError,
    RejectedError,
    ResilienceError,
    RetryBudgetExhaustedError,
    ThrottledError,
)
from .events import (
    BulkheadRejected,
    Event,
    FallbackUsed,
    Listener,
    RetryGaveUp,
    RetryScheduled,
    TimeoutExpired,
    emit,
)
from .outcome import DEFAULT_CLASSIFIER, Classifier, Outcome
from .pipeline import Pipeline
from .policies import (
    AIMD,
    RATE_LIMIT_STRATEGIES,
    AdaptiveThrottle,
    Backoff,
    Bulkhead,
    CircuitBreaker,
    CircuitBreakerOptions,
    CircuitMetrics,
    CircuitPermit,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
    ConcurrencyLimit,
    ConcurrencyLimitRejected,
    ConcurrencyPermit,
    Constant,
    CountWindow,
    DecorrelatedJitter,
    Exponential,
    ExponentialJitter,
    Fallback,
    FallbackInput,
    FixedLimit,
    Gradient2,
    Hedge,
    HedgeAttemptFailed,
    HedgeStarted,
    HedgeWon,
    KeyFunc,
    LimitAlgorithm,
    LimitChanged,
    OutcomeWindow,
    RateLimit,
    RateLimitRejected,
    RateLimitStorageState,
    RateLimitWaited,
    Retry,
    RetryBudget,
    SharedCircuitState,
    ThrottleRejected,
    Timeout,
    TimeWindow,
    TokenBucket,
    compile_key,
    rejection_probability,
)
from .options import Options, Reconfigurable
from .permit import Gate, Permit, Rejection
from .policy import AsyncNext, Policy, SyncNext

__version__ = "0.1.0"

__all__ = [
    "AIMD",
    "DEFAULT_CLASSIFIER",
    "RATE_LIMIT_STRATEGIES",
    "SYSTEM_CLOCK",
    "AdaptiveThrottle",
    "AsyncNext",
    "AsyncRedisBreakerState",
    "Backoff",
    "Balancer",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadRejected",
    "CallContext",
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitMetrics",
    "CircuitOpenError",
    "CircuitPermit",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "Classifier",
    "Clock",
    "ConcurrencyLimit",
    "ConcurrencyLimitError",
    "ConcurrencyLimitRejected",
    "ConcurrencyPermit",
    "Constant",
    "CountWindow",
    "DeadlineExceededError",
    "DecorrelatedJitter",
    "Discovery",
    "Endpoint",
    "Event",
    "Exponential",
    "ExponentialJitter",
    "FakeClock",
    "Fallback",
    "FallbackInput",
    "FallbackUsed",
    "FixedLimit",
    "Gate",
    "Gradient2",
    "Hedge",
    "HedgeAttemptFailed",
    "HedgeStarted",
    "HedgeWon",
    "IsolatedCircuitError",
    "KeyFunc",
    "LimitAlgorithm",
    "LimitChanged",
    "Listener",
    "NoEndpointError",
    "Options",
    "Outcome",
    "OutcomeWindow",
    "Permit",
    "Pipeline",
    "Policy",
    "PyBreakerPolicy",
    "RateLimit",
    "RateLimitRejected",
    "RateLimitStorageState",
    "RateLimitWaited",
    "RateLimitedError",
    "Reconfigurable",
    "RedisBreakerState",
    "Rejection",
    "RejectedError",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhaustedError",
    "RetryGaveUp",
    "RetryScheduled",
    "RoundRobin",
    "SharedCircuitState",
    "StaticDiscovery",
    "Subscription",
    "SyncNext",
    "SystemClock",
    "ThrottleRejected",
    "ThrottledError",
    "TimeWindow",
    "Timeout",
    "TimeoutExpired",
    "TimerHandle",
    "TokenBucket",
    "compile_key",
    "emit",
    "rejection_probability",
]

# These need optional dependencies (pybreaker, redis): imported on first use.
_LAZY = {
    "PyBreakerPolicy": "resilience.policies.pybreaker_adapter",
    "RedisBreakerState": "resilience.shared.redis_breaker",
    "AsyncRedisBreakerState": "resilience.shared.redis_breaker",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'resilience' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .policies.pybreaker_adapter import PyBreakerPolicy
    from .shared.redis_breaker import AsyncRedisBreakerState, RedisBreakerState
