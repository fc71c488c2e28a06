"""Configs in etcd: a watched key, hot reload under load against a real etcd, etcd as a discovery source."""

from __future__ import annotations

import copy
import json
import logging
import threading
from typing import Any

import pytest
import yaml

from resilience import CircuitBreaker, CircuitOpenError, CircuitState, Retry
from resilience.config import Setup, load
from resilience.discovery.etcd import EtcdClient, EtcdUnavailableError

from ._etcd_helpers import unique_prefix, value, wait_until
from ._http_server import HttpServer, Reply
from .servers import EtcdServer, free_port

pytestmark = pytest.mark.etcd


def base(attempts: int = 3) -> dict[str, Any]:
    return {
        "policies": {
            "default": {"timeout": "5s", "retry": {"attempts": attempts, "backoff": {"kind": "constant", "delay": 0}}},
            "down": {"circuit_breaker": {"failure_threshold": 2, "break_duration": "1h"}},
        },
        "grpc": {"policy": "default"},
    }


def retry_attempts(setup: Setup) -> int:
    retry = next(p for p in setup.pipeline("default").policies if isinstance(p, Retry))
    return retry.options.attempts


def test_a_watched_key_is_applied_at_start_and_on_every_change(
    etcd: EtcdServer, client: EtcdClient, caplog: pytest.LogCaptureFixture
) -> None:
    key = unique_prefix("config") + "/app"
    client.put(key, yaml.safe_dump(base(4)))
    client.put(key + "2", "not: [a config")  # a key that only starts with ours: ignored
    results: list[Any] = []
    with Setup(load(base(3))) as setup:
        watcher = setup.watch_etcd(f"etcd://127.0.0.1:{etcd.port}", key, on_reload=results.append)
        assert retry_attempts(setup) == 4 and setup.generation == 2  # the key's value, at start
        client.put(key, json.dumps(base(5)))  # JSON is YAML too
        assert wait_until(lambda: retry_attempts(setup) == 5)
        with caplog.at_level(logging.WARNING, logger="resilience.config"):
            client.put(key, yaml.safe_dump({"policies": {"default": {"retry": {"attempts": 0}}}}))
            assert wait_until(lambda: len(results) == 3)
            assert not results[-1].applied and retry_attempts(setup) == 5
            assert f"config etcd {key}@" in caplog.text and "retry.attempts: must be >= 1, got 0" in caplog.text
            client.delete(key)
            assert wait_until(lambda: "was deleted; keeping generation 3" in caplog.text)
        client.put(key, yaml.safe_dump(base(6)))
        assert wait_until(lambda: retry_attempts(setup) == 6)
        assert watcher.revision > 0 and [r.applied for r in results] == [True, True, False, True]
    assert not [t for t in threading.enumerate() if t.name.startswith("config-watch") and t.is_alive()]


def test_starting_without_etcd_is_an_error_naming_it() -> None:
    with Setup(load(base())) as setup, pytest.raises(EtcdUnavailableError):
        setup.watch_etcd(f"etcd://127.0.0.1:{free_port()}", "/config/app", connect_timeout=0.5)


def test_the_watch_resumes_after_an_etcd_restart(etcd: EtcdServer, client: EtcdClient) -> None:
    key = unique_prefix("config") + "/app"
    client.put(key, yaml.safe_dump(base(3)))
    with Setup(load(base(3))) as setup:
        setup.watch_etcd(f"etcd://127.0.0.1:{etcd.port}", key)
        etcd.restart()
        with EtcdClient(f"etcd://127.0.0.1:{etcd.port}") as again:
            again.put(key, yaml.safe_dump(base(7)))
        assert wait_until(lambda: retry_attempts(setup) == 7)


