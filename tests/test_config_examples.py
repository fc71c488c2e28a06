"""The config examples run, against their local servers, and their config files pass ``config check``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_the_http_example_runs() -> None:
    done = run(str(EXAMPLES / "http_client_config.py"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "sync GETs: [200, 200, 200, 200, 200, 200]" in out
    assert "sync POST: 201" in out
    assert "async GETs: [200, 200, 200, 200, 200, 200]" in out
    assert "reloaded: retry attempts 4, same breaker: True" in out
    assert "after the reload: [200, 200, 200]" in out
    assert "bad file refused: retry attempts still 4, generation 2" in out
    assert "window_sise: unknown key (did you mean 'window_size'?)" in done.stderr


def test_the_grpc_example_runs() -> None:
    done = run(str(EXAMPLES / "grpc_client_config.py"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "interceptor: ['hello, call 0', 'hello, call 1', 'hello, call 2']" in out
    assert "channel: ['hello, balanced 0', 'hello, balanced 1', 'hello, balanced 2']" in out
    assert "CreateOrder (not idempotent): ['failed: UNAVAILABLE', 'failed: UNAVAILABLE']" in out
    assert "aio: ['hello, aio 0', 'hello, aio 1', 'hello, aio 2']" in out
    assert "CreateOrder (now retried): ['order 3', 'order 4']" in out


@pytest.mark.parametrize("name", ["http_client_config.yaml", "grpc_client_config.toml"])
def test_the_example_configs_pass_config_check(name: str) -> None:
    env = {k: "127.0.0.1:1" for k in ("ORDERS_1", "ORDERS_2", "GREETER_1", "GREETER_2")}
    done = run("-m", "resilience.cli", "config", "check", str(EXAMPLES / name), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"config {EXAMPLES / name}: OK")
    missing = run("-m", "resilience.cli", "config", "check", str(EXAMPLES / name), env={})
    if "ORDERS_1" not in os.environ and "GREETER_1" not in os.environ:
        assert missing.returncode == 1 and "is not set" in missing.stderr
