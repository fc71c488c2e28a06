"""Picking an endpoint for each attempt: balancers, and the endpoint pool both adapters share."""

from .base import Balancer, NoEndpointError, RoundRobin
from .pool import EndpointPool, EndpointState, Selection

__all__ = ["Balancer", "EndpointPool", "EndpointState", "NoEndpointError", "RoundRobin", "Selection"]
