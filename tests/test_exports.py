"""Every public name is importable from the package and listed in ``__all__``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import resilience

NAMESPACES = ("resilience.telemetry", "resilience.config")
"""Subpackages whose names are reached through them (``resilience.telemetry.configure``,
``resilience.config.load``), not from ``resilience``: telemetry imports opentelemetry and
config pydantic, which ``import resilience`` does not."""


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(resilience.__path__, "resilience."):
        if info.name == "resilience.cli" or any(part.startswith("_") for part in info.name.split(".")):
            continue
        if info.name.startswith(NAMESPACES):
            continue
        names.append(info.name)
    return names


INTERNAL = {
    "AsyncNext",
    "CountWindow",
    "DEFAULT_CLASSIFIER",
    "OutcomeWindow",
    "SYSTEM_CLOCK",
    "SyncNext",
    "TimeWindow",
    "compile_key",
    "emit",
    "rejection_probability",
}
"""Internals that stay importable from their modules but are not the public surface."""

LAZY = {"AsyncRedisBreakerState", "PyBreakerPolicy", "RedisBreakerState"} | {
    # etcd discovery and registration (httpx)
    "AsyncEtcdClient",
    "AsyncRegistrator",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdConfig",
    "EtcdDiscovery",
    "EtcdError",
    "EtcdUnavailableError",
    "KeyValue",
    "Registrator",
    "WatchEvent",
    "WatchUpdate",
    "instance_key",
    "parse_etcd_uri",
}
"""Need an optional dependency: reachable as ``resilience.X``, kept out of ``__all__``."""


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions.
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def test_all_names_exist() -> None:
    for name in resilience.__all__:
        assert hasattr(resilience, name), name


def test_all_is_sorted_and_unique() -> None:
    assert len(set(resilience.__all__)) == len(resilience.__all__)
    assert resilience.__all__ == sorted(resilience.__all__, key=_isort_key)


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_public_class_of_every_module_is_exported(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = set(resilience.__all__) | LAZY | INTERNAL
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        assert name in exported, f"{module_name}.{name} is public but not in resilience.__all__"


def test_the_surface_is_complete() -> None:
    """Policies with their options, errors, events, protocols: all there, internals not."""
    names = set(resilience.__all__)
    assert not names & INTERNAL
    assert not names & LAZY
    for name in list(names):
        obj = getattr(resilience, name)
        if inspect.isclass(obj) and issubclass(obj, resilience.Reconfigurable) and obj is not resilience.Reconfigurable:
            assert obj.options_type.__name__ in names, f"{name}'s options are not exported"
        if inspect.isclass(obj) and issubclass(obj, resilience.ResilienceError):
            assert obj.__name__ in names
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            public = inspect.isclass(value) and value.__module__ == module_name and not value.__name__.startswith("_")
            if public and issubclass(value, resilience.ResilienceError | resilience.Event | resilience.Options):
                assert value.__name__ in names, f"{module_name}.{value.__name__} is not exported"
    for name in INTERNAL:
        assert any(hasattr(importlib.import_module(m), name) for m in _public_modules()), name


def test_star_import_needs_no_extra() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pybreaker', 'redis'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from resilience import *\n"
        "print(len(dir()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lazy_names_import_on_first_use() -> None:
    assert resilience.PyBreakerPolicy.__name__ == "PyBreakerPolicy"
    assert resilience.RedisBreakerState.__name__ == "RedisBreakerState"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        resilience.Nope  # noqa: B018


def test_core_does_not_import_grpc_or_httpx() -> None:
    import subprocess
    import sys

    code = (
        "import sys, resilience, resilience.policies, resilience.discovery, resilience.balancing;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'httpx')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "module_name",
    [
        "interceptors.grpc",
        "interceptors.grpc_aio",
        "interceptors.grpc_channel",
        "interceptors.grpc_channel_aio",
        "interceptors.grpc_server",
        "interceptors.httpx",
    ],
)
def test_adapter_modules_export_what_they_list(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__, module_name
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name}"


def test_importing_resilience_does_not_import_opentelemetry() -> None:
    import subprocess
    import sys

    code = (
        "import sys, resilience, resilience.pipeline;"
        "bad = [m for m in sys.modules if m.startswith('opentelemetry')]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
