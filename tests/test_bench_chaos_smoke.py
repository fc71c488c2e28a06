"""The chaos benchmark runs end to end and prints its tables (a smoke test: its figures are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"


def test_chaos_benchmark_prints_its_tables_and_stops_its_replicas(tmp_path: Path) -> None:
    args = ["--quick", "--fleets", "healthy,recovering", "--stacks", "bare,resilience"]
    args += ["--requests", "40", "--warmup", "10", "--fail-for", "0.1", "--watch", "0.3"]
    args += ["--markdown", str(tmp_path / "chaos.md")]
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
    # The markdown table next to the chart: one row per (protocol, fleet, stack), the same figures.
    table = (tmp_path / "chaos.md").read_text()
    assert "| fleet | client | requests | success | p50 ms | p99 ms | attempts/req |" in table
    rows = [line for line in table.splitlines() if line.startswith(("| healthy |", "| recovering |"))]
    assert len(rows) == 8, table
    assert all(line.split("|")[3].strip() == "40" for line in rows if line.startswith("| healthy |")), table
    png = (tmp_path / "chaos.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert f"chart: {tmp_path / 'chaos.png'}" in out


def test_chaos_chart_draws_every_fleet_and_client(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import _chaos_chart
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rows = [
        {"protocol": p, "fleet": f, "stack": s, "requests": 10, "success": 0.5 if s == "bare" else 1.0,
         "p50": 0.01, "p99": 0.3 if s == "bare" else 0.02, "attempts_per_request": 1.0}
        for p in ("grpc", "http") for f in ("healthy", "dead") for s in ("bare", "resilience")
    ]  # fmt: skip
    path = _chaos_chart.chart(rows, tmp_path / "c.png")
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 600  # two panels per protocol, side by side
    text = _chaos_chart.markdown(rows)
    assert text.count("| bare |") == 4 and "| 50.00% |" in text and "| 300.0 |" in text


def test_chaos_benchmark_names_a_bad_option_value() -> None:
    command = [sys.executable, str(SCRIPT), "--fleets", "healthy,flaky"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "flaky" in done.stderr
    assert "healthy, mixed, dead, recovering" in done.stderr
