"""What :meth:`~resilience.config.Setup.apply` reports, and the small helpers of a set-up."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..events import Listener
from .load import Config
from .schema_adapters import TelemetrySection

__all__ = ["ReloadResult", "Source", "close_listener", "source_name", "telemetry_listener"]

_log = logging.getLogger("resilience.config")

Source = Config | Mapping[str, Any] | str | os.PathLike[str]
"""What a set-up is built or reloaded from: a config, a dict, or a file name."""


@dataclass(frozen=True)
class ReloadResult:
    """What became of a config given to :meth:`Setup.apply` or :meth:`Setup.reload`.

    Attributes:
        applied: whether it is now in force.
        generation: the generation in force afterwards (1 for the first config, +1 per applied one).
        changes: what it changed (``policies.default.retry: reconfigured``...), when applied.
        error: why it was refused, else ``None``: a :class:`ConfigError` (what building raised is
            reported as its ``(building)`` issue, with the secrets masked).
        source: where it came from.
    """

    applied: bool
    generation: int
    changes: tuple[str, ...] = ()
    error: BaseException | None = None
    source: str | None = None


def telemetry_listener(section: TelemetrySection) -> Listener | None:
    if not section.enabled:
        return None
    try:
        from .. import telemetry
    except ImportError:
        _log.warning("telemetry is enabled in the config but resilience.telemetry cannot be imported")
        return None
    configure = getattr(telemetry, "configure", None)
    if configure is None:
        _log.warning("telemetry is enabled in the config but resilience.telemetry has no configure()")
        return None
    listener: Listener = configure(**section.settings())
    return listener


def source_name(source: Source) -> str:
    if isinstance(source, Config):
        return source.source or "(dict)"
    if isinstance(source, Mapping):
        return "(dict)"
    return str(source)


def close_listener(listener: Any) -> None:
    for name in ("close", "shutdown"):
        method = getattr(listener, name, None)
        if callable(method):
            try:
                method()
            except Exception:
                _log.exception("closing the telemetry listener failed")
            return
