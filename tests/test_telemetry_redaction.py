"""Redaction and propagation hooks, unit by unit (issue 12, items 2 and 4); the end-to-end grep is in
tests/test_telemetry_otlp.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import context as otel_context

from resilience import Pipeline, Retry
from resilience.context import CallContext
from resilience.telemetry import (
    REDACTED,
    Redactor,
    attempt_context,
    grpc_attempt,
    http_attempt,
    inject_into_headers,
    inject_into_metadata,
    suppressed,
)
from resilience.telemetry._propagation import _ALL_KEY, _HTTP_KEY
from tests._telemetry import Recorder, events, traceparent


@pytest.fixture
def rec() -> Iterator[Recorder]:
    recorder = Recorder(redact_query_params=["api_key"])
    yield recorder
    recorder.close()


def test_user_info_and_named_or_signature_params_are_redacted() -> None:
    r = Redactor(["api_key"])
    url, secrets = r.url("https://bob:hunter22@example.com:8443/a/b?api_key=k-123456&x=1&sig=abcdef#frag")
    assert url == "https://REDACTED:REDACTED@example.com:8443/a/b?api_key=REDACTED&x=1&sig=REDACTED#frag"
    assert {"hunter22", "k-123456", "abcdef"} <= set(secrets)
    assert r.url("http://example.com/plain?x=1") == ("http://example.com/plain?x=1", [])
    assert r.url("http://example.com/?api_key=")[0] == "http://example.com/?api_key="  # nothing to hide
    assert r.url("http://h/?X-Goog-Signature=zzzz")[0] == "http://h/?X-Goog-Signature=REDACTED"


def test_secret_keys_and_their_values() -> None:
    r = Redactor(redact_headers=["X-Api-Key"])
    for key in ("Authorization", "cookie", "Set-Cookie", "proxy-authorization", "x-token-bin", "x-api-key"):
        assert r.secret_key(key), key
    assert not r.secret_key("content-type")
    pairs = [("authorization", "Bearer tok-abcdef"), ("x-sig-bin", b"\x01binsecret"), ("accept", "text/plain")]
    assert r.secrets_of(pairs) == ["Bearer tok-abcdef", "tok-abcdef", "\x01binsecret"]
    assert r.scrub("refused: Bearer tok-abcdef", r.secrets_of(pairs)) == f"refused: {REDACTED}"
    assert r.secrets_of([("cookie", "a=1")]) == []  # too short to scrub from text


def test_hooks_do_nothing_for_an_untraced_attempt() -> None:
    ctx = CallContext("svc", "M")
    metadata = (("a", "1"),)
    assert inject_into_metadata(ctx, metadata) is metadata
    assert grpc_attempt(ctx, metadata) is metadata
    headers: dict[str, str] = {}
    inject_into_headers(ctx, headers)
    http_attempt(ctx, "GET", "http://h/", headers)
    assert headers == {} and attempt_context(ctx) is None
    with suppressed(ctx):
        assert otel_context.get_value(_ALL_KEY) is None  # contrib instrumentation left alone


def test_hooks_in_a_traced_attempt(rec: Recorder) -> None:
    seen: dict[str, object] = {}

    def attempt(ctx: CallContext) -> str:
        metadata = grpc_attempt(ctx, (("traceparent", "stale"), ("x", "1")), "10.0.0.7:50051")
        seen["metadata"] = dict(metadata)
        headers: dict[str, str] = {}
        inject_into_headers(ctx, headers)
        seen["headers"] = headers
        with suppressed(ctx):
            seen["all"] = otel_context.get_value(_ALL_KEY)
        with suppressed(ctx, http=True):
            seen["http"], seen["all_in_http"] = otel_context.get_value(_HTTP_KEY), otel_context.get_value(_ALL_KEY)
        seen["after"] = otel_context.get_value(_ALL_KEY)
        seen["context"] = attempt_context(ctx)
        return "ok"

    p = Pipeline(Retry(1), listeners=[rec.listener], service="pkg.Svc", method="Get")
    assert p.execute(attempt, p.context()) == "ok"
    (span,) = rec.attempts()
    metadata = seen["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["traceparent"] == traceparent(span) and metadata["x"] == "1"
    assert seen["headers"] == {"traceparent": traceparent(span)}
    assert (seen["all"], seen["http"], seen["all_in_http"], seen["after"]) == (True, True, None, None)
    assert seen["context"] is not None
    assert span.attributes is not None
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("10.0.0.7", 50051)
    assert span.attributes["rpc.method"] == "pkg.Svc/Get"


def test_an_error_message_is_scrubbed_of_the_calls_secrets(rec: Recorder) -> None:
    def attempt(ctx: CallContext) -> str:
        http_attempt(ctx, "GET", "http://u:pw-secret-1@h/x?api_key=key-secret-2", {"authorization": "Basic b-secret-3"})
        raise ConnectionError("failed GET http://u:pw-secret-1@h/x?api_key=key-secret-2 with Basic b-secret-3")

    p = Pipeline(Retry(1), listeners=[rec.listener])
    with pytest.raises(ConnectionError):
        p.execute(attempt, p.context())
    (span,) = rec.attempts()
    (_, exception) = events(span)[0]
    message = exception["exception.message"]
    assert "secret" not in message and message.count(REDACTED) == 3
    assert (
        span.attributes is not None and span.attributes["url.full"] == "http://REDACTED:REDACTED@h/x?api_key=REDACTED"
    )
