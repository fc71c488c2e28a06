"""Adapters that put resilience pipelines around gRPC channels and httpx clients.

This is the only package that imports ``grpc`` or ``httpx``; import the submodule you need
(``interceptors.httpx``, ``interceptors.grpc``, ``interceptors.grpc_aio``).
"""

__all__: list[str] = []
