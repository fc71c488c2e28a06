"""The chaos benchmark's figures for people: a markdown table and a PNG chart.

``markdown(rows)`` and ``chart(rows, path)`` take the same rows: one mapping per
(protocol, fleet, stack) with ``success`` (a share), ``p50`` and ``p99`` (seconds),
``attempts_per_request`` and ``requests``. The chart needs matplotlib (the ``bench`` extra);
the table needs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROTOCOL_TITLES = {"grpc": "gRPC (grpc.aio)", "http": "HTTP (httpx.AsyncClient)"}
# One colour per client stack, the same in every panel.
COLOURS = {"bare": "#9e9e9e", "tenacity+pybreaker": "#e6a23c", "resilience": "#2f7ed8"}

Row = Mapping[str, Any]


def _order(rows: Sequence[Row], key: str) -> list[str]:
    """The distinct values of ``key`` in the order they first appear."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(str(row[key]), None)
    return list(seen)


def markdown(rows: Sequence[Row]) -> str:
    """One markdown table per protocol: success, p50, p99 and attempts per request by fleet and client."""
    out: list[str] = []
    for protocol in _order(rows, "protocol"):
        out += [
            f"**{PROTOCOL_TITLES.get(protocol, protocol)}**",
            "",
            "| fleet | client | requests | success | p50 ms | p99 ms | attempts/req |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            if row["protocol"] != protocol:
                continue
            out.append(
                f"| {row['fleet']} | {row['stack']} | {row['requests']} | {row['success'] * 100:.2f}% "
                f"| {row['p50'] * 1000:.1f} | {row['p99'] * 1000:.1f} | {row['attempts_per_request']:.3f} |"
            )
        out.append("")
    return "\n".join(out)


def chart(rows: Sequence[Row], path: str | Path, title: str = "") -> Path:
    """Writes a PNG: per protocol, p99 (log scale) and success per fleet, one bar per client."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "the chart needs matplotlib: pip install 'resilience-policies[bench]' (or pip install matplotlib)"
        ) from None

    protocols = _order(rows, "protocol")
    fleets = _order(rows, "fleet")
    stacks = _order(rows, "stack")
    figure, axes = plt.subplots(2, len(protocols), figsize=(6.0 * len(protocols), 7.0), squeeze=False)
    width = 0.8 / max(1, len(stacks))
    for column, protocol in enumerate(protocols):
        p99_axis, success_axis = axes[0][column], axes[1][column]
        for k, stack in enumerate(stacks):
            by_fleet = {r["fleet"]: r for r in rows if r["protocol"] == protocol and r["stack"] == stack}
            xs = [i + (k - (len(stacks) - 1) / 2) * width for i in range(len(fleets))]
            p99 = [by_fleet[f]["p99"] * 1000 if f in by_fleet else 0.0 for f in fleets]
            success = [by_fleet[f]["success"] * 100 if f in by_fleet else 0.0 for f in fleets]
            colour = COLOURS.get(stack)
            p99_axis.bar(xs, p99, width, label=stack, color=colour)
            bars = success_axis.bar(xs, success, width, label=stack, color=colour)
            for bar, value in zip(bars, success, strict=True):
                if value < 99.995:
                    success_axis.annotate(
                        f"{value:.1f}",
                        (bar.get_x() + bar.get_width() / 2, value),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        p99_axis.set_title(PROTOCOL_TITLES.get(protocol, protocol))
        p99_axis.set_ylabel("p99 latency, ms (log scale)")
        p99_axis.set_yscale("log")
        p99_axis.set_ylim(bottom=1.0)  # bars from 1 ms: a log axis cut close to the data exaggerates
        success_axis.set_ylabel("success, %")
        success_axis.set_ylim(0, 105)
        for axis in (p99_axis, success_axis):
            axis.set_xticks(range(len(fleets)), fleets)
            axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=len(stacks), fontsize=8, bbox_to_anchor=(0.5, 0.955))
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 0.92))
    target = Path(path)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target
