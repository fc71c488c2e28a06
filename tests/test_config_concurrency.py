"""Reloads from a watched file while calls run at concurrency, against real HTTP and gRPC servers:
no call fails because of a swap, an open breaker stays open, old transports are closed once idle."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from resilience import CircuitBreaker, CircuitOpenError, CircuitState, Retry
from resilience.config import Setup

from ._grpc_service import CLIENT_STREAM, UNARY, Fault, Running, callables, start
from ._http_server import HttpServer, Reply

THREADS = 4
CALLS = 40


def http_config(port: int) -> dict[str, Any]:
    return {
        "policies": {
            "default": {"timeout": "5s", "retry": {"attempts": 3, "backoff": {"kind": "constant", "delay": 0}},
                        "circuit_breaker": {"failure_threshold": 1000}},
            "down": {"circuit_breaker": {"failure_threshold": 2, "break_duration": "1h"}},
        },
        "services": {"backend": {"discovery": [f"127.0.0.1:{port}"], "balancer": "peak_ewma"}},
        "http": {"policy": "default", "hosts": {"backend": {"routes": [{"path": "/down*", "policy": "down"}]}}},
    }  # fmt: skip


def variants(base: dict[str, Any]) -> list[dict[str, Any]]:
    """Settings changes, structural changes and rule changes, in turn."""
    out = []
    for i in range(8):
        data = copy.deepcopy(base)
        default = data["policies"]["default"]
        default["retry"]["attempts"] = 3 + i % 2  # reconfigure
        if i % 4 == 1:
            default["hedge"] = {"delay": "20ms"}  # a policy added: a new chain
        if i % 4 == 2:
            default["bulkhead"] = {"max_concurrent": 64}
        if i % 4 == 3:  # a new rule: the transports are rebuilt
            data["http"]["hosts"]["backend"]["routes"].append({"path": "/extra/*", "policy": "default"})
        out.append(data)
    return out


def reload_while(calls: Callable[[], list[Any]], path: Path, setup: Setup, configs: list[dict[str, Any]]) -> list[Any]:
    """Run ``calls`` while the file is rewritten with each config in turn; the calls' results."""
    watcher = setup.watch_file(path, interval=3600)
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.extend(calls()))
    runner.start()
    applied = 0
    for data in configs:
        if not runner.is_alive():
            break
        path.write_text(yaml.safe_dump(data))
        result = watcher.check()
        applied += bool(result is not None and result.applied)
        time.sleep(0.01)
    runner.join(60)
    assert not runner.is_alive()
    assert applied >= 3, "the calls ended before the reloads: too few reloads happened under load"
    return outcome


def _open(pipeline: Any) -> CircuitBreaker:
    breaker = next(p for p in pipeline.policies if isinstance(p, CircuitBreaker))
    assert breaker.state is CircuitState.OPEN
    return breaker


