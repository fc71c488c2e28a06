"""Registrator against a real etcd: register, keep alive, deregister, lapse, re-register, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from resilience.discovery.etcd import EtcdClient, EtcdDiscovery, EtcdUnavailableError
from resilience.discovery.registration import AsyncRegistrator, Registrator
from resilience.policies import Constant

from ._etcd_helpers import WAIT, addresses, await_until, etcd_threads, unique_prefix, value, wait_until
from .servers import EtcdServer, TcpProxy, free_port

pytestmark = pytest.mark.etcd


@pytest.fixture
def prefix() -> str:
    return unique_prefix("reg")


def _keys(client: EtcdClient, prefix: str) -> dict[str, dict[str, object]]:
    kvs, _ = client.range_prefix(prefix + "/")
    return {kv.key: json.loads(kv.value) for kv in kvs}


def test_register_then_deregister_on_close(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"
    with EtcdDiscovery(url) as discovery:
        registrator = Registrator(url, "orders", "10.0.0.7:50051", ttl=5, zone="z1", metadata={"version": "1.4"})
        with registrator:
            key = f"{prefix}/orders/10.0.0.7:50051"
            assert registrator.key == key and registrator.lease
            assert _keys(client, prefix) == {
                key: {"address": "10.0.0.7:50051", "zone": "z1", "weight": 1, "metadata": {"version": "1.4"}}
            }
            kvs, _ = client.range_prefix(key)
            assert kvs[0].lease == registrator.lease
            assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.7:50051"])
            assert discovery.endpoints("orders")[0].zone == "z1"
        assert registrator.lease == 0
        assert _keys(client, prefix) == {}
        assert wait_until(lambda: addresses(discovery, "orders") == [])
    assert etcd_threads() == []


def test_a_registrator_reuses_a_discoverys_settings(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    with (
        EtcdDiscovery(f"etcd://127.0.0.1:{etcd.port}{prefix}") as discovery,
        Registrator(discovery, "users", "10.0.0.8:80", instance_id="users-1", ttl=5),
    ):
        assert list(_keys(client, prefix)) == [f"{prefix}/users/users-1"]
        assert wait_until(lambda: addresses(discovery, "users") == ["10.0.0.8:80"])


def test_a_lapsed_lease_removes_the_instance(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    with EtcdDiscovery(f"etcd://127.0.0.1:{etcd.port}{prefix}") as discovery:
        lease = client.lease_grant(2)
        client.put(f"{prefix}/orders/crashed", value("10.0.0.9:80"), lease=lease)
        assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.9:80"])
        assert wait_until(lambda: addresses(discovery, "orders") == [])  # nobody renews it
        assert client.lease_keepalive(lease) == 0


def test_a_lost_lease_is_replaced_by_a_new_registration(etcd: EtcdServer, client: EtcdClient, prefix: str) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"
    with Registrator(url, "orders", "10.0.0.7:80", ttl=3) as registrator:
        first = registrator.lease
        assert client.lease_revoke(first)  # the lease goes behind its back (as when it lapses)
        assert wait_until(lambda: registrator.registrations == 2)
        assert registrator.lease not in (0, first)
        assert list(_keys(client, prefix)) == [registrator.key]


def test_unreachable_longer_than_the_ttl_then_registered_again(
    etcd: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    proxy = TcpProxy(etcd.port)
    try:
        url = f"etcd://127.0.0.1:{proxy.port}{prefix}"
        with Registrator(url, "orders", "10.0.0.7:80", ttl=2, backoff=Constant(0.05)) as registrator:
            proxy.block()
            assert wait_until(lambda: _keys(client, prefix) == {})  # the lease lapsed in etcd
            assert registrator.registrations == 1
            proxy.unblock()
            assert wait_until(lambda: registrator.registrations == 2)
            assert list(_keys(client, prefix)) == [registrator.key]
        assert _keys(client, prefix) == {}
    finally:
        proxy.close()


def test_etcd_restarted_without_its_data_gets_the_instance_back() -> None:
    server = EtcdServer()
    server.start()
    try:
        prefix = unique_prefix("wipe")
        url = f"etcd://127.0.0.1:{server.port}{prefix}"
        with Registrator(url, "orders", "10.0.0.7:80", ttl=3, backoff=Constant(0.05)) as registrator:
            server.kill()
            shutil.rmtree(server.dir / "data")
            server.start()
            assert wait_until(lambda: registrator.registrations == 2)
            with EtcdClient(f"etcd://127.0.0.1:{server.port}") as direct:
                assert list(_keys(direct, prefix)) == [registrator.key]
    finally:
        server.close()


def test_starting_while_etcd_is_down_names_the_url() -> None:
    port = free_port()
    registrator = Registrator(f"etcd://127.0.0.1:{port}/p", "orders", "10.0.0.7:80", connect_timeout=0.5)
    with pytest.raises(
        EtcdUnavailableError, match=rf"cannot register /p/orders/10.0.0.7:80: no member of http://127\.0\.0\.1:{port}/p"
    ):
        registrator.start()
    assert etcd_threads() == []


def test_async_registrator_registers_re_registers_and_deregisters(
    etcd: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"

    async def main() -> None:
        async with AsyncRegistrator(url, "orders", "10.0.0.7:80", ttl=3, weight=4) as registrator:
            assert _keys(client, prefix)[registrator.key]["weight"] == 4
            assert client.lease_revoke(registrator.lease)
            assert await await_until(lambda: registrator.registrations == 2)
            assert list(_keys(client, prefix)) == [registrator.key]
        assert _keys(client, prefix) == {}
        assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()

    asyncio.run(main())


# -- SIGTERM -----------------------------------------------------------------------------------

_SCRIPT = """
import signal, sys, time
from resilience.discovery.registration import {cls}
{previous}
registrator = {cls}({url!r}, "orders", "10.0.0.7:80", ttl=30, handle_signals=True)
{start}
"""

_SYNC_START = """
registrator.start()
print("ready", flush=True)
for _ in range(600):
    time.sleep(0.1)
