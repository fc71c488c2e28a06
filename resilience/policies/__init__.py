"""The policies, one per module (the circuit breaker and the hedge are packages of rooms)."""

from .backoff import Backoff, Constant, DecorrelatedJitter, Exponential, ExponentialJitter, ExponentialPlusJitter
from .budget import RetryBudget, RetryBudgetOptions
from .bulkhead import Bulkhead, BulkheadOptions
from .circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerOptions,
    CircuitMetrics,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
    SharedCircuitState,
)
from .concurrency import (
    AIMD,
    ConcurrencyLimit,
    ConcurrencyLimitOptions,
    ConcurrencyLimitRejected,
    FixedLimit,
    Gradient2,
    LimitAlgorithm,
    LimitChanged,
    LimitState,
)
from .fallback import Fallback, FallbackInput, FallbackOptions
from .fault import FaultInjection, FaultInjectionOptions
from .hedge import Hedge, HedgeAttemptFailed, HedgeOptions, HedgeStarted, HedgeWon
from .rate_limit import (
    RATE_LIMIT_STRATEGIES,
    RateLimit,
    RateLimitOptions,
    RateLimitRejected,
    RateLimitStorageState,
    RateLimitWaited,
)
from .retry import Retry, RetryOptions
from .throttle import AdaptiveThrottle, AdaptiveThrottleOptions, ThrottleRejected
from .timeout import Timeout, TimeoutOptions
from .token_bucket import KeyFunc, TokenBucket, TokenBucketOptions

__all__ = [
    "AIMD",
    "RATE_LIMIT_STRATEGIES",
    "AdaptiveThrottle",
    "AdaptiveThrottleOptions",
    "Backoff",
    "Bulkhead",
    "BulkheadOptions",
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitMetrics",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "ConcurrencyLimit",
    "ConcurrencyLimitOptions",
    "ConcurrencyLimitRejected",
    "Constant",
    "DecorrelatedJitter",
    "Exponential",
    "ExponentialJitter",
    "ExponentialPlusJitter",
    "Fallback",
    "FallbackInput",
    "FallbackOptions",
    "FaultInjection",
    "FaultInjectionOptions",
    "FixedLimit",
    "Gradient2",
    "Hedge",
    "HedgeAttemptFailed",
    "HedgeOptions",
    "HedgeStarted",
    "HedgeWon",
    "KeyFunc",
    "LimitAlgorithm",
    "LimitChanged",
    "LimitState",
    "RateLimit",
    "RateLimitOptions",
    "RateLimitRejected",
    "RateLimitStorageState",
    "RateLimitWaited",
    "Retry",
    "RetryBudget",
    "RetryBudgetOptions",
    "RetryOptions",
    "SharedCircuitState",
    "ThrottleRejected",
    "Timeout",
    "TimeoutOptions",
    "TokenBucket",
    "TokenBucketOptions",
]
