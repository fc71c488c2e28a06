"""``resilience register`` and ``resilience endpoints`` as subprocesses against a real etcd."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from resilience.discovery.etcd import EtcdClient

from ._etcd_helpers import WAIT, unique_prefix, value, wait_until
from .servers import EtcdServer, free_port

pytestmark = pytest.mark.etcd


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resilience.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _line(proc: subprocess.Popen[str], bound: float = WAIT) -> str:
    """The next line of ``proc``'s stdout, waiting at most ``bound`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(bound):
            raise AssertionError(f"no output in {bound} s")
    return proc.stdout.readline()


def _register(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "resilience.cli", "register", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _keys(etcd: EtcdServer, prefix: str) -> list[str]:
    with EtcdClient(f"etcd://127.0.0.1:{etcd.port}") as client:
        return [kv.key for kv in client.range_prefix(prefix + "/")[0]]


def test_register_until_sigterm_and_endpoints_listing_it(etcd: EtcdServer) -> None:
    prefix = unique_prefix("cli")
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"
    listener = socket.create_server(("127.0.0.1", 0))  # a live instance for --probe
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    dead = f"127.0.0.1:{free_port()}"
    with (
        _register("orders", address, "--ttl", "5", "--etcd", url, "--zone", "z1", "--metadata", "version=1.4") as one,
        _register("orders", dead, "--etcd", url, "--weight", "3") as two,
    ):
        try:
            for proc, addr in ((one, address), (two, dead)):
                line = _line(proc)
                assert line.startswith(f"registered {addr} as {prefix}/orders/{addr} (lease "), line
            assert sorted(_keys(etcd, prefix)) == sorted([f"{prefix}/orders/{address}", f"{prefix}/orders/{dead}"])

            listed = _cli("endpoints", "orders", "--probe", env={"RESILIENCE_ETCD": url})
            assert listed.returncode == 0, listed.stderr
            lines = listed.stdout.splitlines()
            assert lines[0].startswith(f"service 'orders' in http://127.0.0.1:{etcd.port}{prefix} at revision ")
            assert lines[1].split() == ["ADDRESS", "ZONE", "WEIGHT", "HEALTH", "SCORE", "METADATA"]
            rows = {line.split()[0]: line for line in lines[2:]}
            assert set(rows) == {address, dead}
            assert "z1" in rows[address] and "up (" in rows[address] and "version=1.4" in rows[address]
            assert " 3 " in rows[dead] and "down (ConnectionRefusedError)" in rows[dead]

            one.send_signal(signal.SIGTERM)
            two.send_signal(signal.SIGINT)
            for proc, addr in ((one, address), (two, dead)):
                out, err = proc.communicate(timeout=WAIT)
                assert proc.returncode == 0, err
                assert f"deregistered {prefix}/orders/{addr}" in out
        finally:
            for proc in (one, two):
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=5)
            listener.close()
    assert _keys(etcd, prefix) == []
    empty = _cli("endpoints", "orders", "--etcd", url)
    assert empty.returncode == 1
    assert f"no endpoints for service 'orders' in http://127.0.0.1:{etcd.port}{prefix}" in empty.stdout


def test_a_killed_register_process_disappears_when_its_lease_lapses(etcd: EtcdServer) -> None:
    prefix = unique_prefix("cli-kill")
    url = f"etcd://127.0.0.1:{etcd.port}{prefix}"
    with _register("orders", "10.0.0.7:80", "--ttl", "2", "--etcd", url) as proc:
        try:
            assert _line(proc).startswith("registered ")
            assert _keys(etcd, prefix) == [f"{prefix}/orders/10.0.0.7:80"]
            proc.kill()  # no chance to deregister
            proc.communicate(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)
    assert wait_until(lambda: _keys(etcd, prefix) == [])


def test_cli_errors_name_the_problem(etcd: EtcdServer) -> None:
    port = free_port()
    down = _cli("register", "orders", "10.0.0.7:80", "--etcd", f"etcd://127.0.0.1:{port}/p")
    assert down.returncode == 1
    assert f"no member of http://127.0.0.1:{port}/p answered" in down.stderr
    bad = _cli("register", "orders", "10.0.0.7", "--etcd", f"etcd://127.0.0.1:{etcd.port}/p")
    assert bad.returncode == 2 and "endpoint address must be 'host:port'" in bad.stderr
    meta = _cli("register", "orders", "10.0.0.7:80", "--metadata", "novalue", "--etcd", f"etcd://127.0.0.1:{port}")
    assert meta.returncode == 2 and "--metadata wants KEY=VALUE, got 'novalue'" in meta.stderr
    listing = _cli("endpoints", "orders", "--etcd", f"etcd://127.0.0.1:{port}/p")
    assert listing.returncode == 1 and f"127.0.0.1:{port}" in listing.stderr


def test_endpoints_warns_about_a_malformed_value_and_lists_the_rest(etcd: EtcdServer) -> None:
    prefix = unique_prefix("cli-bad")
    with EtcdClient(f"etcd://127.0.0.1:{etcd.port}") as client:
        client.put(f"{prefix}/orders/good", value("10.0.0.1:80"))
        client.put(f"{prefix}/orders/bad", "{")
    listed = _cli("endpoints", "orders", "--etcd", f"etcd://127.0.0.1:{etcd.port}{prefix}")
    assert listed.returncode == 0
    assert "10.0.0.1:80" in listed.stdout and "not probed" in listed.stdout
    assert f"etcd key '{prefix}/orders/bad' holds no valid endpoint" in listed.stderr
