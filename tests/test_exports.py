"""Every public name is importable from the package and listed in ``__all__``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import resilience


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(resilience.__path__, "resilience."):
        if info.name == "resilience.cli" or any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return names


def test_all_names_exist() -> None:
    for name in resilience.__all__:
        assert hasattr(resilience, name), name


def test_all_is_sorted_and_unique() -> None:
    assert len(set(resilience.__all__)) == len(resilience.__all__)


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_public_class_of_every_module_is_exported(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = set(resilience.__all__)
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        assert name in exported, f"{module_name}.{name} is public but not in resilience.__all__"


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
