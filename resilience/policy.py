"""The base of every policy.

A policy wraps the next step of the pipeline, once, when a :class:`~resilience.Pipeline`
is built: :meth:`Policy.wrap` for sync callers and :meth:`Policy.wrap_async` for asyncio.
The decision logic of a policy lives in plain methods that both wrappers share; the
wrappers only call, wait and cancel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from .context import CallContext

__all__ = ["Policy"]

SyncNext = Callable[[CallContext], Any]
"""The rest of a sync pipeline: call it with the context, get the result."""

AsyncNext = Callable[[CallContext], Awaitable[Any]]
"""The rest of an async pipeline: call it with the context, await the result."""


class Policy(ABC):
    """A resilience policy: something that stands between a caller and a call.

    Subclasses implement :meth:`wrap` and :meth:`wrap_async`, each returning a callable
    that takes the :class:`~resilience.CallContext` and runs ``next`` under the policy.
    A policy instance may sit in several pipelines: its state (a breaker's counts, a
    bulkhead's slots) is then shared by all of them.
    """

    __slots__ = ("name",)

    name: str

    def __init__(self, name: str | None = None) -> None:
        self.name = name if name is not None else type(self).__name__.lower()

    @abstractmethod
    def wrap(self, next: SyncNext) -> SyncNext:
        """Return a sync step that runs ``next`` under this policy."""

    @abstractmethod
    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        """Return an async step that runs ``next`` under this policy."""
