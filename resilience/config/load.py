"""Reading a config: YAML, TOML or JSON text, a file, or a dict; ``${ENV}`` substituted; checked whole.

:func:`load` is the entry point: ``load("resilience.yaml")``, ``load({"policies": ...})``.
It returns a :class:`Config` or raises :class:`~resilience.config.ConfigError` listing every
problem; nothing is built until :meth:`Config.setup` (or a reload) asks for it.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ._report import issues_of
from .errors import ConfigError, ConfigIssue, Secrets
from .schema import ConfigSchema, references
from .values import substitute

__all__ = ["FORMATS", "Config", "load", "loads", "parse"]

FORMATS = ("yaml", "toml", "json")
_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}


_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's is 4x faster, when built


class _StrictLoader(_SafeLoader):  # type: ignore[misc]
    """YAML's safe loader, refusing a key given twice in one mapping."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str | int | float | bool) and key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (line {mark.line + 1})", mark
            )
        seen.add(key)
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse(text: str | bytes, fmt: str = "yaml", source: str | None = None) -> object:
    """The data of ``text`` in format ``fmt`` (``yaml``, ``toml`` or ``json``).

    Raises:
        ConfigError: the text is not valid in that format (with the line and column).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([ConfigIssue("(file)", f"not UTF-8 text: {exc}")], source) from None
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "json":
            return json.loads(text)
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
        return {} if data is None else data
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue("(toml)", str(exc))], source) from None
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
        raise ConfigError([ConfigIssue("(json)", where)], source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("(yaml)", f"{problem}{where}")], source) from None


@dataclass(frozen=True, eq=False)
class Config:
    """A config that passed every check.

    Attributes:
        data: the checked config (:class:`~resilience.config.schema.ConfigSchema`). It may hold
            secrets from the environment: show it through :meth:`redact`, never as it is.
        secrets: where the values from the environment are (for redaction).
        source: where it came from (a file name, an etcd key, ``None`` for a dict).
    """

    data: ConfigSchema
    secrets: Secrets
    source: str | None = None

    def redact(self, text: str) -> str:
        """``text`` with the values that came from the environment masked."""
        return self.secrets.redact(text)

    def summary(self) -> str:
        """What this config sets up, in a few lines (secrets masked)."""
        from .summary import summarize

        return self.redact(summarize(self))

    def setup(self, **options: Any) -> Any:
        """Build everything this config describes: see :class:`~resilience.config.Setup`."""
        from importlib import import_module

        return import_module(f"{__package__}.setup").Setup(self, **options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.data == other.data

    def __hash__(self) -> int:
        return id(self.data)

    def __repr__(self) -> str:
        sets = ", ".join(self.data.policies) or "none"
        return self.redact(f"Config(source={self.source!r}, policies=[{sets}])")


def check(data: object, *, environ: Mapping[str, str] | None = None, source: str | None = None) -> Config:
    """``data`` (parsed, not yet substituted) checked whole into a :class:`Config`.

    Raises:
        ConfigError: every problem found, nothing of it used.
    """
    if not isinstance(data, Mapping):
        raise ConfigError([ConfigIssue("(top level)", f"must be a mapping, got {type(data).__name__}")], source)
    substituted, secrets, issues = substitute(data, os.environ if environ is None else environ)
    missing = {issue.path for issue in issues}
    assert isinstance(substituted, Mapping)
    schema: ConfigSchema | None = None
    try:
        schema = ConfigSchema.model_validate(substituted)
    except ValidationError as exc:
        issues.extend(i for i in issues_of(exc, ConfigSchema, secrets) if i.path not in missing)
    issues.extend(i for i in references(substituted) if i.path not in missing)
    if issues or schema is None:
        raise ConfigError([ConfigIssue(i.path, secrets.redact(i.message)) for i in issues], source)
    return Config(schema, secrets, source)


def loads(
    text: str | bytes, fmt: str | None = None, *, environ: Mapping[str, str] | None = None, source: str | None = None
) -> Config:
    """A config from text: ``fmt`` is ``yaml`` (the default: JSON is YAML too), ``toml`` or ``json``.

    Raises:
        ConfigError: the text does not parse, or the config is refused.
    """
    return check(parse(text, fmt or "yaml", source), environ=environ, source=source)


def load(
    source: str | os.PathLike[str] | Mapping[str, Any] | Config,
    *,
    fmt: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """A config from a file (``.yaml``/``.yml``, ``.toml``, ``.json``; ``fmt`` for another name), or a dict.

    ``${ENV}`` references are filled from ``environ`` (default ``os.environ``).

    Raises:
        ConfigError: every problem found (the file's name as ``source``).
        OSError: the file cannot be read.
    """
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return check(source, environ=environ)
    path = Path(source)
    kind = fmt or _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"cannot tell the format of {str(path)!r} from its suffix; give fmt='yaml', 'toml' or 'json'")
    return loads(path.read_bytes(), kind, environ=environ, source=str(path))
