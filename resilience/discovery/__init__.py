"""Where endpoints come from: the :class:`Discovery` protocol, its base and its backends.

Backends subclass :class:`BaseDiscovery`, which implements the delivery rules adapters
rely on, and are chosen by URI with :func:`discovery_from_uri` (``static://a:1,b:2``).
"""

from .base import BaseDiscovery, Discovery, Subscription, subscribe_in_loop
from .endpoint import Endpoint
from .loop import LoopCallback, in_loop
from .registry import DiscoveryFactory, discovery_from_uri, known_schemes, register_scheme, unregister_scheme
from .static import StaticDiscovery

__all__ = [
    "BaseDiscovery",
    "Discovery",
    "DiscoveryFactory",
    "Endpoint",
    "LoopCallback",
    "StaticDiscovery",
    "Subscription",
    "discovery_from_uri",
    "in_loop",
    "known_schemes",
    "register_scheme",
    "subscribe_in_loop",
    "unregister_scheme",
]
