"""The three client stacks of the chaos benchmark, for gRPC (``grpc.aio``) and HTTP (``httpx.AsyncClient``).

Each stack is built fresh for each run (nothing learnt in one run carries into the next)
and offers ``await client.call()``, which returns on success and raises on failure, plus
``client.attempts``: the attempts actually sent (a hedge, a retry and an attempt refused
by the kernel count; an attempt a breaker turned away before sending does not).

- ``bare``: what a user writes without a resilience library. gRPC: one ``grpc.aio`` channel
  over the three addresses with gRPC's own ``round_robin`` policy (``ipv4:a,b,c``), which
  spreads calls over the sub-channels that are connected. HTTP: one ``httpx.AsyncClient`` per
  replica, taken in turn. No retry; a 2 s timeout per call.
- ``tenacity+pybreaker``: per-replica clients taken in turn (one ``grpc.aio`` channel or one
  ``httpx.AsyncClient`` per replica), one ``pybreaker.CircuitBreaker`` per replica
  (``fail_max=5``, ``reset_timeout`` = :data:`EJECTION_TIME`, ``throw_new_error_on_trip=False``)
  used as ``with breaker.calling(): await ...`` (pybreaker has no asyncio API of its own;
  ``calling()`` judges the block, awaits included); a replica whose breaker is open is
  passed over for the next at once. Around that, ``@tenacity.retry`` (an ``AsyncRetrying``
  per call) with
  ``stop_after_attempt(3) | stop_after_delay(2)``, ``wait_random_exponential(0.01, max=0.1)``
  and a retry on UNAVAILABLE / DEADLINE_EXCEEDED, HTTP 5xx and connection errors; each
  attempt has a 1 s timeout.
- ``resilience``: this project, configured once for every fleet (see :func:`our_policies`):
  the discovery channel (``AioResilientChannel``) or the discovery transport
  (``AsyncResilientTransport``) over ``StaticDiscovery``, P2C Peak-EWMA with outlier
  ejection, and ``Timeout(2) -> Retry(3) -> Hedge(p97) -> Timeout(1)``.

The peers get the same attempts, backoff curve, timeouts and ejection time as ours. Every
HTTP stack has one connection pool per replica, with the same limits (see :func:`_http_client`).
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
import httpx
import pybreaker
import tenacity
from _chaos_server import METHOD

from interceptors.grpc import MethodPolicy
from interceptors.grpc_channel import AioResilientChannel
from interceptors.httpx import AsyncResilientTransport
from resilience import Endpoint, Hedge, OutlierEjection, PeakEwma, Pipeline, Retry, StaticDiscovery, Timeout
from resilience.policies.backoff import ExponentialJitter

__all__ = ["STACKS", "Client", "describe_ours", "make_client", "our_policies"]

TOTAL = 2.0  # seconds a call may take, in every stack
ATTEMPT = 1.0  # seconds an attempt may take, where there are attempts
ATTEMPTS = 3  # attempts per call at most, where there are retries
EJECTION_TIME = 1.0  # seconds an ejected replica (an open breaker) stays out, the first time
# Enough connections for 32 calls plus hedges on any one replica, kept alive (httpx keeps 20).
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)
_SSL = ssl.create_default_context()  # one TLS context for every transport (loading one costs ~0.1 s)

STACKS = ("bare", "tenacity+pybreaker", "resilience")


class Client:
    """A stack ready to call one fleet."""

    attempts = 0

    async def call(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class Failed(Exception):
    """An HTTP answer that is not a 200 (what a user's client raises on a bad status)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


# -- this project's configuration --------------------------------------------------------------


def our_policies() -> tuple[PeakEwma, Pipeline]:
    """The balancer and the pipeline of the ``resilience`` stack, as a user would write them.

    Nothing in it knows which replica is bad, or how: the same objects serve every fleet.
    Each choice, against the defaults:

    - ``PeakEwma()`` with its defaults (decay 2 s, failure penalty 1 s, probes after 1 s);
    - ``OutlierEjection(consecutive_failures=5)`` with a 1 s first ejection (the default is
      30 s, as Envoy's; the n-th ejection in a row lasts n s), so that a replica that
      recovers is tried again within seconds; the interval checks keep their defaults,
      which need 5 endpoints and 100 requests in 10 s: with 3 replicas they never run;
    - ``Timeout(2)`` over the call and ``Timeout(1)`` per attempt, as for the peers;
    - ``Retry(3)`` with full jitter from 10 ms (the default starts at 100 ms): a retry goes to
      another replica, so it need not wait long; the retry budget is the default one;
    - ``Hedge(percentile=0.97)``: a second attempt, to another replica, once a call is slower
      than 97 % of the recent ones (no hedge before 20 samples), within the default hedge
      budget (10 % of calls plus 1 a second). With the client's CPU the bottleneck, a hedge
      of a call that is merely late in the client's queue is wasted: interleaved runs gave
      1.05-1.13 attempts per request at p95 against 1.04-1.09 at p97, with the same p99.
    """
    balancer = PeakEwma(ejection=OutlierEjection(consecutive_failures=5, base_ejection_time=EJECTION_TIME))
    pipeline = Pipeline(
        Timeout(TOTAL),
        Retry(ATTEMPTS, backoff=ExponentialJitter(0.01, 2.0, 0.1)),
        Hedge(percentile=0.97, delay=None),
        Timeout(ATTEMPT),
    )
    return balancer, pipeline


def describe_ours() -> str:
    """The ``resilience`` stack's configuration, one object a line."""
    balancer, pipeline = our_policies()
    lines = [repr(balancer), f"  ejection: {balancer.ejection!r}", "Pipeline("]
    lines += [f"  {policy!r}," for policy in pipeline.policies]
    return "\n".join([*lines, ")"])


# -- gRPC ---------------------------------------------------------------------------------------


class _Counted:
    """A sub-channel that counts the calls made on it (the attempts), and is otherwise the channel."""

    def __init__(self, channel: grpc.aio.Channel, owner: Client) -> None:
        self._channel = channel
        self._owner = owner

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        inner = self._channel.unary_unary(method, *args, **kwargs)
        owner = self._owner

        def call(*a: Any, **k: Any) -> Any:
            owner.attempts += 1
            return inner(*a, **k)

        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class GrpcBare(Client):
    def __init__(self, addresses: Sequence[str]) -> None:
        target = "ipv4:" + ",".join(addresses)
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
        self.unary = self.channel.unary_unary(METHOD)

    async def call(self) -> None:
        self.attempts += 1
        await self.unary(b"x", timeout=TOTAL)

    async def aclose(self) -> None:
        await self.channel.close(None)


class _Replica:
    def __init__(self, send: Any, name: str) -> None:
        self.send = send
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=5, reset_timeout=EJECTION_TIME, throw_new_error_on_trip=False, name=name
        )


