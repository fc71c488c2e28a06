"""Resilience policies for gRPC and HTTP clients: one core for sync, asyncio and trio callers.

Compose policies in a :class:`Pipeline` (the first one given is the outermost) and run
calls through it, or let the adapters in the ``interceptors`` package do it for your
gRPC channels and httpx clients.

``__all__`` is what users need: the policies and their options, the errors and events,
:class:`Pipeline`, :class:`FakeClock`, and the protocols of permits, discovery and
balancing. Policies that need an optional dependency (``PyBreakerPolicy`` needs
pybreaker; ``RedisBreakerState`` and ``AsyncRedisBreakerState`` need redis) are imported
on first use, ``resilience.PyBreakerPolicy``, and are not in ``__all__``, so that
``from resilience import *`` works with no extra installed.
"""

from typing import TYPE_CHECKING

# The one source of the version: pyproject.toml reads it (setuptools dynamic metadata), so do
# the CLI and the telemetry scope. Set before the imports below, so a module they load can use it.
__version__ = "0.1.0"

from .balancing import (
    Balancer,
    EndpointPool,
    EndpointState,
    NoEndpointError,
    OutlierEjection,
    OutlierEjectionOptions,
    OutlierTracker,
    PeakEwma,
    PeakEwmaOptions,
    RoundRobin,
    Selection,
    WeightedRoundRobin,
    ZonePreference,
)
from .clock import Clock, FakeClock, SystemClock, TimerHandle
from .context import CallContext
from .discovery import (
    BaseDiscovery,
    Discovery,
    DiscoveryFactory,
    Endpoint,
    LoopCallback,
    StaticDiscovery,
    Subscription,
    discovery_from_uri,
    in_loop,
    known_schemes,
    register_scheme,
    subscribe_in_loop,
    unregister_scheme,
)
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
    AttemptEnded,
    AttemptStarted,
    BulkheadRejected,
    CallEnded,
    CallListener,
    CallStarted,
    EndpointEjected,
    EndpointReturned,
    Event,
    FallbackUsed,
    Listener,
    RetryGaveUp,
    RetryScheduled,
    TimeoutExpired,
)
from .options import Options, Reconfigurable
from .outcome import Classifier, Outcome, Pending, error_outcome, is_cancellation
from .permit import Gate, Permit, Rejection
from .pipeline import Pipeline
from .policies import (
    AIMD,
    RATE_LIMIT_STRATEGIES,
    AdaptiveThrottle,
    AdaptiveThrottleOptions,
    Backoff,
    Bulkhead,
    BulkheadOptions,
    CircuitBreaker,
    CircuitBreakerOptions,
    CircuitMetrics,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
    ConcurrencyLimit,
    ConcurrencyLimitOptions,
    ConcurrencyLimitRejected,
    Constant,
    DecorrelatedJitter,
    Exponential,
    ExponentialJitter,
    ExponentialPlusJitter,
    Fallback,
    FallbackInput,
    FallbackOptions,
    FaultInjection,
    FaultInjectionOptions,
    FixedLimit,
    Gradient2,
    Hedge,
    HedgeAttemptFailed,
    HedgeOptions,
    HedgeStarted,
    HedgeWon,
    KeyFunc,
    LimitAlgorithm,
    LimitChanged,
    LimitState,
    RateLimit,
    RateLimitOptions,
    RateLimitRejected,
    RateLimitStorageState,
    RateLimitWaited,
    Retry,
    RetryBudget,
    RetryBudgetOptions,
    RetryOptions,
    SharedCircuitState,
    ThrottleRejected,
    Timeout,
    TimeoutOptions,
    TokenBucket,
    TokenBucketOptions,
)
from .policy import Policy

