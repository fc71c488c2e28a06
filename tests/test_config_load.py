"""Loading configs: YAML, TOML, JSON and dicts alike; ${ENV} substitution; every error with its path."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from resilience.config import Config, ConfigError, load, loads
from resilience.config.values import parse_duration

YAML = """
policies:
  default:
    timeout: 5s
    retry:
      attempts: 4
      backoff: {kind: exponential_jitter, base: 100ms, cap: 2s}
      retry_on: [ConnectionError, TimeoutError]
    circuit_breaker: {window_size: 20, failure_rate: 0.5, minimum_calls: 10, break_duration: 1m}
    bulkhead: 32
services:
  orders: {discovery: ["127.0.0.1:8081", "127.0.0.1:8082"], balancer: peak_ewma}
grpc:
  policy: default
  services:
    shop.Orders: {idempotent: true, methods: {Create: {idempotent: false}}}
http:
  policy: default
  hosts:
    api.example.com:
      routes:
        - {path: /orders/*, methods: [post], service: orders, timeout: 2s}
"""

TOML = """
[policies.default]
timeout = "5s"
bulkhead = 32

[policies.default.retry]
attempts = 4
backoff = { kind = "exponential_jitter", base = "100ms", cap = "2s" }
retry_on = ["ConnectionError", "TimeoutError"]

[policies.default.circuit_breaker]
window_size = 20
failure_rate = 0.5
minimum_calls = 10
break_duration = "1m"

[services.orders]
discovery = ["127.0.0.1:8081", "127.0.0.1:8082"]
balancer = "peak_ewma"

[grpc]
policy = "default"

[grpc.services."shop.Orders"]
idempotent = true
methods = { Create = { idempotent = false } }

[http]
policy = "default"

[[http.hosts."api.example.com".routes]]
path = "/orders/*"
methods = ["post"]
service = "orders"
timeout = "2s"
"""


def refused(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        loads(textwrap.dedent(text), environ=environ or {})
    return caught.value


def messages(error: ConfigError) -> dict[str, str]:
    return {issue.path: issue.message for issue in error.issues}


def test_yaml_toml_json_and_a_dict_give_the_same_config(tmp_path: Path) -> None:
    from_yaml = loads(YAML, environ={})
    from_toml = loads(TOML, "toml", environ={})
    data = from_yaml.data.model_dump(mode="json")
    from_json = loads(json.dumps(data), "json", environ={})
    from_dict = load(data, environ={})
    assert from_yaml == from_toml == from_json == from_dict
    assert from_yaml.data.http.hosts["api.example.com"].routes[0].methods == ["POST"]
    assert from_yaml.data.policies["default"].circuit_breaker is not None
    assert from_yaml.data.policies["default"].circuit_breaker.break_duration == 60.0
    for suffix, text in ((".yaml", YAML), (".yml", YAML), (".toml", TOML), (".json", json.dumps(data))):
        path = tmp_path / f"config{suffix}"
        path.write_text(text)
        loaded = load(path, environ={})
        assert loaded == from_yaml and loaded.source == str(path)
    with pytest.raises(ValueError, match="cannot tell the format"):
        load(tmp_path / "config.ini")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(1, 1.0), (0.25, 0.25), ("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1m30s", 90.0),
     ("100us", 1e-4), ("1.5s", 1.5), ("2", 2.0), (" 3 s ", 3.0), ("1d", 86400.0)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2x", "s", "1m 2", "-1s", "1e3s", "", "ms5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("snippet", "path", "message"),
    [
        ("policies: {default: {retry: {attempts: 0}}}", "policies.default.retry.attempts", "must be >= 1, got 0"),
        ("policies: {default: {retry: {attempts: 101}}}", "policies.default.retry.attempts", "must be <= 100, got 101"),
        ("policies: {default: {retry: {attempts: true}}}", "policies.default.retry.attempts",
         "must be an integer, got True"),
        ("policies: {default: {retry: {attempts: 2.5}}}", "policies.default.retry.attempts",
         "must be an integer, got 2.5"),
        ("policies: {default: {retry: {atempts: 2}}}", "policies.default.retry.atempts",
         "unknown key (did you mean 'attempts'?)"),
        ("policies: {default: {retyr: {}}}", "policies.default.retyr", "unknown key (did you mean 'retry'?)"),
        ("polices: {}", "polices", "unknown key (did you mean 'policies'?)"),
        ("policies: {default: {retry: {zzz: 1}}}", "policies.default.retry.zzz", "unknown key; allowed here: attempts"),
        ("policies: {default: {timeout: 0}}", "policies.default.timeout.seconds", "must be > 0, got 0"),
        ("policies: {default: {timeout: soon}}", "policies.default.timeout.seconds", "must be a duration"),
        ("policies: {default: {bulkhead: {max_queue: 1}}}", "policies.default.bulkhead.max_concurrent", "is required"),
        ("policies: {default: {retry: {backoff: {kind: expo}}}}", "policies.default.retry.backoff",
         "kind must be one of 'constant', 'exponential'"),
        ("policies: {default: {retry: {backoff: {base: 1}}}}", "policies.default.retry.backoff",
         "needs a kind: one of 'constant'"),
        ("policies: {default: {retry: {backoff: {kind: exponential, base: 2, cap: 1}}}}",
         "policies.default.retry.backoff", "cap must be >= base (2"),
        ("policies: {default: {retry: {backoff: {kind: constant, dela: 1}}}}", "policies.default.retry.backoff.dela",
         "unknown key (did you mean 'delay'?)"),
        ("policies: {default: {retry: {retry_on: [ConectionError]}}}", "policies.default.retry.retry_on[0]",
         "unknown exception 'ConectionError' (did you mean 'ConnectionError'?)"),
        ("policies: {default: {retry: {retry_on: [os.nope]}}}", "policies.default.retry.retry_on[0]", "has no 'nope'"),
        ("policies: {default: {retry: {retry_rejections: [ValueError]}}}", "policies.default.retry.retry_rejections",
         "'ValueError' is not a subclass of RejectedError"),
        ("policies: {default: {retry: {retry_if_result: nomodule_xyz:f}}}", "policies.default.retry.retry_if_result",
         "cannot import module 'nomodule_xyz'"),
        ("policies: {default: {circuit_breaker: {failure_threshold: 3, window_size: 10}}}",
         "policies.default.circuit_breaker", "failure_threshold counts consecutive failures"),
        ("policies: {default: {circuit_breaker: {failure_rate: 1.5}}}", "policies.default.circuit_breaker.failure_rate",
         "must be <= 1, got 1.5"),
        ("policies: {default: {circuit_breaker: {minimum_calls: 5}}}", "policies.default.circuit_breaker",
         "minimum_calls needs a sliding window"),
        ("policies: {default: {rate_limit: {rate: lots}}}", "policies.default.rate_limit",
         "rate must be a limits string"),
        ("policies: {default: {rate_limit: {rate: 1/second, strategy: moving}}}",
         "policies.default.rate_limit.strategy", "got 'moving' (did you mean 'moving-window'?)"),
        ("policies: {default: {rate_limit: {rate: 1/second, key: 7}}}", "policies.default.rate_limit.key",
         "must be a string or a mapping, got 7"),
        ("policies: {default: {token_bucket: {rate: 0}}}", "policies.default.token_bucket.rate", "must be > 0, got 0"),
        ("policies: {default: {fallback: {}}}", "policies.default.fallback", "give exactly one of value and handler"),
        ("policies: {default: {hedge: {percentile: 1}}}", "policies.default.hedge.percentile", "must be < 1, got 1"),
        ("policies: {default: {hedge: {delay: null}}}", "policies.default.hedge", "needs a delay or a percentile"),
        ("policies: {default: {concurrency_limit: {algorithm: {kind: aimd, min_limit: 10, max_limit: 5}}}}",
         "policies.default.concurrency_limit.algorithm", "max_limit must be in [10, 1000000], got 5"),
        ("policies: {default: {concurrency_limit: 0}}", "policies.default.concurrency_limit.algorithm.limit",
         "must be >= 1, got 0"),
        ("policies: {default: {retry: {}, hedge: {}, order: [retry]}}", "policies.default",
         "order leaves out hedge, which this set configures"),
        ("policies: {default: {retry: {}, order: [retry, retry]}}", "policies.default", "order names 'retry' twice"),
        ("policies: {default: {retry: {}, order: [retri]}}", "policies.default.order[0]",
         "got 'retri' (did you mean 'retry'?)"),
        ("services: {orders: {discovery: registri}}\ndiscovery: {registry: 'static://127.0.0.1:1'}",
         "services.orders.discovery", "unknown discovery source 'registri' (did you mean 'registry'?)"),
        ("services: {orders: {discovery: [nope]}}", "services.orders.discovery", "bad address 'nope'"),
        ("services: {orders: {discovery: 'etcd://h:notaport/p'}}", "services.orders.discovery", "etcd URI"),
        ("services: {orders: {discovery: 'zk://h/p'}}", "services.orders.discovery", "must be a URI of one of"),
        ("services: {orders: {balancer: peak_ewm}}", "services.orders.balancer",
         "got 'peak_ewm' (did you mean 'peak_ewma'?)"),
        ("services: {orders: {balancer: {kind: peak_ewma, probe_share: 2}}}",
         "services.orders.balancer.probe_share", "must be <= 1, got 2"),
        ("services: {orders: {ejection: {max_ejection_percent: 0}}}",
         "services.orders.ejection.max_ejection_percent", "must be > 0, got 0"),
        ("grpc: {policy: defualt}\npolicies: {default: {}}", "grpc.policy",
         "unknown policy set 'defualt' (did you mean 'default'?); defined: default"),
        ("grpc: {retryable_codes: [UNAVAILBLE]}", "grpc.retryable_codes[0]", "(did you mean 'UNAVAILABLE'?)"),
        ("grpc: {services: {shop.Orders: {methods: {Create: {idempotnt: true}}}}}",
         'grpc.services["shop.Orders"].methods.Create.idempotnt', "(did you mean 'idempotent'?)"),
        ("http: {hosts: {api: {routes: [{path: '^('}]}}}", "http.hosts.api.routes[0].path",
         "not a valid regular expression"),
        ("http: {hosts: {api: {routes: [{policy: missing}]}}}", "http.hosts.api.routes[0].policy",
         "unknown policy set 'missing'; `policies` defines none"),
        ("http: {classifier: {retryable_statuses: [404]}}", "http", "retryable_statuses must be failure statuses"),
        ("http: {classifier: {failure_statuses: [700]}}", "http.classifier.failure_statuses[0]", "must be <= 599"),
        ("telemetry: {sample_ratio: 2}", "telemetry.sample_ratio", "must be <= 1, got 2"),
        ("version: 2", "version", "must be one of 1, got 2"),
    ],
)  # fmt: skip
def test_each_error_names_its_path_and_reason(snippet: str, path: str, message: str) -> None:
    found = messages(refused(snippet))
    assert path in found, found
    assert message in found[path], found[path]


def test_every_error_is_listed_at_once() -> None:
    error = refused(
        """
        policies:
          default:
            retry: {attempts: 0}
            bulkhead: {max_concurrent: 0}
        grpc: {policy: nope}
        telemetry: {sample_ratio: -1}
        """
    )
    assert set(messages(error)) == {
        "policies.default.retry.attempts",
        "policies.default.bulkhead.max_concurrent",
        "grpc.policy",
        "telemetry.sample_ratio",
    }
    text = str(error)
    assert text.splitlines()[0] == "config refused: 4 problems"
    assert "  policies.default.retry.attempts: must be >= 1, got 0" in text.splitlines()


def test_syntax_errors_say_where() -> None:
    assert "line 3" in str(refused("a:\n  b: 1\n c: [\n"))
    assert "key 'retry' is given twice" in str(refused("policies:\n  default:\n    retry: {}\n    retry: {}\n"))
    with pytest.raises(ConfigError, match="toml"):
        loads("policies = [", "toml")
    with pytest.raises(ConfigError, match="line 1"):
        loads("{", "json")
    assert "must be a mapping" in str(refused("- a\n- b\n"))
    assert loads("", environ={}) == loads("{}", environ={})


def test_environment_variables_are_substituted() -> None:
    config = loads(
        """
        policies:
          default:
            retry: {attempts: "${ATTEMPTS}", retry_non_idempotent: "${RETRY_ALL:-false}"}
            bulkhead: "${SLOTS:-16}"
        discovery:
          registry: "etcd://app:${ETCD_PASSWORD}@127.0.0.1:2379/services"
        http:
          tags: {price: "$$5", tier: "${TIER}"}
        """,
        environ={"ATTEMPTS": "5", "ETCD_PASSWORD": "hunter2-secret", "TIER": "gold"},
    )
    policy = config.data.policies["default"]
    assert policy.retry is not None and policy.retry.attempts == 5 and policy.retry.retry_non_idempotent is False
    assert policy.bulkhead is not None and policy.bulkhead.max_concurrent == 16
    assert config.data.discovery["registry"].uri == "etcd://app:hunter2-secret@127.0.0.1:2379/services"
    assert config.data.http.tags == {"price": "$5", "tier": "gold"}


def test_a_missing_variable_is_an_error_naming_it() -> None:
    error = refused("discovery: {registry: 'etcd://app:${ETCD_PASSWORD}@h:2379/p'}\ngrpc: {policy: '${POLICY}'}")
    found = messages(error)
    assert found["discovery.registry"] == "environment variable ETCD_PASSWORD is not set"
    assert found["grpc.policy"] == "environment variable POLICY is not set"
    assert "malformed" in messages(refused("grpc: {policy: '${oops'}"))["grpc.policy"]


SECRET = "s3cr3t-Passw0rd"


def test_secrets_are_never_echoed(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"ETCD_PASSWORD": SECRET, "BAD_TIMEOUT": SECRET, "PORT": "notaport" + SECRET}
    error = refused(
        """
        discovery:
          registry: {uri: "etcd://app@127.0.0.1:${PORT}/services", password: "${ETCD_PASSWORD}"}
        policies:
          default: {timeout: "${BAD_TIMEOUT}", retry: {attempts: "${BAD_TIMEOUT}"}}
        """,
        environ,
    )
    text = str(error) + repr(error) + repr(error.issues)
    assert SECRET not in text
    assert "policies.default.retry.attempts" in messages(error)
    assert "from ${BAD_TIMEOUT}" in messages(error)["policies.default.retry.attempts"]
    good = loads(
        """
        discovery:
          registry: {uri: "etcd://app:${ETCD_PASSWORD}@127.0.0.1:2379/services", password: "${ETCD_PASSWORD}"}
        services:
          orders: {discovery: registry}
        """,
        environ=environ,
    )
    assert SECRET not in repr(good) + good.summary() + str(good)
    logging.getLogger("test").warning("%s", good)
    assert SECRET not in caplog.text


def test_a_config_object_or_a_mapping_passes_through() -> None:
    config = loads(YAML, environ={})
    assert load(config) is config
    assert isinstance(load({"policies": {"x": {"bulkhead": 4}}}), Config)
    data: dict[str, Any] = {"policies": {"x": {"bulkhead": {"max_concurrent": 4, "max_wait": "250ms"}}}}
    bulkhead = load(data).data.policies["x"].bulkhead
    assert bulkhead is not None and bulkhead.max_wait == 0.25
