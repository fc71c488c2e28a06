"""Where endpoints come from: the :class:`Discovery` protocol and its backends."""

from .base import Discovery, Endpoint, Subscription
from .static import StaticDiscovery

__all__ = ["Discovery", "Endpoint", "StaticDiscovery", "Subscription"]
