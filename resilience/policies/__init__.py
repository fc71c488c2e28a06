"""The policies, one per module."""

from .backoff import Backoff, Constant, DecorrelatedJitter, Exponential, ExponentialJitter
from .budget import RetryBudget
from .bulkhead import Bulkhead
from .circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerOptions,
    CircuitMetrics,
    CircuitPermit,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
    SharedCircuitState,
)
from .concurrency import (
    AIMD,
    ConcurrencyLimit,
    ConcurrencyLimitRejected,
    ConcurrencyPermit,
    FixedLimit,
    Gradient2,
    LimitAlgorithm,
    LimitChanged,
)
from .fallback import Fallback, FallbackInput
from .hedge import Hedge, HedgeAttemptFailed, HedgeStarted, HedgeWon
from .rate_limit import RATE_LIMIT_STRATEGIES, RateLimit, RateLimitStorageState
from .retry import Retry
from .throttle import AdaptiveThrottle, ThrottleRejected, rejection_probability
from .timeout import Timeout
from .token_bucket import KeyFunc, RateLimitRejected, RateLimitWaited, TokenBucket, compile_key
from .windows import CountWindow, OutcomeWindow, TimeWindow

__all__ = [
    "AIMD",
    "RATE_LIMIT_STRATEGIES",
    "AdaptiveThrottle",
    "Backoff",
    "Bulkhead",
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitMetrics",
    "CircuitPermit",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "ConcurrencyLimit",
    "ConcurrencyLimitRejected",
    "ConcurrencyPermit",
    "Constant",
    "CountWindow",
    "DecorrelatedJitter",
    "Exponential",
    "ExponentialJitter",
    "Fallback",
    "FallbackInput",
    "FixedLimit",
    "Gradient2",
    "Hedge",
    "HedgeAttemptFailed",
    "HedgeStarted",
    "HedgeWon",
    "KeyFunc",
    "LimitAlgorithm",
    "LimitChanged",
    "OutcomeWindow",
    "RateLimit",
    "RateLimitRejected",
    "RateLimitStorageState",
    "RateLimitWaited",
    "Retry",
    "RetryBudget",
    "SharedCircuitState",
    "ThrottleRejected",
    "TimeWindow",
    "Timeout",
    "TokenBucket",
    "compile_key",
    "rejection_probability",
]
