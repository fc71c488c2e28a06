"""Traces to look at in Jaeger: a gRPC call that retries and hedges, and one that falls back.

Start Jaeger (and etcd) with the compose file beside this script, then run::

    docker compose -f examples/jaeger/compose.yaml up -d
    export OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 OTEL_SERVICE_NAME=jaeger-demo
    .venv/bin/python examples/jaeger/traces.py [--etcd etcd://localhost:2379/services]
    .venv/bin/python examples/jaeger/traces.py --config examples/jaeger/config.yaml

and open http://localhost:16686 (service ``jaeger-demo``).

The script starts three replicas of ``demo.Orders`` on 127.0.0.1: ``a`` fails with
UNAVAILABLE after 300 ms, ``b`` fails at once, ``c`` answers. A discovery channel over them
(static, or registered in etcd with ``--etcd``) tries them in that order. The first call
goes to ``a``; after 50 ms without an answer it is hedged on ``b``, which fails; ``a`` fails
too, so the call is retried, on ``c``, which answers: one trace with a call span, three
attempt spans (``a``, ``b``, ``c``) and the hedge and retry events on the call's span. The
second call asks every replica to fail (``x-demo-fail`` metadata): every attempt fails,
then the fallback answers.

Telemetry comes from the standard ``OTEL_*`` variables through
``resilience.telemetry.configure()``, or from the ``telemetry`` section of ``--config``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from interceptors.grpc import MethodPolicy
from interceptors.grpc_channel import resilient_channel
from resilience import (
    Balancer,
    CallContext,
    Constant,
    EndpointState,
    Fallback,
    Hedge,
    Pipeline,
    Retry,
    StaticDiscovery,
    Timeout,
)
from resilience.telemetry import OpenTelemetryListener, configure

SERVICE = "demo.Orders"
METHOD = f"/{SERVICE}/Get"
FALLBACK = b"cached order"


def fallback_answer(failure: Any = None) -> bytes:
    """The fallback's answer (named in config.yaml as ``traces:fallback_answer``)."""
    return FALLBACK


def start_replica(behaviour: str) -> tuple[grpc.Server, str]:
    """A replica that fails slowly (``"slow-fail"``), fails at once (``"fail"``) or answers (``"ok"``)."""

    def get(request: bytes, context: grpc.ServicerContext) -> bytes:
        asked = dict(context.invocation_metadata()).get("x-demo-fail")
        if behaviour == "slow-fail" and asked != "all":
            time.sleep(0.3)
        if behaviour != "ok" or asked == "all":
            context.abort(grpc.StatusCode.UNAVAILABLE, f"replica {behaviour} is failing on purpose")
        return b"order " + request

    handler = grpc.method_handlers_generic_handler(SERVICE, {"Get": grpc.unary_unary_rpc_method_handler(get)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class InOrder(Balancer):
    """The first of ``addresses`` the call has not tried: a predictable demo, whatever order
    discovery lists them in."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.rank = {address: i for i, address in enumerate(addresses)}

    def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
        fresh = [s for s in candidates if s.address not in (ctx.tried or ())] or candidates
        return min(fresh, key=lambda s: self.rank.get(s.address, len(self.rank)))


def pipeline(listener: OpenTelemetryListener | None, config: str | None) -> tuple[Pipeline, Any]:
    """The policies, from ``--config`` (its ``orders`` set and telemetry section) or built here."""
    if config is not None:
        from resilience.config import load

        setup = load(config).setup()
        return setup.pipeline("orders"), setup
    assert listener is not None
    policies = (
        Fallback(handler=fallback_answer),
        Timeout(5),
        Retry(2, backoff=Constant(0.05)),
        Hedge(delay=0.05),
    )
    return Pipeline(*policies, listeners=[listener], service=SERVICE), None


def wait_for(channel: Any, count: int, timeout: float = 5.0) -> None:
    """Until the channel's discovery lists ``count`` endpoints (etcd's watch is asynchronous)."""
    end = time.monotonic() + timeout
    while len(channel.endpoints) < count and time.monotonic() < end:
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make traces to look at in Jaeger.")
    parser.add_argument(
        "--etcd", metavar="URI", help="register the replicas under this etcd prefix (etcd://localhost:2379/services)"
    )
    parser.add_argument("--config", help="a config file: its 'orders' policy set and telemetry section")
    args = parser.parse_args(argv)
    listener = None
    if args.config is None:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            print("OTEL_EXPORTER_OTLP_ENDPOINT is not set: exporting to http://localhost:4317", file=sys.stderr)
        listener = configure(
            service_name=os.environ.get("OTEL_SERVICE_NAME", "jaeger-demo"),
            otlp_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4317",
        )
    policies, setup = pipeline(listener, args.config)
    replicas = [start_replica(b) for b in ("slow-fail", "fail", "ok")]
    addresses = [address for _, address in replicas]
    try:
        with contextlib.ExitStack() as stack:
            discovery: Any = StaticDiscovery({"orders": addresses})
            if args.etcd:  # registered with a lease; the channel makes the source from the URI
                from resilience.discovery.registration import Registrator

                for address in addresses:
                    stack.enter_context(Registrator(args.etcd, "orders", address, ttl=10))
                discovery = args.etcd
            channel = stack.enter_context(
                resilient_channel("orders", discovery, InOrder(addresses), MethodPolicy(policies, idempotent=True))
            )
            if args.etcd:
                wait_for(channel, len(addresses))
            get = channel.unary_unary(METHOD)
            answer = get(b"42", timeout=5)
            print("retried and hedged:", answer)
            assert answer == b"order 42"  # from c, after a's and b's failures
            answer = get(b"43", timeout=5, metadata=(("x-demo-fail", "all"),))
            print("fell back:", answer)
            assert answer == FALLBACK
    finally:
        for server, _ in replicas:
            server.stop(None)
        if listener is not None:
            listener.shutdown()  # flush the spans and metrics before leaving
        if setup is not None:
            setup.close()
    print("traces sent; open Jaeger's UI (http://localhost:16686) and search for the service")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
