"""Circuit breaker: stop calling a backend that keeps failing, then probe it back.

Three rooms: :mod:`.options` (what the breaker is told), :mod:`.states` (its states,
events, metrics and permits) and :mod:`.machine` (the state machine behind the permit
protocol; the shared executors run it).
"""

from .machine import CircuitBreaker
from .options import CircuitBreakerOptions
from .states import (
    CircuitMetrics,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
    SharedCircuitState,
)

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitMetrics",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "SharedCircuitState",
]