__all__ = [
    "AIMD",
    "RATE_LIMIT_STRATEGIES",
    "AdaptiveThrottle",
    "AdaptiveThrottleOptions",
    "AttemptEnded",
    "AttemptStarted",
    "Backoff",
    "Balancer",
    "BaseDiscovery",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadOptions",
    "BulkheadRejected",
    "CallContext",
    "CallEnded",
    "CallListener",
    "CallStarted",
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitMetrics",
    "CircuitOpenError",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "Classifier",
    "Clock",
    "ConcurrencyLimit",
    "ConcurrencyLimitError",
    "ConcurrencyLimitOptions",
    "ConcurrencyLimitRejected",
    "Constant",
    "DeadlineExceededError",
    "DecorrelatedJitter",
    "Discovery",
    "DiscoveryFactory",
    "Endpoint",
    "EndpointEjected",
    "EndpointPool",
    "EndpointReturned",
    "EndpointState",
    "Event",
    "Exponential",
    "ExponentialJitter",
    "ExponentialPlusJitter",
    "FakeClock",
    "Fallback",
    "FallbackInput",
    "FallbackOptions",
    "FallbackUsed",
    "FaultInjection",
    "FaultInjectionOptions",
    "FixedLimit",
    "Gate",
    "Gradient2",
    "Hedge",
    "HedgeAttemptFailed",
    "HedgeOptions",
    "HedgeStarted",
    "HedgeWon",
    "IsolatedCircuitError",
    "KeyFunc",
    "LimitAlgorithm",
    "LimitChanged",
    "LimitState",
    "Listener",
    "LoopCallback",
    "NoEndpointError",
    "Options",
    "Outcome",
    "OutlierEjection",
    "OutlierEjectionOptions",
    "OutlierTracker",
    "PeakEwma",
    "PeakEwmaOptions",
    "Pending",
    "Permit",
    "Pipeline",
    "Policy",
    "RateLimit",
    "RateLimitOptions",
    "RateLimitRejected",
    "RateLimitStorageState",
    "RateLimitWaited",
    "RateLimitedError",
    "Reconfigurable",
    "RejectedError",
    "Rejection",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhaustedError",
    "RetryBudgetOptions",
    "RetryGaveUp",
    "RetryOptions",
    "RetryScheduled",
    "RoundRobin",
    "Selection",
    "SharedCircuitState",
    "StaticDiscovery",
    "Subscription",
    "SystemClock",
    "ThrottleRejected",
    "ThrottledError",
    "Timeout",
    "TimeoutExpired",
    "TimeoutOptions",
    "TimerHandle",
    "TokenBucket",
    "TokenBucketOptions",
    "WeightedRoundRobin",
    "ZonePreference",
    "discovery_from_uri",
    "error_outcome",
    "in_loop",
    "is_cancellation",
    "known_schemes",
    "register_scheme",
    "subscribe_in_loop",
    "unregister_scheme",
]

# These need optional dependencies (pybreaker, redis): imported on first use, and kept out
# of ``__all__`` so that a star import needs neither.
_LAZY = {
    "PyBreakerPolicy": "resilience.policies.pybreaker_adapter",
    "RedisBreakerState": "resilience.shared.redis_breaker",
    "AsyncRedisBreakerState": "resilience.shared.redis_breaker",
    # etcd discovery and registration need httpx
    "AsyncEtcdClient": "resilience.discovery.etcd",
    "AsyncRegistrator": "resilience.discovery.registration",
    "EtcdAuthError": "resilience.discovery.etcd",
    "EtcdClient": "resilience.discovery.etcd",
    "EtcdConfig": "resilience.discovery.etcd",
    "EtcdDiscovery": "resilience.discovery.etcd",
    "EtcdError": "resilience.discovery.etcd",
    "EtcdUnavailableError": "resilience.discovery.etcd",
    "Registrator": "resilience.discovery.registration",
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
    from .discovery.etcd import AsyncEtcdClient as AsyncEtcdClient
    from .discovery.etcd import EtcdAuthError as EtcdAuthError
    from .discovery.etcd import EtcdClient as EtcdClient
    from .discovery.etcd import EtcdConfig as EtcdConfig
    from .discovery.etcd import EtcdDiscovery as EtcdDiscovery
    from .discovery.etcd import EtcdError as EtcdError
    from .discovery.etcd import EtcdUnavailableError as EtcdUnavailableError
    from .discovery.registration import AsyncRegistrator as AsyncRegistrator
    from .discovery.registration import Registrator as Registrator
    from .policies.pybreaker_adapter import PyBreakerPolicy as PyBreakerPolicy
    from .shared.redis_breaker import AsyncRedisBreakerState as AsyncRedisBreakerState
    from .shared.redis_breaker import RedisBreakerState as RedisBreakerState
