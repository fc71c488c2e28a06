"""The part of registration both registrators share: the key, the value, the lease, the timing."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable, Mapping
from random import Random
from types import FrameType
from typing import Any

from ..policies.backoff import Backoff
from ._etcd_config import EtcdConfig, EtcdError, EtcdUnavailableError, parse_etcd_uri
from .endpoint import Endpoint
from .etcd import EtcdDiscovery, _backoff, instance_key

__all__ = ["Handler", "Target"]

_log = logging.getLogger("resilience.discovery.etcd")

Target = str | EtcdConfig | EtcdDiscovery
Handler = Callable[[int, FrameType | None], Any] | int | None


class _Registration:
    """What both registrators share: the key, the value, the lease and the timing."""

    def __init__(
        self,
        target: Target,
        service: str,
        address: str,
        *,
        ttl: int,
        instance_id: str | None,
        zone: str | None,
        weight: int,
        metadata: Mapping[str, str] | None,
        backoff: Backoff | None,
        rng: Random | None,
        options: dict[str, Any],
    ) -> None:
        if isinstance(target, EtcdDiscovery):
            target = target.config
        if isinstance(target, EtcdConfig):
            if options:
                raise TypeError(f"options {sorted(options)} go with a URI, not with an EtcdConfig or a discovery")
            self.config = target
        elif isinstance(target, str):
            self.config = parse_etcd_uri(target, **options)
        else:
            raise TypeError(f"register with an etcd:// URI, an EtcdConfig or an EtcdDiscovery, got {target!r}")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 9_000_000_000:
            raise ValueError(f"ttl must be a whole number of seconds >= 1, got {ttl!r}")
        self.endpoint = Endpoint(address, dict(metadata or {}), zone=zone, weight=weight)
        self.service = service
        self.key = instance_key(self.config.prefix, service, address if instance_id is None else instance_id)
        self.value = json.dumps(self.endpoint.to_dict(), sort_keys=True)
        self.ttl = ttl
        self.interval = ttl / 3
        self.backoff = _backoff(backoff)
        self.rng = rng if rng is not None else Random()
        self.lease = 0
        self.registrations = 0
        self.renewals = 0
        self.failures = 0
        self._previous_delay = 0.0

    def registered(self, lease: int) -> None:
        self.lease = lease
        self.registrations += 1
        self.failures = 0
        _log.info("registered %s at %s (lease %x, ttl %d s)", self.endpoint.address, self.key, lease, self.ttl)

    def renewed(self, ttl: int) -> bool:
        """A renewal answered ``ttl``; ``False`` when the lease is gone and must be replaced."""
        self.failures = 0
        if ttl > 0:
            self.renewals += 1
            return True
        _log.warning("etcd no longer has lease %x of %s: registering again", self.lease, self.key)
        self.lease = 0
        return False

    def failed(self, exc: Exception) -> float:
        """A renewal or registration failed: seconds until the next try (at most ``ttl / 3``)."""
        self.failures += 1
        self._previous_delay = min(self.interval, self.backoff.delay(self.failures, self._previous_delay, self.rng))
        _log.warning("keeping %s registered failed (%s); again in %.2f s", self.key, exc, self._previous_delay)
        return self._previous_delay

    def next_delay(self) -> float:
        return self.interval if self.failures == 0 else self._previous_delay

    def unavailable(self, exc: EtcdError) -> EtcdError:
        if isinstance(exc, EtcdUnavailableError):
            return EtcdUnavailableError(
                f"cannot register {self.key}: no member of {self.config.where} answered ({exc})", url=self.config.where
            )
        return exc

    def revoke_failed(self, exc: Exception) -> None:
        _log.warning("could not deregister %s (%s): it goes when its lease lapses (%d s)", self.key, exc, self.ttl)

    def __repr__(self) -> str:
        return f"{self.key} -> {self.value} (lease {self.lease:x})"


def _chain(signum: int, previous: Handler, frame: FrameType | None) -> None:
    """After deregistering, do what the signal would have done without us."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
