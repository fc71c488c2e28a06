"""The policies, one per module."""

from .backoff import Backoff, Constant, DecorrelatedJitter, Exponential, ExponentialJitter
from .budget import RetryBudget
from .bulkhead import Bulkhead
from .fallback import Fallback, FallbackInput
from .retry import Retry
from .timeout import Timeout

__all__ = [
    "Backoff",
    "Bulkhead",
    "Constant",
    "DecorrelatedJitter",
    "Exponential",
    "ExponentialJitter",
    "Fallback",
    "FallbackInput",
    "Retry",
    "RetryBudget",
    "Timeout",
]
