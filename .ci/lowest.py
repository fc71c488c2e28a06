"""Writes the requirements of a lowest-versions run: every runtime bound of pyproject.toml pinned.

``python3 .ci/lowest.py OUT`` writes to OUT one ``name==version`` line for each ``name>=version``
of the core dependencies and of the extras users install (everything in ``all``), then the dev
tools unpinned. The contrib OpenTelemetry instrumentations are left out: each release of them
requires one exact opentelemetry-api, newer than our lowest, so the two test files that use them
are skipped in this run (``make test-lowest`` ignores them). The pins come from pyproject.toml
itself, so a bound raised or lowered there is what the next run installs.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not installable at the core's lowest opentelemetry-api (see the docstring).
LEFT_OUT = ("opentelemetry-instrumentation-",)
_BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*$")


def _own(requirement: str, name: str) -> bool:
    return requirement.replace("_", "-").lower().startswith(name.lower() + "[")


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = project["name"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    runtime = list(project["dependencies"])
    for extra in ("grpc", "httpx", "etcd", "redis", "pybreaker", "config", "otlp", "demo"):
        runtime += extras.get(extra, [])
    lines: dict[str, str] = {}
    for requirement in runtime:
        match = _BOUND.match(requirement)
        if match is None:
            raise SystemExit(f"{requirement!r}: a runtime requirement needs a lower bound written as name>=version")
        lines.setdefault(match[1].lower(), f"{match[1]}=={match[3]}")
    tools: list[str] = []
    for requirement in extras["dev"]:
        if _own(requirement, name) or requirement.startswith(LEFT_OUT):
            continue
        match = _BOUND.match(requirement)
        key = match[1].lower() if match else requirement
        if key in lines:
            continue  # a runtime package the dev list repeats: its lowest version stands
        if key.startswith("opentelemetry-"):
            # Companions released in step with a runtime package: at the same lowest.
            assert match is not None
            lines[key] = f"{match[1]}=={match[3]}"
            continue
        tools.append(requirement)
    return [*lines.values(), *tools]


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 .ci/lowest.py OUT")
    Path(sys.argv[1]).write_text("\n".join(requirements()) + "\n")


if __name__ == "__main__":
    main()
