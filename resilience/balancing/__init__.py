"""Picking an endpoint for each attempt."""

from .base import Balancer, NoEndpointError, RoundRobin

__all__ = ["Balancer", "NoEndpointError", "RoundRobin"]
