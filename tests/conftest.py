from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience import FakeClock
from resilience.discovery.etcd import EtcdClient

from .servers import EtcdServer, RedisServer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, shared by the session."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """A real etcd on free loopback ports with a temporary data directory."""
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    """A real etcd for one test module, with progress notifications every 200 ms (modules
    that need other flags define their own)."""
    server = EtcdServer(progress_interval="200ms")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[EtcdClient]:
    """The test's own etcd client, to put and delete behind the code under test's back."""
    with EtcdClient(f"etcd://127.0.0.1:{etcd.port}") as c:
        yield c
