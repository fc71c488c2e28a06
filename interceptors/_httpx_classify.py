"""How the httpx transports judge a response or an error: the classifier and ``Retry-After``."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Collection

import httpx

from resilience.errors import RejectedError
from resilience.outcome import Classifier, Outcome

__all__ = ["DEFAULT_FAILURE_STATUSES", "HttpxClassifier", "parse_retry_after"]

DEFAULT_FAILURE_STATUSES: frozenset[int] = frozenset({429, *range(500, 600)})
"""Statuses that count against the backend by default: 429 and every 5xx."""


# -- classification ------------------------------------------------------------------------


def parse_retry_after(value: str, now_wall: float) -> float | None:
    """A ``Retry-After`` value as seconds from now, or ``None`` when it cannot be read.

    Both forms of RFC 9110 are understood: delay seconds (``"120"``; a decimal is tolerated)
    and an HTTP date (``"Wed, 21 Oct 2015 07:28:00 GMT"``), read against ``now_wall`` (seconds
    since the epoch, from the call's clock). A date in the past gives ``0.0``.
    """
    text = value.strip()
    if not text:
        return None
    if text[0].isdigit():
        try:
            delay = float(text)
        except ValueError:
            return None
        return delay if math.isfinite(delay) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now_wall)


class HttpxClassifier(Classifier):
    """What httpx responses and errors mean for the backend.

    - A response whose status is in ``failure_statuses`` (default 429 and every 5xx) is a
      failure; any other status >= 400 is the caller's fault (:data:`Outcome.IGNORED`): it
      neither trips a breaker nor is retried; 1xx-3xx are successes.
    - Transport errors (connection refused or reset, timeouts, a server that hangs up) are
      failures; errors made on our side (an unsupported scheme, an invalid URL, a local
      protocol error, a request body already consumed) and the library's own rejections
      are ignored.

    A response that is thrown away (before a retry, or a losing hedge) is closed, so its
    connection goes back to the pool or is dropped. A small error body whose length is
    known (at most ``drain_limit`` bytes) is read first, which lets HTTP/1.1 reuse the
    connection instead of opening a new one for the retry.

    Args:
        failure_statuses: statuses that count against the backend (default 429 and 500-599).
        retryable_statuses: the failure statuses worth a retry (default: all of
            ``failure_statuses``); must be a subset of them.
        drain_limit: the largest error body, in bytes, read before closing a discarded
            response, >= 0 (default 65536; 0 never reads).
    """

    __slots__ = ("drain_limit", "failure_statuses", "retryable_statuses")

    checks_results = True

    def __init__(
        self,
        failure_statuses: Collection[int] = DEFAULT_FAILURE_STATUSES,
        *,
        retryable_statuses: Collection[int] | None = None,
        drain_limit: int = 65536,
    ) -> None:
        self.failure_statuses = _statuses("failure_statuses", failure_statuses)
        if retryable_statuses is None:
            self.retryable_statuses = self.failure_statuses
        else:
            self.retryable_statuses = _statuses("retryable_statuses", retryable_statuses)
            extra = self.retryable_statuses - self.failure_statuses
            if extra:
                raise ValueError(f"retryable_statuses must be a subset of failure_statuses, got extra {sorted(extra)}")
        if isinstance(drain_limit, bool) or not isinstance(drain_limit, int) or drain_limit < 0:
            raise ValueError(f"drain_limit must be an integer >= 0, got {drain_limit!r}")
        self.drain_limit = drain_limit

    def error(self, exc: BaseException) -> Outcome:
        if isinstance(exc, RejectedError):
            return Outcome.IGNORED  # before TransportError: the transports raise rejections as both
        if isinstance(exc, httpx.TransportError):
            if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
                return Outcome.IGNORED
            return Outcome.FAILURE
        if isinstance(exc, httpx.InvalidURL | httpx.StreamError) or not isinstance(exc, Exception):
            return Outcome.IGNORED
        return Outcome.FAILURE

    def unsent(self, exc: BaseException) -> bool:
        """A connect error, a connect timeout or a pool timeout: the request never left."""
        return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)

    def result(self, result: object) -> Outcome:
        status: int = result.status_code if isinstance(result, httpx.Response) else 200
        if status in self.failure_statuses:
            return Outcome.FAILURE
        return Outcome.IGNORED if status >= 400 else Outcome.SUCCESS

    def retryable_result(self, result: object) -> bool:
        return isinstance(result, httpx.Response) and result.status_code in self.retryable_statuses

    def _drainable(self, response: httpx.Response) -> bool:
        if not self.drain_limit:
            return False
        length = response.headers.get("content-length")
        return length is not None and length.isdigit() and int(length) <= self.drain_limit

    def discard(self, result: object) -> None:
        if not isinstance(result, httpx.Response) or result.is_closed:
            return
        if not isinstance(result.stream, httpx.SyncByteStream):
            return  # an async response cannot be closed from sync code; adiscard does it
        try:
            if self._drainable(result):
                for _ in result.iter_raw():
                    pass
        except Exception:  # the body is thrown away anyway; closing below is what matters
            pass
        finally:
            result.close()

    async def adiscard(self, result: object) -> None:
        if not isinstance(result, httpx.Response) or result.is_closed:
            return
        if not isinstance(result.stream, httpx.AsyncByteStream):
            self.discard(result)
            return
        try:
            if self._drainable(result):
                async for _ in result.aiter_raw():
                    pass
        except Exception:
            pass
        finally:
            await result.aclose()

    def __repr__(self) -> str:
        return f"HttpxClassifier(failure_statuses={_ranges(self.failure_statuses)})"


def _statuses(name: str, value: Collection[int]) -> frozenset[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise TypeError(f"{name} must be a collection of HTTP status codes, got {value!r}")
    for status in value:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"{name} must hold status codes in [100, 599], got {status!r}")
    return frozenset(value)


def _ranges(statuses: frozenset[int]) -> str:
    out: list[str] = []
    for status in sorted(statuses):
        if out and out[-1].endswith(f"-{status - 1}"):
            out[-1] = f"{out[-1].rsplit('-', 1)[0]}-{status}"
        elif out and out[-1] == str(status - 1):
            out[-1] = f"{status - 1}-{status}"
        else:
            out.append(str(status))
    return "{" + ", ".join(out) + "}"
