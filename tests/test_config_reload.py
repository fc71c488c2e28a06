"""Reloading a Setup: state kept where settings did not change, reconfigure where they did, a new
chain in place for structural changes; refused configs change nothing; the file watcher."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience import CircuitBreaker, CircuitState, FakeClock, Hedge, Outcome, PeakEwma, Retry, TokenBucket
from resilience.config import ConfigError, Setup, load

BASE: dict[str, Any] = {
    "policies": {
        "default": {
            "timeout": "5s",
            "retry": {"attempts": 3, "backoff": {"kind": "constant", "delay": "10ms"}},
            "circuit_breaker": {"failure_threshold": 2, "break_duration": "1h"},
            "token_bucket": {"rate": 1, "burst": 10},
            "bulkhead": 16,
        },
        "writes": {"timeout": "2s"},
    },
    "services": {"orders": {"discovery": ["127.0.0.1:8081", "127.0.0.1:8082"], "balancer": "peak_ewma"}},
    "grpc": {"policy": "default"},
    "http": {"policy": "default", "hosts": {"api": {"routes": [{"path": "/w/*", "policy": "writes"}]}}},
}


def changed(**edits: Any) -> dict[str, Any]:
    """BASE with ``edits`` applied: keys are dotted paths, ``None`` deletes."""
    data = copy.deepcopy(BASE)
    for path, value in edits.items():
        *parents, last = path.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def policy(setup: Setup, cls: type, name: str = "default") -> Any:
    return next(p for p in setup.pipeline(name).policies if isinstance(p, cls))


def open_breaker(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(breaker.options.failure_threshold or 5):
        breaker.release(breaker.acquire(None, clock.monotonic()), Outcome.FAILURE, 0.0, clock.monotonic())
    assert breaker.state is CircuitState.OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def setup(clock: FakeClock) -> Any:
    made = Setup(load(BASE), clock=clock)
    yield made
    made.close()


def test_policies_whose_settings_did_not_change_keep_their_object_and_state(setup: Setup, clock: FakeClock) -> None:
    pipeline = setup.pipeline("default")
    breaker, bucket = policy(setup, CircuitBreaker), policy(setup, TokenBucket)
    open_breaker(breaker, clock)
    for _ in range(6):
        bucket.take(clock.monotonic())
    tokens = bucket.available(clock.monotonic())
    balancer = setup.balancer("orders")
    result = setup.apply(load(changed(policies__default__retry={"attempts": 5})))
    assert result.applied and result.generation == 2
    assert result.changes == ("policies.default.retry: reconfigured",)
    assert setup.pipeline("default") is pipeline
    assert policy(setup, CircuitBreaker) is breaker and breaker.state is CircuitState.OPEN
    assert policy(setup, TokenBucket) is bucket and bucket.available(clock.monotonic()) == tokens
    assert policy(setup, Retry).options.attempts == 5
    assert setup.balancer("orders") is balancer


def test_changed_settings_go_through_reconfigure_and_keep_the_state(setup: Setup, clock: FakeClock) -> None:
    breaker = policy(setup, CircuitBreaker)
    open_breaker(breaker, clock)
    balancer = setup.balancer("orders")
    edits = changed(
        policies__default__circuit_breaker={"failure_threshold": 4, "break_duration": "30m"},
        services__orders__balancer={"kind": "peak_ewma", "decay": "9s"},
    )
    result = setup.apply(load(edits))
    assert "policies.default.circuit_breaker: reconfigured" in result.changes
    assert policy(setup, CircuitBreaker) is breaker
    assert breaker.state is CircuitState.OPEN and breaker.options.failure_threshold == 4
    assert setup.balancer("orders") is balancer and isinstance(balancer, PeakEwma) and balancer.options.decay == 9.0


def test_a_structural_change_swaps_the_chain_into_the_same_pipeline(setup: Setup, clock: FakeClock) -> None:
    pipeline = setup.pipeline("default")
    breaker = policy(setup, CircuitBreaker)
    open_breaker(breaker, clock)
    result = setup.apply(load(changed(policies__default__hedge={"delay": "50ms"}, policies__default__bulkhead=None)))
    assert set(result.changes) == {"policies.default.hedge: added", "policies.default.bulkhead: removed"}
    assert setup.pipeline("default") is pipeline
    assert [type(p).__name__ for p in pipeline.policies] == ["Timeout", "Retry", "Hedge", "CircuitBreaker",
                                                             "TokenBucket"]  # fmt: skip
    assert policy(setup, CircuitBreaker) is breaker and breaker.state is CircuitState.OPEN
    renamed = setup.apply(load(changed(policies__default__circuit_breaker={"failure_threshold": 2, "name": "b2"})))
    assert "policies.default.circuit_breaker: rebuilt" in renamed.changes  # a new name: a new breaker
    assert policy(setup, CircuitBreaker) is not breaker and policy(setup, CircuitBreaker).name == "b2"


def test_sets_added_and_removed(setup: Setup) -> None:
    data = changed(policies__reads={"retry": {"attempts": 2}})
    assert setup.apply(load(data)).applied and isinstance(policy(setup, Retry, "reads"), Retry)
    data["policies"].pop("reads")
    data["policies"].pop("writes")
    data["http"]["hosts"]["api"]["routes"][0]["policy"] = "default"
    result = setup.apply(load(data))
    assert {"policies.reads: removed", "policies.writes: removed"} <= set(result.changes)
    assert sorted(setup.pipelines()) == ["default"]


def _snapshot(setup: Setup) -> Any:
    return (
        setup.generation,
        {
            name: [(type(p).__name__, id(p), repr(getattr(p, "options", None))) for p in pipeline.policies]
            for name, pipeline in setup.pipelines().items()
        },
        {name: id(p) for name, p in setup.pipelines().items()},
        id(setup.balancer("orders")),
        repr(getattr(setup.balancer("orders"), "options", None)),
        setup.discovery.endpoints("orders"),
    )


def test_a_refused_config_changes_nothing_and_is_logged_without_secrets(
    setup: Setup, caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(setup)
    monkeypatch.setenv("RELOAD_SECRET", "pa55-w0rd-xyz")
    path = tmp_path / "bad.yaml"
    bad = changed(policies__default__retry={"attempts": 0}, services__orders__discovery=["127.0.0.1:9999"])
    bad["policies"]["default"]["timeout"] = "${RELOAD_SECRET}"
    path.write_text(yaml.safe_dump(bad))
    with caplog.at_level(logging.WARNING, logger="resilience.config"):
        result = setup.reload(path)
    assert not result.applied and isinstance(result.error, ConfigError) and result.generation == 1
    assert _snapshot(setup) == before
    assert "policies.default.retry.attempts: must be >= 1, got 0" in caplog.text
    assert "keeping generation 1" in caplog.text and "pa55-w0rd-xyz" not in caplog.text


def test_a_config_whose_building_fails_changes_nothing(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    before = _snapshot(setup)
    bad = changed(
        policies__default__retry={"attempts": 9},  # valid, and would be a reconfigure
        policies__limited={"rate_limit": {"rate": "5/second", "storage": "nosuchscheme://x"}},  # fails when built
    )
    with caplog.at_level(logging.WARNING, logger="resilience.config"):
        result = setup.apply(load(bad))
    assert not result.applied and result.error is not None
    assert _snapshot(setup) == before and policy(setup, Retry).options.attempts == 3
    assert "refused: 1 problem" in caplog.text and "keeping generation 1" in caplog.text
    assert isinstance(result.error, ConfigError) and result.error.issues[0].path == "(building)"


# -- hypothesis: invalid configs, however they are invalid, are never partly applied ------------------------

_BAD_VALUES = st.sampled_from([-1, 0, "x", 1e12, [], {}, True, None, "-5s", {"nope": 1}])


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        out = [(*path, "__unknown__")]
        for key, value in node.items():
            out += _leaves(value, (*path, key))
        return out
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _leaves(value, (*path, i))]
    return [path]


_PATHS = [p for p in _leaves(BASE) if p]


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        if (isinstance(node, dict) and not isinstance(node.get(part), dict | list)) or (
            isinstance(node, list) and not isinstance(node[part], dict | list)
        ):
            node[part] = {}
        node = node[part]
    if path[-1] == "__unknown__":
        node["retires" if "retry" in node else "atempts"] = value
    elif value is None and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mutations=st.lists(st.tuples(st.sampled_from(_PATHS), _BAD_VALUES), min_size=1, max_size=3),
    good=st.sampled_from([("retry", {"attempts": 6}), ("bulkhead", 4), ("hedge", {"delay": "5ms"})]),
    unbuildable=st.sampled_from([None, "storage", "etcd"]),
)
def test_invalid_configs_are_never_partly_applied(
    mutations: list[Any], good: tuple[str, Any], unbuildable: str | None
) -> None:
    with Setup(load(BASE), clock=FakeClock()) as setup:
        before = _snapshot(setup)
        data = copy.deepcopy(BASE)
        data["policies"]["default"][good[0]] = good[1]  # a valid change beside the invalid ones
        if unbuildable == "storage":  # valid, but fails when built
            data["policies"]["limited"] = {"rate_limit": {"rate": "5/second", "storage": "nosuchscheme://x"}}
        elif unbuildable == "etcd":  # valid, but no etcd answers there
            data["services"]["users"] = {"discovery": "etcd://127.0.0.1:1/services"}
        for path, value in mutations if unbuildable is None else mutations[:0]:
            _set(data, path, value)
        try:
            config = load(data)
        except ConfigError as error:
            assert error.issues
            result = setup.reload(data)
            assert not result.applied
        else:
            result = setup.apply(config)
            if result.applied:
                return  # the mutations happened to make a valid config
        assert _snapshot(setup) == before


# -- the file watcher -----------------------------------------------------------------------------------


def test_the_file_watcher_applies_a_changed_file_and_refuses_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "resilience.yaml"
    path.write_text(yaml.safe_dump(BASE))
    results: list[Any] = []
    with Setup(path, clock=FakeClock()) as setup:
        watcher = setup.watch_file(path, interval=3600, on_reload=results.append)
        assert watcher.check() is None  # unchanged
        path.write_text(yaml.safe_dump(changed(policies__default__retry={"attempts": 4})))
        applied = watcher.check()
        assert applied is not None and applied.applied and policy(setup, Retry).options.attempts == 4
        path.write_text("policies: {default: {retry: {attempts: -3}}}\n")
        with caplog.at_level(logging.WARNING, logger="resilience.config"):
            refused = watcher.check()
        assert refused is not None and not refused.applied and policy(setup, Retry).options.attempts == 4
        assert "policies.default.retry.attempts: must be >= 1, got -3" in caplog.text
        assert watcher.check() is None  # the same bad content is not tried again
        path.unlink()
        assert watcher.check() is None and setup.generation == 2
        assert "cannot be read" in caplog.text
        path.write_text(yaml.safe_dump(changed(policies__default__retry={"attempts": 4})))
        assert watcher.check() is not None  # back: the same content as in force, applied with no change
        assert results[:2] == [applied, refused]
    with pytest.raises(ValueError, match=r"interval must be a number of seconds in \[0.01, 3600\], got 0"):
        Setup(path).watch_file(path, interval=0)


def test_the_file_watcher_thread_picks_up_changes(tmp_path: Path) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text('[policies.default]\nbulkhead = 4\n[grpc]\npolicy = "default"\n')
    with Setup(path) as setup:
        setup.watch_file(path, interval=0.02)
        path.write_text('[policies.default]\nbulkhead = 8\n[grpc]\npolicy = "default"\n')
        deadline = time.monotonic() + 10
        while setup.generation < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert setup.generation == 2
        assert setup.pipeline("default").policies[0].options.max_concurrent == 8  # type: ignore[attr-defined]
    assert not any(t.name.startswith("config-watch") and t.is_alive() for t in __import__("threading").enumerate())


def test_enabling_telemetry_replaces_every_chain_and_keeps_the_policies(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resilience.telemetry as telemetry

    events: list[Any] = []
    monkeypatch.setattr(telemetry, "configure", lambda **settings: events.append, raising=False)
    pipeline, hedge_free = setup.pipeline("default"), list(setup.pipeline("default").policies)
    result = setup.apply(load(changed(telemetry={"enabled": True})))
    assert result.applied and setup.pipeline("default") is pipeline and list(pipeline.policies) == hedge_free
    assert events.append in pipeline.listeners
    assert not any(isinstance(p, Hedge) for p in pipeline.policies)


# -- against a real gRPC server: balancer scores and a method's new set ------------------------------------


def test_balancer_scores_and_a_channels_methods_follow_a_reload() -> None:
    import grpc

    from ._grpc_service import UNARY, Fault, callables, start

    running = start()
    data: dict[str, Any] = {
        "policies": {
            "default": {"retry": {"attempts": 3, "backoff": {"kind": "constant", "delay": 0}}},
            "writes": {"timeout": "5s"},
        },
        "services": {"echo": {"discovery": [running.address], "balancer": {"kind": "peak_ewma", "decay": "2s"}}},
        "grpc": {"policy": "default", "idempotent": True},
    }
    try:
        with Setup(load(data)) as setup, setup.grpc_channel("echo") as channel:
            unary = callables(channel)[UNARY]  # made once: it must see the reloads
            for _ in range(5):
                assert unary(b"x", timeout=5) == b"x"
            balancer, pool = setup.balancer("echo"), channel.pool
            scores = [state.score for state in pool.states]
            costs = [score.cost for score in scores]
            assert all(score is not None for score in scores)
            data["policies"]["default"]["retry"]["attempts"] = 4
            data["services"]["echo"]["balancer"]["decay"] = "7s"
            data["grpc"]["services"] = {"test.Echo": {"methods": {"Unary": {"policy": "writes"}}}}
            assert setup.apply(load(data)).applied
            assert setup.balancer("echo") is balancer and balancer.options.decay == 7.0
            assert [state.score for state in pool.states] == scores and [s.cost for s in scores] == costs
            running.service.script(UNARY, Fault(code=grpc.StatusCode.UNAVAILABLE))
            before = running.service.count(UNARY)
            with pytest.raises(grpc.RpcError):
                unary(b"x", timeout=5)  # now under "writes": no retry
            assert running.service.count(UNARY) == before + 1
    finally:
        running.stop()