def http_config(port: int, attempts: int, etcd_url: str, extra_route: bool = False) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [{"path": "/down*", "policy": "down"}]
    if extra_route:
        routes.append({"path": "/extra/*", "policy": "default"})
    data = base(attempts)
    data["policies"]["default"]["circuit_breaker"] = {"failure_threshold": 1000}
    data["discovery"] = {"registry": etcd_url}
    data["services"] = {"backend": {"discovery": "registry", "balancer": "peak_ewma"}}
    data["http"] = {"policy": "default", "hosts": {"backend": {"routes": routes}}}
    return data


def test_reloads_from_etcd_while_calls_run(etcd: EtcdServer, client: EtcdClient) -> None:
    """4 threads of calls through an httpx client whose endpoints come from etcd too, while new
    configs are put; no call fails, the open breaker stays open and the same object."""
    prefix = unique_prefix("services")
    registry = f"etcd://127.0.0.1:{etcd.port}{prefix}"
    key = unique_prefix("config") + "/app"
    with HttpServer() as server:
        server.handler = lambda seen: Reply(500) if seen.path.startswith("/down") else Reply(200, delay=0.002)
        client.put(f"{prefix}/backend/a", value(server.address))
        client.put(key, yaml.safe_dump(http_config(server.port, 3, registry)))
        with Setup(load(http_config(server.port, 3, registry))) as setup, setup.httpx_client() as http:
            setup.watch_etcd(f"etcd://127.0.0.1:{etcd.port}", key)
            assert [http.get("http://backend/down").status_code for _ in range(2)] == [500, 500]
            breaker = next(p for p in setup.pipeline("down").policies if isinstance(p, CircuitBreaker))
            assert breaker.state is CircuitState.OPEN
            results: list[Any] = []
            lock = threading.Lock()
            done = threading.Event()

            def worker() -> None:
                i = 0
                while not done.is_set() and i < 500:
                    i += 1
                    try:
                        status: Any = http.get(f"http://backend/ok/{i}").status_code
                    except Exception as exc:  # what the test looks for
                        status = exc
                    with lock:
                        results.append(status)

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                for n in range(6):
                    attempts = 4 + n % 2
                    data = http_config(server.port, attempts, registry, extra_route=n % 3 == 2)
                    generation = setup.generation
                    client.put(key, yaml.safe_dump(data))
                    assert wait_until(lambda g=generation: setup.generation > g)
                    assert retry_attempts(setup) == attempts
            finally:
                done.set()
                for t in threads:
                    t.join(30)
            assert results and all(r == 200 for r in results), [r for r in results if r != 200][:3]
            assert next(p for p in setup.pipeline("down").policies if isinstance(p, CircuitBreaker)) is breaker
            with pytest.raises(CircuitOpenError):
                http.get("http://backend/down")


def test_a_secret_in_an_etcd_source_is_substituted_and_never_shown(
    etcd: EtcdServer, client: EtcdClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix("services")
    client.put(f"{prefix}/orders/a", value("127.0.0.1:8081"))
    monkeypatch.setenv("CONFIG_ETCD_USER", "nobody-secret-user")
    data = {
        "discovery": {"registry": {"uri": f"etcd://127.0.0.1:{etcd.port}{prefix}", "username": "${CONFIG_ETCD_USER}",
                                   "password": "${CONFIG_ETCD_USER}"}},
        "services": {"orders": {"discovery": "registry"}},
    }  # fmt: skip
    config = load(data)
    assert "nobody-secret-user" not in repr(config) + config.summary()
    plain = copy.deepcopy(data)
    del plain["discovery"]["registry"]["username"], plain["discovery"]["registry"]["password"]  # type: ignore[attr-defined]
    with Setup(load(plain)) as setup:
        assert [e.address for e in setup.discovery.endpoints("orders")] == ["127.0.0.1:8081"]
        with caplog.at_level(logging.WARNING, logger="resilience.config"):
            result = setup.apply(config)  # this etcd has no auth: it refuses credentials, the config is refused
        assert not result.applied and result.error is not None
        assert "nobody-secret-user" not in caplog.text + repr(result) + str(result.error)
        assert [e.address for e in setup.discovery.endpoints("orders")] == ["127.0.0.1:8081"]
