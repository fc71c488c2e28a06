"""The decisions of the etcd client: which member to ask, when to authenticate, what an answer means.

Each operation is a generator that yields the HTTP requests to perform (:class:`_Post`)
and receives each response (an ``httpx.Response``) or transport error (an
``httpx.TransportError``); the sync and async shells of :mod:`._etcd_client` only send.
A member that cannot be reached, or answers that it cannot serve (UNAVAILABLE, 5xx), is
skipped for the next one; the member that last answered is asked first. A token that etcd
calls invalid (it expired, or etcd restarted) is renewed once per request, from the
configured user and password.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ._etcd_config import EtcdAuthError, EtcdConfig, EtcdError, EtcdUnavailableError, b64, prefix_range, unb64

__all__ = ["KeyValue", "Steps", "kv_from", "revision_of"]

T = TypeVar("T")

NOT_FOUND = 5
UNAVAILABLE = 14
UNAUTHENTICATED = 16
_RETRYABLE = {4, UNAVAILABLE}  # DEADLINE_EXCEEDED (no leader yet), UNAVAILABLE: another member may serve


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key of a range answer or a watch event (``value`` is empty for a deletion)."""

    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


def kv_from(raw: dict[str, Any]) -> KeyValue:
    """A :class:`KeyValue` from the gateway's JSON (base64 fields, int64 as strings, defaults left out)."""
    return KeyValue(
        unb64(raw.get("key", "")).decode("utf-8", "replace"),
        unb64(raw.get("value", "")),
        int(raw.get("mod_revision", 0)),
        int(raw.get("lease", 0)),
    )


def revision_of(data: dict[str, Any]) -> int:
    return int(data.get("header", {}).get("revision", 0))


@dataclass(frozen=True, slots=True)
class _Post:
    """One request for the shell to send: ``POST base + path`` with ``body`` as JSON."""

    base: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    stream: bool = False  # keep the response open: its body is a watch stream
    read: float | None = None  # with ``stream``: seconds a read may wait (None: no limit)


Steps = Generator[_Post, Any, T]
"""A decision generator: yields requests, receives an ``httpx.Response`` or an ``httpx.TransportError``."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = json.loads(response.content or b"{}")
    except ValueError:
        return {"message": f"HTTP {response.status_code}, not JSON: {response.content[:200]!r}"}
    return data if isinstance(data, dict) else {"message": f"HTTP {response.status_code}: {data!r}"}


class _Core:
    """Members, the auth token and the meaning of answers, shared by the sync and async shells."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._current = 0
        self.token: str | None = None
        self.authentications = 0

    def _members(self) -> list[str]:
        urls, i = self.config.urls, self._current
        return [*urls[i:], *urls[:i]]

    def _good(self, base: str) -> None:
        with self._lock:
            self._current = self.config.urls.index(base)

    def invalidate(self, token: str | None) -> None:
        """Forget ``token`` (unless another request renewed it meanwhile)."""
        with self._lock:
            if self.token == token:
                self.token = None

    def _authenticate(self, base: str) -> Steps[str | None]:
        """A token from ``base``; ``None`` when the member cannot serve (try the next one)."""
        name, password = self.config.username, self.config.password
        reply = yield _Post(base, "/v3/auth/authenticate", {"name": name, "password": password}, {})
        if isinstance(reply, Exception):
            return None
        data = _json(reply)
        if reply.status_code != 200 or "token" not in data:
            if reply.status_code >= 500 or data.get("code") in _RETRYABLE:
                return None
            raise EtcdAuthError(
                f"etcd at {base} refused user {name!r}: {data.get('message', reply.status_code)}",
                code=data.get("code"),
                url=base,
            )
        with self._lock:
            self.token = str(data["token"])
            self.authentications += 1
            return self.token

    def request(
        self, path: str, body: dict[str, Any], *, stream: bool = False, read: float | None = None
    ) -> Steps[Any]:
        """Send ``body`` to ``path`` on the first member that serves it; its JSON (or the open stream)."""
        failures: list[str] = []
        for base in self._members():
            renewed = False
            while True:
                token = self.token
                if token is None and self.config.username is not None:
                    token = yield from self._authenticate(base)
                    if token is None:
                        failures.append(f"{base}: cannot authenticate now")
                        break
                headers = {"Authorization": token} if token else {}
                reply = yield _Post(base, path, body, headers, stream, read)
                if isinstance(reply, Exception):
                    failures.append(f"{base}: {_describe(reply)}")
                    break
                if reply.status_code == 200:
                    self._good(base)
                    return reply if stream else _json(reply)
                data = _json(reply)
                code, message = data.get("code"), str(data.get("message", ""))
                if code == UNAUTHENTICATED or "auth store is old" in message:
                    if self.config.username is not None and not renewed:
                        self.invalidate(token)
                        renewed = True
                        continue
                    raise EtcdAuthError(f"etcd at {base} refused the token: {message}", code=code, url=base)
                if "user name is empty" in message:
                    raise EtcdAuthError(
                        f"etcd at {base} requires authentication: give 'user:password@' in the URI "
                        "or the username= and password= options",
                        code=code,
                        url=base,
                    )
                if reply.status_code >= 500 or code in _RETRYABLE:
                    failures.append(f"{base}: {message or reply.status_code}")
                    break
                raise EtcdError(f"etcd at {base} refused {path}: {message or reply.status_code}", code=code, url=base)
        raise EtcdUnavailableError(f"no etcd member answered {path}: {'; '.join(failures)}")


# -- the operations, as decision generators both shells run -------------------------------


def _range(core: _Core, prefix: str) -> Steps[tuple[list[KeyValue], int]]:
    key, end = prefix_range(prefix)
    data = yield from core.request("/v3/kv/range", {"key": key, "range_end": end})
    return [kv_from(kv) for kv in data.get("kvs", ())], revision_of(data)


def _put(core: _Core, key: str, value: bytes, lease: int) -> Steps[int]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return revision_of((yield from core.request("/v3/kv/put", body)))


def _delete(core: _Core, key: str) -> Steps[int]:
    data = yield from core.request("/v3/kv/deleterange", {"key": b64(key)})
    return int(data.get("deleted", 0))


def _grant(core: _Core, ttl: int) -> Steps[int]:
    data = yield from core.request("/v3/lease/grant", {"TTL": str(ttl)})
    if data.get("error"):
        raise EtcdError(f"etcd refused a lease of {ttl} s: {data['error']}")
    return int(data["ID"])


def _keepalive(core: _Core, lease: int) -> Steps[int]:
    data = yield from core.request("/v3/lease/keepalive", {"ID": str(lease)})
    if "error" in data:
        error = data["error"]
        raise EtcdError(
            f"etcd refused to renew lease {lease}: {error.get('message', error)}", code=error.get("grpc_code")
        )
    return int(data.get("result", {}).get("TTL", 0))


def _revoke(core: _Core, lease: int) -> Steps[bool]:
    try:
        yield from core.request("/v3/lease/revoke", {"ID": str(lease)})
    except EtcdError as exc:
        if exc.code == NOT_FOUND:
            return False
        raise
    return True


def _compact(core: _Core, revision: int) -> Steps[None]:
    yield from core.request("/v3/kv/compaction", {"revision": str(revision), "physical": True})