class _AllOpen(Exception):
    """Every replica's breaker is open."""


def _retryable_grpc(error: BaseException) -> bool:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(error, _AllOpen)


def _retryable_http(error: BaseException) -> bool:
    if isinstance(error, Failed):
        return error.status >= 500
    return isinstance(error, httpx.TransportError | _AllOpen)


class Peers(Client):
    """tenacity + one pybreaker per replica, over per-replica senders taken in turn."""

    def __init__(self, replicas: list[_Replica], retryable: Callable[[BaseException], bool]) -> None:
        self.replicas = replicas
        self.turn = itertools.count()
        # The decorator: each call gets its own copy of the retry state (one AsyncRetrying
        # iterated by many tasks at once would mix their attempts).
        self._call = tenacity.retry(
            stop=tenacity.stop_after_attempt(ATTEMPTS) | tenacity.stop_after_delay(TOTAL),
            wait=tenacity.wait_random_exponential(multiplier=0.01, max=0.1),
            retry=tenacity.retry_if_exception(retryable),
            reraise=True,
        )(self._attempt)

    async def _attempt(self) -> None:
        first = next(self.turn)
        n = len(self.replicas)
        for k in range(n):
            replica = self.replicas[(first + k) % n]
            try:
                with replica.breaker.calling():
                    self.attempts += 1
                    await replica.send()
                    return
            except pybreaker.CircuitBreakerError:
                continue  # open: turned away before sending (not an attempt), the next replica
        raise _AllOpen()

    async def call(self) -> None:
        await self._call()


