"""etcd with authentication (tokens that expire) and with TLS (server and client certificates)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resilience.discovery import discovery_from_uri
from resilience.discovery.etcd import EtcdAuthError, EtcdClient, EtcdDiscovery, EtcdUnavailableError
from resilience.discovery.registration import AsyncRegistrator, Registrator
from resilience.policies import Constant

from ._etcd_helpers import Updates, addresses, await_until, unique_prefix, value, wait_until
from .servers import EtcdServer, TcpProxy, make_certs

pytestmark = pytest.mark.etcd

TOKEN_TTL = 1  # seconds a simple token lives unused (etcd checks once a second)


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer(progress_interval="200ms", auth_token_ttl=TOKEN_TTL)
    server.start()
    server.enable_auth("root-secret")
    try:
        yield server
    finally:
        server.close()


def _url(port: int, prefix: str, credentials: str = "root:root-secret@") -> str:
    return f"etcd://{credentials}127.0.0.1:{port}{prefix}"


def _expired(etcd: EtcdServer, token: str | None) -> bool:
    status, answer = etcd.post("/v3/kv/range", {"key": "eA=="}, token=token)
    return status == 401 and "invalid auth token" in str(answer)


def test_an_expired_token_is_renewed_for_the_watch_and_for_requests(etcd: EtcdServer) -> None:
    prefix = unique_prefix("auth")
    proxy = TcpProxy(etcd.port)
    updates = Updates()
    try:
        with (
            EtcdDiscovery(_url(proxy.port, prefix), backoff=Constant(0.05), on_update=updates) as discovery,
            EtcdClient(_url(etcd.port, prefix)) as writer,
        ):
            writer.put(f"{prefix}/orders/a", value("10.0.0.1:80"))
            assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.1:80"])
            assert discovery.client is not None
            token, first = discovery.client.token, discovery.client.authentications
            assert token is not None and first == 1 and writer.authentications == 1
            time.sleep(TOKEN_TTL + 2.5)  # both tokens expire unused (the open watch needs none)
            assert _expired(etcd, token)

            # A request with the expired token is refused, renewed, and goes through.
            proxy.block()  # the watch breaks; it reconnects with its expired token once let through
            writer.put(f"{prefix}/orders/b", value("10.0.0.2:80"))
            assert writer.authentications == 2
            proxy.unblock()
            assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.1:80", "10.0.0.2:80"])
            assert discovery.client.authentications == 2
            assert discovery.client.token != token
            assert updates.resyncs() == 1  # the watch resumed, with a new token
    finally:
        proxy.close()


def test_wrong_or_missing_credentials_are_clear_errors(etcd: EtcdServer) -> None:
    with pytest.raises(EtcdAuthError, match=r"refused user 'root': .*authentication failed"):
        EtcdDiscovery(_url(etcd.port, "/p", "root:wrong@"))
    with pytest.raises(EtcdAuthError, match=r"requires authentication: give 'user:password@' in the URI"):
        EtcdDiscovery(_url(etcd.port, "/p", ""))
    with pytest.raises(EtcdAuthError, match="refused user 'root'"):
        asyncio.run(EtcdDiscovery.connect(_url(etcd.port, "/p", "root:wrong@")))


def test_registration_under_authentication(etcd: EtcdServer) -> None:
    prefix = unique_prefix("auth-reg")
    with EtcdDiscovery(_url(etcd.port, prefix)) as discovery:
        with Registrator(discovery, "orders", "10.0.0.7:80", ttl=3):
            assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.7:80"])
        assert wait_until(lambda: addresses(discovery, "orders") == [])

        async def main() -> None:
            async with AsyncRegistrator(_url(etcd.port, prefix), "orders", "10.0.0.8:80", ttl=3):
                assert await await_until(lambda: addresses(discovery, "orders") == ["10.0.0.8:80"])

        asyncio.run(main())
        assert wait_until(lambda: addresses(discovery, "orders") == [])


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="resilience-certs-") as d:
        yield make_certs(Path(d))


@pytest.fixture(scope="module")
def tls_etcd(certs: dict[str, str]) -> Iterator[EtcdServer]:
    server = EtcdServer(tls=certs, client_cert_auth=True)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_etcds_with_a_ca_and_a_client_certificate(tls_etcd: EtcdServer, certs: dict[str, str]) -> None:
    prefix = unique_prefix("tls")
    query = f"?ca={certs['ca']}&cert={certs['client_cert']}&key={certs['client_key']}"
    url = f"etcds://127.0.0.1:{tls_etcd.port}{prefix}{query}"
    discovery = discovery_from_uri(url)
    assert isinstance(discovery, EtcdDiscovery)
    try:
        assert discovery.config.urls == (f"https://127.0.0.1:{tls_etcd.port}",)
        with Registrator(url, "orders", "10.0.0.7:80", ttl=3):
            assert wait_until(lambda: addresses(discovery, "orders") == ["10.0.0.7:80"])
    finally:
        discovery.close()


def test_etcds_without_the_client_certificate_or_the_ca_fails_clearly(
    tls_etcd: EtcdServer, certs: dict[str, str]
) -> None:
    with pytest.raises(EtcdUnavailableError, match=rf"https://127\.0\.0\.1:{tls_etcd.port}.*(SSL|TLS|certificate)"):
        EtcdDiscovery(f"etcds://127.0.0.1:{tls_etcd.port}/p", ca=certs["ca"])
    with pytest.raises(EtcdUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        EtcdDiscovery(
            f"etcds://127.0.0.1:{tls_etcd.port}/p", cert=certs["client_cert"], key=certs["client_key"]
        )  # the system CAs do not know this server
