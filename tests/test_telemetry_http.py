"""Traces of real HTTP calls that retry once and hedge once (issue 12, items 2 and 4): the httpx
transports (sync and asyncio, with and without discovery), the HTTP conventions' attributes, each
attempt's ``traceparent`` at the server, no second span with opentelemetry-instrumentation-httpx on,
and URLs redacted."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.trace import SpanKind, StatusCode

from interceptors.httpx import AsyncResilientTransport, ResilientTransport
from resilience import Constant, Pipeline, Retry, StaticDiscovery
from resilience.policies.hedge import Hedge
from tests._http_server import HttpServer, Reply, Seen
from tests._telemetry import Recorder, events, foreign, traceparent
from tests.test_grpc_channel import FirstUntried


@pytest.fixture
def rec() -> Iterator[Recorder]:
    recorder = Recorder(redact_query_params=["token"])
    yield recorder
    recorder.close()


@pytest.fixture
def contrib(rec: Recorder) -> Iterator[None]:
    """opentelemetry-instrumentation-httpx on (it patches httpx's own transports), recording to ``rec``."""
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=rec.tracer_provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as s:
        yield s


def pipeline(rec: Recorder) -> Pipeline:
    return Pipeline(Retry(2, backoff=Constant(0.01)), Hedge(delay=0.05), listeners=[rec.listener])


def script(first: HttpServer, second: HttpServer) -> None:
    """The primary answers 503 slowly (so the hedge starts), the hedge 503 at once, the retry 200."""
    first.script(Reply(503, delay=0.3))
    second.script(Reply(503))


def check(rec: Recorder, seen: list[Seen], ports: list[int], service: str = "127.0.0.1") -> None:
    path = "/items?token=REDACTED&page=2"
    call = rec.call()
    assert (call.kind, call.name) == (SpanKind.INTERNAL, f"GET {service}")
    assert call.attributes is not None and call.attributes["resilience.outcome"] == "success"
    names = [n for n, _ in events(call)]
    assert "resilience.hedge" in names and "resilience.retry" in names
    attempts = rec.attempts()
    keys = [(s.attributes["resilience.attempt"], s.attributes["resilience.hedge"]) for s in attempts]  # type: ignore[index]
    assert keys == [(1, 0), (1, 1), (2, 0)]
    statuses = [s.attributes["http.response.status_code"] for s in attempts]  # type: ignore[index]
    assert statuses == [503, 503, 200]
    resends = [s.attributes.get("http.request.resend_count") for s in attempts]  # type: ignore[union-attr]
    assert resends == [None, 1, 1]
    for span, port in zip(attempts, ports, strict=True):
        attributes = span.attributes
        assert attributes is not None
        assert (span.kind, span.name) == (SpanKind.CLIENT, "GET")
        assert span.parent is not None and span.parent.span_id == call.context.span_id
        assert attributes["http.request.method"] == "GET"
        assert attributes["url.full"] == f"http://127.0.0.1:{port}{path}"
        assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", port)
    assert attempts[0].attributes["error.type"] == "503"  # type: ignore[index]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert sorted(s.headers["traceparent"] for s in seen) == sorted(traceparent(s) for s in attempts)
    assert [s for s in foreign(rec.spans()) if s.kind is SpanKind.CLIENT] == []


def test_sync_transport_with_contrib_instrumentation_on(rec: Recorder, contrib: None, server: HttpServer) -> None:
    script(server, server)
    with httpx.Client(transport=ResilientTransport(pipeline=pipeline(rec))) as client:
        response = client.get(f"{server.url}/items?token=t0ken-secret&page=2")
    assert response.status_code == 200
    check(rec, server.requests, [server.port] * 3)


async def test_async_transport_with_contrib_instrumentation_on(
    rec: Recorder, contrib: None, server: HttpServer
) -> None:
    script(server, server)
    async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline=pipeline(rec))) as client:
        response = await client.get(f"{server.url}/items?token=t0ken-secret&page=2")
    assert response.status_code == 200
    check(rec, server.requests, [server.port] * 3)


def test_without_our_listener_the_contrib_instrumentation_traces_as_before(
    rec: Recorder, contrib: None, server: HttpServer
) -> None:
    server.script(503)
    transport = ResilientTransport(pipeline=Pipeline(Retry(2, backoff=Constant(0.01))))
    with httpx.Client(transport=transport) as client:
        assert client.get(f"{server.url}/items").status_code == 200
    theirs = [s for s in foreign(rec.spans()) if s.kind is SpanKind.CLIENT]
    assert len(theirs) == 2 and rec.attempts() == []


def test_the_callers_request_is_left_as_it_was(rec: Recorder, server: HttpServer) -> None:
    server.script(503)
    with httpx.Client(transport=ResilientTransport(pipeline=pipeline(rec))) as client:
        request = client.build_request("GET", f"{server.url}/items")
        assert client.send(request).status_code == 200
    assert "traceparent" not in request.headers
    first, second = (s.headers["traceparent"] for s in server.requests)
    assert first != second  # each attempt its own span


@pytest.fixture
def pair() -> Iterator[tuple[HttpServer, HttpServer]]:
    with HttpServer() as a, HttpServer() as b:
        yield a, b


def test_sync_transport_with_discovery(rec: Recorder, contrib: None, pair: tuple[HttpServer, HttpServer]) -> None:
    a, b = pair
    script(a, b)
    discovery = StaticDiscovery({"echo": [a.address, b.address]})
    transport = ResilientTransport(pipeline=pipeline(rec), discovery=discovery, balancer=FirstUntried())
    rec.listener.watch(transport)  # its pools, for the endpoint gauge
    assert rec.points("resilience.endpoints") == []  # none made before the first request
    with httpx.Client(transport=transport) as client:
        assert client.get("http://echo/items?token=t0ken-secret&page=2").status_code == 200
        endpoints = {a["resilience.endpoint.state"]: n for a, n in rec.points("resilience.endpoints")}
        assert endpoints == {"healthy": 2, "ejected": 0}
    check(rec, a.requests + b.requests, [a.port, b.port, a.port], "echo")
    call = rec.call()
    assert call.attributes is not None and call.attributes["resilience.service"] == "echo"
    assert [s.attributes["resilience.endpoint"] for s in rec.attempts()] == [a.address, b.address, a.address]  # type: ignore[index]


async def test_async_transport_with_discovery(
    rec: Recorder, contrib: None, pair: tuple[HttpServer, HttpServer]
) -> None:
    a, b = pair
    script(a, b)
    discovery = StaticDiscovery({"echo": [a.address, b.address]})
    transport = AsyncResilientTransport(pipeline=pipeline(rec), discovery=discovery, balancer=FirstUntried())
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://echo/items?token=t0ken-secret&page=2")).status_code == 200
    check(rec, a.requests + b.requests, [a.port, b.port, a.port], "echo")


def test_a_transport_error_names_its_class(rec: Recorder) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    transport = ResilientTransport(httpx.MockTransport(refuse), pipeline=Pipeline(Retry(1), listeners=[rec.listener]))
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError):
        client.get("http://127.0.0.1:9/x")
    (attempt,) = rec.attempts()
    assert attempt.attributes is not None and attempt.attributes["error.type"] == "httpx.ConnectError"
    assert "http.response.status_code" not in attempt.attributes
    call = rec.call()
    assert call.attributes is not None and call.attributes["error.type"] == "httpx.ConnectError"
