"""Config sections of the policies that send a call again: backoff, budget, retry, hedge; and the shared value types."""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator

from ..errors import RejectedError
from ..policies.backoff import Constant, DecorrelatedJitter, Exponential, ExponentialJitter, ExponentialPlusJitter
from ..policies.budget import RetryBudgetOptions
from ..policies.hedge import HedgeOptions
from ..policies.retry import RetryOptions
from ._fields import Section, opt
from .values import Bool, Duration, Float, Int, resolve_callable, resolve_exception

__all__ = [
    "BACKOFFS",
    "BackoffSection",
    "Built",
    "CallableRef",
    "ExceptionList",
    "HedgeSection",
    "PolicyName",
    "RetryBudgetSection",
    "RetrySection",
    "checked_options",
    "errors",
]

MAX_WAIT = threading.TIMEOUT_MAX
"""The longest duration that may become a wait or a timer (``threading.TIMEOUT_MAX``)."""


def _exception(name: str) -> str:
    resolve_exception(name)
    return name


def _rejection(name: str) -> str:
    resolve_exception(name, RejectedError)
    return name


def _callable(ref: str) -> str:
    resolve_callable(ref)
    return ref


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


ExceptionName = Annotated[str, AfterValidator(_exception)]
ExceptionList = Annotated[
    list[ExceptionName],
    BeforeValidator(_one_or_many),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
"""Exception classes by name: one, or a list (see :mod:`resilience.config.values`)."""

CallableRef = Annotated[str, AfterValidator(_callable)]
"""A function as ``package.module:name``."""

PolicyName = Annotated[str, Field(min_length=1, max_length=200)]


def errors(names: list[str], base: type[BaseException] = BaseException) -> Any:
    """Exception names as an options class takes them: the class, or a tuple of classes."""
    types = tuple(resolve_exception(n, base) for n in names)
    return types[0] if len(types) == 1 else types


def checked_options(section: Any) -> Any:
    """Build the section's options once, so that their own cross-field rules are checked too."""
    try:
        section.options()
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    return section


class Built(Section):
    """A section that stands for one object (a backoff curve, a limit algorithm), built to be checked."""

    def build(self) -> Any:
        raise NotImplementedError

    @model_validator(mode="after")
    def _check(self) -> Built:
        try:
            self.build()
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return self


class _Backoff(Built):
    pass


class ConstantBackoff(_Backoff):
    """The same delay every time."""

    kind: Literal["constant"]
    delay: Duration = opt(Constant, "delay", doc="seconds between attempts, >= 0", ge=0, le=MAX_WAIT)

    def build(self) -> Constant:
        return Constant(self.delay)


class ExponentialBackoff(_Backoff):
    """``base * multiplier ** (attempt - 1)``, capped; ``exponential_jitter`` draws uniformly below it (full jitter)."""

    kind: Literal["exponential", "exponential_jitter"]
    base: Duration = opt(Exponential, "base", doc="the first delay in seconds, > 0", gt=0)
    multiplier: Float = opt(Exponential, "multiplier", ge=1, le=1e6, doc="growth per attempt, >= 1")
    cap: Duration = opt(Exponential, "cap", doc="the largest delay in seconds, >= base", gt=0, le=MAX_WAIT)

    def build(self) -> Exponential:
        cls = ExponentialJitter if self.kind == "exponential_jitter" else Exponential
        return cls(self.base, self.multiplier, self.cap)


class ExponentialPlusJitterBackoff(_Backoff):
    """``base * multiplier ** (attempt - 1) + uniform(0, jitter)``, capped."""

    kind: Literal["exponential_plus_jitter"]
    base: Duration = opt(ExponentialPlusJitter, "base", doc="the first delay in seconds, > 0", gt=0)
    multiplier: Float = opt(ExponentialPlusJitter, "multiplier", ge=1, le=1e6, doc="growth per attempt, >= 1")
    cap: Duration = opt(ExponentialPlusJitter, "cap", doc="the largest delay, >= base", gt=0, le=MAX_WAIT)
    jitter: Duration = opt(ExponentialPlusJitter, "jitter", doc="the most noise added, >= 0", ge=0, le=MAX_WAIT)

    def build(self) -> ExponentialPlusJitter:
        return ExponentialPlusJitter(self.base, self.multiplier, self.cap, self.jitter)


class DecorrelatedJitterBackoff(_Backoff):
    """Uniform in ``[base, min(cap, 3 * previous)]``."""

    kind: Literal["decorrelated_jitter"]
    base: Duration = opt(DecorrelatedJitter, "base", doc="the smallest delay in seconds, > 0", gt=0)
    cap: Duration = opt(DecorrelatedJitter, "cap", doc="the largest delay, >= base", gt=0, le=MAX_WAIT)

    def build(self) -> DecorrelatedJitter:
        return DecorrelatedJitter(self.base, self.cap)


BACKOFFS: tuple[type[_Backoff], ...] = (
    ConstantBackoff,
    ExponentialBackoff,
    ExponentialPlusJitterBackoff,
    DecorrelatedJitterBackoff,
)

BackoffSection = Annotated[
    ConstantBackoff | ExponentialBackoff | ExponentialPlusJitterBackoff | DecorrelatedJitterBackoff,
    Field(discriminator="kind"),
]


class RetryBudgetSection(Section):
    """A retry budget: ``ratio`` of requests plus ``min_per_second`` retries over ``window``."""

    ratio: Float = opt(RetryBudgetOptions, "ratio", ge=0, le=1000)
    min_per_second: Float = opt(RetryBudgetOptions, "min_per_second", ge=0, le=1e9)
    window: Duration = opt(RetryBudgetOptions, "window", gt=0)

    def options(self) -> RetryBudgetOptions:
        return RetryBudgetOptions(ratio=self.ratio, min_per_second=self.min_per_second, window=self.window)

    _check = model_validator(mode="after")(checked_options)


def _no_budget(value: object) -> object:
    return None if value is False else value


_BUDGET_DOC = (
    "the retry budget: its settings, or null (or false) for none; default 20% of requests plus 10 retries "
    "per second over 10 s (a hedge's: 10% plus 1 per second)"
)


def _rejections(value: object) -> object:
    if isinstance(value, bool):
        return value
    names = _one_or_many(value)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"must be true, false, or rejection errors by name (CircuitOpenError...), got {value!r}")
    for name in names:
        _rejection(name)
    return names


