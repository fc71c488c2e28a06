"""What telemetry costs a call: nothing when off, and how much with the SDK on.

Run: ``.venv/bin/python benchmarks/telemetry_overhead.py [--rounds N] [--quick] [--markdown FILE]``.

Every row calls a no-op through the same pipeline, ``Timeout(10), Retry(3), CircuitBreaker(),
TokenBucket(1e9, 1_000_000), Bulkhead(1000)`` (the overhead benchmark's full pipeline), sync
(``Pipeline.call``) and asyncio (``Pipeline.acall``), and differs only in its listeners:

- **no listener**, twice (``A`` and ``B``): how far two identical rows come apart is this
  run's own noise;
- **OpenTelemetryListener, no SDK**: opentelemetry-api only, no global provider set (what a
  user who never configured OpenTelemetry has); the listener is inactive;
- **configure(enabled=False)**: the listener the config file's ``telemetry.enabled: false`` gives;
- **a plain listener**: a function that gets the policies' events (there are none on success);
- **a CallListener (no OpenTelemetry)**: the call and attempt events alone, to a no-op function;
- **SDK on**: an SDK TracerProvider (batch processor, an exporter that drops what it gets)
  and MeterProvider (a reader never collected): a call span, an attempt span and the
  metrics of each call;
- **SDK on, sampled out**: the same with a ratio sampler of 0 (spans not recorded, metrics still).

Rounds are interleaved: each round times every row once, in an order that rotates. A row's
figure for a round is the best of a few loops of calls; what is printed is the median over
rounds, in µs per call, and the difference to the first no-listener row. The machine is
shared: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

import resilience as r
from resilience.events import CallListener
from resilience.telemetry import OpenTelemetryListener, configure


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _sdk(ratio: float) -> OpenTelemetryListener:
    tracer_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    tracer_provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=1 << 16))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return OpenTelemetryListener(tracer_provider, meter_provider)


def _ignore(event: Any) -> None:
    return None


ROWS: list[tuple[str, Callable[[], list[Any]]]] = [
    ("no listener (A)", lambda: []),
    ("no listener (B)", lambda: []),
    ("OpenTelemetryListener, no SDK", lambda: [OpenTelemetryListener()]),
    ("configure(enabled=False)", lambda: [configure(enabled=False)]),
    ("a plain listener", lambda: [_ignore]),
    ("a CallListener (no OpenTelemetry)", lambda: [CallListener(_ignore)]),
    ("SDK on", lambda: [_sdk(1.0)]),
    ("SDK on, sampled out", lambda: [_sdk(0.0)]),
]
OFF_ROWS = ("OpenTelemetryListener, no SDK", "configure(enabled=False)")


def _pipeline(listeners: list[Any]) -> r.Pipeline:
    return r.Pipeline(
        r.Timeout(10),
        r.Retry(3),
        r.CircuitBreaker(),
        r.TokenBucket(1e9, 1_000_000),
        r.Bulkhead(1000),
        listeners=listeners,
        service="bench",
        method="Noop",
    )


def noop() -> int:
    return 1


async def anoop() -> int:
    return 1


def _time_sync(p: r.Pipeline, n: int, loops: int) -> float:
    call = p.call
    best = float("inf")
    for _ in range(loops):
        start = time.perf_counter()
        for _ in range(n):
            call(noop)
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


async def _time_async(p: r.Pipeline, n: int, loops: int) -> float:
    acall = p.acall
    best = float("inf")
    for _ in range(loops):
        start = time.perf_counter()
        for _ in range(n):
            await acall(anoop)
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def measure(rounds: int, n: int, loops: int) -> dict[tuple[str, str], list[float]]:
    """Per (row, mode): the figure of each round, in µs per call."""
    built = {name: (_pipeline(make()), _pipeline(make())) for name, make in ROWS}
    figures: dict[tuple[str, str], list[float]] = {}
    names = [name for name, _ in ROWS]
    loop = asyncio.new_event_loop()
    try:
        for name in names:  # warm up: first spans, first instruments, caches
            _time_sync(built[name][0], n // 10 or 1, 1)
            loop.run_until_complete(_time_async(built[name][1], n // 10 or 1, 1))
        for i in range(rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                sync_p, async_p = built[name]
                figures.setdefault((name, "sync"), []).append(_time_sync(sync_p, n, loops))
                figures.setdefault((name, "async"), []).append(loop.run_until_complete(_time_async(async_p, n, loops)))
    finally:
        loop.close()
    return figures


def table(figures: dict[tuple[str, str], list[float]], rounds: int) -> list[str]:
    lines = [
        "| listeners | sync µs/call | sync added | async µs/call | async added |",
        "|---|---:|---:|---:|---:|",
    ]
    base = {mode: statistics.median(figures["no listener (A)", mode]) for mode in ("sync", "async")}
    for name, _ in ROWS:
        cells = [name]
        for mode in ("sync", "async"):
            per_round = figures[name, mode]
            added = [x - a for x, a in zip(per_round, figures["no listener (A)", mode], strict=True)]
            cells += [f"{statistics.median(per_round):.2f}", f"{statistics.median(added):+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Median over {rounds} interleaved rounds; 'added' is the median of the per-round difference to "
        f"'no listener (A)' (sync {base['sync']:.2f} µs, async {base['async']:.2f} µs)."
    )
    return lines


def verdict(figures: dict[tuple[str, str], list[float]]) -> list[str]:
    """Free when off: each off row within the run's own noise (the A/B spread, at least 3%) of no listener."""
    lines = []
    for mode in ("sync", "async"):
        a, b = figures["no listener (A)", mode], figures["no listener (B)", mode]
        base = statistics.median(a)
        noise = max(abs(statistics.median(b) - base), 0.03 * base)
        for name in OFF_ROWS:
            added = statistics.median([x - y for x, y in zip(figures[name, mode], a, strict=True)])
            ok = added <= noise
            lines.append(
                f"{'PASS' if ok else 'FAIL'} free when off ({mode}): {name} adds {added:+.2f} µs; noise ±{noise:.2f} µs"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5000, help="calls per timed loop (default 5000)")
    parser.add_argument("--loops", type=int, default=3, help="timed loops per row and round; the best counts")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 3 rounds of short loops")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    args = parser.parse_args()
    rounds, calls = (3, 500) if args.quick else (args.rounds, args.calls)
    figures = measure(rounds, calls, args.loops)
    lines = [*table(figures, rounds), "", *verdict(figures)]
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
