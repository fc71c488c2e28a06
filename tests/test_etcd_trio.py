"""The etcd watch and the async registrator under trio (and ``open()`` on both libraries), against a real etcd.

The trio runs are started with ``trio.run`` itself: nothing of asyncio runs in them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio

from resilience.discovery.etcd import EtcdClient, EtcdDiscovery, EtcdUnavailableError
from resilience.discovery.registration import AsyncRegistrator
from resilience.policies import Constant

from ._etcd_helpers import addresses, await_until, etcd_threads, unique_prefix, value
from .servers import EtcdServer, TcpProxy, free_port

pytestmark = pytest.mark.etcd

LIBRARIES = ["asyncio", "trio"]

T = TypeVar("T")


@pytest.fixture
def prefix() -> str:
    return unique_prefix("trio")


def run_on(library: str, main: Callable[[], Awaitable[None]]) -> None:
    if library == "trio":
        trio.run(main)
    else:
        asyncio.run(main())  # type: ignore[arg-type]


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """A blocking call (the test's own etcd client) off the running library's thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return await trio.to_thread.run_sync(fn, *args)
    return await asyncio.to_thread(fn, *args)


def etcd_tasks() -> list[str]:
    """The etcd watch, lease and signal tasks alive in the running library."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        names: list[str] = []
        root = trio.lowlevel.current_root_task()
        assert root is not None
        stack = [root]
        while stack:
            task = stack.pop()
            for nursery in task.child_nurseries:
                for child in nursery.child_tasks:
                    names.append(child.name)
                    stack.append(child)
    else:
        names = [t.get_name() for t in asyncio.all_tasks() if not t.done()]
    return sorted(n for n in names if n.startswith("etcd-"))


def _keys(client: EtcdClient, prefix: str) -> dict[str, dict[str, object]]:
    kvs, _ = client.range_prefix(prefix + "/")
    return {kv.key: json.loads(kv.value) for kv in kvs}


# -- discovery -----------------------------------------------------------------------------------


@pytest.mark.parametrize("library", LIBRARIES)
def test_open_lists_then_follows_additions_and_removals(
    etcd: EtcdServer, client: EtcdClient, prefix: str, library: str
) -> None:
    client.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"

    async def main() -> None:
        got: list[list[str]] = []
        async with EtcdDiscovery.open(url) as discovery:
            assert discovery.running and discovery.client is None
            assert etcd_tasks() == [f"etcd-watch http://127.0.0.1:{etcd.port}{prefix}"]
            assert addresses(discovery, "orders") == ["10.0.0.1:80"]
            discovery.subscribe("orders", lambda eps: got.append([e.address for e in eps]))
            await in_thread(client.put, f"{prefix}/orders/b", value("10.0.0.2:80", zone="z1"))
            assert await await_until(lambda: addresses(discovery, "orders") == ["10.0.0.1:80", "10.0.0.2:80"])
            assert discovery.endpoints("orders")[1].zone == "z1"
            await in_thread(client.delete, f"{prefix}/orders/a")
            assert await await_until(lambda: got[-1:] == [["10.0.0.2:80"]])
        assert got == [["10.0.0.1:80"], ["10.0.0.1:80", "10.0.0.2:80"], ["10.0.0.2:80"]]
        assert not discovery.running
        assert etcd_tasks() == []
        assert discovery.aclient is not None and discovery.aclient._http.is_closed
        assert addresses(discovery, "orders") == ["10.0.0.2:80"]  # the last snapshot stays readable

    run_on(library, main)


def test_connect_into_a_nursery_then_aclose_leaves_no_task(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            discovery = await EtcdDiscovery.connect(url, nursery=nursery)
            assert [t.name for t in nursery.child_tasks] == [f"etcd-watch http://127.0.0.1:{etcd.port}{prefix}"]
            await in_thread(client.put, f"{prefix}/orders/a", value("10.0.0.1:80"))
            assert await await_until(lambda: addresses(discovery, "orders") == ["10.0.0.1:80"])
            await discovery.aclose()
            assert nursery.child_tasks == frozenset()
            assert not discovery.running
            assert discovery.aclient is not None and discovery.aclient._http.is_closed
            await discovery.aclose()  # idempotent

    trio.run(main)


def test_close_from_a_subscriber_in_the_watch_task_ends_it(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"

    async def main() -> None:
        async with EtcdDiscovery.open(url) as discovery:

            def close_when_listed(endpoints: object) -> None:
                if addresses(discovery, "orders"):
                    discovery.close()  # sync, from the watch task itself

            discovery.subscribe("orders", close_when_listed)
            await in_thread(client.put, f"{prefix}/orders/a", value("10.0.0.1:80"))
            assert await await_until(lambda: not discovery.running)
            assert etcd_tasks() == []

    trio.run(main)


def test_under_trio_a_task_needs_a_nursery() -> None:
    url = f"etcd://127.0.0.1:{free_port()}/p"  # nothing is sent: the checks come first

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"needs a nursery: use 'async with EtcdDiscovery\.open\(url\)'"):
            await EtcdDiscovery.connect(url)
        with pytest.raises(TypeError, match=r"nursery must be a trio nursery \(with start_soon\), got 'mine'"):
            await EtcdDiscovery.connect(url, nursery="mine")  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match=r"use 'async with AsyncRegistrator\(\.\.\.\)', or pass nursery="):
            await AsyncRegistrator(url, "orders", "10.0.0.7:80").start()

    trio.run(main)

    async def on_asyncio() -> None:
        with pytest.raises(TypeError, match=r"nursery= is for trio: under asyncio the task runs in the running loop"):
            await EtcdDiscovery.connect(url, nursery=object())  # type: ignore[arg-type]

    asyncio.run(on_asyncio())


@pytest.mark.parametrize("library", LIBRARIES)
def test_starting_while_etcd_is_down_raises_the_error_itself(library: str) -> None:
    port = free_port()
    url = f"etcd://127.0.0.1:{port}/p"

    async def main() -> None:
        with pytest.raises(EtcdUnavailableError, match=rf"127\.0\.0\.1:{port}.*pass fallback= endpoints"):
            async with EtcdDiscovery.open(url, connect_timeout=0.5):
                pytest.fail("opened without etcd")
        with pytest.raises(EtcdUnavailableError, match=rf"cannot register /p/orders/10.0.0.7:80: no member .*:{port}"):
            async with AsyncRegistrator(url, "orders", "10.0.0.7:80", connect_timeout=0.5):
                pytest.fail("registered without etcd")
        assert etcd_tasks() == []

    run_on(library, main)
    assert etcd_threads() == []


@pytest.mark.parametrize("library", LIBRARIES)
def test_an_exception_of_the_block_comes_out_as_raised(
    etcd: EtcdServer, client: EtcdClient, prefix: str, library: str
) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"

    async def main() -> None:
        with pytest.raises(KeyError, match="from the discovery's block"):
            async with EtcdDiscovery.open(url) as discovery:
                raise KeyError("from the discovery's block")
        assert not discovery.running
        registered: list[object] = []
        with pytest.raises(KeyError, match="from the registrator's block"):  # noqa: PT012 - the block is the subject
            async with AsyncRegistrator(url, "orders", "10.0.0.7:80", ttl=30):
                registered.append(await in_thread(_keys, client, prefix))
                raise KeyError("from the registrator's block")
        assert registered and registered[0]
        assert await in_thread(_keys, client, prefix) == {}
        assert etcd_tasks() == []

    run_on(library, main)


# -- registration --------------------------------------------------------------------------------


def test_async_registrator_under_trio_registers_keeps_alive_re_registers_and_deregisters(
    etcd: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"

    async def main() -> None:
        async with (
            EtcdDiscovery.open(url) as discovery,
            AsyncRegistrator(discovery, "orders", "10.0.0.7:80", ttl=2, zone="z1") as registrator,
        ):
            key = f"{prefix}/orders/10.0.0.7:80"
            assert registrator.key == key
            assert etcd_tasks() == [f"etcd-lease {key}", f"etcd-watch http://127.0.0.1:{etcd.port}{prefix}"]
            assert await await_until(lambda: addresses(discovery, "orders") == ["10.0.0.7:80"])
            first = registrator.lease
            # Renewed every ttl/3: four renewals outlast the 2 s lease, which is still there.
            assert await await_until(lambda: registrator.renewals >= 4)
            kvs, _ = await in_thread(client.range_prefix, key)
            assert [kv.lease for kv in kvs] == [first]
            assert registrator.registrations == 1

            assert await in_thread(client.lease_revoke, first)  # lost behind its back
            assert await await_until(lambda: registrator.registrations == 2)
            assert registrator.lease not in (0, first)
            assert await await_until(lambda: addresses(discovery, "orders") == ["10.0.0.7:80"])
        assert registrator.lease == 0
        assert await in_thread(_keys, client, prefix) == {}
        assert etcd_tasks() == []

    trio.run(main)


def test_async_registrator_started_into_a_nursery_then_aclosed(
    etcd: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            registrator = await AsyncRegistrator(url, "orders", "10.0.0.7:80", ttl=30).start(nursery=nursery)
            assert [t.name for t in nursery.child_tasks] == [f"etcd-lease {registrator.key}"]
            assert list(await in_thread(_keys, client, prefix)) == [registrator.key]
            await registrator.aclose()
            assert nursery.child_tasks == frozenset()
            assert await in_thread(_keys, client, prefix) == {}
            await registrator.start(nursery=nursery)  # a closed registrator can start again
            await registrator.aclose()
            assert nursery.child_tasks == frozenset()

    trio.run(main)


def test_a_cancelled_block_still_deregisters_under_trio(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with (
                EtcdDiscovery.open(url) as discovery,
                AsyncRegistrator(discovery, "orders", "10.0.0.7:80", ttl=30),
            ):
                assert await await_until(lambda: addresses(discovery, "orders") == ["10.0.0.7:80"])
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        # Revoked at once, though every await of the cancelled task is cancelled (not left to lapse in 30 s).
        assert await in_thread(_keys, client, prefix) == {}
        assert not discovery.running
        assert etcd_tasks() == []

    trio.run(main)


def test_unreachable_longer_than_the_ttl_then_registered_again_under_trio(
    etcd: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    proxy = TcpProxy(etcd.port)
    url = f"etcd://127.0.0.1:{proxy.port}{prefix}"

    async def main() -> None:
        async with AsyncRegistrator(url, "orders", "10.0.0.7:80", ttl=2, backoff=Constant(0.05)) as registrator:
            proxy.block()
            assert await await_until(lambda: _keys(client, prefix) == {})  # the lease lapsed in etcd
            assert registrator.registrations == 1
            proxy.unblock()
            assert await await_until(lambda: registrator.registrations == 2)
            assert list(_keys(client, prefix)) == [registrator.key]
        assert _keys(client, prefix) == {}

    try:
        trio.run(main)
    finally:
        proxy.close()
