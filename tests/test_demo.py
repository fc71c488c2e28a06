"""The live demo (``resilience demo``): its pieces, then whole runs in a subprocess."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from resilience import CircuitBreaker, Constant, FakeClock, Hedge, Pipeline, Retry
from resilience._demo import etcd_uri, make_fleet
from resilience._demo.clients import Collector
from resilience._demo.fleet import GRPC_METHOD, Behaviour, Fleet, Replica
from resilience._demo.run import ETCD_PREFIX, Demo, DemoOptions
from resilience._demo.stats import Stats, percentile
from resilience._demo.trace import TraceKeeper, build_tree
from resilience.cli import main
from resilience.discovery.etcd import EtcdClient
from resilience.telemetry import OpenTelemetryListener

from .servers import EtcdServer

ROOT = Path(__file__).resolve().parent.parent

# -- the fleet ----------------------------------------------------------------------------------


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    f = make_fleet(seed=3).start()
    try:
        yield f
    finally:
        f.stop()


def _grpc_call(address: str, client: str = "test") -> bytes | grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        unary = channel.unary_unary(GRPC_METHOD)
        try:
            reply: bytes = unary(b"x", timeout=5, metadata=(("x-demo-client", client),))
            return reply
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]


def test_fleet_serves_each_replica_on_its_own_port_and_counts_per_client(fleet: Fleet) -> None:
    ports = {r.port for r in fleet.replicas}
    assert len(ports) == 6 and 0 not in ports
    healthy_http, healthy_grpc = fleet["http-a"], fleet["grpc-a"]
    with httpx.Client() as client:
        for _ in range(3):
            answer = client.get(f"http://{healthy_http.address}/echo", headers={"x-demo-client": "bare"})
            assert (answer.status_code, answer.text) == (200, "http-a")
    assert _grpc_call(healthy_grpc.address, "resilient") == b"grpc-a"
    assert healthy_http.arrivals == {"bare": 3}
    assert healthy_grpc.arrivals == {"resilient": 1}


def test_a_killed_replica_refuses_connections_then_comes_back_on_the_same_port(fleet: Fleet) -> None:
    http, grpc_replica = fleet["http-c"], fleet["grpc-c"]
    http_port, grpc_port = http.port, grpc_replica.port
    with httpx.Client() as client:
        client.get(f"http://{http.address}/echo")  # a kept-alive connection, cut by the kill
        fleet.kill("http-c")
        fleet.kill("grpc-c")
        assert not http.up and not grpc_replica.up
        assert _refused(http_port) and _refused(grpc_port)
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://{http.address}/echo")
        assert _grpc_call(grpc_replica.address) == grpc.StatusCode.UNAVAILABLE
        fleet.revive("http-c")
        fleet.revive("grpc-c")
        assert (http.port, grpc_replica.port) == (http_port, grpc_port)
        assert client.get(f"http://{http.address}/echo").status_code in (200, 503)  # flaky, but it answers
    assert _grpc_call(grpc_replica.address) in (b"grpc-c", grpc.StatusCode.UNAVAILABLE)
    assert not _refused(grpc_port)


def test_stop_closes_every_port() -> None:
    f = make_fleet().start()
    ports = [r.port for r in f.replicas]
    f.stop()
    f.stop()  # idempotent
    assert all(_refused(p) for p in ports)
    assert all(_bindable(p) for p in ports)


def test_behaviour_is_seeded_and_checked() -> None:
    async def meet(behaviour: Behaviour, clock: FakeClock) -> list[float | None]:
        """Per request: ``None`` for a failure, else the seconds it waited on the clock."""
        seen: list[float | None] = []
        for _ in range(200):
            start = clock.monotonic()
            ok = await behaviour.meet()
            seen.append(clock.monotonic() - start if ok else None)
        return seen

    runs = []
    for _ in range(2):
        clock = FakeClock()
        behaviour = Behaviour(error_share=0.3, slow_share=0.2, seed=5, clock=clock)
        runs.append(asyncio.run(meet(behaviour, clock)))
    first = runs[0]
    assert first == runs[1]  # seeded: the same requests meet the same faults
    failed, slow = first.count(None), [w for w in first if w]
    assert 40 <= failed <= 80 and first.count(0.0) > 0  # 30 % of 200 fail
    assert slow and all(0.3 <= w <= 0.6 for w in slow)  # the slow tail waits within its range
    # They are the project's FaultInjection policies: errors first, then the slow tail.
    errors, tail = behaviour.faults
    assert (errors.calls, errors.injected) == (200, failed)
    assert (tail.calls, tail.injected) == (200 - failed, len(slow))
    assert Behaviour().pipeline is None  # a healthy replica answers without a pipeline
    with pytest.raises(ValueError, match=r"error_share must be within 0\.\.1, got 1\.5"):
        Behaviour(error_share=1.5)
    with pytest.raises(ValueError, match=r"slow_delay must be a pair 0 <= low <= high, got \(0\.5, 0\.1\)"):
        Behaviour(slow_delay=(0.5, 0.1))
    with pytest.raises(ValueError, match="replica names must be unique"):
        Fleet([Replica("x", "http", "healthy", Behaviour()), Replica("x", "grpc", "healthy", Behaviour())])
    with pytest.raises(ValueError, match="protocol must be 'http' or 'grpc', got 'udp'"):
        Fleet([Replica("x", "udp", "healthy", Behaviour())])


def test_without_rich_the_demo_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "resilience._demo" or m.startswith("resilience._demo.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich raises ImportError
    with pytest.raises(
        ImportError, match=r"the 'demo' extra \(rich is missing\): pip install 'resilience-policies\[demo\]'"
    ):
        importlib.import_module("resilience._demo")
    assert main(["demo", "--duration", "1"]) == 1
    assert "pip install 'resilience-policies[demo]'" in capsys.readouterr().err
    assert main(["demo", "--scenes", "ratelimit"]) == 0  # the scenes need nothing of it


# -- the stats window ---------------------------------------------------------------------------


def test_stats_window_forgets_old_calls_and_totals_keep_them() -> None:
    stats = Stats(window=5.0)
    stats.add(0.0, False, 0.5, error="HTTP 503")
    for i in range(1, 100):
        stats.add(1.0 + i * 0.01, True, i / 1000)
    recent = stats.recent(now=6.0)  # the failure at 0.0 is more than 5 s old
    assert (recent.calls, recent.ok, recent.success) == (99, 99, 1.0)
    assert recent.p50 == pytest.approx(0.050) and recent.p99 == pytest.approx(0.099)
    total = stats.total()
    assert (total.calls, total.ok, total.attempts) == (100, 99, 100)
    assert total.p99 == pytest.approx(0.099) and stats.errors == {"HTTP 503": 1}
    stats.attempted(3)
    assert stats.total().attempts_per_call == pytest.approx(1.03)
    assert stats.recent(now=100.0).calls == 0 and stats.recent(now=100.0).success is None


def test_percentile_and_bad_input() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0], 1.0) == 2.0 and percentile([1.0, 2.0], 0.0) == 1.0
    with pytest.raises(ValueError, match=r"q must be within 0\.\.1, got 2"):
        percentile([1.0], 2)
    with pytest.raises(ValueError, match="window must be > 0 seconds, got 0"):
        Stats(window=0)


def test_etcd_endpoints_become_a_uri_under_the_demo_prefix() -> None:
    assert etcd_uri("http://127.0.0.1:2379") == f"etcd://127.0.0.1:2379{ETCD_PREFIX}"
    assert etcd_uri(" 10.0.0.1:2379, http://10.0.0.2:2379/ ") == f"etcd://10.0.0.1:2379,10.0.0.2:2379{ETCD_PREFIX}"
    assert etcd_uri("https://e:2379") == f"etcds://e:2379{ETCD_PREFIX}"
    with pytest.raises(ValueError, match="'ftp://e:1' must be host:port or http"):
        etcd_uri("ftp://e:1")
    with pytest.raises(ValueError, match="'localhost' must be host:port"):
        etcd_uri("localhost")
    with pytest.raises(ValueError, match="names no endpoint"):
        etcd_uri(" , ")
    with pytest.raises(ValueError, match="mixes http and https"):
        etcd_uri("http://a:1,https://b:2")


def test_bad_etcd_endpoints_are_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ETCD_ENDPOINTS", "etcd-1")
    assert main(["demo", "--duration", "1"]) == 2
    assert "ETCD_ENDPOINTS: 'etcd-1' must be host:port or http[s]://host:port" in capsys.readouterr().err


def test_an_etcd_that_does_not_answer_ends_the_run_cleanly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it
    with _Run("--no-live", "--duration", "5", env={"ETCD_ENDPOINTS": f"127.0.0.1:{port}"}) as run:
        code, text = run.finish()
    assert code == 1, text
    assert f"resilience demo: etcd at etcd://127.0.0.1:{port}/resilience-demo: " in text
    assert "Traceback" not in text


def test_the_live_view_renders_the_tables() -> None:
    out = io.StringIO()
    demo = Demo(DemoOptions(duration=1, live=False, out=out))
    demo.stats["bare", "http"].add(time.monotonic(), False, 0.01, error="HTTP 503")
    demo.collector.note("grpc", "hedge #1 sent 50 ms into the call")
    console = Console(file=out, width=160)
    console.print(demo.view(time.monotonic()))
    text = out.getvalue()
    for title in ("resilience demo", "replicas", "resilient client's policies", "events (resilient clients)"):
        assert title in text
    assert "DOWN (refusing)" in text  # the fleet is not started
    assert "0.0%" in text and "hedge #1 sent 50 ms into the call" in text


# -- the trace tree -----------------------------------------------------------------------------


def _traced(keeper: TraceKeeper, *policies: object, clock: FakeClock | None = None) -> Pipeline:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keeper))
    listeners = [OpenTelemetryListener(tracer_provider=provider)]
    if clock is None:
        return Pipeline(*policies, listeners=listeners)  # type: ignore[arg-type]
    return Pipeline(*policies, listeners=listeners, clock=clock)  # type: ignore[arg-type]


def test_trace_tree_of_a_retried_call_from_real_spans() -> None:
    keeper = TraceKeeper()
    pipeline = _traced(keeper, Retry(3, backoff=Constant(0.25)), clock=FakeClock())
    failures = iter([ConnectionError("refused"), None])

    def call() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    assert pipeline.call(lambda: "ok") == "ok"  # one attempt: not kept
    assert pipeline.call(call) == "ok"
    assert len(keeper.traces()) == 1
    best = keeper.best()
    assert best is not None
    lines = build_tree(best).lines()
    assert lines[0].startswith("resilience.call: success in ") and lines[0].endswith("[policies: retry]")
    body = [line.split("ms  ", 1)[1] for line in lines[1:]]
    assert body[0].startswith("attempt 1 (primary): failure (ConnectionError) in ")
    assert body[1] == "retry decided: attempt 1 failed (ConnectionError), next in 250 ms"
    assert body[2].startswith("attempt 2 (primary): success in ")
    assert all(line.startswith("  +") for line in lines[1:])


def test_trace_keeper_prefers_a_call_that_retried_and_hedged() -> None:
    keeper = TraceKeeper(keep=3)
    retried = _traced(keeper, Retry(3, backoff=Constant(0.0)))
    hedge = Hedge(0.0)
    hedged = _traced(keeper, Retry(3, backoff=Constant(0.0)), hedge)
    attempts = iter([ConnectionError("a"), None, ConnectionError("b"), ConnectionError("c"), None])

    def call() -> str:
        error = next(attempts, None)
        if error is not None:
            raise error
        return "ok"

    assert retried.call(call) == "ok"
    with hedge:  # its worker threads end with it
        assert hedged.call(call) == "ok"
    best = keeper.best()
    assert best is not None
    text = "\n".join(build_tree(best).lines())
    assert "hedge fired: hedge #1 sent" in text and "[policies: retry,hedge]" in text
    for _ in range(5):
        retried.call(lambda: "ok")
    assert len(keeper.traces()) == 2  # the plain calls were not kept
    with pytest.raises(ValueError, match="no call span among 0 spans"):
        build_tree([])


def test_trace_tree_names_a_breaker_transition_once() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    breaker = CircuitBreaker(failure_threshold=1, name="breaker 127.0.0.1:1")
    pipeline = Pipeline(breaker, listeners=[OpenTelemetryListener(tracer_provider=provider)])

    def refused() -> str:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        pipeline.call(refused)
    lines = build_tree(exporter.get_finished_spans()).lines()
    assert lines[0].startswith("resilience.call: failure (ConnectionError) in ")
    assert any(line.endswith("  breaker 127.0.0.1:1: closed -> open (failure_threshold)") for line in lines), lines


def test_collector_counts_what_the_policies_did() -> None:
    lines: list[str] = []
    collector = Collector(on_line=lines.append)
    pipeline = Pipeline(Retry(3, backoff=Constant(0.0)), listeners=[collector])
    attempts = iter([ConnectionError("refused"), None])

    def call() -> str:
        error = next(attempts, None)
        if error is not None:
            raise error
        return "ok"

    pipeline.call(call)
    service = pipeline.context().service
    assert collector.attempts[service] == 2 and collector.retries[service] == 1
    assert any("retry: attempt 1 ConnectionError, again in 0 ms" in line for line in collector.log)
    assert lines == []  # retries are logged, not printed at once


# -- whole runs ---------------------------------------------------------------------------------


class _Run:
    """The demo in a subprocess, its output read line by line from a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resilience.cli", "demo", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed test: stop the demo
            self.proc.kill()
            self.finish()

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code, "".join(self.lines)


