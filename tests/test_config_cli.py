"""``resilience config check FILE`` and ``resilience config schema``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.cli import main
from resilience.config import json_schema

GOOD = """
policies:
  default:
    timeout: 5s
    retry: {attempts: 3}
    circuit_breaker: {failure_threshold: 5, break_duration: 30s}
    bulkhead: 32
  writes:
    timeout: 2s
discovery:
  registry: "etcd://app:${CLI_ETCD_PASSWORD}@127.0.0.1:2379/services"
services:
  orders: {discovery: registry, balancer: peak_ewma}
grpc:
  policy: default
http:
  policy: default
  hosts:
    api.example.com:
      routes: [{path: /orders/*, methods: [POST], policy: writes}]
"""

BAD = """
policies:
  default:
    retry: {attempts: 0, backof: {}}
grpc: {policy: defualt}
"""


def test_check_prints_a_summary_of_a_good_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_ETCD_PASSWORD", "very-secret-pw")
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config {path}: OK\n")
    policies = "timeout(5s) > retry(3 attempts, exponential_jitter) > circuit_breaker(5 in a row, break 30s)"
    assert f"  default: {policies} > bulkhead(32, queue 0)" in out
    assert "  writes: timeout(2s)" in out
    assert "  orders: registry, balancer peak_ewma" in out
    assert "http: default policy set default; 1 host(s), 1 route(s)" in out
    assert "very-secret-pw" not in out and "etcd://app:***@127.0.0.1:2379/services" in out


def test_check_lists_every_problem_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert main(["config", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"config {path} refused: 3 problems"
    assert "  policies.default.retry.attempts: must be >= 1, got 0" in lines
    assert "  policies.default.retry.backof: unknown key (did you mean 'backoff'?)" in lines
    unknown = "  grpc.policy: unknown policy set 'defualt' (did you mean 'default'?)"
    assert any(line.startswith(unknown) for line in lines)


def test_check_of_toml_and_of_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[policies.default]\nbulkhead = 8\n[grpc]\npolicy = "default"\n')
    assert main(["config", "check", str(path)]) == 0
    assert "default: bulkhead(8, queue 0)" in capsys.readouterr().out
    other = tmp_path / "c.conf"
    other.write_text("policies: {}\n")
    assert main(["config", "check", str(other)]) == 1
    assert "cannot tell the format" in capsys.readouterr().err
    assert main(["config", "check", str(other), "--format", "yaml"]) == 0
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json_schema()
    assert printed["$schema"].startswith("https://json-schema.org/")
    assert "RetrySection" in printed["$defs"]
    assert ":class:" not in json.dumps(printed)


def test_the_command_exits_non_zero_from_the_shell(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    done = subprocess.run(
        [sys.executable, "-m", "resilience.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "policies.default.retry.attempts: must be >= 1, got 0" in done.stderr
