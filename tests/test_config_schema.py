"""The config schema covers every option of every options class, with the same defaults and ranges.

The schema is written by hand (it spells durations, exceptions and functions the way a file
can); these tests make it impossible for it to drift from the options classes it builds:
every dataclass field has a schema field, the defaults build the same options, and the
declared bounds are exactly where the options class starts refusing.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import pytest
from pydantic import BaseModel

import resilience
from resilience import (
    AIMD,
    AdaptiveThrottleOptions,
    BulkheadOptions,
    CircuitBreakerOptions,
    ConcurrencyLimitOptions,
    FallbackOptions,
    FaultInjectionOptions,
    FixedLimit,
    Gradient2,
    HedgeOptions,
    OutlierEjectionOptions,
    PeakEwmaOptions,
    RateLimitOptions,
    RetryBudgetOptions,
    RetryOptions,
    TimeoutOptions,
    TokenBucketOptions,
    ZonePreference,
)
from resilience.config import json_schema
from resilience.config.schema_adapters import (
    GRPC_CODES,
    GrpcMethodSection,
    HttpClassifierSection,
    HttpSection,
    RouteSection,
    TelemetrySection,
)
from resilience.config.schema_fault import FaultInjectionSection
from resilience.config.schema_gates import (
    AdaptiveThrottleSection,
    AIMDSection,
    BulkheadSection,
    CircuitBreakerSection,
    ConcurrencyLimitSection,
    FallbackSection,
    FixedLimitSection,
    Gradient2Section,
    RateLimitSection,
    TimeoutSection,
    TokenBucketSection,
)
from resilience.config.schema_policies import POLICY_ORDER, PolicySetSection
from resilience.config.schema_retry import (
    ConstantBackoff,
    DecorrelatedJitterBackoff,
    ExponentialBackoff,
    ExponentialPlusJitterBackoff,
    HedgeSection,
    RetryBudgetSection,
    RetrySection,
)
from resilience.config.schema_services import EjectionSection, PeakEwmaSection, ZoneSection
from resilience.options import Options
from resilience.policies.backoff import Constant, DecorrelatedJitter, Exponential, ExponentialPlusJitter
from resilience.policies.limit_algorithms import LimitAlgorithm

# options class -> (its section, the required values, section fields that are not options)
COVERED: dict[type, tuple[type[BaseModel], dict[str, Any], set[str]]] = {
    RetryOptions: (RetrySection, {}, {"budget", "name"}),
    RetryBudgetOptions: (RetryBudgetSection, {}, set()),
    HedgeOptions: (HedgeSection, {}, {"budget", "max_workers", "name"}),
    TimeoutOptions: (TimeoutSection, {"seconds": 2.0}, {"name"}),
    FallbackOptions: (FallbackSection, {"value": "cached"}, {"name"}),
    BulkheadOptions: (BulkheadSection, {"max_concurrent": 8}, {"name"}),
    CircuitBreakerOptions: (CircuitBreakerSection, {}, {"name"}),
    AdaptiveThrottleOptions: (AdaptiveThrottleSection, {}, {"name"}),
    RateLimitOptions: (
        RateLimitSection,
        {"rate": "10/second"},
        {"storage", "async_storage", "storage_options", "name"},
    ),
    TokenBucketOptions: (TokenBucketSection, {"rate": 5.0}, {"name"}),
    ConcurrencyLimitOptions: (ConcurrencyLimitSection, {}, {"name"}),
    FixedLimit: (FixedLimitSection, {"kind": "fixed", "limit": 7}, {"kind"}),
    AIMD: (AIMDSection, {"kind": "aimd"}, {"kind"}),
    Gradient2: (Gradient2Section, {"kind": "gradient2"}, {"kind"}),
    PeakEwmaOptions: (PeakEwmaSection, {"kind": "peak_ewma"}, {"kind"}),
    OutlierEjectionOptions: (EjectionSection, {}, set()),
    ZonePreference: (ZoneSection, {"zone": "eu-1"}, set()),
    FaultInjectionOptions: (FaultInjectionSection, {"delay": 0.5}, {"seed", "name"}),
}

BACKOFFS = {
    Constant: (ConstantBackoff, "constant"),
    Exponential: (ExponentialBackoff, "exponential"),
    ExponentialPlusJitter: (ExponentialPlusJitterBackoff, "exponential_plus_jitter"),
    DecorrelatedJitter: (DecorrelatedJitterBackoff, "decorrelated_jitter"),
}


def _option_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _all_options_classes() -> set[type]:
    found: set[type] = set()
    pending = [Options]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            ours = sub.__module__.startswith("resilience.")
            if dataclasses.is_dataclass(sub) and ours and not inspect.isabstract(sub):
                found.add(sub)
    return found


def test_every_options_class_of_the_library_has_a_section() -> None:
    import resilience.balancing
    import resilience.policies

    assert resilience.balancing and resilience.policies  # every options class is imported

    missing = {cls.__qualname__ for cls in _all_options_classes()} - {cls.__qualname__ for cls in COVERED}
    assert not missing, f"options classes without a config section: {sorted(missing)}"
    assert LimitAlgorithm not in COVERED


@pytest.mark.parametrize("options_cls", list(COVERED), ids=lambda c: c.__name__)
def test_every_option_is_a_field_of_its_section(options_cls: type) -> None:
    section, _, extra = COVERED[options_cls]
    fields = set(section.model_fields)
    assert set(_option_fields(options_cls)) <= fields, set(_option_fields(options_cls)) - fields
    assert fields - set(_option_fields(options_cls)) == extra


@pytest.mark.parametrize("options_cls", list(COVERED), ids=lambda c: c.__name__)
def test_section_defaults_build_the_options_defaults(options_cls: type) -> None:
    section_cls, required, _ = COVERED[options_cls]
    section = section_cls.model_validate(required)
    built = section.options() if hasattr(section, "options") else section.build()  # type: ignore[attr-defined]
    plain = {k: v for k, v in required.items() if k != "kind"}
    assert repr(built) == repr(options_cls(**plain))


@pytest.mark.parametrize("backoff_cls", list(BACKOFFS), ids=lambda c: c.__name__)
def test_backoff_sections_match_their_classes(backoff_cls: type) -> None:
    section_cls, kind = BACKOFFS[backoff_cls]
    parameters = set(inspect.signature(backoff_cls).parameters)
    assert set(section_cls.model_fields) - {"kind"} == parameters
    assert repr(section_cls(kind=kind).build()) == repr(backoff_cls())
    assert repr(RetrySection().options().backoff) == repr(RetryOptions().backoff)


def _bounds(field: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for meta in field.metadata:
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(meta, key, None)
            if value is not None:
                out[key] = value
    return out


# Bounds that another option also limits (checked by the options class, not the schema).
_CROSS = {
    (AIMD, "min_limit", "le"),
    (AIMD, "initial_limit", "le"),
    (Gradient2, "min_limit", "le"),
    (Gradient2, "initial_limit", "le"),
    (AIMD, "max_limit", "ge"),
    (Gradient2, "max_limit", "ge"),
    (CircuitBreakerOptions, "window_duration", "gt"),
    (AdaptiveThrottleOptions, "window", "gt"),
    (RetryBudgetOptions, "window", "gt"),
    (ZonePreference, "zone", "ge"),
}
# What a field needs beside it to be valid at all.
_CONTEXT: dict[tuple[type, str], dict[str, Any]] = {
    (CircuitBreakerOptions, "failure_rate"): {"window_size": 1_000_000},
    (CircuitBreakerOptions, "minimum_calls"): {"window_size": 1_000_000},
    (CircuitBreakerOptions, "slow_call_duration"): {"window_size": 100},
    (CircuitBreakerOptions, "window_size"): {},
    (HedgeOptions, "min_samples"): {"window": 1_000_000},
    (OutlierEjectionOptions, "base_ejection_time"): {"max_ejection_time": 1e12},
    (OutlierEjectionOptions, "max_ejection_time"): {"base_ejection_time": 1e-13},
}


def _build(options_cls: type, required: dict[str, Any], name: str, value: Any) -> Any:
    kwargs = {k: v for k, v in required.items() if k != "kind"}
    kwargs.update(_CONTEXT.get((options_cls, name), {}))
    kwargs[name] = value
    if options_cls is CircuitBreakerOptions and name in ("max_break_duration",):
        kwargs["break_duration"] = min(1.0, value) if value > 0 else 1.0
    return options_cls(**kwargs)


def _cases() -> list[tuple[type, str, str, float]]:
    cases = []
    for options_cls, (section, _, _) in COVERED.items():
        for name in _option_fields(options_cls):
            for key, bound in _bounds(section.model_fields[name]).items():
                if (options_cls, name, key) not in _CROSS:
                    cases.append((options_cls, name, key, bound))
    return cases


def _case_id(value: object) -> str:
    return str(getattr(value, "__name__", value))


@pytest.mark.parametrize(("options_cls", "name", "key", "bound"), _cases(), ids=_case_id)
def test_declared_bounds_are_where_the_options_class_refuses(
    options_cls: type, name: str, key: str, bound: float
) -> None:
    section, required, _ = COVERED[options_cls]
    annotation = str(section.model_fields[name].annotation)
    integral = "int" in annotation and "float" not in annotation
    step = 1 if integral else max(abs(bound) * 1e-9, 1e-12)
    inside = {"ge": bound, "le": bound, "gt": bound + step, "lt": bound - step}[key]
    outside = {"ge": bound - step, "le": bound + step, "gt": bound, "lt": bound}[key]
    if integral:
        inside, outside = int(inside), int(outside)
    _build(options_cls, required, name, inside)
    with pytest.raises(ValueError):
        _build(options_cls, required, name, outside)
    assert math.isfinite(bound)


def test_policy_set_has_one_field_per_kind_in_the_readme_order() -> None:
    assert set(PolicySetSection.model_fields) == {*POLICY_ORDER, "order"}
    assert POLICY_ORDER.index("timeout") < POLICY_ORDER.index("retry") < POLICY_ORDER.index("hedge")
    assert POLICY_ORDER.index("hedge") < POLICY_ORDER.index("circuit_breaker") < POLICY_ORDER.index("rate_limit")
    assert POLICY_ORDER.index("rate_limit") < POLICY_ORDER.index("bulkhead") < POLICY_ORDER.index("attempt_timeout")
    assert POLICY_ORDER[0] == "fallback" and POLICY_ORDER[-2:] == ("attempt_timeout", "fault_injection")


def test_adapter_sections_cover_the_adapters_settings() -> None:
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("httpx")
    from interceptors._grpc_common import MethodPolicy
    from interceptors._httpx_classify import HttpxClassifier
    from interceptors._httpx_routes import IDEMPOTENT_METHODS, Route
    from interceptors.httpx import ResilientTransport

    method_fields = {f.name for f in dataclasses.fields(MethodPolicy)} - {"pipeline"}
    assert method_fields | {"policy"} == set(GrpcMethodSection.model_fields)
    route_fields = {f.name for f in dataclasses.fields(Route) if f.init}
    assert route_fields - {"host"} <= set(RouteSection.model_fields)  # the host is the key of http.hosts
    assert set(inspect.signature(HttpxClassifier).parameters) == set(HttpClassifierSection.model_fields)
    transport = set(inspect.signature(ResilientTransport).parameters)
    # Built from other sections (policies, routes, discovery) or code-only (factories, inner).
    built_elsewhere = {"pipeline", "policies", "routes", "discovery", "inner", "endpoint_transport", "endpoint_health"}
    assert transport - built_elsewhere <= set(HttpSection.model_fields)
    assert tuple(code.name for code in grpc.StatusCode) == GRPC_CODES
    assert set(HttpSection().idempotent_methods) == set(IDEMPOTENT_METHODS)
    assert HttpClassifierSection().drain_limit == inspect.signature(HttpxClassifier).parameters["drain_limit"].default


def test_telemetry_section_matches_the_configure_keywords() -> None:
    section = TelemetrySection.model_validate({"enabled": True, "service_name": "shop", "sample_ratio": 0.25})
    assert section.settings() == {
        "enabled": True,
        "service_name": "shop",
        "otlp_endpoint": None,
        "redact_query_params": (),
        "sample_ratio": 0.25,
    }
    try:
        from resilience.telemetry import configure
    except ImportError:
        return
    assert set(inspect.signature(configure).parameters) >= set(section.settings())


def test_json_schema_describes_defaults_and_ranges() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    retry = defs["RetrySection"]["properties"]
    assert retry["attempts"]["minimum"] == 1 and retry["attempts"]["maximum"] == 100
    assert retry["attempts"]["default"] == 3
    pushback = retry["max_pushback"]
    assert {"type": "string"}.items() <= pushback["anyOf"][1].items()
    assert pushback["anyOf"][0]["minimum"] == 0
    assert "description" in retry["attempts"] and retry["attempts"]["description"]
    assert schema["additionalProperties"] is False
    breaker = defs["CircuitBreakerSection"]["properties"]["failure_rate"]
    assert breaker["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    assert not keys(schema) & {"ge", "gt", "le", "lt"} - set(defs)  # JSON Schema's names for bounds only
    assert resilience.__name__ == "resilience"
