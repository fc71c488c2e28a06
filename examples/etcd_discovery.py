"""Discovery and registration with etcd: replicas register themselves, the client follows them.

Run (with an etcd at hand)::

    ETCD_ENDPOINTS=127.0.0.1:2379 .venv/bin/python examples/etcd_discovery.py

``ETCD_ENDPOINTS`` lists the etcd members, ``host:port`` or ``http://host:port``
separated by commas, as for ``make demo`` (default ``127.0.0.1:2379``). The script uses
a fresh key prefix of its own and leaves nothing behind.

It starts two small HTTP replicas of service ``orders`` on free 127.0.0.1 ports and
registers each one in etcd with a ``Registrator`` (a key under a lease, renewed in the
background). The client is an ``httpx.Client`` whose resilient transport takes the
endpoints of ``orders`` from an ``EtcdDiscovery``, which watches etcd:

1. calls to ``http://orders/`` are balanced over both replicas;
2. replica ``b`` deregisters (its lease is revoked, its key goes): the client sees it
   leave and sends everything to ``a``, although ``b`` still runs (it stops at the end).

It exits 1 if a call fails or the client does not follow.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from interceptors.httpx import ResilientTransport
from resilience import Constant, EtcdDiscovery, Pipeline, Registrator, Retry, RoundRobin, Timeout


class Replica(BaseHTTPRequestHandler):
    """Answers with the replica's name, given to each server as ``server.name``."""

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_replica(name: str) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def wait_for(endpoints: Callable[[], Sequence[object]], count: int) -> None:
    """Until ``endpoints()`` lists ``count`` endpoints (etcd's watch is asynchronous); 10 s at most."""
    deadline = time.monotonic() + 10
    while len(endpoints()) != count:
        assert time.monotonic() < deadline, f"still {endpoints()}, expected {count} endpoints"
        time.sleep(0.02)


def main() -> None:
    members = os.environ.get("ETCD_ENDPOINTS", "127.0.0.1:2379").replace("http://", "")
    uri = f"etcd://{members}/examples-{uuid.uuid4().hex[:8]}"  # a prefix of our own
    (server_a, address_a), (server_b, address_b) = start_replica("a"), start_replica("b")
    try:
        # The replicas' side: each instance registers itself, under a 5 s lease.
        with Registrator(uri, "orders", address_a, ttl=5), EtcdDiscovery(uri) as discovery:
            registrator_b = Registrator(uri, "orders", address_b, ttl=5).start()

            # The client's side: the transport balances http://orders/ over what etcd lists.
            pipeline = Pipeline(Timeout(2.0), Retry(3, backoff=Constant(0.05)))
            transport = ResilientTransport(pipeline=pipeline, discovery=discovery, balancer=RoundRobin())
            with httpx.Client(transport=transport) as client:
                wait_for(lambda: discovery.endpoints("orders"), 2)  # what etcd lists
                served = Counter(client.get("http://orders/").text for _ in range(6))
                print("two replicas registered:", dict(sorted(served.items())))
                assert served == {"a": 3, "b": 3}

                # Replica b leaves: it deregisters first, and stops only later (below), so that
                # it could finish its work; the client follows etcd and sends it nothing more.
                registrator_b.close()
                wait_for(lambda: transport.pools()[0].endpoints, 1)  # what the client balances over
                served = Counter(client.get("http://orders/").text for _ in range(6))
                print("after b left:", dict(served))
                assert served == {"a": 6}
    finally:
        for server in (server_a, server_b):
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    main()
