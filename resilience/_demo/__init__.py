"""The live demo of ``resilience demo`` (``make demo``): an embedded fleet, a bare and a resilient
client side by side, one call's trace, a summary.

It needs the ``demo`` extra (rich, grpcio, httpx and the OpenTelemetry SDK):
``pip install 'resilience-policies[demo]'``.
"""

from __future__ import annotations

import os

# grpc's core logs each GOAWAY of a replica that dies at INFO on stderr; the demo shows it itself.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

try:
    import grpc  # noqa: F401
    import httpx  # noqa: F401
    import opentelemetry.sdk.trace  # noqa: F401
    import rich  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
    raise ImportError(
        f"the live demo needs the 'demo' extra ({exc.name} is missing): pip install 'resilience-policies[demo]'"
    ) from exc

from .run import DemoOptions, etcd_uri, make_fleet, run

__all__ = ["DemoOptions", "etcd_uri", "make_fleet", "run"]