def test_httpx_sync_calls_survive_reloads(tmp_path: Path) -> None:
    with HttpServer() as server:
        server.handler = lambda seen: Reply(500) if seen.path.startswith("/down") else Reply(200, delay=0.002)
        base = http_config(server.port)
        path = tmp_path / "resilience.yaml"
        path.write_text(yaml.safe_dump(base))
        with Setup(path) as setup, setup.httpx_client() as client:
            assert [client.get("http://backend/down").status_code for _ in range(2)] == [500, 500]
            breaker = _open(setup.pipeline("down"))
            first = client._transport.transport  # type: ignore[attr-defined]

            def calls() -> list[Any]:
                results: list[Any] = []
                lock = threading.Lock()

                def worker() -> None:
                    for i in range(CALLS):
                        try:
                            status: Any = client.get(f"http://backend/ok/{i}").status_code
                        except Exception as exc:  # a failure here is what the test looks for
                            status = exc
                        with lock:
                            results.append(status)

                threads = [threading.Thread(target=worker) for _ in range(THREADS)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                return results

            results = reload_while(calls, path, setup, variants(base))
            assert results == [200] * (THREADS * CALLS)
            assert _open(setup.pipeline("down")) is breaker
            seen = len(server.requests)
            with pytest.raises(CircuitOpenError):
                client.get("http://backend/down")
            assert len(server.requests) == seen  # rejected before it was sent
            assert client._transport.transport is not first  # type: ignore[attr-defined]
            assert first._router.closed  # the first inner transport was closed once idle
            assert isinstance(next(p for p in setup.pipeline("default").policies if isinstance(p, Retry)), Retry)


def test_httpx_async_calls_survive_reloads(tmp_path: Path) -> None:
    with HttpServer() as server:
        server.handler = lambda seen: Reply(500) if seen.path.startswith("/down") else Reply(200, delay=0.002)
        base = http_config(server.port)
        path = tmp_path / "resilience.yaml"
        path.write_text(yaml.safe_dump(base))
        with Setup(path) as setup:

            async def run() -> list[Any]:
                async with setup.httpx_client(async_=True) as client:
                    for _ in range(2):
                        assert (await client.get("http://backend/down")).status_code == 500

                    async def worker() -> list[Any]:
                        out: list[Any] = []
                        for i in range(CALLS):
                            try:
                                out.append((await client.get(f"http://backend/ok/{i}")).status_code)
                            except Exception as exc:
                                out.append(exc)
                        return out

                    results = await asyncio.gather(*(worker() for _ in range(THREADS)))
                    with pytest.raises(CircuitOpenError):
                        await client.get("http://backend/down")
                    return [r for chunk in results for r in chunk]

            results = reload_while(lambda: asyncio.run(run()), path, setup, variants(base))
            assert results == [200] * (THREADS * CALLS)
            _open(setup.pipeline("down"))


def grpc_config(address: str) -> dict[str, Any]:
    return {
        "policies": {
            "default": {"timeout": "5s", "retry": {"attempts": 3, "backoff": {"kind": "constant", "delay": 0}}},
            "down": {"circuit_breaker": {"failure_threshold": 2, "break_duration": "1h"}},
        },
        "services": {"echo": {"discovery": [address]}},
        "grpc": {"policy": "default", "services": {"test.Echo": {
            "idempotent": True, "methods": {"ClientStream": {"policy": "down"}}}}},
    }  # fmt: skip


def grpc_variants(base: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i in range(8):
        data = copy.deepcopy(base)
        data["policies"]["default"]["retry"]["attempts"] = 3 + i % 2
        data["grpc"]["services"]["test.Echo"]["tags"] = {"variant": str(i)}
        if i % 2:
            data["policies"]["default"]["hedge"] = {"delay": "50ms"}
        out.append(data)
    return out


@pytest.mark.parametrize("adapter", ["channel", "interceptor"])
def test_grpc_calls_survive_reloads(tmp_path: Path, adapter: str) -> None:
    running: Running = start()
    try:
        base = grpc_config(running.address)
        path = tmp_path / "resilience.yaml"
        path.write_text(yaml.safe_dump(base))
        with Setup(path) as setup:
            channel: Any
            if adapter == "channel":
                channel = setup.grpc_channel("echo")
            else:
                channel = grpc.intercept_channel(grpc.insecure_channel(running.address), setup.grpc_interceptor())
            with channel:
                stubs = callables(channel)  # made once, before every reload: they must follow
                running.service.script(CLIENT_STREAM, *[Fault(code=grpc.StatusCode.UNAVAILABLE)] * 2)
                for _ in range(2):
                    with pytest.raises(grpc.RpcError):
                        stubs[CLIENT_STREAM](iter([b"a"]), timeout=5)
                breaker = _open(setup.pipeline("down"))
                running.service.script(
                    UNARY, *[Fault(code=grpc.StatusCode.UNAVAILABLE)] * 2
                )  # fewer than attempts: retried

                def calls() -> list[Any]:
                    results: list[Any] = []
                    lock = threading.Lock()

                    def worker() -> None:
                        for i in range(CALLS):
                            try:
                                value: Any = stubs[UNARY](str(i).encode(), timeout=5)
                            except Exception as exc:
                                value = exc
                            with lock:
                                results.append(value)

                    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join(60)
                    return results

                results = reload_while(calls, path, setup, grpc_variants(base))
                assert not [r for r in results if not isinstance(r, bytes)], results[:5]
                assert len(results) == THREADS * CALLS
                assert _open(setup.pipeline("down")) is breaker
                before = running.service.count(CLIENT_STREAM)
                with pytest.raises(grpc.RpcError) as caught:
                    stubs[CLIENT_STREAM](iter([b"a"]), timeout=5)
                assert isinstance(caught.value, CircuitOpenError)
                assert running.service.count(CLIENT_STREAM) == before
                in_force = setup.config.data.grpc.services["test.Echo"].tags
                assert in_force is not None and setup.grpc_policies().resolve(UNARY).tags == in_force
    finally:
        running.stop()
    assert httpx  # the module is imported for the transports' sake
