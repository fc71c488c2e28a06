"""The chaos benchmark runs end to end and prints its tables (a smoke test: its figures are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"


def test_chaos_benchmark_prints_its_tables_and_stops_its_replicas() -> None:
    args = ["--quick", "--fleets", "healthy,recovering", "--stacks", "bare,resilience"]
    args += ["--requests", "40", "--warmup", "10", "--fail-for", "0.1", "--watch", "0.3"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for title in ("gRPC (grpc.aio)", "HTTP (httpx.AsyncClient)", "recovering fleet:", "goals for the resilience stack"):
        assert title in out, out
    rows = [row for row in map(str.split, out.splitlines()) if row[:1] in (["healthy"], ["recovering"])]
    rows = [row for row in rows if row[1] in ("bare", "resilience")]
    assert len(rows) == 8, out  # 2 fleets x 2 stacks x 2 protocols
    assert all(row[2] == "40" for row in rows if row[0] == "healthy"), out  # --requests per run
    assert "100% success on every fleet" in out


def test_chaos_benchmark_names_a_bad_option_value() -> None:
    command = [sys.executable, str(SCRIPT), "--fleets", "healthy,flaky"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "flaky" in done.stderr
    assert "healthy, mixed, dead, recovering" in done.stderr