class GrpcPeers(Peers):
    def __init__(self, addresses: Sequence[str]) -> None:
        self.channels = [grpc.aio.insecure_channel(a) for a in addresses]
        replicas = []
        for address, channel in zip(addresses, self.channels, strict=True):
            unary = channel.unary_unary(METHOD)
            replicas.append(_Replica(lambda unary=unary: unary(b"x", timeout=ATTEMPT), address))
        super().__init__(replicas, _retryable_grpc)

    async def aclose(self) -> None:
        for channel in self.channels:
            await channel.close(None)


class GrpcOurs(Client):
    def __init__(self, addresses: Sequence[str]) -> None:
        balancer, pipeline = our_policies()
        self.channel = AioResilientChannel(
            "echo",
            StaticDiscovery({"echo": [Endpoint(a) for a in addresses]}),
            balancer,
            MethodPolicy(pipeline, idempotent=True),
            channel_factory=lambda address: _Counted(grpc.aio.insecure_channel(address), self),  # type: ignore[arg-type,return-value]
        )
        self.unary = self.channel.unary_unary(METHOD)

    async def call(self) -> None:
        await self.unary(b"x", timeout=TOTAL)

    async def aclose(self) -> None:
        await self.channel.close(None)


# -- HTTP ---------------------------------------------------------------------------------------


def _http_client(timeout: float) -> httpx.AsyncClient:
    # One client (one connection pool) per replica, as the resilience stack has one transport
    # per endpoint: httpcore 1.0.9's pool spends CPU on every queued request for every
    # connection, so a single pool for 32 calls in flight costs several times as much.
    return httpx.AsyncClient(limits=LIMITS, timeout=timeout, verify=_SSL)


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise Failed(response.status_code)


class HttpBare(Client):
    def __init__(self, addresses: Sequence[str]) -> None:
        self.clients = [_http_client(TOTAL) for _ in addresses]
        self.targets = itertools.cycle(list(zip(self.clients, [f"http://{a}/echo" for a in addresses], strict=True)))

    async def call(self) -> None:
        self.attempts += 1
        client, url = next(self.targets)
        _check(await client.get(url))

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class HttpPeers(Peers):
    def __init__(self, addresses: Sequence[str]) -> None:
        self.clients = [_http_client(ATTEMPT) for _ in addresses]

        async def send(client: httpx.AsyncClient, url: str) -> None:
            _check(await client.get(url))

        replicas = [
            _Replica(lambda client=client, url=f"http://{a}/echo": send(client, url), a)
            for client, a in zip(self.clients, addresses, strict=True)
        ]
        super().__init__(replicas, _retryable_http)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class _CountedTransport(httpx.AsyncHTTPTransport):
    """An endpoint's transport that counts its requests (the attempts); still an
    ``httpx.AsyncHTTPTransport``, so the adapter's repair of its pool after a cancelled
    attempt still applies."""

    def __init__(self, owner: Client) -> None:
        super().__init__(limits=LIMITS, verify=_SSL)
        self._owner = owner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._owner.attempts += 1
        return await super().handle_async_request(request)


class HttpOurs(Client):
    def __init__(self, addresses: Sequence[str]) -> None:
        balancer, pipeline = our_policies()
        transport = AsyncResilientTransport(
            pipeline=pipeline,
            discovery=StaticDiscovery({"echo": [Endpoint(a) for a in addresses]}),
            balancer=balancer,
            endpoint_transport=lambda endpoint: _CountedTransport(self),
        )
        self.client = httpx.AsyncClient(transport=transport, timeout=TOTAL)

    async def call(self) -> None:
        _check(await self.client.get("http://echo/echo"))

    async def aclose(self) -> None:
        await self.client.aclose()


_MAKERS: dict[tuple[str, str], Callable[[Sequence[str]], Client]] = {
    ("grpc", "bare"): GrpcBare,
    ("grpc", "tenacity+pybreaker"): GrpcPeers,
    ("grpc", "resilience"): GrpcOurs,
    ("http", "bare"): HttpBare,
    ("http", "tenacity+pybreaker"): HttpPeers,
    ("http", "resilience"): HttpOurs,
}


def make_client(protocol: str, stack: str, addresses: Sequence[str]) -> Client:
    """A fresh ``stack`` client for ``protocol`` ("grpc" or "http") over ``addresses``."""
    return _MAKERS[protocol, stack](addresses)
