"""A small etcd v3 client over the JSON gateway (httpx), sync and async (asyncio, trio).

:class:`EtcdClient` and :class:`AsyncEtcdClient` run the decision generators of
:mod:`._etcd_core` and only send the requests they yield; a watch is an open stream
(:class:`WatchStream`, :class:`AsyncWatchStream`) of one JSON result per line.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the etcd backend (resilience.discovery.etcd, resilience.discovery.registration) needs the 'etcd' extra "
        f"({exc.name} is missing): pip install 'resilience-policies[etcd]'"
    ) from exc

from ._etcd_config import EtcdConfig, EtcdError, parse_etcd_uri
from ._etcd_core import (
    KeyValue,
    Steps,
    _compact,
    _Core,
    _delete,
    _grant,
    _keepalive,
    _Post,
    _put,
    _range,
    _revoke,
)
from ._etcd_core import kv_from as kv_from
from ._etcd_core import revision_of as revision_of

__all__ = ["AsyncEtcdClient", "AsyncWatchStream", "EtcdClient", "KeyValue", "WatchStream"]

T = TypeVar("T")


class _Ops:
    """What both clients share: the configuration, the core, and how to build them."""

    def __init__(self, config: EtcdConfig | str, **options: Any) -> None:
        if isinstance(config, EtcdConfig):
            if options:
                raise TypeError(f"options {sorted(options)} go with a URI, not with an EtcdConfig")
            self.config = config
        else:
            self.config = parse_etcd_uri(config, **options)
        self._core = _Core(self.config)

    def _timeout(self, read: float | None) -> httpx.Timeout:
        cfg = self.config
        return httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout, read=read)

    def _verify(self) -> Any:
        return self.config.ssl_context if self.config.ssl_context is not None else False

    @property
    def authentications(self) -> int:
        """How many tokens this client obtained (renewals included)."""
        return self._core.authentications

    def invalidate_token(self, token: str | None) -> None:
        """Forget ``token``: the next request authenticates again (for a watch etcd cancelled)."""
        self._core.invalidate(token)

    @property
    def token(self) -> str | None:
        """The auth token in use (``None`` without authentication)."""
        return self._core.token

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.where!r})"


def _watch_body(request: dict[str, Any]) -> dict[str, Any]:
    return {"create_request": request}


class WatchStream:
    """An open ``/v3/watch`` answer: iterate it for each JSON result; :meth:`interrupt` from any thread."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self.url = url

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self._response.iter_lines():
            if line.strip():
                yield _line(line, self.url)

    def interrupt(self) -> None:
        """Make the reading thread's iteration end with an error at once (thread-safe)."""
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._response.close()


class AsyncWatchStream:
    """:class:`WatchStream` for asyncio and trio: ``async for`` its results; cancel the reading task to stop."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self._lines = response.aiter_lines()
        self.url = url

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            line = await self._lines.__anext__()
            if line.strip():
                return _line(line, self.url)

    async def aclose(self) -> None:
        """Close the response, then run its line iterator to its end.

        The lines come through a chain of httpx's async generators, and closing the
        outermost one leaves the others unfinished: trio finalizes those later with a
        ResourceWarning each. Read after the close, the chain ends with an error that
        finishes every generator in it (a few lines already buffered may come first).
        """
        await self._response.aclose()
        for _ in range(_DRAIN):
            try:
                await self._lines.__anext__()
            except Exception:  # StopAsyncIteration, or the closed stream's error
                return
        close = getattr(self._lines, "aclose", None)
        if close is not None:
            await close()


_DRAIN = 1000  # lines read at most after a close; a closed connection gives none past its buffer


class _Body(httpx.AsyncByteStream, httpx.SyncByteStream):
    """A request body as one chunk, iterated without a generator.

    httpx iterates a body through an async generator that the transport leaves unfinished
    when the connection fails before the body is sent, and trio warns when it collects it.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._sent = False

    def __iter__(self) -> Iterator[bytes]:
        return iter((self._data,))

    def __aiter__(self) -> _Body:
        self._sent = False
        return self

    async def __anext__(self) -> bytes:
        if self._sent:
            raise StopAsyncIteration
        self._sent = True
        return self._data


