"""The etcd commands of ``resilience``: ``register`` and ``endpoints`` (see :mod:`resilience.cli`).

The etcd modules are imported when a command runs, so that ``resilience demo`` needs no httpx.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

__all__ = ["DEFAULT_ETCD", "endpoints", "register"]

DEFAULT_ETCD = "etcd://127.0.0.1:2379/services"


def _etcd_url(value: str | None) -> str:
    return value or os.environ.get("RESILIENCE_ETCD") or DEFAULT_ETCD


def _metadata(items: Sequence[str]) -> dict[str, str]:
    metadata = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--metadata wants KEY=VALUE, got {item!r}")
        metadata[key] = value
    return metadata


def register(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Register, keep the lease alive until SIGTERM or SIGINT, then deregister."""
    from .discovery._etcd_config import EtcdError
    from .discovery.registration import Registrator

    try:
        registrator = Registrator(
            _etcd_url(args.etcd),
            args.service,
            args.address,
            ttl=args.ttl,
            instance_id=args.id,
            zone=args.zone,
            weight=args.weight,
            metadata=_metadata(args.metadata),
        )
    except (ValueError, TypeError) as exc:
        err.write(f"resilience register: {exc}\n")
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            registrator.start()
        except EtcdError as exc:
            err.write(f"resilience register: {exc}\n")
            return 1
        out.write(f"registered {args.address} as {registrator.key} (lease {registrator.lease:x}, ttl {args.ttl} s)\n")
        out.flush()
        while not stop.wait(1.0):
            pass
        registrator.close()
        out.write(f"deregistered {registrator.key}\n")
        return 0
    finally:
        registrator.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _probe(address: str, host: str, port: int, timeout: float) -> tuple[bool, float, str]:
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return False, time.monotonic() - started, f"down ({type(exc).__name__})"
    took = time.monotonic() - started
    return True, took, f"up ({took * 1000:.1f} ms to connect)"


def endpoints(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """List the endpoints of a service as a client's endpoint pool holds them; 1 when there are none."""
    from .balancing import EndpointPool
    from .context import CallContext
    from .discovery._etcd_config import EtcdError
    from .discovery.etcd import EtcdDiscovery
    from .outcome import Outcome

    try:
        discovery = EtcdDiscovery(_etcd_url(args.etcd))
    except (EtcdError, ValueError, TypeError) as exc:
        err.write(f"resilience endpoints: {exc}\n")
        return 1
    try:
        pool: EndpointPool[None] = EndpointPool(args.service, discovery)
        health = {s.address: "not probed (--probe connects to each)" for s in pool.states}
        if args.probe:
            ctx = CallContext(args.service, "probe")
            for _ in range(len(pool.states)):  # untried first: one pick per endpoint
                selection = pool.pick(ctx)
                endpoint = selection.endpoint
                ok, took, text = _probe(endpoint.address, endpoint.host, endpoint.port, args.timeout)
                selection.release(Outcome.SUCCESS if ok else Outcome.FAILURE, took, time.monotonic(), ctx)
                health[endpoint.address] = text
        rows = [
            (
                s.address,
                s.endpoint.zone or "-",
                str(s.endpoint.weight),
                health[s.address],
                "-" if s.score is None else str(s.score),
                ",".join(f"{k}={v}" for k, v in sorted(s.endpoint.metadata.items())) or "-",
            )
            for s in pool.states
        ]
        pool.close()
        where = f"{discovery.config.where} at revision {discovery.revision}"
        if not rows:
            out.write(f"no endpoints for service {args.service!r} in {where}\n")
            return 1
        out.write(f"service {args.service!r} in {where}, balancer {pool.balancer!r}:\n")
        table = [("ADDRESS", "ZONE", "WEIGHT", "HEALTH", "SCORE", "METADATA"), *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
        return 0
    finally:
        discovery.close()
