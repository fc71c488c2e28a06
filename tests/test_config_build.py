"""From a config to policies and adapters: every option round-trips, sets follow the policy order,
and the adapters a Setup hands out apply the assignment, against real HTTP and gRPC servers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from resilience import (
    AIMD,
    AdaptiveThrottle,
    Bulkhead,
    CircuitBreaker,
    ConcurrencyLimit,
    Fallback,
    FaultInjection,
    FixedLimit,
    Gradient2,
    Hedge,
    OutlierEjectionOptions,
    PeakEwma,
    PeakEwmaOptions,
    RateLimit,
    RateLimitedError,
    Retry,
    RetryBudgetOptions,
    Timeout,
    TokenBucket,
    WeightedRoundRobin,
    ZonePreference,
)
from resilience.config import Setup, load
from resilience.config.schema_policies import POLICY_ORDER

from ._grpc_service import UNARY, Fault, Running, callables, start
from ._http_server import HttpServer, Reply


def is_bad(result: object) -> bool:
    return result == "bad"


def answer(data: object) -> str:
    return "fallback"


def tenant_key(ctx: object) -> str:
    return "tenant"


def queue_size(limit: float) -> float:
    return limit / 10


HERE = "tests.test_config_build"

EVERY_OPTION: dict[str, Any] = {
    "policies": {
        "a": {
            "fallback": {"handler": f"{HERE}:answer", "on": ["ValueError", "KeyError"], "on_result": f"{HERE}:is_bad"},
            "timeout": {"seconds": "7s", "name": "total"},
            "retry": {
                "attempts": 7,
                "backoff": {"kind": "exponential_plus_jitter", "base": "200ms", "multiplier": 3, "cap": "20s",
                            "jitter": "500ms"},
                "retry_on": ["ConnectionError", "TimeoutError"],
                "retry_if_result": f"{HERE}:is_bad",
                "max_pushback": "30s",
                "retry_non_idempotent": True,
                "retry_rejections": ["RateLimitedError"],
                "budget": {"ratio": 0.5, "min_per_second": 2, "window": "20s"},
                "name": "r",
            },
            "hedge": {"delay": "20ms", "percentile": 0.9, "window": 50, "min_samples": 5, "min_delay": "2ms",
                      "max_hedges": 2, "budget": {"ratio": 0.3}, "max_workers": 4},
            "circuit_breaker": {
                "window_duration": "30s", "window_buckets": 5, "failure_rate": 0.3, "minimum_calls": 7,
                "slow_call_duration": "2s", "slow_call_rate": 0.8, "break_duration": "10s", "break_multiplier": 2,
                "max_break_duration": "100s", "half_open_max_calls": 2, "half_open_max_wait": "20s",
                "success_threshold": 3, "failure_on": ["OSError"], "failure_if_result": f"{HERE}:is_bad",
            },
            "adaptive_throttle": {"k": 1.5, "window": "20s", "buckets": 20},
            "rate_limit": {"rate": "7/minute", "strategy": "fixed-window", "key": "{service}:{tenant}", "mode": "wait",
                           "max_wait": "1s", "fail_open": False, "storage_recheck": "5s", "name": "rl"},
            "token_bucket": {"rate": 50, "burst": 5, "key": {"callable": f"{HERE}:tenant_key"}, "mode": "wait",
                             "max_wait": "2s", "max_keys": 10},
            "bulkhead": {"max_concurrent": 9, "max_queue": 3, "max_wait": "250ms"},
            "concurrency_limit": {"algorithm": {"kind": "gradient2", "initial_limit": 30, "min_limit": 2,
                                                "max_limit": 300, "smoothing": 0.5, "rtt_tolerance": 2,
                                                "long_window": 100, "warmup": 5,
                                                "queue_size": {"callable": f"{HERE}:queue_size"}}},
            "attempt_timeout": "1500ms",
            "fault_injection": {"rate": 0.25, "delay": ["10ms", "50ms"], "error": "ConnectionError",
                                "details": "chaos", "seed": 7, "name": "chaos"},
        },
        "b": {
            "fallback": {"value": {"cached": True}},
            "circuit_breaker": {"failure_threshold": 9},
            "fault_injection": {"rate": 0.5, "http_status": 503},
            "concurrency_limit": {"algorithm": {"kind": "aimd", "initial_limit": 10, "min_limit": 2, "max_limit": 50,
                                                "backoff_ratio": 0.6, "timeout": "3s"}},
        },
        "d": {"fault_injection": {"rate": 1, "result": f"{HERE}:answer"}},
        "e": {"fault_injection": {"grpc_code": "UNAVAILABLE", "rate": "0.1"}},
        "c": {"circuit_breaker": {"window_size": 50}, "concurrency_limit": 12, "hedge": {"delay": None,
                                                                                     "percentile": 0.5}},
    },
    "services": {
        "p2c": {
            "discovery": ["127.0.0.1:1"],
            "balancer": {"kind": "peak_ewma", "decay": "5s", "probe_after": "2s", "probe_share": 0.1,
                         "unknown_penalty": 3, "failure_penalty": "2s",
                         "zone": {"zone": "eu-1", "min_healthy": 0.7, "refresh": "3s"}},
            "ejection": {"consecutive_failures": 3, "success_rate_stdev": 1.5, "failure_percentage": 50,
                         "latency_factor": 4, "min_hosts": 3, "min_requests": 20, "interval": "5s",
                         "base_ejection_time": "10s", "max_ejection_time": "60s", "max_ejection_percent": 40},
        },
        "wrr": {"discovery": ["127.0.0.1:2"], "balancer": {"kind": "weighted_round_robin", "zone": "eu-2"}},
    },
}  # fmt: skip


@pytest.fixture
def every_option() -> Iterator[Setup]:
    setup = load(EVERY_OPTION).setup()
    try:
        yield setup
    finally:
        setup.close()


def _by_type(setup: Setup, name: str) -> dict[type, Any]:
    return {type(p): p for p in setup.pipeline(name).policies}


def test_every_option_round_trips_into_its_policy(every_option: Setup) -> None:
    a = _by_type(every_option, "a")
    retry = a[Retry].options
    assert (retry.attempts, retry.max_pushback, retry.retry_non_idempotent) == (7, 30.0, True)
    assert repr(retry.backoff) == "ExponentialPlusJitter(base=0.2, multiplier=3.0, cap=20.0, jitter=0.5)"
    assert retry.retry_on == (ConnectionError, TimeoutError) and retry.retry_if_result is is_bad
    assert retry.retry_rejections is RateLimitedError
    assert a[Retry].name == "r" and a[Retry].budget.options == RetryBudgetOptions(0.5, 2.0, 20.0)
    hedge = a[Hedge]
    assert dataclasses.astuple(hedge.options) == (0.02, 0.9, 50, 5, 0.002, 2)
    assert hedge.max_workers == 4 and hedge.budget.options == RetryBudgetOptions(0.3, 10.0, 10.0)
    breaker = a[CircuitBreaker].options
    assert (breaker.window_duration, breaker.window_buckets, breaker.failure_rate, breaker.minimum_calls) == (
        30.0, 5, 0.3, 7)  # fmt: skip
    assert (breaker.slow_call_duration, breaker.slow_call_rate, breaker.break_duration) == (2.0, 0.8, 10.0)
    assert (breaker.break_multiplier, breaker.max_break_duration, breaker.half_open_max_calls) == (2.0, 100.0, 2)
    assert (breaker.half_open_max_wait, breaker.success_threshold) == (20.0, 3)
    assert breaker.failure_on is OSError and breaker.failure_if_result is is_bad
    assert dataclasses.astuple(a[AdaptiveThrottle].options) == (1.5, 20.0, 20)
    limit = a[RateLimit].options
    assert (str(limit.rate), limit.strategy, limit.key, limit.mode) == ("7 per 1 minute", "fixed-window",
                                                                         "{service}:{tenant}", "wait")  # fmt: skip
    assert (limit.max_wait, limit.fail_open, limit.storage_recheck, a[RateLimit].name) == (1.0, False, 5.0, "rl")
    bucket = a[TokenBucket].options
    assert (bucket.rate, bucket.burst, bucket.key, bucket.mode, bucket.max_wait, bucket.max_keys) == (
        50.0, 5, tenant_key, "wait", 2.0, 10)  # fmt: skip
    assert dataclasses.astuple(a[Bulkhead].options) == (9, 3, 0.25)
    algorithm = a[ConcurrencyLimit].options.algorithm
    assert isinstance(algorithm, Gradient2) and algorithm.queue_size is queue_size
    assert (algorithm.initial_limit, algorithm.min_limit, algorithm.max_limit, algorithm.smoothing) == (30, 2, 300, 0.5)
    assert (algorithm.rtt_tolerance, algorithm.long_window, algorithm.warmup) == (2.0, 100, 5)
    fallback = a[Fallback].options
    assert fallback.handler is answer and fallback.on == (ValueError, KeyError) and fallback.on_result is is_bad
    timeouts = [p for p in every_option.pipeline("a").policies if isinstance(p, Timeout)]
    assert [(t.seconds, t.name) for t in timeouts] == [(7.0, "total"), (1.5, "attempt_timeout")]
    b = _by_type(every_option, "b")
    assert b[Fallback].options.value == {"cached": True} and b[CircuitBreaker].options.failure_threshold == 9
    assert b[ConcurrencyLimit].options.algorithm == AIMD(10, min_limit=2, max_limit=50, backoff_ratio=0.6, timeout=3.0)
    fault = a[FaultInjection]
    assert (fault.name, fault.options.rate, fault.options.delay) == ("chaos", 0.25, (0.01, 0.05))
    assert (fault.options.error, fault.options.details) == (ConnectionError, "chaos")
    assert _by_type(every_option, "b")[FaultInjection].options.http_status == 503
    assert _by_type(every_option, "d")[FaultInjection].options.result is answer
    assert _by_type(every_option, "e")[FaultInjection].options.grpc_code == "UNAVAILABLE"
    seeded = [FaultInjection(0.25, delay=0.01, seed=7), a[FaultInjection]]
    assert [p.options.rate for p in seeded] == [0.25, 0.25]
    assert seeded[0]._rng.getstate() == seeded[1]._rng.getstate()  # the config's seed
    c = _by_type(every_option, "c")
    assert c[CircuitBreaker].options.window_size == 50 and c[ConcurrencyLimit].options.algorithm == FixedLimit(12)
    assert c[Hedge].options.delay is None and c[Hedge].options.percentile == 0.5
    p2c = every_option.balancer("p2c")
    assert isinstance(p2c, PeakEwma)
    assert p2c.options == PeakEwmaOptions(5.0, 2.0, 0.1, 3.0, 2.0, ZonePreference("eu-1", 0.7, 3.0))
    assert p2c.ejection is not None
    assert p2c.ejection.options == OutlierEjectionOptions(3, 1.5, 50.0, 4.0, 3, 20, 5.0, 10.0, 60.0, 40.0)
    wrr = every_option.balancer("wrr")
    assert isinstance(wrr, WeightedRoundRobin) and wrr.zone == ZonePreference("eu-2")


def test_the_round_trip_config_sets_every_option() -> None:
    from .test_config_schema import COVERED, _option_fields

    config = load(EVERY_OPTION).data
    seen: dict[type, set[str]] = {}
    sections: list[Any] = []
    for policy_set in config.policies.values():
        for kind in policy_set.kinds():
            section = policy_set.section(kind)
            sections.append(section)
            if kind == "concurrency_limit":
                sections.append(section.algorithm)
            if kind in ("retry", "hedge") and section.budget is not None:
                sections.append(section.budget)
    for service in config.services.values():
        sections += [service.balancer, service.ejection, getattr(service.balancer, "zone", None)]
    by_section = {section_cls: options_cls for options_cls, (section_cls, _, _) in COVERED.items()}
    for section in sections:
        if type(section) in by_section:
            seen.setdefault(by_section[type(section)], set()).update(section.model_fields_set)
    for options_cls in COVERED:
        if options_cls.__name__ in ("TimeoutOptions", "FixedLimit", "RetryBudgetOptions"):
            continue  # set through a shorthand (timeout: 7s, concurrency_limit: 12) or partly on purpose
        missing = set(_option_fields(options_cls)) - seen.get(options_cls, set())
        assert not missing, f"{options_cls.__name__}: {missing}"


def test_policies_follow_the_readme_order_or_the_set_order() -> None:
    every = {kind: ({"seconds": 1} if "timeout" in kind else {}) for kind in POLICY_ORDER}
    every.update(fallback={"value": 1}, rate_limit={"rate": "5/second"}, token_bucket=5, bulkhead=2)
    every.update(fault_injection={"delay": 0})
    reverse = {**every, "order": list(reversed(POLICY_ORDER))}
    setup = load({"policies": {"default": every, "reverse": reverse}}).setup()
    try:
        names = [type(p).__name__ for p in setup.pipeline("default").policies]
        assert names == [
            "Fallback", "Timeout", "Retry", "Hedge", "CircuitBreaker", "AdaptiveThrottle", "RateLimit",
            "TokenBucket", "Bulkhead", "ConcurrencyLimit", "Timeout", "FaultInjection",
        ]  # fmt: skip
        assert [type(p).__name__ for p in setup.pipeline("reverse").policies] == list(reversed(names))
        with pytest.raises(KeyError, match="no policy set 'nope'; the config defines: default, reverse"):
            setup.pipeline("nope")
    finally:
        setup.close()


HTTP_CONFIG: dict[str, Any] = {
    "policies": {
        "default": {"timeout": "5s", "retry": {"attempts": 3, "backoff": {"kind": "constant", "delay": 0}}},
        "writes": {"timeout": "5s"},
    },
    "http": {"policy": "default", "hosts": {"127.0.0.1": {"routes": [{"path": "/orders/*", "policy": "writes"}]}}},
}


@pytest.mark.parametrize("mode", ["sync", "async", "trio"])
def test_httpx_requests_get_the_policy_set_of_their_route(mode: str) -> None:
    setup = load(HTTP_CONFIG).setup()
    with HttpServer() as server:
        server.script(500, 500)  # the first two requests; /orders always fails
        server.handler = lambda seen: Reply(500) if seen.path.startswith("/orders") else None

        def statuses() -> list[int]:
            if mode == "sync":
                with setup.httpx_client() as client:
                    return [client.get(f"{server.url}/items/1").status_code,
                            client.get(f"{server.url}/orders/1").status_code]  # fmt: skip

            async def run() -> list[int]:
                async with setup.httpx_client(async_=True) as client:
                    return [(await client.get(f"{server.url}/items/1")).status_code,
                            (await client.get(f"{server.url}/orders/1")).status_code]  # fmt: skip

            if mode == "trio":
                import trio

                return trio.run(run)
            return asyncio.run(run())

        assert statuses() == [200, 500]  # /items retried past two 500s; /orders (writes: no retry) not
        assert [r.path for r in server.requests] == ["/items/1", "/items/1", "/items/1", "/orders/1"]
    setup.close()


@pytest.fixture
def echo() -> Iterator[Running]:
    running = start()
    try:
        yield running
    finally:
        running.stop()


def _grpc_config(address: str) -> dict[str, Any]:
    return {
        "policies": {"default": {"timeout": "5s", "retry": {"attempts": 3, "backoff": {"kind": "constant",
                                                                                        "delay": 0}}}},
        "services": {"echo": {"discovery": [address], "balancer": "peak_ewma"}},
        "grpc": {"policy": "default", "services": {"test.Echo": {"idempotent": True,
                                                                 "methods": {"ClientStream": {"idempotent": False}}}}},
    }  # fmt: skip


@pytest.mark.parametrize("adapter", ["interceptor", "channel", "aio_interceptors", "aio_channel"])
def test_grpc_adapters_apply_the_method_settings(echo: Running, adapter: str) -> None:
    setup = load(_grpc_config(echo.address)).setup()
    unavailable = Fault(code=grpc.StatusCode.UNAVAILABLE)
    echo.service.script(UNARY, unavailable)
    echo.service.script("/test.Echo/ClientStream", unavailable)
    try:
        if adapter.startswith("aio"):

            async def run() -> tuple[Any, str | None]:
                if adapter == "aio_channel":
                    channel = setup.grpc_channel("echo", aio=True)
                else:
                    channel = grpc.aio.insecure_channel(echo.address, interceptors=setup.grpc_aio_interceptors())
                try:
                    calls = callables(channel)
                    first = await calls[UNARY](b"x", timeout=5)
                    try:
                        await calls["/test.Echo/ClientStream"](iter([b"a"]), timeout=5)
                    except grpc.RpcError as exc:
                        return first, exc.code().name
                    return first, None
                finally:
                    await channel.close()

            value, code = asyncio.run(run())
        else:
            if adapter == "channel":
                channel = setup.grpc_channel("echo")
            else:
                channel = grpc.intercept_channel(grpc.insecure_channel(echo.address), setup.grpc_interceptor())
            with channel:
                calls = callables(channel)
                value = calls[UNARY](b"x", timeout=5)
                try:
                    calls["/test.Echo/ClientStream"](iter([b"a"]), timeout=5)
                    code = None
                except grpc.RpcError as exc:
                    code = exc.code().name
        assert value == b"x"  # Unary: idempotent through its service, retried past UNAVAILABLE
        assert code == "UNAVAILABLE"  # ClientStream: idempotent: false, not retried
        assert echo.service.count(UNARY) == 2 and echo.service.count("/test.Echo/ClientStream") == 1
    finally:
        setup.close()


def test_setup_refuses_what_the_config_does_not_define(echo: Running) -> None:
    with load(_grpc_config(echo.address)).setup() as setup:
        with pytest.raises(KeyError, match="service 'nope' is not in the config's services: echo"):
            setup.grpc_channel("nope")
        assert setup.services() == ["echo"] and isinstance(setup.balancer("echo"), PeakEwma)


def test_an_enabled_telemetry_section_gives_every_pipeline_its_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    import resilience.telemetry as telemetry

    seen: list[Any] = []
    given: dict[str, Any] = {}

    def configure(**settings: Any) -> Any:
        given.update(settings)
        return seen.append

    monkeypatch.setattr(telemetry, "configure", configure, raising=False)
    config = {"policies": {"default": {"retry": {"attempts": 2, "backoff": {"kind": "constant", "delay": 0}}}},
              "telemetry": {"enabled": True, "service_name": "shop", "sample_ratio": 0.5}}  # fmt: skip
    with load(config).setup() as setup:
        pipeline = setup.pipeline("default")
        assert given == {"enabled": True, "service_name": "shop", "otlp_endpoint": None, "redact_query_params": (),
                         "sample_ratio": 0.5}  # fmt: skip
        calls = iter([ConnectionError("down"), "ok"])

        def flaky() -> str:
            value = next(calls)
            if isinstance(value, Exception):
                raise value
            return value

        assert pipeline.call(flaky) == "ok"
        assert any(type(event).__name__ == "RetryScheduled" for event in seen)
