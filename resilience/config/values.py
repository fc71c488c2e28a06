"""The value types of a config: durations, numbers from the environment, references to code.

- A **duration** is a number of seconds or a string of one or more ``<number><unit>``
  parts, units ``us``, ``ms``, ``s``, ``m``, ``h``, ``d``: ``250ms``, ``2s``, ``1m30s``, ``1h``.
- **``${NAME}``** in a string is replaced by the environment variable ``NAME``
  (``${NAME:-default}`` when it may be unset; ``$$`` is a literal ``$``), before the config
  is checked. A variable that is unset and has no default is an error naming it; the
  values substituted are never shown (see :class:`~resilience.config.errors.Secrets`).
  Numbers and booleans may come from the environment as strings (``"8"``, ``"true"``).
- An **exception** is named by its class: a builtin (``ConnectionError``), one of the
  library's errors (``CircuitOpenError``), or a dotted path (``httpx.ConnectError``,
  ``package.module:Class``).
- A **function** (a predicate, a fallback handler, a key function) is ``package.module:name``.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import math
import re
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator

from .errors import ConfigIssue, Loc, Secrets, did_you_mean, dotted

__all__ = [
    "Bool",
    "Duration",
    "Float",
    "Int",
    "parse_duration",
    "resolve_callable",
    "resolve_exception",
    "substitute",
]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(us|ms|s|m|h|d)")
_DURATION_PATTERN = r"^\s*((\d+(\.\d+)?|\.\d+)\s*(us|ms|s|m|h|d)\s*)+$|^\s*\d+(\.\d+)?\s*$"
_DURATION_HELP = "a number of seconds or a string like '250ms', '2s', '1m30s', '1h'"


def parse_duration(value: object) -> object:
    """``value`` as seconds when it is a duration string, number or ``timedelta``; else as it is.

    A value that is neither is passed on for the type check to refuse.

    Raises:
        ValueError: a string that is not a duration.
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if not isinstance(value, str):
        return value
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if text[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    else:
        if pos and not text[pos:].strip():
            return total
    raise ValueError(f"must be a duration ({_DURATION_HELP}), got {value!r}")


class _DurationJsonSchema:
    """A duration in JSON Schema: a bounded number, or a duration string."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = dict(handler(core_schema))
        number = {"type": "number"}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                number[key] = schema.pop(key)
        schema.pop("type", None)
        schema["anyOf"] = [number, {"type": "string", "pattern": _DURATION_PATTERN}]
        return schema


Duration = Annotated[float, BeforeValidator(parse_duration), _DurationJsonSchema()]
"""Seconds, given as a number or a duration string; bounds go in the field (``Field(gt=0)``)."""


def _int_from_text(value: object) -> object:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return value


def _float_from_text(value: object) -> object:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _bool_from_text(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


Int = Annotated[int, BeforeValidator(_int_from_text)]
"""An integer (or its digits in a string, as the environment gives them); never a bool."""
Float = Annotated[float, BeforeValidator(_float_from_text)]
"""A finite number (or one in a string)."""
Bool = Annotated[bool, BeforeValidator(_bool_from_text)]
"""``true`` / ``false`` (or those words in a string); never a number."""


# -- ${ENV} substitution ------------------------------------------------------------------

_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


def substitute(
    data: object, environ: Mapping[str, str], loc: Loc = (), secrets: Secrets | None = None
) -> tuple[object, Secrets, list[ConfigIssue]]:
    """``data`` with every ``${NAME}`` in its strings replaced from ``environ``.

    Returns the new data, where the substituted values are (never to be shown), and the
    problems (an unset variable with no default; a malformed ``${``).
    """
    secrets = secrets if secrets is not None else Secrets()
    issues: list[ConfigIssue] = []
    out = _walk(data, environ, loc, secrets, issues)
    return out, secrets, issues


def _walk(data: object, environ: Mapping[str, str], loc: Loc, secrets: Secrets, issues: list[ConfigIssue]) -> object:
    if isinstance(data, Mapping):
        return {key: _walk(value, environ, (*loc, str(key)), secrets, issues) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_walk(value, environ, (*loc, i), secrets, issues) for i, value in enumerate(data)]
    if not isinstance(data, str) or "$" not in data:
        return data
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        name, default = match.group(2), match.group(3)
        names.append(name)
        value = environ.get(name)
        if value is None:
            if default is None:
                issues.append(ConfigIssue(dotted(loc), f"environment variable {name} is not set"))
                return ""
            value = default
        secrets.values.add(value)
        return value

    text = _VAR.sub(replace, data)
    if "${" in _VAR.sub("", data):
        issues.append(ConfigIssue(dotted(loc), "malformed ${...}: write ${NAME} or ${NAME:-default}"))
    if names:
        secrets.paths[loc] = tuple(names)
    return text


# -- references to code -------------------------------------------------------------------

_lock = threading.Lock()


def _library_errors() -> dict[str, type[BaseException]]:
    from .. import errors
    from ..balancing.base import NoEndpointError

    found = {name: getattr(errors, name) for name in errors.__all__}
    found["NoEndpointError"] = NoEndpointError
    return {k: v for k, v in found.items() if isinstance(v, type) and issubclass(v, BaseException)}


def _builtin_errors() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }


def _import(ref: str) -> object:
    module_name, colon, attr = ref.partition(":")
    if not colon:
        module_name, _, attr = ref.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"must be 'package.module:name', got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for {ref!r}: {exc}") from None
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            names = [n for n in dir(value) if not n.startswith("_")]
            raise ValueError(f"{module_name!r} has no {attr!r}{did_you_mean(part, names)}") from None
    return value


@functools.lru_cache(maxsize=256)
def _exception(name: str) -> object:
    known = {**_builtin_errors(), **_library_errors()}
    if "." in name or ":" in name:
        with _lock:
            return _import(name)
    if name in known:
        return known[name]
    raise ValueError(
        f"unknown exception {name!r}{did_you_mean(name, known)}; name a builtin or library error, "
        "or give its dotted path ('httpx.ConnectError')"
    )


def resolve_exception(name: str, base: type[BaseException] = BaseException) -> type[BaseException]:
    """The exception class ``name`` stands for, a subclass of ``base``.

    Raises:
        ValueError: an unknown name (with the closest known one), or not such a class.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"must name an exception class, got {name!r}")
    value = _exception(name)
    if not (isinstance(value, type) and issubclass(value, base)):
        raise ValueError(f"{name!r} is not a subclass of {base.__name__}")
    return value


@functools.lru_cache(maxsize=256)
def resolve_callable(ref: str) -> Callable[..., Any]:
    """The function ``package.module:name`` names.

    Raises:
        ValueError: the module cannot be imported, it has no such name, or that is not callable.
    """
    if not isinstance(ref, str) or ":" not in ref:
        raise ValueError(f"must be a function as 'package.module:name', got {ref!r}")
    with _lock:
        value = _import(ref)
    if not callable(value):
        raise ValueError(f"{ref!r} is not callable, got {type(value).__name__}")
    return value
