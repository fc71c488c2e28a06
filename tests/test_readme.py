"""Every fenced block of the README does what it shows: python blocks run as written, configs
load, commands work.

Each python block runs alone in a subprocess (a fresh interpreter, a temporary directory) with
the servers the README's readers would have, on the addresses the blocks read from their
environment: two HTTP and two gRPC replicas of ``orders``, etcd, Redis and an OTLP receiver.
A yaml or toml block whose first line is a comment naming a file (``# resilience.yaml``) is
that file: it is written into the block's directory, as a reader would save it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

import resilience
from resilience.config import loads

from ._grpc_service import EchoService, _identity
from ._http_server import HttpServer
from ._otlp_receiver import OtlpReceiver
from .servers import EtcdServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT = 20.0

# The fence tags the README may use, and what this test does with each.
KNOWN_TAGS = {
    "python": "run in a subprocess, exit code 0",
    "yaml": "loaded with resilience.config",
    "toml": "loaded with resilience.config",
    "sh": "each command checked (pip extras, make targets, resilience config check)",
    "text": "output samples and trees: skipped",
}


@dataclass(frozen=True)
class Block:
    tag: str
    line: int
    code: str
    section: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"{self.tag}-line{self.line}-{slug}"

    @property
    def file_name(self) -> str | None:
        """The file a config block is, when its first line names one (``# resilience.yaml``)."""
        match = re.match(r"#\s*([\w.-]+\.(?:ya?ml|toml|json))\s*$", self.code.split("\n", 1)[0])
        return match.group(1) if match else None


def blocks(text: str) -> list[Block]:
    """Every fenced block, by its fence tag (an untagged fence has tag ``""``)."""
    found: list[Block] = []
    section = "top"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence:
            start = i
            i += 1
            body: list[str] = []
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md:{start + 1}: a fence that is never closed"
            found.append(Block(fence.group(1), start + 1, "\n".join(body) + "\n", section))
        i += 1
    return found


BLOCKS = blocks(README.read_text())


def of(tag: str) -> list[Block]:
    return [b for b in BLOCKS if b.tag == tag]


def files() -> dict[str, str]:
    return {b.file_name: b.code for b in BLOCKS if b.file_name is not None}


# -- the servers the blocks talk to ---------------------------------------------------------------


def _grpc_orders(service: EchoService) -> tuple[grpc.Server, str]:
    """``shop.Orders/Get`` (bytes in, the same bytes out), the method the README's gRPC blocks call."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(
        "shop.Orders", {"Get": grpc.unary_unary_rpc_method_handler(service.unary, _identity, _identity)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def environment(redis_server: RedisServer, etcd: EtcdServer) -> Iterator[dict[str, str]]:
    http = [HttpServer().start(), HttpServer().start()]
    grpc_servers = [_grpc_orders(EchoService()) for _ in range(2)]
    receiver = OtlpReceiver().__enter__()
    try:
        yield {
            "ORDERS_URL": http[0].url,
            "ORDERS_ENDPOINTS": ",".join(s.address for s in http),
            "ORDERS_GRPC": grpc_servers[0][1],
            "ORDERS_GRPC_ENDPOINTS": ",".join(address for _, address in grpc_servers),
            "RESILIENCE_ETCD": f"etcd://127.0.0.1:{etcd.port}/services",
            # a database of its own: the session's Redis serves other tests too
            "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/15",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        }
    finally:
        receiver.__exit__(None, None, None)
        for server, _ in grpc_servers:
            server.stop(None)
        for s in http:
            s.stop()


def run_python(code: str, directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, content in files().items():
        (directory / name).write_text(content)
    script = directory / "block.py"
    script.write_text(code)
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "error::ResourceWarning"}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


# -- the tests ------------------------------------------------------------------------------------


def test_every_fence_tag_is_known() -> None:
    tags = {b.tag for b in BLOCKS}
    unknown = {f"README.md:{b.line}: {b.tag or '(no tag)'}" for b in BLOCKS if b.tag not in KNOWN_TAGS}
    assert not unknown, f"fences this test does not know: {sorted(unknown)}; known: {sorted(KNOWN_TAGS)}"
    assert {"python", "yaml", "sh", "text"} <= tags
    assert len(of("python")) >= 13


@pytest.mark.parametrize("block", of("python"), ids=lambda b: b.id)
def test_a_python_block_runs(block: Block, environment: dict[str, str], tmp_path: Path) -> None:
    done = run_python(block.code, tmp_path, environment)
    assert done.returncode == 0, f"README.md:{block.line} failed:\n{done.stdout}\n{done.stderr}"


def test_a_broken_block_fails(environment: dict[str, str], tmp_path: Path) -> None:
    """The runner notices a block that lost an import (so a passing block means something)."""
    block = of("python")[0]
    imports = [line for line in block.code.splitlines() if line.startswith(("from ", "import "))]
    assert imports
    broken = block.code.replace(imports[-1] + "\n", "", 1)
    done = run_python(broken, tmp_path, environment)
    assert done.returncode != 0
    assert "NameError" in done.stderr


@pytest.mark.parametrize("block", of("yaml") + of("toml"), ids=lambda b: b.id)
def test_a_config_block_loads(block: Block) -> None:
    config = loads(block.code, block.tag, environ={})
    assert config.data.policies or config.data.services or config.data.grpc or config.data.http


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def _commands(block: Block) -> Iterator[list[str]]:
    for line in block.code.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            yield shlex.split(line)


@pytest.mark.parametrize("block", of("sh"), ids=lambda b: b.id)
def test_a_shell_block_works(block: Block, tmp_path: Path) -> None:
    for name, content in files().items():
        (tmp_path / name).write_text(content)
    commands = list(_commands(block))
    assert commands
    for words in commands:
        if words[:2] == ["pip", "install"]:
            for spec in words[2:]:
                match = re.fullmatch(r"resilience-policies\[([\w,-]+)\]", spec)
                assert match, f"README.md:{block.line}: pip install of {spec!r}, not resilience-policies[...]"
                assert set(match.group(1).split(",")) <= _extras(), f"README.md:{block.line}: unknown extra in {spec}"
        elif words[0] == "make":
            assert set(words[1:]) <= _make_targets(), f"README.md:{block.line}: no such make target: {words[1:]}"
        elif words[:2] == ["resilience", "config"] and words[2] in ("check", "schema"):
            args = words[1 : words.index(">")] if ">" in words else words[1:]
            done = subprocess.run(
                [sys.executable, "-m", "resilience.cli", *args],
                cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, f"README.md:{block.line}: {' '.join(words)}:\n{done.stdout}{done.stderr}"
        else:
            pytest.fail(f"README.md:{block.line}: a command this test cannot check: {' '.join(words)}")


def _defaults_rows() -> list[tuple[str, str]]:
    section = README.read_text().split("### Defaults", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| .*\|$", section, re.M)
    assert len(rows) >= 14, rows
    return rows


def _declared(cls: type, name: str) -> str:
    """A field's default as the table writes it: ``required``, a class's name, or its repr."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert name in fields, f"{cls.__name__} has no option {name!r}"
    field = fields[name]
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return value.__name__ if isinstance(value, type) else repr(value)


def test_the_defaults_table_matches_the_options_classes() -> None:
    checked = 0
    for policy, cell in _defaults_rows():
        cls = getattr(resilience, f"{policy}Options")
        for item in re.findall(r"`([^`]+)`", cell):
            name, _, written = item.partition("=")
            if not written:
                assert cell.count(f"`{name}` required") == 1, f"{policy}: {item!r} is neither name=value nor required"
                written = "required"
            assert _declared(cls, name) == written, f"{policy}.{name}: the README says {written}"
            checked += 1
    assert checked >= 60


def _slug(title: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_the_contents_list_every_section() -> None:
    text = README.read_text()
    outside = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    headings = re.findall(r"^#{2,3} (.+)$", outside, re.M)
    contents = outside.split("## Contents", 1)[1].split("\n## ", 1)[0]
    linked = re.findall(r"- \[(.+?)\]\(#([\w-]+)\)", contents)
    assert [title for title, _ in linked] == [h for h in headings if h != "Contents"]
    assert all(anchor == _slug(title) for title, anchor in linked)
    for anchor in re.findall(r"\]\(#([\w-]+)\)", text):
        assert anchor in {_slug(h) for h in headings}, f"a link to #{anchor}, no such section"


def test_the_python_blocks_are_lint_clean(tmp_path: Path) -> None:
    """The blocks pass the project's ruff rules and format (pytest's rules aside: they are not tests)."""
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed next to this interpreter")
    for block in of("python"):
        (tmp_path / f"readme_line{block.line}.py").write_text(block.code)
    config = ["--config", str(ROOT / "pyproject.toml")]
    checked = subprocess.run(
        [str(ruff), "check", *config, "--extend-ignore", "PT", "--output-format", "concise", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = subprocess.run(
        [str(ruff), "format", *config, "--check", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
