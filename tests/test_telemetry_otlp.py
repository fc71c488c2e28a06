"""End to end over OTLP (issue 12, items 4 and 7): ``configure()`` with the real OTLP gRPC exporter, an
in-process OTLP receiver, a real gRPC call and a real HTTP call that each retried once and hedged once;
then a grep of every exported byte for the secrets those calls sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from interceptors._grpc_common import MethodPolicy
from interceptors.grpc import ResilienceInterceptor
from interceptors.httpx import ResilientTransport
from resilience import CircuitBreaker, Constant, Pipeline, Retry
from resilience.policies.hedge import Hedge
from resilience.telemetry import OpenTelemetryListener, configure
from tests._grpc_service import UNARY, Fault, callables, start
from tests._http_server import HttpServer, Reply
from tests._otlp_receiver import OtlpReceiver, attributes_of

S = grpc.StatusCode
INTERNAL, CLIENT = 1, 3  # the OTLP span kinds

SECRETS = [
    "grpc-bearer-secret",
    "grpc-cookie-secret",
    "binary-metadata-secret",
    "named-header-secret",
    "http-bearer-secret",
    "http-cookie-secret",
    "proxy-secret-value",
    "url-password-secret",
    "query-token-secret",
    "set-cookie-secret",
]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def listener(receiver: OtlpReceiver) -> Iterator[OpenTelemetryListener]:
    made = configure(
        service_name="orders-client",
        otlp_endpoint=receiver.endpoint,
        redact_query_params=["token"],
        redact_headers=["x-api-key"],
        set_global=False,
    )
    yield made
    made.shutdown()


def pipeline(listener: OpenTelemetryListener) -> Pipeline:
    return Pipeline(
        Retry(2, backoff=Constant(0.01)), Hedge(delay=0.05), CircuitBreaker(failure_threshold=10), listeners=[listener]
    )


def grpc_call(listener: OpenTelemetryListener) -> None:
    server = start()
    try:
        server.service.script(UNARY, Fault(S.UNAVAILABLE, delay=0.3), Fault(S.UNAVAILABLE))
        interceptor = ResilienceInterceptor(MethodPolicy(pipeline(listener), idempotent=True), target=server.address)
        metadata = (
            ("authorization", "Bearer grpc-bearer-secret"),
            ("cookie", "grpc-cookie-secret"),
            ("x-token-bin", b"binary-metadata-secret"),
            ("x-api-key", "named-header-secret"),
        )
        with grpc.insecure_channel(server.address) as plain:
            channel = grpc.intercept_channel(plain, interceptor)
            assert callables(channel)[UNARY](b"hi", timeout=5, metadata=metadata) == b"hi"
        assert len(server.service.of(UNARY)) == 3
    finally:
        server.stop()


def http_call(listener: OpenTelemetryListener) -> None:
    with HttpServer() as server:
        server.script(Reply(503, delay=0.3), Reply(503))
        server.default = Reply(headers={"Set-Cookie": "sid=set-cookie-secret"})
        headers = {
            "Authorization": "Bearer http-bearer-secret",
            "Cookie": "sid=http-cookie-secret",
            "Proxy-Authorization": "Basic proxy-secret-value",
        }
        url = f"http://user:url-password-secret@127.0.0.1:{server.port}/items?token=query-token-secret&page=2"
        with httpx.Client(transport=ResilientTransport(pipeline=pipeline(listener))) as client:
            assert client.get(url, headers=headers).status_code == 200
        assert len(server.requests) == 3


def failing_http_call(listener: OpenTelemetryListener) -> None:
    """An error whose message echoes the URL and the credentials (a mock: no server says that)."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url} as {request.headers['authorization']}", request=request)

    transport = ResilientTransport(httpx.MockTransport(refuse), pipeline=Pipeline(Retry(1), listeners=[listener]))
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError):
        client.get(
            "http://user:url-password-secret@127.0.0.1:9/x?token=query-token-secret",
            headers={"Authorization": "Bearer http-bearer-secret"},
        )


def by_trace(spans: list[tuple[dict[str, Any], Any]]) -> dict[bytes, list[Any]]:
    traces: dict[bytes, list[Any]] = {}
    for _, span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    return traces


def check_trace(spans: list[Any], system: str) -> list[dict[str, Any]]:
    """One call span and its three attempts; returns the attempts' attributes, in order."""
    (call,) = [s for s in spans if s.kind == INTERNAL]
    attempts = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_time_unix_nano)
    assert len(attempts) == 3
    assert all(s.parent_span_id == call.span_id for s in attempts)
    names = [e.name for e in call.events]
    assert "resilience.hedge" in names and "resilience.retry" in names
    retry = next(e for e in call.events if e.name == "resilience.retry")
    assert attributes_of(retry.attributes)["resilience.retry.delay"] == 0.01
    found = [attributes_of(s.attributes) for s in attempts]
    assert [(a["resilience.attempt"], a["resilience.hedge"]) for a in found] == [(1, 0), (1, 1), (2, 0)]
    if system == "grpc":
        assert all(a["rpc.system.name"] == "grpc" and a["rpc.method"] == "test.Echo/Unary" for a in found)
    return found


def test_a_grpc_and_an_http_call_reach_the_receiver_and_no_secret_does(
    receiver: OtlpReceiver, listener: OpenTelemetryListener, caplog: pytest.LogCaptureFixture
) -> None:
    grpc_call(listener)
    http_call(listener)
    failing_http_call(listener)
    listener.force_flush()
    spans = receiver.spans()
    assert {resource["service.name"] for resource, _ in spans} == {"orders-client"}
    traces = list(by_trace(spans).values())
    assert len(traces) == 3
    grpc_trace = next(t for t in traces if any(s.name == "test.Echo/Unary" for s in t))
    http_trace = next(t for t in traces if len(t) == 4 and t is not grpc_trace)
    rpc = check_trace(grpc_trace, "grpc")
    assert [a["rpc.response.status_code"] for a in rpc] == ["UNAVAILABLE", "UNAVAILABLE", "OK"]
    http = check_trace(http_trace, "http")
    assert [a["http.response.status_code"] for a in http] == [503, 503, 200]
    assert {a["url.full"] for a in http} == {
        next(a["url.full"] for a in http),
    }
    assert http[0]["url.full"].startswith("http://REDACTED:REDACTED@127.0.0.1:")
    assert http[0]["url.full"].endswith("/items?token=REDACTED&page=2")
    assert [a.get("http.request.resend_count") for a in http] == [None, 1, 1]
    names = receiver.metric_names()
    assert {
        "resilience.call.duration",
        "resilience.attempt.duration",
        "resilience.retries",
        "resilience.hedges",
        "resilience.circuit.state",
    } <= names
    exported = receiver.everything()
    assert b"REDACTED" in exported  # the grep reads what was sent
    for secret in SECRETS:
        assert secret.encode() not in exported, secret
        assert secret not in caplog.text, secret
