"""One call's trace as a tree, from the spans the OpenTelemetry listener made.

:class:`TraceKeeper` is a span exporter (for an SDK ``SimpleSpanProcessor``) that keeps the
spans of the traces worth showing — a call that retried or hedged — and forgets the rest,
so a long run holds a bounded number of spans. :func:`build_tree` turns one trace's spans
into a :class:`TraceNode` tree: the logical call, then its attempts and the policies'
decisions (span events) in time order, as Jaeger's timeline shows them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

__all__ = ["TraceKeeper", "TraceNode", "build_tree", "interest", "render"]


@dataclass
class TraceNode:
    """A line of the tree and the lines under it."""

    label: str
    children: list[TraceNode] = field(default_factory=list)

    def lines(self, indent: int = 0) -> list[str]:
        """The tree as indented text, one line per node."""
        out = ["  " * indent + self.label]
        for child in self.children:
            out += child.lines(indent + 1)
        return out


def _is_attempt(span: ReadableSpan) -> bool:
    return span.kind is SpanKind.CLIENT and span.attributes is not None and "resilience.attempt" in span.attributes


def interest(spans: Sequence[ReadableSpan]) -> tuple[int, int, int, int]:
    """How interesting a trace is: (retried and hedged, outcome success, attempts, kinds of
    decision and outcome seen); higher is better."""
    attempts = sum(1 for s in spans if _is_attempt(s))
    events = {e.name for s in spans for e in s.events}
    retried = "resilience.retry" in events
    hedged = "resilience.hedge" in events
    root = _root(spans)
    ok = root is not None and (root.attributes or {}).get("resilience.outcome") == "success"
    outcomes = {(s.attributes or {}).get("resilience.outcome") for s in spans if _is_attempt(s)}
    return (retried + hedged, int(ok), attempts, len(events) + len(outcomes))


def _root(spans: Sequence[ReadableSpan]) -> ReadableSpan | None:
    ids = {s.context.span_id for s in spans if s.context is not None}
    for span in spans:
        if (span.parent is None or span.parent.span_id not in ids) and not _is_attempt(span):
            return span
    return None


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _attr(attributes: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    return default if attributes is None else attributes.get(key, default)


def _error_name(value: Any) -> str:
    return str(value).rpartition(".")[2] if value else "?"


def _attempt_label(span: ReadableSpan) -> str:
    a = span.attributes
    hedge = int(_attr(a, "resilience.hedge", 0))
    which = f"hedge #{hedge}" if hedge else "primary"
    outcome = str(_attr(a, "resilience.outcome", "?"))
    detail = _attr(a, "rpc.response.status_code") or _attr(a, "http.response.status_code")
    if detail is None and _attr(a, "error.type"):
        detail = _error_name(_attr(a, "error.type"))
    took = _ms((span.end_time or 0) - (span.start_time or 0)) if span.end_time else "still running"
    endpoint = _attr(a, "resilience.endpoint")
    where = f" -> {endpoint}" if endpoint else ""
    status = f"{outcome} ({detail})" if detail is not None else outcome
    return f"attempt {_attr(a, 'resilience.attempt', '?')} ({which}){where}: {status} in {took}"


def _event_label(name: str, a: Mapping[str, Any] | None) -> str | None:
    if name == "resilience.retry":
        delay = float(_attr(a, "resilience.retry.delay", 0.0)) * 1000
        error = _error_name(_attr(a, "error.type"))
        return f"retry decided: attempt {_attr(a, 'resilience.attempt', '?')} failed ({error}), next in {delay:.0f} ms"
    if name == "resilience.retry.gave_up":
        return f"retry gave up after attempt {_attr(a, 'resilience.attempt', '?')} ({_attr(a, 'resilience.reason')})"
    if name == "resilience.hedge":
        delay = float(_attr(a, "resilience.hedge.delay", 0.0)) * 1000
        return f"hedge fired: hedge #{_attr(a, 'resilience.hedge', '?')} sent {delay:.0f} ms into the call"
    if name == "resilience.hedge.won":
        hedge = int(_attr(a, "resilience.hedge", 0))
        return f"{'hedge #' + str(hedge) if hedge else 'the primary'} answered first; the others are cancelled"
    if name == "resilience.hedge.attempt_failed":
        error = _attr(a, "error.type")
        hedge = int(_attr(a, "resilience.hedge", 0))
        which = f"hedge #{hedge}" if hedge else "the primary"
        why = f" ({_error_name(error)})" if error else ""
        return f"hedge race: {which} failed{why}, another attempt answers the call"
    if name == "resilience.rejected":
        return f"rejected by {_attr(a, 'resilience.rejected_by')}: {_attr(a, 'resilience.reason')}"
    if name == "resilience.circuit.state_changed":
        policy = str(_attr(a, "resilience.policy", "breaker"))
        who = policy if policy.startswith("breaker") else f"breaker {policy}"
        return (
            f"{who}: {_attr(a, 'resilience.circuit.old')} -> {_attr(a, 'resilience.circuit.new')} "
            f"({_attr(a, 'resilience.reason')})"
        )
    if name == "resilience.endpoint.ejected":
        return f"ejected {_attr(a, 'resilience.endpoint')} ({_attr(a, 'resilience.reason')})"
    if name == "resilience.endpoint.returned":
        return f"returned {_attr(a, 'resilience.endpoint')}"
    if name == "resilience.timeout":
        return f"timeout: {float(_attr(a, 'resilience.timeout', 0.0)) * 1000:.0f} ms ran out"
    if name == "resilience.fallback":
        return "fallback answered"
    if name == "exception":
        return None  # the span's outcome says it
    return name


def build_tree(spans: Sequence[ReadableSpan]) -> TraceNode:
    """The tree of one trace: the call's span, its attempts and the policies' decisions in time order.

    Raises:
        ValueError: ``spans`` has no call span (a trace of this project's listener has one).
    """
    root = _root(spans)
    if root is None:
        raise ValueError(f"no call span among {len(spans)} spans")
    start = root.start_time or 0
    a = root.attributes
    took = _ms((root.end_time or start) - start)
    policies = _attr(a, "resilience.policies", "")
    error = _attr(a, "error.type")
    outcome = str(_attr(a, "resilience.outcome", "?"))
    if error and outcome != "success":
        outcome += f" ({_error_name(error)})"
    tree = TraceNode(f"{root.name}: {outcome} in {took} [policies: {policies}]")
    rows: list[tuple[int, TraceNode]] = []
    for span in spans:
        if span is root or not _is_attempt(span):
            continue
        node = TraceNode(_attempt_label(span))
        rows.append((span.start_time or 0, node))
    failed_at = [s.end_time for s in spans if _is_attempt(s) and _attr(s.attributes, "resilience.outcome") == "failure"]
    for event in root.events:
        label = _event_label(event.name, event.attributes)
        if label is None:
            continue
        if event.name == "resilience.hedge" and any(end is not None and end <= event.timestamp for end in failed_at):
            label += " (an attempt had failed: the hedge goes at once)"
        rows.append((event.timestamp, TraceNode(label)))
    rows.sort(key=lambda row: row[0])
    for at, node in rows:
        node.label = f"+{(at - start) / 1e6:7.1f} ms  {node.label}"
        tree.children.append(node)
    return tree


def render(node: TraceNode) -> Any:
    """The tree as a ``rich.tree.Tree``."""
    from rich.text import Text
    from rich.tree import Tree

    tree = Tree(Text(node.label))

    def add(parent: Tree, children: list[TraceNode]) -> None:
        for child in children:
            add(parent.add(Text(child.label)), child.children)

    add(tree, node.children)
    return tree


class TraceKeeper(SpanExporter):
    """Keeps the spans of the traces that retried or hedged (the last ``keep``), drops the rest.

    The spans of a trace are held until its call span ends, plus the few that end after it (a
    sync hedge that lost ends its span on its own thread); then the trace is kept if it
    retried, hedged or sent more than one attempt, else forgotten.
    """

    def __init__(self, keep: int = 20, open_limit: int = 2000) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[int, list[ReadableSpan]] = OrderedDict()
        self._kept: OrderedDict[int, list[ReadableSpan]] = OrderedDict()
        self._done: deque[int] = deque(maxlen=200)
        self._keep = keep
        self._open_limit = open_limit

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                if span.context is None:
                    continue
                trace_id = span.context.trace_id
                kept = self._kept.get(trace_id)
                if kept is not None:
                    kept.append(span)
                    continue
                if trace_id in self._done:
                    continue  # a late span of a trace not worth keeping
                group = self._open.setdefault(trace_id, [])
                group.append(span)
                if not _is_attempt(span):  # the call's span: the trace is complete
                    del self._open[trace_id]
                    self._done.append(trace_id)
                    if interest(group)[0] or interest(group)[2] > 1:
                        self._kept[trace_id] = group
                        while len(self._kept) > self._keep:
                            self._kept.popitem(last=False)
            while len(self._open) > self._open_limit:
                self._open.popitem(last=False)
        return SpanExportResult.SUCCESS

    def traces(self) -> list[list[ReadableSpan]]:
        """The kept traces, oldest first."""
        with self._lock:
            return [list(group) for group in self._kept.values()]

    def best(self) -> list[ReadableSpan] | None:
        """The most interesting kept trace (retried and hedged, succeeded, most attempts; the latest of equals)."""
        traces = self.traces()
        if not traces:
            return None
        return max(reversed(traces), key=interest)

    def shutdown(self) -> None:
        pass
