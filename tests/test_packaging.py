"""Packaging: the wheel's metadata and files, what ``import resilience`` needs, and the extras' errors.

The wheel is built from a copy of the tree (so the shared checkout gets no ``build/``), with
the setuptools already installed (no build isolation, so no index is needed).
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import resilience

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
DIST = "resilience-policies"


def _name(requirement: str) -> str:
    """The normalized project name of a requirement string."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _run(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- the wheel -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    # tests/ and benchmarks/ are copied too: the wheel must leave them out.
    for name in ("resilience", "interceptors", "tests", "benchmarks"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        [path] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(zf.read(path).decode())


def test_wheel_name_version_and_license(wheel: Path) -> None:
    meta = _metadata(wheel)
    assert meta["Name"] == DIST
    assert meta["Version"] == resilience.__version__
    assert wheel.name.startswith(f"resilience_policies-{resilience.__version__}-py3-none-any")
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "License" not in meta  # the legacy field, which the TOML-table form fills
    classifiers = meta.get_all("Classifier") or []
    # Only the Python versions the suite runs on are claimed (3.11 here; Debian 12 has no other).
    assert [c for c in classifiers if c.startswith("Programming Language :: Python :: 3.")] == [
        "Programming Language :: Python :: 3.11"
    ]
    for wanted in (
        "Programming Language :: Python :: 3.11",
        "Typing :: Typed",
        "Framework :: AsyncIO",
        "Framework :: Trio",
    ):
        assert wanted in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression says it
    assert meta["Requires-Python"] == ">=3.11"


def test_wheel_requirements_and_extras(wheel: Path) -> None:
    meta = _metadata(wheel)
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"grpc", "httpx", "etcd", "redis", "config", "otlp", "pybreaker", "all"} <= extras
    requires = meta.get_all("Requires-Dist") or []
    core = {_name(r) for r in requires if "extra ==" not in r}
    assert core == {"limits", "opentelemetry-api"}

    def extra(name: str) -> set[str]:
        return {_name(r) for r in requires if re.search(rf"extra == ['\"]{name}['\"]", r)}

    assert "grpcio" in extra("grpc")
    assert "httpx" in extra("httpx")
    assert "httpx" in extra("etcd")
    assert "redis" in extra("redis")
    assert {"pydantic", "pyyaml"} <= extra("config")
    assert "pybreaker" in extra("pybreaker")
    assert "opentelemetry-sdk" in extra("otlp")


def test_wheel_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"resilience", "interceptors", f"resilience_policies-{resilience.__version__}.dist-info"}
    assert "resilience/py.typed" in names
    assert "interceptors/py.typed" in names
    assert f"resilience_policies-{resilience.__version__}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/")) or "__pycache__" in n]
    # every subpackage is in: each package directory of the tree has its __init__.py in the wheel
    for init in [*(ROOT / "resilience").rglob("__init__.py"), *(ROOT / "interceptors").rglob("__init__.py")]:
        assert init.relative_to(ROOT).as_posix() in names


# -- the source of truth ----------------------------------------------------------------------


def test_one_source_for_the_version() -> None:
    assert "version" not in PROJECT
    assert PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "resilience.__version__"}
    from resilience.telemetry import _listener

    assert resilience.__version__ == _listener._VERSION


def test_extras_name_this_distribution() -> None:
    """``all`` and ``dev`` point at this distribution's own extras, by its own name."""
    extras = PROJECT["optional-dependencies"]
    for group in ("all", "dev"):
        own = [r for r in extras[group] if _name(r) in {"resilience", DIST}]
        assert own, group
        for req in own:
            assert _name(req) == DIST, req
            listed = re.search(r"\[(.*)\]", req)
            assert listed
            for name in listed.group(1).split(","):
                assert name.strip() in extras, req


# -- what importing needs ---------------------------------------------------------------------

# What the core must import without: every adapter and backend dependency.
_OPTIONAL = ["grpc", "httpx", "httpcore", "redis", "pydantic", "yaml", "pybreaker", "sniffio", "trio", "coredis"]


def _closure(requirements: list[str]) -> set[str]:
    """The installed distributions these requirements pull in, transitively (no extras)."""
    seen: set[str] = set()
    todo = [_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in importlib.metadata.requires(name) or []:
            if "extra ==" not in req and not re.search(r"python_version\s*<", req):
                todo.append(_name(req))
    return seen


def test_import_resilience_needs_only_the_core_dependencies() -> None:
    allowed_dists = _closure(PROJECT["dependencies"])
    proc = _run(
        f"""
        import sys
        for name in {_OPTIONAL!r}:
            sys.modules[name] = None  # importing it raises ImportError
        before = set(sys.modules)
        import resilience
        from resilience import *  # noqa
        loaded = {{m.split(".")[0] for m in set(sys.modules) - before if sys.modules[m] is not None}}
        print(" ".join(sorted(n for n in loaded if n not in sys.stdlib_module_names)))
        """
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split()) - {"resilience"}
    by_module = importlib.metadata.packages_distributions()
    for module in loaded:
        dists = {_name(d) for d in by_module.get(module, [])}
        assert dists & allowed_dists, f"import resilience loads {module} ({dists}), not a core dependency"


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("interceptors.grpc", "grpc", "grpc"),
        ("interceptors.grpc_aio", "grpc", "grpc"),
        ("interceptors.grpc_channel", "grpc", "grpc"),
        ("interceptors.grpc_channel_aio", "grpc", "grpc"),
        ("interceptors.grpc_server", "grpc", "grpc"),
        ("interceptors.httpx", "httpx", "httpx"),
        ("resilience.discovery.etcd", "httpx", "etcd"),
        ("resilience.discovery.registration", "httpx", "etcd"),
        ("resilience.config", "pydantic", "config"),
        ("resilience.config", "yaml", "config"),
        ("resilience.shared.redis_breaker", "redis", "redis"),
        ("resilience.policies.pybreaker_adapter", "pybreaker", "pybreaker"),
    ],
)
def test_import_without_the_extra_names_it(module: str, missing: str, extra: str) -> None:
    assert extra in PROJECT["optional-dependencies"]
    proc = _run(
        f"""
        import sys
        sys.modules[{missing!r}] = None
        try:
            import {module}
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
        """
    )
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout.strip()
    assert f"pip install '{DIST}[{extra}]'" in message, message
    assert module in message, message


def test_no_message_names_the_old_distribution() -> None:
    """No error message or doc tells users to install ``resilience[...]``, a name this project does not own."""
    old = re.compile(r"pip install '?resilience\[")
    offenders = [
        str(path.relative_to(ROOT))
        for base in ("resilience", "interceptors")
        for path in (ROOT / base).rglob("*.py")
        if old.search(path.read_text())
    ]
    if old.search((ROOT / "README.md").read_text()):
        offenders.append("README.md")
    assert offenders == []
