"""examples/jaeger/traces.py sends its traces (issue 12, item 6): run as a user would, configured by the
OTEL_* variables or by its config file, exporting to an in-process OTLP receiver (no Jaeger here)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._otlp_receiver import OtlpReceiver, attributes_of

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "jaeger" / "traces.py"
CONFIG = ROOT / "examples" / "jaeger" / "config.yaml"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def run(receiver: OtlpReceiver, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_SERVICE_NAME="example-test")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("args", [(), ("--config", str(CONFIG))], ids=["OTEL_variables", "config_file"])
def test_the_example_makes_a_retried_hedged_trace_and_a_fallback_trace(
    receiver: OtlpReceiver, args: tuple[str, ...]
) -> None:
    out = run(receiver, *args)
    assert "retried and hedged: b'order 42'" in out and "fell back: b'cached order'" in out
    spans = receiver.spans()
    assert {resource["service.name"] for resource, _ in spans} == {"example-test"}
    calls = [s for _, s in spans if s.kind == 1]
    assert len(calls) == 2
    traces: dict[bytes, list[object]] = {}
    for _, span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    hedged = next(c for c in calls if "resilience.hedge" in [e.name for e in c.events])
    assert [e.name for e in hedged.events if e.name in ("resilience.retry", "resilience.hedge")] == [
        "resilience.hedge",
        "resilience.retry",
    ]
    attempts = sorted((s for s in traces[hedged.trace_id] if s.kind == 3), key=lambda s: s.start_time_unix_nano)
    found = [attributes_of(s.attributes) for s in attempts]
    assert [(a["resilience.attempt"], a["resilience.hedge"]) for a in found] == [(1, 0), (1, 1), (2, 0)]
    assert [a["rpc.response.status_code"] for a in found] == ["UNAVAILABLE", "UNAVAILABLE", "OK"]
    assert len({a["server.port"] for a in found}) == 3  # a, b, c
    fell_back = next(c for c in calls if c is not hedged)
    assert attributes_of(fell_back.attributes)["resilience.outcome"] == "fallback"
    assert "resilience.fallback" in [e.name for e in fell_back.events]


@pytest.mark.etcd
def test_the_example_with_its_replicas_registered_in_etcd(receiver: OtlpReceiver, etcd_server: Any) -> None:
    out = run(receiver, "--etcd", f"etcd://127.0.0.1:{etcd_server.port}/jaeger-example")
    assert "retried and hedged: b'order 42'" in out and "fell back: b'cached order'" in out
    spans = [s for _, s in receiver.spans()]
    assert len([s for s in spans if s.kind == 1]) == 2
    assert len([s for s in spans if s.kind == 3]) >= 3 + 3  # the first call's three attempts, the second's
