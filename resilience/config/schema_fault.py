"""The config section of :class:`~resilience.FaultInjection`: faults injected at a rate, switchable from config."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from ..policies.fault import _GRPC_CODE_NAMES, FaultInjectionOptions
from ._fields import Section, opt
from .schema_retry import CallableRef, ExceptionName, PolicyName, checked_options
from .values import Duration, Float, Int, resolve_callable, resolve_exception

__all__ = ["FaultInjectionSection"]


def _pair(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


DelaySpec = Annotated[Duration | tuple[Duration, Duration], BeforeValidator(_pair)]
GrpcCodeName = Literal[_GRPC_CODE_NAMES]  # type: ignore[valid-type]

_FI = FaultInjectionOptions


class FaultInjectionSection(Section):
    """:class:`~resilience.FaultInjection`: latency, an error, an HTTP status or a gRPC code at ``rate``."""

    rate: Float = opt(_FI, "rate", ge=0, le=1)
    delay: DelaySpec | None = opt(
        _FI,
        "delay",
        doc="latency added to a picked call: a duration, or [low, high] drawn uniformly (default: none)",
    )
    error: ExceptionName | None = opt(
        _FI, "error", doc="the exception class a picked call raises, by name (ConnectionError...; default: none)"
    )
    http_status: Int | None = opt(_FI, "http_status", ge=100, le=599)
    grpc_code: GrpcCodeName | None = opt(_FI, "grpc_code", doc="the gRPC status a picked call fails with, by name")
    result: CallableRef | None = opt(
        _FI, "result", doc="a function module:name of the call's context, whose value a picked call returns"
    )
    details: str = opt(_FI, "details")
    seed: Int | None = Field(default=None, description="seeds the policy's random generator, so a run replays")
    name: PolicyName | None = Field(
        default=None, description="the policy's name in messages (default: fault_injection)"
    )

    def options(self) -> FaultInjectionOptions:
        return FaultInjectionOptions(
            rate=self.rate,
            delay=self.delay,  # type: ignore[arg-type]  # seconds or a pair, as the options take it
            error=resolve_exception(self.error) if self.error is not None else None,
            http_status=self.http_status,
            grpc_code=self.grpc_code,
            result=resolve_callable(self.result) if self.result is not None else None,
            details=self.details,
        )

    _check = model_validator(mode="after")(checked_options)
