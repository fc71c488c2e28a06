"""A 3-member etcd cluster: one member killed, the client goes on through another."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from resilience.discovery.etcd import EtcdClient, EtcdDiscovery
from resilience.discovery.registration import Registrator
from resilience.policies import Constant

from ._etcd_helpers import Updates, addresses, unique_prefix, value, wait_until
from .servers import EtcdCluster

pytestmark = pytest.mark.etcd


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    c = EtcdCluster(3, progress_interval="200ms")
    c.start()
    try:
        yield c
    finally:
        c.close()


def _via(cluster: EtcdCluster, member: int) -> EtcdClient:
    return EtcdClient(f"etcd://127.0.0.1:{cluster.members[member].port}")


@pytest.mark.parametrize("mode", ["thread", "asyncio"])
def test_the_watch_goes_on_through_another_member(cluster: EtcdCluster, mode: str) -> None:
    prefix = unique_prefix("cluster")
    url = f"etcd://{cluster.hosts}{prefix}"
    updates = Updates()

    def scenario(discovery: EtcdDiscovery) -> None:
        with _via(cluster, 2) as third:
            third.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
        assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.1:80"])
        cluster.members[0].kill()  # the member the watch is on (the first listed)
        assert wait_until(cluster.members[1].ready)  # a leader again (the killed one may have been it)
        with _via(cluster, 1) as second:
            second.put(f"{prefix}/orders/b", value("10.0.0.2:80"))
            second.delete(f"{prefix}/orders/a")
        assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.2:80"])

    if mode == "thread":
        with EtcdDiscovery(url, backoff=Constant(0.05), on_update=updates) as discovery:
            assert discovery.client is not None and discovery.client.config.urls[0].endswith(
                str(cluster.members[0].port)
            )
            scenario(discovery)
    else:

        async def main() -> None:
            discovery = await EtcdDiscovery.connect(url, backoff=Constant(0.05), on_update=updates)
            try:
                await asyncio.to_thread(scenario, discovery)
            finally:
                await discovery.aclose()

        asyncio.run(main())
    events = updates.events()  # resumed from the revision: nothing missed or repeated
    assert [(kind, key) for kind, key, _ in events] == [
        ("put", f"{prefix}/orders/a"),
        ("put", f"{prefix}/orders/b"),
        ("delete", f"{prefix}/orders/a"),
    ]
    assert [r for _, _, r in events] == sorted({r for _, _, r in events})
    assert updates.resyncs() == 1


def test_a_registration_survives_the_death_of_its_member(cluster: EtcdCluster) -> None:
    prefix = unique_prefix("cluster-reg")
    url = f"etcd://{cluster.hosts}{prefix}"
    with Registrator(url, "orders", "10.0.0.7:80", ttl=2, backoff=Constant(0.05)) as registrator:
        cluster.members[0].kill()
        renewed = registrator.renewals
        # Renewals every 0.67 s go to another member: the lease never lapses, no new one is needed.
        assert wait_until(lambda: registrator.renewals >= renewed + 4)
        with _via(cluster, 1) as second:
            assert registrator.registrations == 1
            kvs, _ = second.range_prefix(prefix)
            assert [json.loads(kv.value)["address"] for kv in kvs] == ["10.0.0.7:80"]
    with _via(cluster, 2) as third:
        assert wait_until(lambda: third.range_prefix(prefix)[0] == [])
