"""Config sections of the policies that admit or bound a call: timeouts, fallback, breaker, throttle, limits."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from ..policies.bulkhead import BulkheadOptions
from ..policies.circuit_breaker import CircuitBreakerOptions
from ..policies.concurrency import AIMD, ConcurrencyLimitOptions, FixedLimit, Gradient2
from ..policies.fallback import FallbackOptions
from ..policies.rate_limit import RATE_LIMIT_STRATEGIES, RateLimitOptions
from ..policies.throttle import AdaptiveThrottleOptions
from ..policies.timeout import TimeoutOptions
from ..policies.token_bucket import TokenBucketOptions
from ._fields import NO_DEFAULT, Section, opt
from .schema_retry import MAX_WAIT, Built, CallableRef, ExceptionList, PolicyName, checked_options, errors
from .values import Bool, Duration, Float, Int, parse_duration, resolve_callable

__all__ = [
    "AdaptiveThrottleSection",
    "BulkheadSection",
    "CircuitBreakerSection",
    "ConcurrencyLimitSection",
    "FallbackSection",
    "FunctionRef",
    "RateLimitSection",
    "TimeoutSection",
    "TokenBucketSection",
]

_NAME_DOC = "the policy's name in events (default: the policy's kind)"


class _Short(Section):
    """A section whose ``kind: value`` stands for ``kind: {<short>: value}``."""

    short: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        return value if isinstance(value, dict | Section) else {cls.short: value}


class FunctionRef(Section):
    """A function given where a value is expected: ``{callable: "package.module:name"}``."""

    callable: CallableRef = Field(description="the function, as package.module:name")

    def resolve(self) -> Any:
        return resolve_callable(self.callable)


class TimeoutSection(_Short):
    """:class:`~resilience.Timeout`; ``timeout: 2s`` stands for ``timeout: {seconds: 2s}``."""

    seconds: Duration = opt(TimeoutOptions, "seconds", gt=0, le=MAX_WAIT)
    name: PolicyName | None = Field(default=None, description=_NAME_DOC)

    short: ClassVar[str] = "seconds"

    def options(self) -> TimeoutOptions:
        return TimeoutOptions(self.seconds)


class FallbackSection(Section):
    """:class:`~resilience.Fallback`: give ``value`` (any JSON value) or ``handler``, not both."""

    value: Any = opt(FallbackOptions, "value", default=None)
    handler: CallableRef | None = opt(
        FallbackOptions, "handler", doc="a function module:name computing the answer from a FallbackInput (the error)"
    )
    on: ExceptionList = opt(
        FallbackOptions, "on", default=["Exception"], doc="the errors that trigger it, by class name (default: all)"
    )
    on_result: CallableRef | None = opt(
        FallbackOptions, "on_result", doc="a function module:name of a result, true to answer instead (default: none)"
    )
    name: PolicyName | None = Field(default=None, description=_NAME_DOC)

    def options(self) -> FallbackOptions:
        if ("value" in self.model_fields_set) == (self.handler is not None):
            raise ValueError("give exactly one of value and handler")
        handler = resolve_callable(self.handler) if self.handler is not None else None
        args: dict[str, Any] = {"value": self.value} if handler is None else {"handler": handler}
        return FallbackOptions(
            **args,
            on=errors(self.on),
            on_result=resolve_callable(self.on_result) if self.on_result else None,
        )

    _check = model_validator(mode="after")(checked_options)


class BulkheadSection(_Short):
    """:class:`~resilience.Bulkhead`; ``bulkhead: 32`` stands for ``{max_concurrent: 32}``."""

    max_concurrent: Int = opt(BulkheadOptions, "max_concurrent", ge=1, le=1_000_000)
    max_queue: Int = opt(BulkheadOptions, "max_queue", ge=0, le=1_000_000)
    max_wait: Duration | None = opt(BulkheadOptions, "max_wait", gt=0, le=MAX_WAIT)
    name: PolicyName | None = Field(default=None, description=_NAME_DOC)

    short: ClassVar[str] = "max_concurrent"

    def options(self) -> BulkheadOptions:
        return BulkheadOptions(self.max_concurrent, self.max_queue, self.max_wait)

    _check = model_validator(mode="after")(checked_options)


_CB = CircuitBreakerOptions


class CircuitBreakerSection(Section):
    """:class:`~resilience.CircuitBreaker`: consecutive failures, or rates over a count or time window."""

    failure_threshold: Int | None = opt(_CB, "failure_threshold", ge=1, le=1_000_000)
    window_size: Int | None = opt(_CB, "window_size", ge=1, le=1_000_000)
    window_duration: Duration | None = opt(_CB, "window_duration", gt=0)
    window_buckets: Int = opt(_CB, "window_buckets", ge=1, le=1000)
    failure_rate: Float | None = opt(_CB, "failure_rate", gt=0, le=1)
    minimum_calls: Int | None = opt(_CB, "minimum_calls", ge=1, le=1_000_000)
    slow_call_duration: Duration | None = opt(_CB, "slow_call_duration", gt=0)
    slow_call_rate: Float = opt(_CB, "slow_call_rate", gt=0, le=1)
    break_duration: Duration = opt(_CB, "break_duration", gt=0)
    break_multiplier: Float = opt(_CB, "break_multiplier", ge=1, le=1000)
    max_break_duration: Duration | None = opt(_CB, "max_break_duration", gt=0)
    half_open_max_calls: Int = opt(_CB, "half_open_max_calls", ge=1, le=10_000)
    half_open_max_wait: Duration = opt(_CB, "half_open_max_wait", gt=0, le=MAX_WAIT)
    success_threshold: Int = opt(_CB, "success_threshold", ge=1, le=10_000)
    failure_on: ExceptionList | None = opt(
        _CB,
        "failure_on",
        doc="the errors that are failures, by class name; others are successes (default: the classifier decides)",
    )
    failure_if_result: CallableRef | None = opt(
        _CB, "failure_if_result", doc="a function module:name of a result, true for a failure (default: none)"
    )
    name: PolicyName | None = Field(default=None, description=_NAME_DOC)

    def options(self) -> CircuitBreakerOptions:
        values = {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name not in ("failure_on", "failure_if_result", "name")
        }
        return CircuitBreakerOptions(
            **values,
            failure_on=errors(self.failure_on) if self.failure_on is not None else None,
            failure_if_result=resolve_callable(self.failure_if_result) if self.failure_if_result else None,
        )

    _check = model_validator(mode="after")(checked_options)


class AdaptiveThrottleSection(Section):
    """:class:`~resilience.AdaptiveThrottle`: client-side throttling from the SRE book."""

    k: Float = opt(AdaptiveThrottleOptions, "k", ge=1, le=1000)
    window: Duration = opt(AdaptiveThrottleOptions, "window", gt=0)
    buckets: Int = opt(AdaptiveThrottleOptions, "buckets", ge=1, le=10_000)
    name: PolicyName | None = Field(default=None, description=_NAME_DOC)

    def options(self) -> AdaptiveThrottleOptions:
        return AdaptiveThrottleOptions(k=self.k, window=self.window, buckets=self.buckets)

    _check = model_validator(mode="after")(checked_options)


def _rate(value: object) -> object:
    if isinstance(value, list | tuple) and len(value) == 2:
        return (value[0], parse_duration(value[1]))
    return value


Rate = Annotated[str | tuple[Int, Duration], BeforeValidator(_rate)]
Key = str | FunctionRef | None


def _key(value: str | FunctionRef | None) -> Any:
    return value.resolve() if isinstance(value, FunctionRef) else value


_RL = RateLimitOptions


class RateLimitSection(Section):
    """:class:`~resilience.RateLimit`: window limits from ``limits``, in memory or shared through Redis."""

    rate: Rate = opt(_RL, "rate", default=NO_DEFAULT)
    strategy: Literal["fixed-window", "moving-window", "sliding-window-counter"] = opt(_RL, "strategy")
    key: Key = opt(_RL, "key", doc="a key template ('{service}:{tenant}') or {callable: module:fn}; null: one limit")
    mode: Literal["reject", "wait"] = opt(_RL, "mode")
    max_wait: Duration | None = opt(_RL, "max_wait", gt=0, le=MAX_WAIT)
    fail_open: Bool = opt(_RL, "fail_open")
    storage_recheck: Duration = opt(_RL, "storage_recheck", gt=0)
    storage: str = Field(default="memory://", description="a limits storage URI (memory://, redis://host:6379/0)")
    async_storage: str | None = Field(default=None, description="the storage URI of asyncio callers")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="options of the storages made")
    name: PolicyName | None = Field(default=None, description="the policy's name in events and storage keys")

    def options(self) -> RateLimitOptions:
        assert tuple(RATE_LIMIT_STRATEGIES) == ("fixed-window", "moving-window", "sliding-window-counter")
        rate = self.rate if isinstance(self.rate, str) else (self.rate[0], self.rate[1])
        return RateLimitOptions(
            rate, self.strategy, _key(self.key), self.mode, self.max_wait, self.fail_open, self.storage_recheck
        )

    _check = model_validator(mode="after")(checked_options)


_TB = TokenBucketOptions


class TokenBucketSection(_Short):
    """:class:`~resilience.TokenBucket`: a local token bucket per key; ``token_bucket: 100`` is 100 per second."""

    rate: Float = opt(_TB, "rate", gt=0, le=1e9)
    burst: Int = opt(_TB, "burst", ge=1, le=1_000_000_000)
    key: Key = opt(_TB, "key", doc="a key template ('{service}:{tenant}') or {callable: module:fn}; null: one bucket")
    mode: Literal["reject", "wait"] = opt(_TB, "mode")
    max_wait: Duration | None = opt(_TB, "max_wait", gt=0, le=MAX_WAIT)
    max_keys: Int = opt(_TB, "max_keys", ge=1, le=10_000_000)
    name: PolicyName | None = Field(default=None, description=_NAME_DOC)

    short: ClassVar[str] = "rate"

    def options(self) -> TokenBucketOptions:
        return TokenBucketOptions(self.rate, self.burst, _key(self.key), self.mode, self.max_wait, self.max_keys)

    _check = model_validator(mode="after")(checked_options)


class FixedLimitSection(Built):
    """:class:`~resilience.FixedLimit`: a limit that never moves."""

    kind: Literal["fixed"]
    limit: Int = opt(FixedLimit, "limit", ge=1, le=1_000_000)

    def build(self) -> FixedLimit:
        return FixedLimit(self.limit)


class AIMDSection(Built):
    """:class:`~resilience.AIMD`: additive increase, multiplicative decrease."""

    kind: Literal["aimd"]
    initial_limit: Int = opt(AIMD, "initial_limit", ge=1, le=1_000_000)
    min_limit: Int = opt(AIMD, "min_limit", ge=1, le=1_000_000)
    max_limit: Int = opt(AIMD, "max_limit", ge=1, le=1_000_000)
    backoff_ratio: Float = opt(AIMD, "backoff_ratio", ge=0.5, lt=1)
    timeout: Duration | None = opt(AIMD, "timeout", gt=0)

    def build(self) -> AIMD:
        return AIMD(self.initial_limit, min_limit=self.min_limit, max_limit=self.max_limit,
                    backoff_ratio=self.backoff_ratio, timeout=self.timeout)  # fmt: skip


class Gradient2Section(Built):
    """:class:`~resilience.Gradient2`: follows the ratio of long-term to short-term latency."""

    kind: Literal["gradient2"]
    initial_limit: Int = opt(Gradient2, "initial_limit", ge=1, le=1_000_000)
    min_limit: Int = opt(Gradient2, "min_limit", ge=1, le=1_000_000)
    max_limit: Int = opt(Gradient2, "max_limit", ge=1, le=1_000_000)
    smoothing: Float = opt(Gradient2, "smoothing", gt=0, le=1)
    rtt_tolerance: Float = opt(Gradient2, "rtt_tolerance", ge=1, le=100)
    long_window: Int = opt(Gradient2, "long_window", ge=1, le=1_000_000)
    warmup: Int = opt(Gradient2, "warmup", ge=1, le=1_000_000)
    queue_size: Annotated[Float, Field(ge=0, le=1_000_000)] | FunctionRef = opt(Gradient2, "queue_size")

    def build(self) -> Gradient2:
        queue = self.queue_size.resolve() if isinstance(self.queue_size, FunctionRef) else self.queue_size
        return Gradient2(self.initial_limit, min_limit=self.min_limit, max_limit=self.max_limit,
                         smoothing=self.smoothing, rtt_tolerance=self.rtt_tolerance, long_window=self.long_window,
                         warmup=self.warmup, queue_size=queue)  # fmt: skip


def _algorithm(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"kind": "fixed", "limit": value}
    return value


Algorithm = Annotated[
    Annotated[FixedLimitSection | AIMDSection | Gradient2Section, Field(discriminator="kind")],
    BeforeValidator(_algorithm),
]


class ConcurrencyLimitSection(Section):
    """:class:`~resilience.ConcurrencyLimit`: an adaptive bulkhead; ``concurrency_limit: 50`` is a fixed limit."""

    algorithm: Algorithm = opt(
        ConcurrencyLimitOptions,
        "algorithm",
        default=AIMDSection(kind="aimd"),
        doc="how the limit moves: {kind: aimd | gradient2 | fixed, ...}, or an integer for a fixed limit "
        "(default aimd: from 20, within [1, 200])",
    )
    name: PolicyName | None = Field(default=None, description=_NAME_DOC)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: object) -> object:
        if isinstance(value, dict):
            return value
        return {"algorithm": value}

    def options(self) -> ConcurrencyLimitOptions:
        return ConcurrencyLimitOptions(self.algorithm.build())

    _check = model_validator(mode="after")(checked_options)
