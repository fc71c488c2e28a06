from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience import FakeClock

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