print("never signalled", flush=True)
"""

_ASYNC_START = """
import asyncio
async def main():
    await registrator.start()
    print("ready", flush=True)
    await asyncio.sleep(60)
    print("never signalled", flush=True)
asyncio.run(main())
"""

_TRIO_START = """
import trio
async def main():
    async with registrator:
        print("ready", flush=True)
        await trio.sleep(60)
        print("never signalled", flush=True)
trio.run(main)
"""

_STARTS = {"Registrator": _SYNC_START, "AsyncRegistrator": _ASYNC_START, "AsyncRegistrator-trio": _TRIO_START}

_PREVIOUS = """
def previous(signum, frame):
    print("previous handler ran", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, previous)
"""


@pytest.mark.parametrize("cls", list(_STARTS))
@pytest.mark.parametrize("chained", [True, False], ids=["previous-handler", "default-handler"])
def test_sigterm_deregisters_then_does_what_the_previous_handler_did(
    etcd: EtcdServer, client: EtcdClient, prefix: str, cls: str, chained: bool
) -> None:
    script = _SCRIPT.format(
        cls=cls.removesuffix("-trio"),
        previous=_PREVIOUS if chained else "",
        url=f"etcd://127.0.0.1:{etcd.port}{prefix}",
        start=_STARTS[cls],
    )
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
            assert list(_keys(client, prefix)) == [f"{prefix}/orders/10.0.0.7:80"]
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)
    assert _keys(client, prefix) == {}  # revoked at once, not left to lapse in 30 s
    if chained:
        assert "previous handler ran" in out and proc.returncode == 3, err
    else:
        assert proc.returncode == -signal.SIGTERM, err
    assert "never signalled" not in out
