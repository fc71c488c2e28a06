"""The httpx transports' rule table: routes, per-request options and policy sets."""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypedDict

from resilience._validate import seconds
from resilience.pipeline import Pipeline

__all__ = ["EXTENSION", "IDEMPOTENT_METHODS", "PipelineFactory", "PolicySet", "ResilienceExtension", "Route"]

EXTENSION = "resilience"
"""The key of the per-request options in ``request.extensions``."""

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""HTTP methods that are safe to send twice (RFC 9110, section 9.2.2)."""

PipelineFactory = Callable[[str], Pipeline]
"""Builds the pipeline of one service (called once per service name, then cached)."""

PolicySet = Pipeline | PipelineFactory
"""A pipeline shared by every service, or a factory giving each service its own."""


class ResilienceExtension(TypedDict, total=False):
    """The shape of ``request.extensions["resilience"]``; every key is optional.

    Example: ``client.post(url, json=..., extensions={"resilience": {"idempotent": True, "timeout": 2.0}})``.

    Keys:
        idempotent: ``True`` lets a non-idempotent method (POST, PATCH) be retried and hedged;
            ``False`` forbids it for any method.
        timeout: seconds for the whole call, every attempt and backoff included (> 0).
        deadline: an absolute deadline on the pipeline clock's ``monotonic()``; the earlier of
            ``timeout`` and ``deadline`` wins.
        policy: the name of a policy set given to the transport's ``policies``.
        service: the logical service name put in the call's context (default: the host).
        tags: labels added to the call's context (for keys and telemetry).
    """

    idempotent: bool
    timeout: float | timedelta
    deadline: float
    policy: str
    service: str
    tags: Mapping[str, str]


_EXTENSION_KEYS = frozenset(ResilienceExtension.__annotations__)


# -- routes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One rule of a transport's routing table: which requests get which policy set.

    Rules are tried in order; the first one whose ``host``, ``path`` and ``methods`` all
    match decides. A request that no rule matches gets the transport's default pipeline.
    Every field is plain data, so a configuration file can describe the table.

    Attributes:
        policy: the policy set: a name from the transport's ``policies``, a
            :class:`~resilience.Pipeline`, a factory ``service -> Pipeline``, or ``None``
            for the transport's default (default ``None``).
        host: a glob on the URL's host, case-insensitive (``"api.example.com"``,
            ``"*.internal"``); ``None`` matches any host (default).
        path: a glob on the whole URL path (``"/orders/*"``; ``*`` also matches ``/``), or a
            regular expression when it starts with ``^`` (``"^/v[12]/items/\\d+$"``) or is a
            compiled pattern (matched from the start); ``None`` matches any path (default).
        methods: the HTTP methods matched (any case); ``None`` matches all (default).
        name: the method name put in the call's context (``ctx.method``), e.g. ``"get-order"``;
            ``None`` uses ``"<METHOD> <path>"`` (default).
        service: the logical service name put in the call's context; ``None`` uses the
            host (default). When the transport's discovery knows this service, the
            request is balanced over its endpoints whatever the URL's host, so
            ``https://api.example.com/orders/...`` can go to the endpoints of ``orders``.
        idempotent: forces the call to be treated as idempotent (``True``) or not
            (``False``); ``None`` decides by method and ``Idempotency-Key`` (default).
        timeout: a deadline for the whole call, in seconds or a ``timedelta`` (> 0);
            ``None`` for none (default). A request's own ``timeout`` extension wins.
        tags: labels put in the call's context (default none).
    """

    policy: str | Pipeline | Callable[[str], Pipeline] | None = None
    host: str | None = None
    path: str | re.Pattern[str] | None = None
    methods: Collection[str] | None = None
    name: str | None = None
    service: str | None = None
    idempotent: bool | None = None
    timeout: float | timedelta | None = None
    tags: Mapping[str, str] | None = None
    _host_re: re.Pattern[str] | None = field(init=False, default=None, repr=False, compare=False)
    _path_re: re.Pattern[str] | None = field(init=False, default=None, repr=False, compare=False)
    _path_full: bool = field(init=False, default=False, repr=False, compare=False)
    _methods: frozenset[str] | None = field(init=False, default=None, repr=False, compare=False)
    _timeout: float | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.host is not None:
            if not isinstance(self.host, str) or not self.host:
                raise ValueError(f"host must be a non-empty host glob or None, got {self.host!r}")
            object.__setattr__(self, "_host_re", re.compile(fnmatch.translate(self.host), re.IGNORECASE))
        path = self.path
        if isinstance(path, re.Pattern):
            object.__setattr__(self, "_path_re", path)
        elif isinstance(path, str):
            if not path:
                raise ValueError("path must be a non-empty glob or pattern, or None, got ''")
            if path.startswith("^"):
                try:
                    object.__setattr__(self, "_path_re", re.compile(path))
                except re.error as exc:
                    raise ValueError(f"path is not a valid regular expression: {path!r} ({exc})") from None
            else:
                object.__setattr__(self, "_path_re", re.compile(fnmatch.translate(path)))
                object.__setattr__(self, "_path_full", True)
        elif path is not None:
            raise TypeError(f"path must be a glob, a pattern or None, got {path!r}")
        if self.methods is not None:
            if isinstance(self.methods, str):
                raise TypeError(f"methods must be a collection of method names, got the string {self.methods!r}")
            methods = frozenset(m.upper() for m in self.methods)
            if not methods:
                raise ValueError("methods must name at least one method, or be None for all")
            object.__setattr__(self, "_methods", methods)
        if self.timeout is not None:
            object.__setattr__(self, "_timeout", seconds("timeout", self.timeout))
        if self.idempotent is not None and not isinstance(self.idempotent, bool):
            raise TypeError(f"idempotent must be a bool or None, got {self.idempotent!r}")
        policy = self.policy
        if policy is not None and not isinstance(policy, str | Pipeline) and not callable(policy):
            raise TypeError(f"policy must be a policy set name, a Pipeline, a factory or None, got {policy!r}")

    def matches(self, host: str, method: str, path: str) -> bool:
        """Whether a request for ``method`` ``host`` ``path`` falls under this rule."""
        if self._methods is not None and method not in self._methods:
            return False
        if self._host_re is not None and self._host_re.match(host) is None:
            return False
        if self._path_re is not None:
            found = self._path_re.match(path)
            if found is None or (self._path_full and found.end() != len(path)):
                return False
        return True


class _PolicySet:
    """A pipeline, or a factory with its pipelines cached per service."""

    __slots__ = ("_factory", "_lock", "_pipelines", "name", "pipeline")

    def __init__(self, name: str, value: object) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pipelines: dict[str, Pipeline] = {}
        if isinstance(value, Pipeline):
            self.pipeline: Pipeline | None = value
            self._factory: PipelineFactory | None = None
        elif callable(value):
            self.pipeline = None
            self._factory = value
        else:
            raise TypeError(f"policy set {name!r} must be a Pipeline or a factory service -> Pipeline, got {value!r}")

    def get(self, service: str) -> Pipeline:
        pipeline = self.pipeline
        if pipeline is not None:
            return pipeline
        pipeline = self._pipelines.get(service)
        if pipeline is not None:
            return pipeline
        assert self._factory is not None
        made = self._factory(service)  # user code: never under our lock
        if not isinstance(made, Pipeline):
            raise TypeError(f"policy set {self.name!r}: the factory returned {made!r} for {service!r}, not a Pipeline")
        with self._lock:
            return self._pipelines.setdefault(service, made)