Rejections = Annotated[
    Any,
    BeforeValidator(_rejections),
    WithJsonSchema(
        {"anyOf": [{"type": "boolean"}, {"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    ),
]


class RetrySection(Section):
    """:class:`~resilience.Retry`: try a failed call again."""

    attempts: Int = opt(RetryOptions, "attempts", ge=1, le=100)
    backoff: BackoffSection = opt(
        RetryOptions,
        "backoff",
        default=ExponentialBackoff(kind="exponential_jitter"),
        doc="the delay curve: {kind: constant | exponential | exponential_jitter | exponential_plus_jitter | "
        "decorrelated_jitter, ...} (default exponential_jitter from 0.1 s doubling to 10 s)",
    )
    retry_on: ExceptionList = opt(
        RetryOptions,
        "retry_on",
        default=["Exception"],
        doc="the errors that may be retried, by class name (ConnectionError, httpx.ConnectError...; default: all)",
    )
    retry_if_result: CallableRef | None = opt(
        RetryOptions, "retry_if_result", doc="a function module:name of a result, true to retry it (default: none)"
    )
    max_pushback: Duration = opt(RetryOptions, "max_pushback", ge=0, le=MAX_WAIT)
    retry_non_idempotent: Bool = opt(RetryOptions, "retry_non_idempotent")
    retry_rejections: Rejections = opt(
        RetryOptions,
        "retry_rejections",
        doc="the local rejections (an open circuit, a full bulkhead, a rate limit...: they reached no server) to "
        "try again, after their retry_after or the backoff: true (all), false (none, the default), or error "
        "names (RateLimitedError, CircuitOpenError...)",
    )
    budget: Annotated[RetryBudgetSection | None, BeforeValidator(_no_budget)] = Field(
        default_factory=RetryBudgetSection, description=_BUDGET_DOC
    )
    name: PolicyName | None = Field(default=None, description="the policy's name in events (default 'retry')")

    def options(self) -> RetryOptions:
        rejections = self.retry_rejections
        if isinstance(rejections, list):
            rejections = errors(rejections, RejectedError)
        return RetryOptions(
            attempts=self.attempts,
            backoff=self.backoff.build(),
            retry_on=errors(self.retry_on),
            retry_if_result=resolve_callable(self.retry_if_result) if self.retry_if_result else None,
            max_pushback=self.max_pushback,
            retry_non_idempotent=self.retry_non_idempotent,
            retry_rejections=rejections,
        )

    _check = model_validator(mode="after")(checked_options)


class HedgeSection(Section):
    """:class:`~resilience.Hedge`: another attempt when the first is slow."""

    delay: Duration | None = opt(HedgeOptions, "delay", ge=0, le=MAX_WAIT)
    percentile: Float | None = opt(HedgeOptions, "percentile", gt=0, lt=1)
    window: Int = opt(HedgeOptions, "window", ge=1, le=1_000_000)
    min_samples: Int | None = opt(HedgeOptions, "min_samples", ge=1)
    min_delay: Duration = opt(HedgeOptions, "min_delay", ge=0, le=MAX_WAIT)
    max_hedges: Int = opt(HedgeOptions, "max_hedges", ge=1, le=10)
    budget: Annotated[RetryBudgetSection | None, BeforeValidator(_no_budget)] = Field(
        default_factory=lambda: RetryBudgetSection(ratio=0.1, min_per_second=1.0), description=_BUDGET_DOC
    )
    max_workers: Int = Field(default=64, ge=1, le=10_000, description="the sync executor's thread bound")
    name: PolicyName | None = Field(default=None, description="the policy's name in events (default 'hedge')")

    def options(self) -> HedgeOptions:
        return HedgeOptions(
            delay=self.delay,
            percentile=self.percentile,
            window=self.window,
            min_samples=self.min_samples,
            min_delay=self.min_delay,
            max_hedges=self.max_hedges,
        )

    _check = model_validator(mode="after")(checked_options)
