"""``resilience.telemetry.configure()`` (issue 12, items 5 and 6): arguments, OTEL_* variables, providers
made once per setting, sampling; exports checked on an in-process OTLP receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience import Pipeline, Retry
from resilience.telemetry import configure
from tests._otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SERVICE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"enabled": "yes"}, TypeError, "enabled must be a bool, got 'yes'"),
        ({"service_name": ""}, ValueError, "service_name must be a non-empty string or None, got ''"),
        ({"otlp_endpoint": "localhost:4317"}, ValueError, "otlp_endpoint must be a URL such as"),
        ({"sample_ratio": 1.5}, ValueError, r"sample_ratio must be a number in \[0, 1\], got 1.5"),
        ({"sample_ratio": float("nan")}, ValueError, "sample_ratio must be a number in"),
        ({"sample_ratio": True}, ValueError, "sample_ratio must be a number in"),
        ({"redact_query_params": "token"}, TypeError, "redact_query_params must be a sequence of names"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        configure(**kwargs)  # type: ignore[arg-type]


def test_disabled_gives_a_listener_that_never_records(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not configure(enabled=False, otlp_endpoint="http://127.0.0.1:9").active()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not configure(otlp_endpoint="http://127.0.0.1:9").active()


def test_without_an_endpoint_nothing_is_set_up() -> None:
    listener = configure(service_name="x")
    assert listener._owned == []  # records to the global providers, whatever the application set


def test_the_endpoint_from_the_environment_and_one_set_of_providers_per_setting(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    first = configure(set_global=False)
    again = configure(set_global=False)
    try:
        assert first.active()
        assert first._owned == again._owned  # a reload with the same settings: the same exporters
        Pipeline(Retry(1), listeners=[first], service="svc", method="M").call(lambda: "ok")
        first.force_flush()
        spans = receiver.spans()
        assert sorted((span.kind, span.name) for _, span in spans) == [(1, "svc/M"), (3, "svc/M")]  # call, attempt
        assert {resource["service.name"] for resource, _ in spans} == {"from-env"}
    finally:
        first.shutdown()
    after = configure(set_global=False)
    try:
        assert after._owned != first._owned  # shut down: a later call makes new providers
    finally:
        after.shutdown()


def test_a_ratio_of_zero_keeps_no_trace(receiver: OtlpReceiver) -> None:
    listener = configure(otlp_endpoint=receiver.endpoint, sample_ratio=0.0, set_global=False)
    try:
        for _ in range(5):
            Pipeline(Retry(1), listeners=[listener]).call(lambda: "ok")
        listener.force_flush()
        assert receiver.spans() == []
        assert "resilience.call.duration" in receiver.metric_names()  # metrics are not sampled
    finally:
        listener.shutdown()


def test_an_unknown_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL must be 'grpc' or 'http/protobuf', got 'thrift'"):
        configure(otlp_endpoint="http://127.0.0.1:9", set_global=False)
