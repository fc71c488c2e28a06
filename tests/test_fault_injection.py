"""FaultInjection: seeded rates replay exactly, latency on the call's clock, errors, HTTP statuses
through a real server and ResilientTransport, gRPC codes through a real server and the interceptors."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest

from interceptors._grpc_common import MethodPolicy
from interceptors.grpc import ResilienceInterceptor
from interceptors.grpc_aio import aio_interceptors
from interceptors.httpx import AsyncResilientTransport, ResilientTransport
from resilience import Constant, FaultInjection, FaultInjectionOptions, Pipeline, Retry
from resilience.config import load
from resilience.context import CallContext
from resilience.fake_clock import FakeClock

from ._grpc_service import UNARY, Running, callables, start
from ._http_server import HttpServer
from .helpers import MODES, run_async


def _calls(mode: str, pipeline: Pipeline, n: int) -> list[str]:
    """``n`` calls through ``pipeline``: "ok", or the name of the error each raised."""

    def one_sync() -> str:
        try:
            return str(pipeline.call(lambda: "ok"))
        except Exception as exc:
            return type(exc).__name__

    async def ok() -> str:
        return "ok"

    async def all_async() -> list[str]:
        out = []
        for _ in range(n):
            try:
                out.append(str(await pipeline.acall(ok)))
            except Exception as exc:
                out.append(type(exc).__name__)
        return out

    if mode == "sync":
        return [one_sync() for _ in range(n)]
    result: list[str] = run_async(mode, all_async)
    return result


def _expected(seed: int, rate: float, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["ConnectionError" if rng.random() < rate else "ok" for _ in range(n)]


# -- rates and replay ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_seeded_rate_replays_exactly(mode: str) -> None:
    runs = []
    for _ in range(2):
        policy = FaultInjection(0.3, error=ConnectionError, seed=42)
        runs.append(_calls(mode, Pipeline(policy), 200))
        assert (policy.calls, policy.injected) == (200, runs[-1].count("ConnectionError"))
    assert runs[0] == runs[1] == _expected(42, 0.3, 200)
    assert 30 <= runs[0].count("ConnectionError") <= 90  # the rate is honoured, roughly
    other = _calls(mode, Pipeline(FaultInjection(0.3, error=ConnectionError, seed=43)), 200)
    assert other != runs[0]


@pytest.mark.parametrize("mode", MODES)
def test_a_given_rng_is_the_one_drawn_from(mode: str) -> None:
    rng = random.Random(5)
    got = _calls(mode, Pipeline(FaultInjection(0.5, error=ConnectionError, rng=rng)), 50)
    assert got == _expected(5, 0.5, 50)
    assert rng.getstate() == _drawn(random.Random(5), 50)


def _drawn(rng: random.Random, n: int) -> object:
    for _ in range(n):
        rng.random()
    return rng.getstate()


@pytest.mark.parametrize("mode", MODES)
def test_rate_zero_injects_nothing_and_rate_one_everything(mode: str) -> None:
    assert _calls(mode, Pipeline(FaultInjection(0, error=ConnectionError)), 20) == ["ok"] * 20
    assert _calls(mode, Pipeline(FaultInjection(1, error=ConnectionError)), 20) == ["ConnectionError"] * 20


# -- latency on the call's clock ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_fixed_latency_waits_on_the_fake_clock(mode: str) -> None:
    clock = FakeClock()
    got = _calls(mode, Pipeline(FaultInjection(1, delay=2.5), clock=clock), 4)
    assert got == ["ok"] * 4 and clock.monotonic() == pytest.approx(10.0)


@pytest.mark.parametrize("mode", MODES)
def test_uniform_latency_draws_from_the_seeded_generator(mode: str) -> None:
    clock = FakeClock()
    policy = FaultInjection(0.5, delay=(1.0, 3.0), seed=9)
    pipeline = Pipeline(policy, clock=clock)
    rng = random.Random(9)
    expected = 0.0
    for _ in range(30):
        if rng.random() < 0.5:
            expected += rng.uniform(1.0, 3.0)
    assert _calls(mode, pipeline, 30) == ["ok"] * 30
    assert clock.monotonic() == pytest.approx(expected) and expected > 0


@pytest.mark.parametrize("mode", MODES)
def test_latency_then_the_error(mode: str) -> None:
    clock = FakeClock()
    got = _calls(mode, Pipeline(FaultInjection(1, delay=1.0, error=TimeoutError), clock=clock), 3)
    assert got == ["TimeoutError"] * 3 and clock.monotonic() == pytest.approx(3.0)


# -- errors and results -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_an_exception_instance_is_raised_as_a_copy_and_a_class_with_the_policy_name(mode: str) -> None:
    original = KeyError("boom")
    seen: list[BaseException] = []
    for error in (original, ValueError):
        policy = FaultInjection(1, error=error, name="chaos")
        pipeline = Pipeline(policy)
        for _ in range(2):
            try:
                if mode == "sync":
                    pipeline.call(lambda: "ok")
                else:

                    async def ok() -> str:
                        return "ok"

                    run_async(mode, pipeline.acall, ok)
            except Exception as exc:
                seen.append(exc)
    assert [type(e) for e in seen] == [KeyError, KeyError, ValueError, ValueError]
    assert seen[0] is not original and seen[0].args == ("boom",) and seen[0] is not seen[1]
    assert str(seen[2]) == "chaos: injected fault"


@pytest.mark.parametrize("mode", MODES)
def test_a_result_factory_answers_instead_of_calling_on(mode: str) -> None:
    def answer(ctx: CallContext) -> str:
        return f"fake {ctx.attempt}"

    assert _calls(mode, Pipeline(FaultInjection(1, result=answer)), 2) == ["fake 1", "fake 1"]


def test_retry_around_the_fault_sees_it_as_a_failure() -> None:
    clock = FakeClock()
    policy = FaultInjection(0.5, error=ConnectionError, seed=3)
    pipeline = Pipeline(Retry(5, backoff=Constant(0.1)), policy, clock=clock)
    expected = _expected(3, 0.5, 10)
    assert pipeline.call(lambda: "ok") == "ok"
    assert policy.calls == expected.index("ok") + 1


# -- HTTP status through a real server ----------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_http_status_through_resilient_transport(http_server: HttpServer, mode: str) -> None:
    seed = 11
    expected = _expected(seed, 0.5, 6)
    first_ok = expected.index("ok")

    def pipeline(rate: float) -> Pipeline:
        fault = FaultInjection(rate, http_status=503, details="chaos", seed=seed)
        return Pipeline(Retry(6, backoff=Constant(0.05)), fault, clock=FakeClock())

    if mode == "sync":
        with httpx.Client(transport=ResilientTransport(pipeline=pipeline(1.0))) as client:
            always = client.get(http_server.url + "/a")
        with httpx.Client(transport=ResilientTransport(pipeline=pipeline(0.5))) as client:
            sometimes = client.get(http_server.url + "/b")
    else:

        async def go() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline=pipeline(1.0))) as client:
                a = await client.get(http_server.url + "/a")
            async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline=pipeline(0.5))) as client:
                b = await client.get(http_server.url + "/b")
            return a, b

        always, sometimes = asyncio.run(go())
    assert always.status_code == 503 and always.text == "fault_injection: chaos"
    assert sometimes.status_code == 200 and sometimes.text == "ok"
    assert [r.path for r in http_server.requests] == ["/b"]  # the injected attempts never left the client
    assert first_ok > 0  # the seed injects before the call that goes through


# -- gRPC code through a real server ------------------------------------------------------------


@pytest.fixture
def grpc_server() -> Iterator[Running]:
    running = start()
    try:
        yield running
    finally:
        running.stop()


def _grpc_policy(rate: float, seed: int = 9) -> MethodPolicy:
    fault = FaultInjection(rate, grpc_code=grpc.StatusCode.UNAVAILABLE, seed=seed)
    return MethodPolicy(Pipeline(Retry(6, backoff=Constant(0.05)), fault, clock=FakeClock()), idempotent=True)


def test_a_grpc_code_through_the_sync_interceptor(grpc_server: Running) -> None:
    channel = grpc.intercept_channel(grpc.insecure_channel(grpc_server.address), ResilienceInterceptor(_grpc_policy(1)))
    try:
        with pytest.raises(grpc.RpcError) as info:
            callables(channel)[UNARY](b"a", timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert info.value.details() == "fault_injection: injected fault"  # type: ignore[attr-defined]
        assert grpc_server.service.attempts == []
    finally:
        channel.close()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(grpc_server.address), ResilienceInterceptor(_grpc_policy(0.5))
    )
    try:
        assert callables(channel)[UNARY](b"a", timeout=10) == b"a"
        assert len(grpc_server.service.attempts) == 1
    finally:
        channel.close()


async def test_a_grpc_code_through_the_aio_interceptors(grpc_server: Running) -> None:
    async with grpc.aio.insecure_channel(grpc_server.address, interceptors=aio_interceptors(_grpc_policy(1))) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await callables(ch)[UNARY](b"a", timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "fault_injection: injected fault"
    assert grpc_server.service.attempts == []
    async with grpc.aio.insecure_channel(grpc_server.address, interceptors=aio_interceptors(_grpc_policy(0.5))) as ch:
        assert await callables(ch)[UNARY](b"a", timeout=10) == b"a"
    assert len(grpc_server.service.attempts) == 1


# -- construction, reconfigure, config ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rate": 1.5, "delay": 1}, ValueError, r"rate must be in \[0, 1\], got 1.5"),
        ({"rate": "often", "delay": 1}, TypeError, "rate must be a number, got 'often'"),
        ({"rate": 0.1}, ValueError, "needs something to inject: delay, error, http_status, grpc_code or result"),
        ({"delay": -1}, ValueError, "delay must be a finite number of seconds >= 0, got -1"),
        ({"delay": (3, 1)}, ValueError, r"low <= high, got \(3, 1\)"),
        ({"delay": (1, 2, 3)}, ValueError, r"a \(low, high\) pair of seconds, got \(1, 2, 3\)"),
        ({"error": "boom"}, TypeError, "error must be an exception instance or class, got 'boom'"),
        ({"http_status": 700}, ValueError, r"http_status must be in \[100, 599\], got 700"),
        ({"grpc_code": "OK"}, ValueError, "grpc_code must be a grpc.StatusCode other than OK or its name"),
        ({"grpc_code": "NOPE"}, ValueError, "got 'NOPE'"),
        ({"result": 3}, TypeError, "result must be a function of the call's context, got 3"),
        ({"error": KeyError, "http_status": 500}, ValueError, "at most one of .* got error, http_status"),
    ],
)
def test_bad_options_are_refused_with_a_clear_error(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        FaultInjectionOptions(**kwargs)


def test_constructor_errors() -> None:
    with pytest.raises(TypeError, match="give options or keywords, not both"):
        FaultInjection(0.1, options=FaultInjectionOptions(delay=1))
    with pytest.raises(TypeError, match="options must be FaultInjectionOptions"):
        FaultInjection(options="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="give seed or rng, not both"):
        FaultInjection(0.1, delay=1, seed=1, rng=random.Random(1))
    with pytest.raises(TypeError, match=r"rng must be a random\.Random"):
        FaultInjection(0.1, delay=1, rng=4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an integer, got 'a'"):
        FaultInjection(0.1, delay=1, seed="a")  # type: ignore[arg-type]
    assert FaultInjection(0.1, grpc_code="unavailable").options.grpc_code == "UNAVAILABLE"
    assert FaultInjectionOptions(delay=[1, 2]).delay == (1.0, 2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_reconfigure_swaps_the_fault_and_keeps_the_generator(mode: str) -> None:
    policy = FaultInjection(0.5, error=ConnectionError, seed=8)
    pipeline = Pipeline(policy)
    first = _calls(mode, pipeline, 10)
    policy.reconfigure(policy.options.replace(error=KeyError))
    second = _calls(mode, pipeline, 10)
    expected = _expected(8, 0.5, 20)
    assert first == expected[:10]
    assert second == [("KeyError" if e != "ok" else "ok") for e in expected[10:]]
    policy.reconfigure(policy.options.replace(rate=0.0))
    assert _calls(mode, pipeline, 5) == ["ok"] * 5 and policy.calls == 25
    with pytest.raises(TypeError, match=r"FaultInjection\.reconfigure needs FaultInjectionOptions"):
        policy.reconfigure("x")  # type: ignore[arg-type]


def test_switchable_from_config_and_a_reload_reconfigures() -> None:
    config: dict[str, Any] = {"policies": {"x": {"fault_injection": {"rate": 1, "error": "ConnectionError",
                                                                      "seed": 1}}}}  # fmt: skip
    setup = load(config).setup()
    try:
        pipeline = setup.pipeline("x")
        assert _calls("sync", pipeline, 2) == ["ConnectionError"] * 2
        (policy,) = pipeline.policies
        config["policies"]["x"]["fault_injection"]["rate"] = 0
        setup.apply(load(config))
        assert list(pipeline.policies) == [policy]  # reconfigured in place, not rebuilt
        assert _calls("sync", pipeline, 2) == ["ok"] * 2 and policy.calls == 4
    finally:
        setup.close()
