"""Resilience policies for gRPC and HTTP clients: one core for sync and asyncio callers.

Compose policies in a :class:`Pipeline` (the first one given is the outermost) and run
calls through it, or let the adapters in the ``interceptors`` package do it for your
gRPC channels and httpx clients.
"""

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
    Backoff,
    Bulkhead,
    Constant,
    DecorrelatedJitter,
    Exponential,
    ExponentialJitter,
    Fallback,
    FallbackInput,
    Retry,
    RetryBudget,
    Timeout,
)
from .policy import AsyncNext, Policy, SyncNext

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CLASSIFIER",
    "SYSTEM_CLOCK",
    "AsyncNext",
    "Backoff",
    "Balancer",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadRejected",
    "CallContext",
    "CircuitOpenError",
    "Classifier",
    "Clock",
    "ConcurrencyLimitError",
    "Constant",
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
    "IsolatedCircuitError",
    "Listener",
    "NoEndpointError",
    "Outcome",
    "Pipeline",
    "Policy",
    "RateLimitedError",
    "RejectedError",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhaustedError",
    "RetryGaveUp",
    "RetryScheduled",
    "RoundRobin",
    "StaticDiscovery",
    "Subscription",
    "SyncNext",
    "SystemClock",
    "ThrottledError",
    "Timeout",
    "TimeoutExpired",
    "TimerHandle",
    "emit",
]
