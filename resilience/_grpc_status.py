"""The names of gRPC's status codes, written once for the core and the config schema.

The core does not import grpc, so the names are spelled here; ``tests/test_config_schema.py``
checks them against ``grpc.StatusCode``.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["GRPC_CODES", "StatusName"]

StatusName = Literal[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]

GRPC_CODES: tuple[str, ...] = get_args(StatusName)
"""The names of ``grpc.StatusCode``, in its order."""
