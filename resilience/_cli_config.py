"""The config commands of ``resilience``: ``config check FILE`` and ``config schema`` (see :mod:`resilience.cli`).

The config package (pydantic, PyYAML) is imported when a command runs, so that the other
commands need neither.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config check`` and ``config schema`` to the ``resilience`` command."""
    config = commands.add_parser("config", help="check a config file, or print its JSON Schema")
    actions = config.add_subparsers(dest="config_command", required=True)
    check = actions.add_parser("check", help="check a config file: its problems, or what it sets up")
    check.add_argument("file", metavar="FILE", help="a .yaml/.yml, .toml or .json config file")
    check.add_argument("--format", choices=["yaml", "toml", "json"], help="the file's format (default: by suffix)")
    actions.add_parser("schema", help="print the JSON Schema of config files (for editors)")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a ``config`` command: 0 when the config is good, 1 when it is refused or unreadable."""
    from .config import ConfigError, json_schema, load

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if args.config_command == "schema":
        json.dump(json_schema(), out, indent=2)
        out.write("\n")
        return 0
    try:
        config = load(args.file, fmt=args.format)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return 1
    except (OSError, ValueError) as exc:
        err.write(f"cannot read {args.file}: {exc}\n")
        return 1
    out.write(f"config {args.file}: OK\n{config.summary()}\n")
    return 0
