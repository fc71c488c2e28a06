"""Adapters that put resilience pipelines around gRPC channels and httpx clients.

This is the only package that imports ``grpc`` or ``httpx``; import the submodule you need
(``interceptors.httpx``, ``interceptors.grpc``, ``interceptors.grpc_aio``). Each needs its
extra of the ``resilience-policies`` distribution (``grpc`` or ``httpx``); without it, the
import raises an ``ImportError`` that names the extra.
"""

__all__: list[str] = []
