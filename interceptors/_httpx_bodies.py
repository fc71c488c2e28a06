"""Request bodies the httpx transports may send once only, and how they know."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from resilience.context import CallContext

__all__ = ["OnceAsyncStream", "OnceSyncStream", "replayable"]


# -- request bodies ----------------------------------------------------------------------


def replayable(stream: object) -> bool:
    """Whether a request body can be sent again: bytes, or a multipart form of seekable files."""
    if isinstance(stream, httpx.ByteStream):
        return True
    fields = getattr(stream, "fields", None)
    if type(stream).__name__ == "MultipartStream" and isinstance(fields, list):
        # httpx rewinds each file before sending it; that works for seekable files only.
        for part in fields:
            file = getattr(part, "file", None)
            if file is not None and not isinstance(file, str | bytes):
                seekable = getattr(file, "seekable", None)
                if seekable is None or not seekable():
                    return False
        return True
    return False


class _OnceBody:
    """Marks the call committed when a non-replayable body starts to go out."""

    __slots__ = ("ctx", "started")

    def __init__(self) -> None:
        self.ctx: CallContext | None = None
        self.started = False

    def start(self) -> None:
        if self.started:
            raise httpx.StreamConsumed()
        self.started = True
        if self.ctx is not None:
            self.ctx.committed = True


class OnceSyncStream(httpx.SyncByteStream, _OnceBody):
    """A sync request body that can be sent once: a second send raises ``StreamConsumed``."""

    __slots__ = ("inner",)

    def __init__(self, inner: httpx.SyncByteStream) -> None:
        _OnceBody.__init__(self)
        self.inner = inner

    def __iter__(self) -> Iterator[bytes]:
        self.start()
        yield from self.inner

    def close(self) -> None:
        self.inner.close()


class OnceAsyncStream(httpx.AsyncByteStream, _OnceBody):
    """An async request body that can be sent once."""

    __slots__ = ("inner",)

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        _OnceBody.__init__(self)
        self.inner = inner

    async def __aiter__(self) -> Any:
        self.start()
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()
