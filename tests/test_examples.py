"""Every file in ``examples/`` is run by the suite, as a user would run it (issue 13, item 3).

``RUNS`` says how each example script is run: in a subprocess, against real local servers
(etcd and Redis from the session fixtures; the scripts start their own HTTP and gRPC
servers), checking the exit code and the key lines of its output; or by a named test in
another module. ``FILES`` says which test covers each data file. A file of ``examples/``
in neither fails :func:`test_every_example_is_run`, so an example cannot go untested.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class Script:
    """Run ``python examples/<name>`` (or ``python -m pytest`` on it, with ``pytest``).

    ``servers`` are session fixtures (``etcd_server``, ``redis_server``) whose address goes
    in the environment variable the script documents; ``expect`` are lines of its output.
    """

    expect: tuple[str, ...]
    servers: tuple[str, ...] = ()
    pytest: bool = False


@dataclass(frozen=True)
class Elsewhere:
    """Run by ``tests/<module>.py::<test>`` (which checks its output in detail)."""

    test: str


RUNS: dict[str, Script | Elsewhere] = {
    "httpx_quickstart.py": Script(("sync GET  -> 200 order list", "sync POST -> 201 created", "async POST -> 201")),
    "grpc_quickstart.py": Script(
        (
            "interceptor: [b'hello, call 0', b'hello, call 1', b'hello, call 2']",
            "channel: [b'hello, balanced 0', b'hello, balanced 1', b'hello, balanced 2']",
        )
    ),
    "grpc_aio.py": Script(
        (
            "interceptors: [b'hello, call 0', b'hello, call 1', b'hello, call 2'] (6 attempts for 3 calls)",
            "channel: [b'hello, balanced 0', b'hello, balanced 1', b'hello, balanced 2', b'hello, balanced 3']",
        )
    ),
    "etcd_discovery.py": Script(
        ("two replicas registered: {'a': 3, 'b': 3}", "after b left: {'a': 6}"),
        servers=("etcd_server",),
    ),
    "config_hot_reload.py": Script(
        (
            "before: /orders/1 -> 503 after 2 attempts",
            "reloaded: generation 2",
            "after:  /orders/2 -> 200 after 3 attempts",
            "after:  /reports refused: CircuitOpenError",
        )
    ),
    "redis_shared.py": Script(
        (
            "search: A 3 calls, B 2 calls, then B refused",
            "payments: A's breaker OPEN, B's breaker OPEN",
            "payments: B refused without calling the backend",
        ),
        servers=("redis_server",),
    ),
    "test_fault_injection.py": Script(("3 passed",), pytest=True),
    "http_client_config.py": Elsewhere("test_config_examples::test_the_http_example_runs"),
    "grpc_client_config.py": Elsewhere("test_config_examples::test_the_grpc_example_runs"),
    "jaeger/traces.py": Elsewhere(
        "test_telemetry_example::test_the_example_makes_a_retried_hedged_trace_and_a_fallback_trace"
    ),
}

FILES: dict[str, str] = {
    "http_client_config.yaml": "test_config_examples::test_the_example_configs_pass_config_check",
    "grpc_client_config.toml": "test_config_examples::test_the_example_configs_pass_config_check",
    "jaeger/config.yaml": "test_telemetry_example::test_the_example_makes_a_retried_hedged_trace_and_a_fallback_trace",
    "jaeger/compose.yaml": "test_examples::test_the_jaeger_compose_file_names_the_promised_ports",
}


def example_files() -> set[str]:
    return {
        p.relative_to(EXAMPLES).as_posix()
        for p in EXAMPLES.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_every_example_is_run() -> None:
    files = example_files()
    scripts = {f for f in files if f.endswith(".py")}
    assert scripts == set(RUNS), f"examples without a run in RUNS: {sorted(scripts - set(RUNS))}"
    assert files - scripts == set(FILES), f"files without a test in FILES: {sorted(files - scripts - set(FILES))}"
    for name, test in [(n, r.test) for n, r in RUNS.items() if isinstance(r, Elsewhere)] + list(FILES.items()):
        module, function = test.split("::")
        assert callable(getattr(importlib.import_module(f"tests.{module}"), function, None)), (name, test)


def env_for(request: pytest.FixtureRequest, servers: tuple[str, ...]) -> dict[str, str]:
    """The environment of a run: the repository importable, each server's documented variable set."""
    env = {k: v for k, v in os.environ.items() if k not in ("ETCD_ENDPOINTS", "REDIS_URL")}
    env["PYTHONPATH"] = str(ROOT)
    for name in servers:
        server = request.getfixturevalue(name)
        if name == "etcd_server":
            env["ETCD_ENDPOINTS"] = f"127.0.0.1:{server.port}"
        elif name == "redis_server":
            env["REDIS_URL"] = server.url
    return env


SCRIPTS = {name: run for name, run in RUNS.items() if isinstance(run, Script)}


def marks(run: Script) -> list[pytest.MarkDecorator]:
    return [getattr(pytest.mark, server.removesuffix("_server")) for server in run.servers]


@pytest.mark.parametrize("name", [pytest.param(n, marks=marks(r)) for n, r in SCRIPTS.items()])
def test_the_example_runs(name: str, request: pytest.FixtureRequest) -> None:
    run = SCRIPTS[name]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] if run.pytest else [sys.executable]
    done = subprocess.run(
        [*command, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env_for(request, run.servers),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    missing = [line for line in run.expect if line not in done.stdout]
    assert not missing, f"{name} did not print {missing}:\n{done.stdout}"


def test_the_jaeger_compose_file_names_the_promised_ports() -> None:
    """No container runtime here: the compose file parses, and maps the ports the README and
    traces.py promise (the UI, OTLP over gRPC and HTTP; etcd)."""
    compose = yaml.safe_load((EXAMPLES / "jaeger" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"jaeger", "etcd"}
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    ports = {name: {str(p).split(":")[0] for p in s["ports"]} for name, s in services.items()}
    assert ports == {"jaeger": {"16686", "4317", "4318"}, "etcd": {"2379"}}
    assert "--listen-client-urls=http://0.0.0.0:2379" in services["etcd"]["command"]
