"""EtcdDiscovery against a real etcd: list and watch, malformed values, progress, outages, compaction, close."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator

import pytest
import trio

from resilience.balancing import EndpointPool
from resilience.discovery import discovery_from_uri
from resilience.discovery.etcd import EtcdClient, EtcdDiscovery, EtcdUnavailableError
from resilience.policies import Constant

from ._etcd_helpers import Updates, addresses, await_until, etcd_threads, unique_prefix, value, wait_until
from .servers import EtcdServer, TcpProxy, free_port

pytestmark = pytest.mark.etcd


@pytest.fixture
def prefix() -> str:
    return unique_prefix("disc")


@pytest.fixture
def proxy(etcd: EtcdServer) -> Iterator[TcpProxy]:
    p = TcpProxy(etcd.port)
    try:
        yield p
    finally:
        p.close()


def test_lists_then_follows_additions_changes_and_removals(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    client.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
    client.put(f"{prefix}/orders/b", value("10.0.0.2:80", zone="z1", weight=3, metadata={"v": "1"}))
    client.put(f"{prefix}/users/a", value("10.0.1.1:80"))
    with EtcdDiscovery(f"etcd://127.0.0.1:{etcd.port}{prefix}") as discovery:
        assert addresses(discovery, "orders") == ["10.0.0.1:80", "10.0.0.2:80"]
        second = discovery.endpoints("orders")[1]
        assert (second.zone, second.weight, dict(second.metadata)) == ("z1", 3, {"v": "1"})
        assert discovery.services() == ["orders", "users"]
        assert discovery.endpoints("nobody") == ()

        version = discovery.version("orders")
        client.put(f"{prefix}/orders/c", value("10.0.0.3:80"))
        assert discovery.changed("orders", version, 10) > version
        assert addresses(discovery, "orders") == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]

        version = discovery.version("orders")
        client.put(f"{prefix}/orders/a", value("10.0.0.1:80", weight=5))
        discovery.changed("orders", version, 10)
        assert discovery.endpoints("orders")[0].weight == 5

        version = discovery.version("orders")
        client.delete(f"{prefix}/orders/b")
        discovery.changed("orders", version, 10)
        assert addresses(discovery, "orders") == ["10.0.0.1:80", "10.0.0.3:80"]
        assert addresses(discovery, "users") == ["10.0.1.1:80"]


def test_asyncio_mode_watches_from_a_task_and_aclose_ends_it(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    client.put(f"{prefix}/orders/a", value("10.0.0.1:80"))

    async def main() -> None:
        discovery = await EtcdDiscovery.connect(f"etcd://127.0.0.1:{etcd.port}{prefix}")
        try:
            assert discovery.client is None and discovery.running
            assert addresses(discovery, "orders") == ["10.0.0.1:80"]
            got: list[list[str]] = []
            loop = asyncio.get_running_loop()
            discovery.subscribe("orders", lambda eps: got.append([e.address for e in eps]), loop=loop)
            await asyncio.to_thread(client.put, f"{prefix}/orders/b", value("10.0.0.2:80"))
            assert await await_until(lambda: addresses(discovery, "orders") == ["10.0.0.1:80", "10.0.0.2:80"])
            await asyncio.to_thread(client.delete, f"{prefix}/orders/a")
            assert await await_until(lambda: got[-1:] == [["10.0.0.2:80"]])
        finally:
            await discovery.aclose()
        assert not discovery.running
        assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()
        assert addresses(discovery, "orders") == ["10.0.0.2:80"]  # the last snapshot stays readable

    asyncio.run(main())


def test_malformed_values_are_skipped_with_a_warning_naming_the_key(
    etcd: EtcdServer, client: EtcdClient, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "resilience.discovery.etcd")
    client.put(f"{prefix}/orders/good", value("10.0.0.1:80"))
    client.put(f"{prefix}/orders/not-json", "{oops")
    client.put(f"{prefix}/orders/no-address", '{"zone": "z"}')
    client.put(f"{prefix}/orders/bad-weight", value("10.0.0.9:80", weight=0))
    client.put(f"{prefix}/orders", value("10.0.0.8:80"))  # no instance id
    with EtcdDiscovery(f"etcd://127.0.0.1:{etcd.port}{prefix}") as discovery:
        assert addresses(discovery, "orders") == ["10.0.0.1:80"]
        text = caplog.text
        for key in ("not-json", "no-address", "bad-weight"):
            assert f"etcd key '{prefix}/orders/{key}' holds no valid endpoint" in text
        assert f"etcd key '{prefix}/orders' is not <prefix>/<service>/<instance-id>" in text
        assert "endpoint field 'weight' must be an int in [1, 1000000], got 0" in text

        # A good key turned bad keeps its last good value; a later good value replaces it.
        caplog.clear()
        revision = client.put(f"{prefix}/orders/good", "[1, 2]")
        assert wait_until(lambda: discovery.revision >= revision)
        assert addresses(discovery, "orders") == ["10.0.0.1:80"]
        assert f"etcd key '{prefix}/orders/good' holds no valid endpoint" in caplog.text
        version = discovery.version("orders")
        client.put(f"{prefix}/orders/good", value("10.0.0.2:80"))
        discovery.changed("orders", version, 10)
        assert addresses(discovery, "orders") == ["10.0.0.2:80"]


def test_progress_notifications_advance_the_revision(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    with EtcdDiscovery(f"etcd://127.0.0.1:{etcd.port}{prefix}") as discovery:
        start = discovery.revision
        elsewhere = client.put(f"{unique_prefix('other')}/x/1", value("10.0.0.1:80"))  # no event for this watch
        assert elsewhere > start
        assert wait_until(lambda: discovery.revision >= elsewhere)


def test_starting_while_etcd_is_down_fails_naming_the_url() -> None:
    port = free_port()
    with pytest.raises(EtcdUnavailableError, match=rf"no member of http://127\.0\.0\.1:{port}/services answered"):
        EtcdDiscovery(f"etcd://127.0.0.1:{port}", connect_timeout=0.5)
    with pytest.raises(EtcdUnavailableError, match=rf"127\.0\.0\.1:{port}.*pass fallback= endpoints"):
        asyncio.run(EtcdDiscovery.connect(f"etcd://127.0.0.1:{port}", connect_timeout=0.5))
    assert etcd_threads() == []


def test_a_fallback_serves_until_etcd_answers(client: EtcdClient, proxy: TcpProxy, prefix: str) -> None:
    client.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
    proxy.block()
    url = f"etcd://127.0.0.1:{proxy.port}{prefix}"
    fallback = {"orders": ["192.168.0.1:80"], "users": ["192.168.0.2:80"]}
    with EtcdDiscovery(url, fallback=fallback, backoff=Constant(0.05)) as discovery:
        assert discovery.fallback_active
        assert addresses(discovery, "orders") == ["192.168.0.1:80"]
        proxy.unblock()
        assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.1:80"])
        assert not discovery.fallback_active
        assert addresses(discovery, "users") == []  # etcd has none: its view wins


def test_the_last_known_endpoints_stay_while_etcd_is_unreachable(
    client: EtcdClient, proxy: TcpProxy, prefix: str
) -> None:
    client.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
    updates = Updates()
    url = f"etcd://127.0.0.1:{proxy.port}{prefix}"
    with EtcdDiscovery(url, backoff=Constant(0.05), on_update=updates) as discovery:
        pool: EndpointPool[None] = EndpointPool("orders", discovery)
        proxy.block()
        assert wait_until(lambda: discovery._control.failures >= 3)  # reconnects refused meanwhile
        assert addresses(discovery, "orders") == ["10.0.0.1:80"]
        assert [s.address for s in pool.states] == ["10.0.0.1:80"]
        client.put(f"{prefix}/orders/b", value("10.0.0.2:80"))
        proxy.unblock()
        assert wait_until(lambda: [s.address for s in pool.states] == ["10.0.0.1:80", "10.0.0.2:80"])
        assert updates.resyncs() == 1  # only the first listing: the watch resumed
        pool.close()


def test_an_endpoint_pool_follows_etcd(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    discovery = discovery_from_uri(f"etcd://127.0.0.1:{etcd.port}{prefix}")
    assert isinstance(discovery, EtcdDiscovery)
    pool: EndpointPool[None] = EndpointPool("orders", discovery)
    try:
        client.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
        assert wait_until(lambda: [s.address for s in pool.states] == ["10.0.0.1:80"])
        client.delete(f"{prefix}/orders/a")
        assert wait_until(lambda: pool.states == ())
    finally:
        pool.close()
        discovery.close()


def test_close_stops_the_thread_even_from_a_subscriber(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    discovery = EtcdDiscovery(f"etcd://127.0.0.1:{etcd.port}{prefix}")
    assert discovery.running and etcd_threads()
    closed: list[bool] = []

    def close_from_the_watch_thread(endpoints: object) -> None:
        if addresses(discovery, "orders"):
            discovery.close()
            closed.append(True)

    discovery.subscribe("orders", close_from_the_watch_thread)
    client.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
    assert wait_until(lambda: bool(closed))
    assert wait_until(lambda: not discovery.running)
    assert etcd_threads() == []
    assert discovery.client is not None and discovery.client._http.is_closed


def test_a_silent_stream_is_dropped_after_the_idle_timeout(client: EtcdClient, proxy: TcpProxy, prefix: str) -> None:
    url = f"etcd://127.0.0.1:{proxy.port}{prefix}"
    updates = Updates()
    # Progress notifications come every 200 ms: a stream quiet for 1 s is dead.
    with EtcdDiscovery(url, idle_timeout=1.0, backoff=Constant(0.05), on_update=updates) as discovery:
        proxy.freeze()  # the watch's connection goes silent without closing
        client.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
        assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.1:80"])
        assert updates.resyncs() == 1


# -- outages of etcd itself ------------------------------------------------------------------


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """An etcd for one test, to kill."""
    server = EtcdServer(progress_interval="200ms")
    server.start()
    try:
        yield server
    finally:
        server.close()


def _outage(server: EtcdServer, proxy: TcpProxy) -> None:
    """Kill etcd (-9) mid-watch and start it again, keeping the watching client away meanwhile."""
    server.kill()
    proxy.block()
    server.start()


@pytest.mark.parametrize("mode", ["thread", "asyncio", "trio"])
def test_kill_and_restart_mid_watch_every_put_seen_once(own_etcd: EtcdServer, mode: str) -> None:
    prefix = unique_prefix("kill")
    proxy = TcpProxy(own_etcd.port)
    url = f"etcd://127.0.0.1:{proxy.port}{prefix}"
    updates = Updates()
    direct = EtcdClient(f"etcd://127.0.0.1:{own_etcd.port}")
    expected: list[tuple[str, str, int]] = []

    def scenario(discovery: EtcdDiscovery) -> None:
        expected.append(("put", f"{prefix}/orders/0", direct.put(f"{prefix}/orders/0", value("10.0.0.100:80"))))
        assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.100:80"])
        _outage(own_etcd, proxy)
        direct.close()
        with EtcdClient(f"etcd://127.0.0.1:{own_etcd.port}") as again:  # puts while the watcher is cut off
            for i in range(1, 6):
                key = f"{prefix}/orders/{i}"
                expected.append(("put", key, again.put(key, value(f"10.0.0.{i}:80"))))
            expected.append(("delete", f"{prefix}/orders/0", again.put(f"{prefix}/zz", "x") + 1))
            assert again.delete(f"{prefix}/orders/0") == 1
        proxy.unblock()
        assert wait_until(lambda: addresses(discovery, "orders") == [f"10.0.0.{i}:80" for i in range(1, 6)])

    try:
        if mode == "thread":
            with EtcdDiscovery(url, backoff=Constant(0.05), on_update=updates) as discovery:
                scenario(discovery)
        elif mode == "trio":

            async def on_trio() -> None:
                async with EtcdDiscovery.open(url, backoff=Constant(0.05), on_update=updates) as discovery:
                    await trio.to_thread.run_sync(scenario, discovery)

            trio.run(on_trio)
        else:

            async def main() -> None:
                discovery = await EtcdDiscovery.connect(url, backoff=Constant(0.05), on_update=updates)
                try:
                    await asyncio.to_thread(scenario, discovery)
                finally:
                    await discovery.aclose()

            asyncio.run(main())
    finally:
        proxy.close()
    seen = [e for e in updates.events() if not e[1].endswith("/zz")]
    assert seen == expected  # each once, in order, no re-listing
    assert updates.resyncs() == 1
    assert etcd_threads() == []


@pytest.mark.parametrize("mode", ["thread", "trio"])
def test_a_compaction_during_the_outage_is_healed_by_a_new_listing(own_etcd: EtcdServer, mode: str) -> None:
    prefix = unique_prefix("compact")
    proxy = TcpProxy(own_etcd.port)
    updates = Updates()
    got: list[list[str]] = []
    want = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]

    def scenario(discovery: EtcdDiscovery) -> None:
        discovery.subscribe("orders", lambda eps: got.append([e.address for e in eps]))
        _outage(own_etcd, proxy)
        with EtcdClient(f"etcd://127.0.0.1:{own_etcd.port}") as again:
            again.delete(f"{prefix}/orders/0")
            again.put(f"{prefix}/orders/1", value("10.0.0.1:80", weight=2))
            last = 0
            for i in range(2, 5):
                last = again.put(f"{prefix}/orders/{i}", value(f"10.0.0.{i}:80"))
            again.compact(last)
        proxy.unblock()
        assert wait_until(lambda: addresses(discovery, "orders") == want)
        assert discovery.endpoints("orders")[0].weight == 2
        assert updates.resyncs() == 2  # the first listing, and the one after the compaction
        assert discovery.revision >= last

    try:
        with EtcdClient(f"etcd://127.0.0.1:{own_etcd.port}") as direct:
            direct.put(f"{prefix}/orders/0", value("10.0.0.100:80"))
            direct.put(f"{prefix}/orders/1", value("10.0.0.1:80"))
        url = f"etcd://127.0.0.1:{proxy.port}{prefix}"
        if mode == "thread":
            with EtcdDiscovery(url, backoff=Constant(0.05), on_update=updates) as discovery:
                scenario(discovery)
        else:

            async def on_trio() -> None:
                # The watch's stream is left on etcd's cancel line, not at its end.
                async with EtcdDiscovery.open(url, backoff=Constant(0.05), on_update=updates) as discovery:
                    await trio.to_thread.run_sync(scenario, discovery)

            trio.run(on_trio)
    finally:
        proxy.close()
    assert got[0] == ["10.0.0.100:80", "10.0.0.1:80"]
    assert got[-1] == want
    assert all(a != b for a, b in itertools.pairwise(got))  # no list delivered twice