def _line(line: str, url: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError:
        raise EtcdError(f"etcd at {url} sent a watch line that is not JSON: {line[:200]!r}", url=url)
    if not isinstance(data, dict):
        raise EtcdError(f"etcd at {url} sent a watch line that is not an object: {line[:200]!r}", url=url)
    return data


class EtcdClient(_Ops):
    """The etcd operations discovery and registration need, blocking (thread-safe).

    Args:
        config: an ``etcd://`` / ``etcds://`` URI (see :func:`parse_etcd_uri`) or an :class:`EtcdConfig`.
        options: with a URI, the options of :func:`parse_etcd_uri`.
    """

    def __init__(self, config: EtcdConfig | str, **options: Any) -> None:
        super().__init__(config, **options)
        self._http = httpx.Client(verify=self._verify(), timeout=self._timeout(self.config.timeout))

    def _run(self, steps: Steps[T]) -> T:
        reply: Any = None
        while True:
            try:
                post = steps.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                reply = self._send(post)
            except httpx.TransportError as exc:
                reply = exc

    def _send(self, post: _Post) -> httpx.Response:
        url = post.base + post.path
        if not post.stream:
            return self._http.post(url, json=post.body, headers=post.headers)
        request = self._http.build_request(
            "POST", url, json=post.body, headers=post.headers, timeout=self._timeout(post.read)
        )
        response = self._http.send(request, stream=True)
        if response.status_code != 200:
            response.read()
            response.close()
        return response

    def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix``, and the revision of that view."""
        return self._run(_range(self._core, prefix))

    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        """Set ``key``; attached to ``lease`` when given. Returns the new revision."""
        return self._run(_put(self._core, key, value.encode() if isinstance(value, str) else value, lease))

    def delete(self, key: str) -> int:
        """Delete ``key``; how many keys went (0 or 1)."""
        return self._run(_delete(self._core, key))

    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its ID."""
        return self._run(_grant(self._core, ttl))

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease`` once; its TTL in seconds, 0 when etcd no longer has it."""
        return self._run(_keepalive(self._core, lease))

    def lease_revoke(self, lease: int) -> bool:
        """Revoke ``lease`` and delete its keys; ``False`` when etcd did not have it."""
        return self._run(_revoke(self._core, lease))

    def compact(self, revision: int) -> None:
        """Discard the history before ``revision``."""
        self._run(_compact(self._core, revision))

    def watch(self, request: dict[str, Any], *, idle_timeout: float | None = None) -> WatchStream:
        """Open a watch (``request`` is the gateway's ``create_request``); close the stream after use.

        ``idle_timeout``: seconds without a line after which reading fails (``None``: wait for good).
        """
        steps = self._core.request("/v3/watch", _watch_body(request), stream=True, read=idle_timeout)
        response: httpx.Response = self._run(steps)
        return WatchStream(response, str(response.request.url))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEtcdClient(_Ops):
    """:class:`EtcdClient` for asyncio and trio: the same operations, awaited."""

    def __init__(self, config: EtcdConfig | str, **options: Any) -> None:
        super().__init__(config, **options)
        self._http = httpx.AsyncClient(verify=self._verify(), timeout=self._timeout(self.config.timeout))

    async def _run(self, steps: Steps[T]) -> T:
        reply: Any = None
        while True:
            try:
                post = steps.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                reply = await self._send(post)
            except httpx.TransportError as exc:
                reply = exc

    async def _send(self, post: _Post) -> httpx.Response:
        url = post.base + post.path
        timeout = self._timeout(post.read) if post.stream else httpx.USE_CLIENT_DEFAULT
        request = self._http.build_request("POST", url, json=post.body, headers=post.headers, timeout=timeout)
        request.stream = _Body(request.content)
        response = await self._http.send(request, stream=post.stream)
        if post.stream and response.status_code != 200:
            await response.aread()
            await response.aclose()
        return response

    async def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self._run(_range(self._core, prefix))

    async def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        return await self._run(_put(self._core, key, value.encode() if isinstance(value, str) else value, lease))

    async def delete(self, key: str) -> int:
        return await self._run(_delete(self._core, key))

    async def lease_grant(self, ttl: int) -> int:
        return await self._run(_grant(self._core, ttl))

    async def lease_keepalive(self, lease: int) -> int:
        return await self._run(_keepalive(self._core, lease))

    async def lease_revoke(self, lease: int) -> bool:
        return await self._run(_revoke(self._core, lease))

    async def compact(self, revision: int) -> None:
        await self._run(_compact(self._core, revision))

    async def watch(self, request: dict[str, Any], *, idle_timeout: float | None = None) -> AsyncWatchStream:
        steps = self._core.request("/v3/watch", _watch_body(request), stream=True, read=idle_timeout)
        response: httpx.Response = await self._run(steps)
        return AsyncWatchStream(response, str(response.request.url))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncEtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
