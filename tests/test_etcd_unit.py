"""The etcd client's pure parts (URI, key ranges, watch cursor) and gateway answers etcd cannot be made to give."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from resilience.discovery._etcd_client import EtcdClient
from resilience.discovery._etcd_config import prefix_range
from resilience.discovery._etcd_watch import Cursor, WatchEvent
from resilience.discovery.etcd import (
    EtcdAuthError,
    EtcdConfig,
    EtcdDiscovery,
    EtcdError,
    EtcdUnavailableError,
    instance_key,
    parse_etcd_uri,
)
from resilience.discovery.registration import Registrator

# -- the URI ------------------------------------------------------------------------------


def test_uri_with_several_members_a_prefix_and_credentials() -> None:
    config = parse_etcd_uri("etcd://app:s%40cret@10.0.0.1:2379,10.0.0.2,[::1]:2380/reg/prod/")
    assert config.urls == ("http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://[::1]:2380")
    assert config.prefix == "/reg/prod"
    assert (config.username, config.password) == ("app", "s@cret")
    assert config.ssl_context is None
    assert "s@cret" not in repr(config) and "s@cret" not in config.where


def test_uri_defaults_and_options_winning_over_the_uri() -> None:
    config = parse_etcd_uri("etcd://u:p@127.0.0.1", username="other", password="pw", timeout=1.5)
    assert config.prefix == "/services"
    assert (config.username, config.password, config.timeout) == ("other", "pw", 1.5)


def test_etcds_builds_a_tls_context() -> None:
    config = parse_etcd_uri("etcds://127.0.0.1:2379/p")
    assert config.urls == ("https://127.0.0.1:2379",)
    assert config.ssl_context is not None


@pytest.mark.parametrize(
    ("uri", "options", "message"),
    [
        ("http://127.0.0.1:2379", {}, "not an etcd URI"),
        ("etcd://", {}, "names no member"),
        ("etcd://127.0.0.1:0/p", {}, "needs a port"),
        ("etcd://127.0.0.1:2379,,127.0.0.2/p", {}, "empty member"),
        ("etcd://::1:2379/p", {}, "IPv6 host without brackets"),
        ("etcd://user@127.0.0.1/p", {}, "credentials must be 'user:password@'"),
        ("etcd://127.0.0.1/p?ca=/x.pem", {}, "need the etcds:// scheme"),
        ("etcds://127.0.0.1/p?verify=no", {}, "unknown parameter 'verify'"),
        ("etcds://127.0.0.1/p?ca=/nonexistent/ca.pem", {}, "cannot load TLS files"),
        ("etcd://127.0.0.1/p", {"timeout": 0}, "timeout must be a finite number of seconds > 0"),
        ("etcd://127.0.0.1/p", {"username": "u"}, "username and password go together"),
    ],
)
def test_bad_uris_are_refused_naming_the_problem(uri: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_etcd_uri(uri, **options)


def test_unknown_options_are_refused_listing_the_allowed_ones() -> None:
    with pytest.raises(TypeError, match=r"unknown etcd option\(s\) \['tls'\]; allowed: username"):
        parse_etcd_uri("etcd://127.0.0.1/p", tls=True)
    with pytest.raises(TypeError, match="password must be a string"):
        parse_etcd_uri("etcd://127.0.0.1/p", username="u", password=1)


def test_prefix_range_selects_the_keys_under_the_prefix() -> None:
    key, end = prefix_range("/services/")
    assert base64.b64decode(key) == b"/services/"
    assert base64.b64decode(end) == b"/services0"  # '/' + 1


def test_instance_keys_and_their_validation() -> None:
    assert instance_key("/services", "orders", "10.0.0.1:80") == "/services/orders/10.0.0.1:80"
    for service in ("", "a/b", " orders"):
        with pytest.raises(ValueError, match="a service name must be non-empty"):
            instance_key("/s", service, "i")
    with pytest.raises(ValueError, match="an instance id must be a non-empty string"):
        instance_key("/s", "orders", "")


def test_registrator_refuses_bad_arguments_before_any_io() -> None:
    url = "etcd://127.0.0.1:1/p"
    with pytest.raises(ValueError, match="ttl must be a whole number of seconds >= 1, got 0"):
        Registrator(url, "orders", "10.0.0.1:80", ttl=0)
    with pytest.raises(ValueError, match=r"endpoint address must be .host:port."):
        Registrator(url, "orders", "10.0.0.1")
    with pytest.raises(ValueError, match="endpoint weight must be an int"):
        Registrator(url, "orders", "10.0.0.1:80", weight=0)
    with pytest.raises(TypeError, match="register with an etcd:// URI"):
        Registrator(42, "orders", "10.0.0.1:80")  # type: ignore[arg-type]


def test_discovery_refuses_bad_options_before_any_io() -> None:
    url = "etcd://127.0.0.1:1/p"
    with pytest.raises(ValueError, match="idle_timeout must be a number of seconds > 0"):
        EtcdDiscovery(url, idle_timeout=0)
    with pytest.raises(TypeError, match="backoff must be a Backoff"):
        EtcdDiscovery(url, backoff=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fallback endpoints of 'orders' must be a list"):
        EtcdDiscovery(url, fallback={"orders": "10.0.0.1:80"})
    with pytest.raises(ValueError, match="endpoint address"):
        EtcdDiscovery(url, fallback={"orders": ["nope"]})


# -- the watch cursor ----------------------------------------------------------------------


def _kv(key: str, revision: int, value: str = "{}") -> dict[str, Any]:
    return {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
        "mod_revision": str(revision),
    }


def _events(header: int, *events: tuple[str, str, int]) -> dict[str, Any]:
    items = []
    for kind, key, revision in events:
        item: dict[str, Any] = {"kv": _kv(key, revision)}
        if kind == "delete":
            item["type"] = "DELETE"
        items.append(item)
    return {"result": {"header": {"revision": str(header)}, "events": items}}


def _header(revision: int, **fields: Any) -> dict[str, Any]:
    return {"result": {"header": {"revision": str(revision)}, **fields}}


def test_cursor_starts_after_the_listing_and_drops_events_seen_already() -> None:
    cursor = Cursor("/p")
    update = cursor.listed([], 10)
    assert update.resync and update.revision == 10
    assert cursor.request()["start_revision"] == "11"
    assert cursor.feed(_header(10, created=True)).stop is None
    line = cursor.feed(_events(12, ("put", "/p/a/1", 11), ("put", "/p/a/2", 12)))
    assert line.update is not None
    assert [e.revision for e in line.update.events] == [11, 12]
    assert cursor.request()["start_revision"] == "13"
    # After a reconnect etcd sends 12 again (a resume from an older point): not delivered twice.
    cursor.feed(_header(12, created=True))
    line = cursor.feed(_events(13, ("put", "/p/a/2", 12), ("delete", "/p/a/1", 13)))
    assert line.update is not None
    assert line.update.events == (WatchEvent("delete", "/p/a/1", b"{}", 13),)
    assert cursor.feed(_events(13, ("put", "/p/a/2", 12))).update is None


def test_progress_notifications_move_the_resume_point_but_never_drop_events() -> None:
    cursor = Cursor("/p")
    cursor.listed([], 5)
    cursor.request()
    assert cursor.feed(_header(40)).update is None  # before "created": not a progress notification
    assert cursor.revision == 5
    cursor.feed(_header(5, created=True))
    cursor.feed(_header(40))
    assert cursor.revision == 40
    assert cursor.request()["start_revision"] == "41"
    # An event at or below the notified revision that was not delivered yet still is.
    cursor.feed(_header(40, created=True))
    line = cursor.feed(_events(40, ("put", "/p/a/1", 39)))
    assert line.update is not None and line.update.events[0].revision == 39


def test_a_compacted_start_revision_asks_for_a_new_listing() -> None:
    cursor = Cursor("/p")
    cursor.listed([], 5)
    cursor.feed(_header(90, created=True))
    line = cursor.feed(_header(90, canceled=True, compact_revision="80"))
    assert line.stop is not None and "revision 6 was compacted" in line.stop
    assert line.retry_now and cursor.need_list


def test_a_refused_token_cancels_with_a_renewal_and_other_cancels_wait() -> None:
    cursor = Cursor("/p")
    reason = "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"
    line = cursor.feed(_header(3, watch_id="-1", created=True, canceled=True, cancel_reason=reason))
    assert line.reauth and line.retry_now and not cursor.created
    line = cursor.feed(_header(3, canceled=True, cancel_reason="etcdserver: permission denied"))
    assert line.stop is not None and "permission denied" in line.stop and not line.retry_now
    line = cursor.feed({"error": {"grpc_code": 14, "message": "transport is closing"}})
    assert line.stop == "etcd ended the watch: transport is closing (code 14)"


# -- gateway answers a real etcd does not give on demand (httpx.MockTransport) ------------


def _client(handler: Any, uri: str = "etcd://127.0.0.1:1,127.0.0.1:2/p", **options: Any) -> EtcdClient:
    client = EtcdClient(uri, **options)
    client._http.close()
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    return client


def _range_answer(revision: int = 7) -> httpx.Response:
    return httpx.Response(200, json={"header": {"revision": str(revision)}, "kvs": [_kv("/p/a/1", 3)]})


def test_a_member_that_cannot_serve_is_skipped_and_the_next_one_stays_in_use() -> None:
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.port or 0)
        if request.url.port == 1:
            return httpx.Response(503, json={"error": "etcdserver: no leader", "code": 14, "message": "no leader"})
        return _range_answer()

    client = _client(handler)
    kvs, revision = client.range_prefix("/p/")
    assert revision == 7 and kvs[0].key == "/p/a/1" and kvs[0].mod_revision == 3
    client.range_prefix("/p/")
    assert seen == [1, 2, 2]
    client.close()


def test_no_member_answering_names_every_member() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = _client(handler)
    with pytest.raises(EtcdUnavailableError, match=r"127\.0\.0\.1:1: ConnectError.*127\.0\.0\.1:2: ConnectError"):
        client.put("/p/a/1", "{}")
    client.close()


def test_an_invalid_token_is_renewed_once_then_refused() -> None:
    tokens = iter(["t1", "t2", "t3", "t4"])
    sent: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v3/auth/authenticate":
            assert json.loads(request.content) == {"name": "u", "password": "p"}
            return httpx.Response(200, json={"token": next(tokens)})
        if request.headers.get("authorization") in ("t1", "t3", "t4"):
            return httpx.Response(401, json={"error": "etcdserver: invalid auth token", "code": 16, "message": "x"})
        return _range_answer()

    client = _client(handler, "etcd://u:p@127.0.0.1:1/p")
    client.range_prefix("/p/")
    assert sent == [
        ("/v3/auth/authenticate", None),
        ("/v3/kv/range", "t1"),
        ("/v3/auth/authenticate", None),
        ("/v3/kv/range", "t2"),
    ]
    assert client.authentications == 2
    client.invalidate_token("t2")
    with pytest.raises(EtcdAuthError, match="refused the token"):
        client.range_prefix("/p/")  # t3 refused, renewed once, t4 refused: no loop
    client.close()


def test_an_answer_that_is_not_json_is_an_error_naming_the_member() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text="<html>proxy says no</html>")

    client = _client(handler, "etcd://127.0.0.1:1/p")
    with pytest.raises(EtcdError, match=r"etcd at http://127\.0\.0\.1:1 refused /v3/kv/range: HTTP 400, not JSON"):
        client.range_prefix("/p/")
    client.close()


def test_a_discovery_needs_a_uri_or_a_config_alone() -> None:
    config = EtcdConfig(("http://127.0.0.1:1",), "/p")
    with pytest.raises(TypeError, match="go with a URI, not with an EtcdConfig"):
        EtcdDiscovery(config, username="u")
