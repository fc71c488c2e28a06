"""Picking an endpoint for each attempt: balancers, outlier ejection, and the endpoint pool both adapters share."""

from .base import Balancer, NoEndpointError, RoundRobin
from .ejection import OutlierEjection, OutlierEjectionOptions, OutlierTracker
from .p2c import PeakEwma, PeakEwmaOptions
from .pool import EndpointPool, EndpointState, Selection
from .weighted import WeightedRoundRobin
from .zones import ZonePreference

__all__ = [
    "Balancer",
    "EndpointPool",
    "EndpointState",
    "NoEndpointError",
    "OutlierEjection",
    "OutlierEjectionOptions",
    "OutlierTracker",
    "PeakEwma",
    "PeakEwmaOptions",
    "RoundRobin",
    "Selection",
    "WeightedRoundRobin",
    "ZonePreference",
]
