"""Policies declared in a config file, checked whole, built in one call, reloaded live.

A whole set-up::

    from resilience import config

    setup = config.load("resilience.yaml").setup()
    client = setup.httpx_client()                       # httpx.Client with a resilient transport
    channel = setup.grpc_channel("orders")              # a discovery-aware gRPC channel
    watcher = setup.watch_file("resilience.yaml")       # hot reload: a new valid file swaps in

:func:`load` reads YAML, TOML, JSON or a dict and raises :class:`ConfigError` listing every
problem (``services.orders.retry.attempts: must be >= 1, got 0``); :class:`Setup` builds the
pipelines, discovery, balancers and adapters and applies later configs in place, keeping
the state of every policy whose settings did not change. The schema is in
:mod:`resilience.config.schema`; ``resilience config schema`` prints it as JSON Schema.

Needs the ``config`` extra (pydantic, PyYAML).
"""

import re
from typing import TYPE_CHECKING, Any

try:
    import pydantic  # noqa: F401
    import yaml  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"resilience.config needs the 'config' extra ({exc.name} is missing): pip install 'resilience-policies[config]'"
    ) from exc

from .errors import ConfigError, ConfigIssue
from .load import Config, load, loads
from .schema import ConfigSchema

if TYPE_CHECKING:
    from .reload import EtcdWatcher, FileWatcher
    from .setup import ReloadResult, Setup

__all__ = [
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConfigSchema",
    "EtcdWatcher",
    "FileWatcher",
    "ReloadResult",
    "Setup",
    "json_schema",
    "load",
    "loads",
]

_LAZY = {
    "Setup": "setup",
    "ReloadResult": "setup",
    "FileWatcher": "reload",
    "EtcdWatcher": "reload",
}


def plain(text: str) -> str:
    """Docstring text without its markup: ``:class:`~resilience.Retry``` as ``Retry``, double backquotes as single."""
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: plain(v) if k == "description" and isinstance(v, str) else _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


_BOUND_NAMES = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _push(node: dict[str, Any], bounds: dict[str, Any]) -> None:
    if node.get("type") in ("number", "integer"):
        node.update(bounds)
    for option in node.get("anyOf", ()):
        _push(option, bounds)


def _bounds(node: Any) -> Any:
    """pydantic writes the bounds of an optional field as ``gt``/``le`` beside its ``anyOf``:
    JSON Schema wants them as ``exclusiveMinimum``/``maximum``, on the numeric branch."""
    if isinstance(node, list):
        return [_bounds(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _bounds(v) for k, v in node.items()}
    bounds = {_BOUND_NAMES[k]: node.pop(k) for k in list(node) if k in _BOUND_NAMES}
    if bounds:
        _push(node, bounds)
    return node


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (for editors: ``resilience config schema``)."""
    schema: dict[str, Any] = _bounds(_plain(ConfigSchema.model_json_schema()))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "resilience config"
    return schema


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'resilience.config' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