def _ports(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"replica \S+\s+127\.0\.0\.1:(\d+)", text)]


def _lost(text: str, protocol: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(lost, calls) of the bare and the resilient client, from the summary's sentence."""
    m = re.search(
        rf"^{protocol}: the bare client lost (\d+) of (\d+) calls.*the resilient one lost (\d+) of (\d+)", text, re.M
    )
    assert m is not None, text
    a, b, c, d = map(int, m.groups())
    return (a, b), (c, d)


def test_a_short_run_prints_the_trace_and_the_summary_and_the_resilient_client_wins() -> None:
    with _Run("--duration", "4") as run:  # stdout is a pipe: plain lines without --no-live
        code, text = run.finish()
    assert code == 0, text
    assert "\x1b[" not in text and re.search(r"^\[ *2\.\ds\] ", text, re.M), text
    assert "one call's trace" in text and re.search(
        r"[├└]── \+ *[\d.]+ ms  attempt 1 \(primary\) -> 127\.0\.0\.1:", text
    )
    assert "summary" in text and "attempts per call" in text
    assert "http-c died" in text and "http-c is back" in text
    for protocol in ("http", "grpc"):
        (bare_lost, bare_calls), (ours_lost, ours_calls) = _lost(text, protocol)
        assert bare_calls > 0 and ours_calls > 0
        # success counts, not timings: the resilient client's share of successes is at least the bare one's
        assert (ours_calls - ours_lost) * bare_calls >= (bare_calls - bare_lost) * ours_calls, text
    assert len(_ports(text)) == 6


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_everything_and_prints_the_summary_so_far(sig: signal.Signals, code: int) -> None:
    with _Run("--no-live", "--duration", "60") as run:
        run.until(r"^\[ *\d+\.\ds\] ")  # the first periodic line: the traffic flows
        run.proc.send_signal(sig)
        status, text = run.finish(timeout=20)
    assert status == code, text
    assert "summary (interrupted)" in text and f"stopped by {sig.name}" in text
    assert "Traceback" not in text
    ports = _ports(text)
    assert len(ports) == 6
    assert all(_refused(p) for p in ports) and all(_bindable(p) for p in ports)


@pytest.mark.etcd
def test_with_etcd_the_replicas_register_and_are_gone_after(etcd_server: EtcdServer) -> None:
    with (
        _Run("--no-live", "--duration", "6", env={"ETCD_ENDPOINTS": etcd_server.url}) as run,
        EtcdClient(f"etcd://127.0.0.1:{etcd_server.port}") as client,
    ):

        def keys() -> dict[str, str]:
            kvs, _ = client.range_prefix(ETCD_PREFIX + "/")
            return {kv.key: json.loads(kv.value)["address"] for kv in kvs}

        run.until(r"the flaky replicas die at")
        ports = _ports("".join(run.lines))
        registered = keys()
        assert sorted(int(a.rsplit(":", 1)[1]) for a in registered.values()) == sorted(ports)
        assert {k.rsplit("/", 2)[1] for k in registered} == {"demo-http", "demo-grpc"}
        run.until(r"grpc-c died")
        assert len(keys()) == 4  # the dead replicas deregistered
        run.until(r"grpc-c is back")
        assert len(keys()) == 6
        code, text = run.finish()
        assert code == 0, text
        assert "etcd etcd://127.0.0.1:" in text
        assert keys() == {}
