"""How to reach etcd: the ``etcd://`` / ``etcds://`` URI, the client options, and the errors.

No I/O here and no httpx import, so that the parts can be checked and tested alone.
"""

from __future__ import annotations

import base64
import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from ..errors import ResilienceError
from .endpoint import _address_problem

__all__ = [
    "DEFAULT_PREFIX",
    "EtcdAuthError",
    "EtcdConfig",
    "EtcdError",
    "EtcdUnavailableError",
    "b64",
    "parse_etcd_uri",
    "prefix_range",
    "unb64",
]

DEFAULT_PREFIX = "/services"
"""The key prefix when the URI names none."""

_FORM = "etcd://[user:password@]host:2379[,host2:2379...]/prefix (etcds:// for TLS)"
_OPTIONS = ("username", "password", "ca", "cert", "key", "ssl_context", "timeout", "connect_timeout")
_QUERY = ("ca", "cert", "key")


class EtcdError(ResilienceError):
    """etcd refused a request, or answered something this client cannot use.

    Attributes:
        code: the gRPC status code etcd gave (5 is NOT_FOUND, 16 UNAUTHENTICATED...), when known.
        url: the member that answered, when known.
    """

    def __init__(self, message: str, *, code: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.url = url


class EtcdUnavailableError(EtcdError):
    """No etcd member could be reached (or each answered that it cannot serve now)."""


class EtcdAuthError(EtcdError):
    """etcd refused the credentials, or wants credentials and none were given."""


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"etcd option {name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """Where etcd is and how to talk to it; :func:`parse_etcd_uri` builds it from a URI.

    Attributes:
        urls: the base URL of each member (``http://127.0.0.1:2379``), tried in this order.
        prefix: the key prefix of the registry, without a trailing slash (default ``/services``).
        username: the etcd user, or ``None`` when etcd has no authentication.
        password: that user's password.
        ssl_context: TLS settings for ``https`` members (``None`` for plain HTTP).
        timeout: seconds each request may take, > 0 (default 5).
        connect_timeout: seconds to open a connection to one member, > 0 (default 2);
            a dead member costs at most this before the next is tried.
    """

    urls: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    timeout: float = 5.0
    connect_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("etcd needs at least one member URL")
        object.__setattr__(self, "timeout", _positive("timeout", self.timeout))
        object.__setattr__(self, "connect_timeout", _positive("connect_timeout", self.connect_timeout))
        if (self.username is None) != (self.password is None):
            raise ValueError("etcd username and password go together: give both or neither")

    @property
    def where(self) -> str:
        """The members as one string, for messages (no credentials in it)."""
        return ",".join(self.urls) + self.prefix


def b64(data: str | bytes) -> str:
    """``data`` in base64, as the JSON gateway wants keys and values."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    """The bytes of a base64 field of a gateway answer."""
    return base64.b64decode(text)


def prefix_range(prefix: str) -> tuple[str, str]:
    """``(key, range_end)``, base64, selecting every key that starts with ``prefix``."""
    raw = bytearray(prefix.encode())
    end = bytearray(raw)
    while end and end[-1] == 0xFF:
        end.pop()
    if end:
        end[-1] += 1
    else:
        end = bytearray(b"\0")  # etcd's "every key from here on"
    return b64(bytes(raw)), b64(bytes(end))


def _ssl_context(uri: str, ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"etcd URI {uri!r}: cannot load TLS files (ca={ca!r}, cert={cert!r}, key={key!r}): {exc}")
    return context


def _hosts(uri: str, text: str) -> list[str]:
    hosts = []
    for item in text.split(","):
        host = item.strip()
        if not host:
            raise ValueError(f"etcd URI {uri!r}: empty member in {text!r} (expected {_FORM})")
        if host.startswith("["):
            address = host if "]:" in host else f"{host}:2379"
        elif host.count(":") > 1:
            raise ValueError(f"etcd URI {uri!r}: member {host!r} has an IPv6 host without brackets (write [::1]:2379)")
        else:
            address = host if ":" in host else f"{host}:2379"
        problem = _address_problem(address)
        if problem is not None:
            raise ValueError(f"etcd URI {uri!r}: member {host!r} {problem} (expected {_FORM})")
        hosts.append(address)
    return hosts


def parse_etcd_uri(uri: str, **options: Any) -> EtcdConfig:
    """The :class:`EtcdConfig` of ``uri`` and ``options``.

    Grammar: ``etcd://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...][/PREFIX][?ca=F&cert=F&key=F]``;
    ``etcds://`` is the same over TLS. The port defaults to 2379 and the prefix to
    ``/services``; user and password are percent-decoded. Options (they win over the URI):
    ``username``, ``password``, ``ca`` (CA bundle file), ``cert`` and ``key`` (client
    certificate files), ``ssl_context`` (an :class:`ssl.SSLContext`, instead of the files),
    ``timeout`` and ``connect_timeout`` (seconds).

    Raises:
        ValueError: naming the malformed part and the expected form.
        TypeError: on an unknown option.
    """
    if not isinstance(uri, str):
        raise TypeError(f"an etcd URI must be a string, got {type(uri).__name__}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"unknown etcd option(s) {unknown}; allowed: {', '.join(_OPTIONS)}")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in ("etcd", "etcds"):
        raise ValueError(f"not an etcd URI: {uri!r} (expected {_FORM})")
    tls = scheme.lower() == "etcds"
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts_text = authority.rpartition("@")
    if not at:
        hosts_text, userinfo = authority, ""
    if not hosts_text.strip():
        raise ValueError(f"etcd URI {uri!r} names no member (expected {_FORM})")
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        if not user or not colon:
            raise ValueError(f"etcd URI {uri!r}: credentials must be 'user:password@' (expected {_FORM})")
        username, password = unquote(user), unquote(secret)
    prefix = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_PREFIX
    files: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)) if query else ():
        if name not in _QUERY:
            raise ValueError(f"etcd URI {uri!r}: unknown parameter {name!r}; allowed: {', '.join(_QUERY)}")
        files[name] = value
    files.update({k: v for k, v in options.items() if k in _QUERY and v is not None})
    if files and not tls:
        raise ValueError(f"etcd URI {uri!r}: TLS files {sorted(files)} need the etcds:// scheme")
    context = options.get("ssl_context")
    if context is not None and not isinstance(context, ssl.SSLContext):
        raise TypeError(f"etcd option ssl_context must be an ssl.SSLContext, got {context!r}")
    if context is not None and not tls:
        raise ValueError(f"etcd URI {uri!r}: ssl_context needs the etcds:// scheme")
    if tls and context is None:
        context = _ssl_context(uri, files.get("ca"), files.get("cert"), files.get("key"))
    base = "https" if tls else "http"
    urls = tuple(f"{base}://{h}" for h in _hosts(uri, hosts_text))
    for option in ("username", "password"):
        given = options.get(option)
        if given is not None and not isinstance(given, str):
            raise TypeError(f"etcd option {option} must be a string, got {type(given).__name__}")
    username = options.get("username", username)
    password = options.get("password", password)
    extra: Mapping[str, Any] = {k: options[k] for k in ("timeout", "connect_timeout") if k in options}
    return EtcdConfig(urls, prefix, username, password, context, **extra)
