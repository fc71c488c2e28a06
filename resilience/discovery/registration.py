"""Registering one instance of a service in etcd, kept alive by a lease (the Registrator role).

The instance is the key ``<prefix>/<service>/<instance-id>`` (the schema of
:mod:`resilience.discovery.etcd`), attached to a lease of ``ttl`` seconds renewed every
``ttl / 3``. An instance that dies without deregistering disappears when its lease
lapses; one that closes (or gets SIGTERM, when asked to handle it) revokes the lease,
which deletes the key at once.

**When etcd fails** renewals are retried with a jittered backoff, never waiting longer
than ``ttl / 3``. When etcd answers again, the lease is renewed if it survived; if it is
gone (it lapsed during the outage, or etcd lost its data), the instance is registered
again under a new lease. Starting while no member answers raises
:class:`~resilience.discovery.etcd.EtcdUnavailableError` naming the members.

:class:`Registrator` renews from a daemon thread; :class:`AsyncRegistrator` from a task,
on asyncio or trio (``async with AsyncRegistrator(...)`` opens the nursery trio needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Mapping
from random import Random
from types import FrameType, TracebackType
from typing import Any

from .. import _aio
from ..policies.backoff import Backoff
from ._etcd_client import AsyncEtcdClient, EtcdClient
from ._etcd_config import EtcdError
from ._etcd_lease import Handler, Target, _chain, _Registration
from ._etcd_task import Background, Nest, Nursery, cleanup, library_for

__all__ = ["AsyncRegistrator", "Registrator"]

_log = logging.getLogger("resilience.discovery.etcd")


class Registrator:
    """Keeps one instance registered in etcd while it runs (see the module doc).

    ``with Registrator("etcd://127.0.0.1:2379/services", "orders", "10.0.0.7:50051"):`` serves.

    Args:
        target: an ``etcd://`` URI, an :class:`EtcdConfig`, or an :class:`EtcdDiscovery`
            (its members, prefix and credentials are used; it is not otherwise touched).
        service: the service name.
        address: the instance's ``host:port``.
        ttl: the lease in whole seconds, >= 1 (default 10); renewed every ``ttl / 3``.
            etcd raises a TTL below its minimum (about 2 s with default settings).
        instance_id: the last part of the key (default: ``address``).
        zone, weight, metadata: the rest of the endpoint (see :class:`Endpoint`).
        handle_signals: at :meth:`start`, install a SIGTERM handler that deregisters and
            then does what the previous handler did (calls it, or terminates the process
            when it was the default). Needs the main thread. Default ``False``.
        backoff: the wait between failed renewals (default ``ExponentialJitter(0.1, 2, 5)``),
            never more than ``ttl / 3``.
        rng: the random source of the jitter.
        options: with a URI, the options of :func:`parse_etcd_uri`.
    """

    def __init__(
        self,
        target: Target,
        service: str,
        address: str,
        *,
        ttl: int = 10,
        instance_id: str | None = None,
        zone: str | None = None,
        weight: int = 1,
        metadata: Mapping[str, str] | None = None,
        handle_signals: bool = False,
        backoff: Backoff | None = None,
        rng: Random | None = None,
        **options: Any,
    ) -> None:
        self._reg = _Registration(
            target,
            service,
            address,
            ttl=ttl,
            instance_id=instance_id,
            zone=zone,
            weight=weight,
            metadata=metadata,
            backoff=backoff,
            rng=rng,
            options=options,
        )
        self.key = self._reg.key
        self._handle_signals = handle_signals
        self._client: EtcdClient | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: dict[int, Handler] = {}

    @property
    def lease(self) -> int:
        """The current lease ID (0 when not registered)."""
        return self._reg.lease

    @property
    def registrations(self) -> int:
        """How many times the instance was registered (1, plus one per lost lease)."""
        return self._reg.registrations

    @property
    def renewals(self) -> int:
        """How many times the lease was renewed."""
        return self._reg.renewals

    def _register(self, client: EtcdClient) -> None:
        lease = client.lease_grant(self._reg.ttl)
        client.put(self.key, self._reg.value, lease=lease)
        self._reg.registered(lease)

    def start(self) -> Registrator:
        """Register now and keep the lease alive from a daemon thread.

        Raises:
            EtcdUnavailableError: no member answered (the message names them).
            EtcdError: etcd refused (credentials, permissions).
            RuntimeError: started twice, or ``handle_signals`` outside the main thread.
        """
        if self._client is not None:
            raise RuntimeError(f"the registrator of {self.key} is started already")
        if self._handle_signals and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_signals needs the main thread (Python runs signal handlers there)")
        client = self._client = EtcdClient(self._reg.config)
        try:
            self._register(client)
        except EtcdError as exc:
            client.close()
            self._client = None
            raise self._reg.unavailable(exc) from exc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client,), name=f"etcd-lease {self.key}", daemon=True)
        self._thread.start()
        if self._handle_signals:
            self._previous[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _run(self, client: EtcdClient) -> None:
        reg = self._reg
        while not self._stop.wait(reg.next_delay()):
            try:
                if reg.lease == 0 or not reg.renewed(client.lease_keepalive(reg.lease)):
                    self._register(client)
            except EtcdError as exc:
                reg.failed(exc)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.close()
        _chain(signum, previous, frame)

    def close(self) -> None:
        """Stop renewing and deregister (revoke the lease). Idempotent."""
        self._stop.set()
        thread, client = self._thread, self._client
        self._client = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._reg.config.timeout + self._reg.config.connect_timeout + 1.0)
        self._thread = None
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous.clear()
        lease, self._reg.lease = self._reg.lease, 0
        if client is not None:
            try:
                if lease:
                    client.lease_revoke(lease)
                    _log.info("deregistered %s", self.key)
            except EtcdError as exc:
                self._reg.revoke_failed(exc)
            finally:
                client.close()

    def __enter__(self) -> Registrator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registrator({self._reg!r})"


class AsyncRegistrator:
    """:class:`Registrator` for asyncio and trio: ``async with AsyncRegistrator(url, "orders", "10.0.0.7:50051"):``.

    The lease is renewed by a task: of the running asyncio loop, or under trio of a
    nursery (the ``async with`` block's own, or the one given to :meth:`start`).
    ``handle_signals`` uses ``loop.add_signal_handler`` under asyncio and a signal
    receiver task under trio, where the previous handler runs in that task. Same
    arguments as :class:`Registrator`.
    """

    def __init__(
        self,
        target: Target,
        service: str,
        address: str,
        *,
        ttl: int = 10,
        instance_id: str | None = None,
        zone: str | None = None,
        weight: int = 1,
        metadata: Mapping[str, str] | None = None,
        handle_signals: bool = False,
        backoff: Backoff | None = None,
        rng: Random | None = None,
        **options: Any,
    ) -> None:
        self._reg = _Registration(
            target,
            service,
            address,
            ttl=ttl,
            instance_id=instance_id,
            zone=zone,
            weight=weight,
            metadata=metadata,
            backoff=backoff,
            rng=rng,
            options=options,
        )
        self.key = self._reg.key
        self._handle_signals = handle_signals
        self._client: AsyncEtcdClient | None = None
        self._task: Background | None = None
        self._signals: dict[int, Handler] = {}  # asyncio: the handlers replaced
        self._pending: set[asyncio.Task[None]] = set()
        self._receiver: contextlib.AbstractContextManager[AsyncIterator[int]] | None = None  # trio
        self._signal_task: Background | None = None  # trio
        self._nest: Nest | None = None

    @property
    def lease(self) -> int:
        """The current lease ID (0 when not registered)."""
        return self._reg.lease

    @property
    def registrations(self) -> int:
        """How many times the instance was registered (1, plus one per lost lease)."""
        return self._reg.registrations

    @property
    def renewals(self) -> int:
        """How many times the lease was renewed."""
        return self._reg.renewals

    async def _register(self, client: AsyncEtcdClient) -> None:
        lease = await client.lease_grant(self._reg.ttl)
        await client.put(self.key, self._reg.value, lease=lease)
        self._reg.registered(lease)

    async def start(self, *, nursery: Nursery | None = None) -> AsyncRegistrator:
        """Register now and keep the lease alive from a task; errors as :meth:`Registrator.start`.

        ``nursery`` (trio only, and required there) is a trio nursery that outlives the
        registration; ``async with`` the registrator opens one of its own.

        Raises:
            RuntimeError: also under trio without a nursery.
            TypeError: a nursery under asyncio, or one that is not a nursery.
        """
        hint = "use 'async with AsyncRegistrator(...)', or pass nursery= to start()"
        library = library_for(nursery, hint)
        if self._client is not None:
            raise RuntimeError(f"the registrator of {self.key} is started already")
        if self._handle_signals and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_signals needs the main thread (Python runs signal handlers there)")
        client = self._client = AsyncEtcdClient(self._reg.config)
        try:
            await self._register(client)
        except BaseException as exc:
            await client.aclose()
            self._client = None
            if isinstance(exc, EtcdError):
                raise self._reg.unavailable(exc) from exc
            raise
        self._task = Background.start(self._run, client, name=f"etcd-lease {self.key}", nursery=nursery)
        if self._handle_signals:
            previous = signal.getsignal(signal.SIGTERM)
            if library == "asyncio":
                self._signals[signal.SIGTERM] = previous
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
            else:
                import trio

                self._receiver = trio.open_signal_receiver(signal.SIGTERM)  # in place before start() returns
                signals = self._receiver.__enter__()
                self._signal_task = Background.start(
                    self._on_trio_signal, signals, previous, name=f"etcd-signals {self.key}", nursery=nursery
                )
        return self

    async def _run(self, client: AsyncEtcdClient) -> None:
        reg = self._reg
        while True:
            await _aio.sleep(reg.next_delay())
            try:
                if reg.lease == 0 or not reg.renewed(await client.lease_keepalive(reg.lease)):
                    await self._register(client)
            except EtcdError as exc:
                reg.failed(exc)

    def _on_signal(self, signum: int) -> None:
        previous = self._signals.get(signum, signal.SIG_DFL)

        async def deregister_then_chain() -> None:
            await self.aclose()
            _chain(signum, previous, None)

        task = asyncio.get_running_loop().create_task(deregister_then_chain())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _on_trio_signal(self, signals: AsyncIterator[int], previous: Handler) -> None:
        async for signum in signals:
            await self.aclose()  # which puts the previous handler back
            _chain(signum, previous, None)
            return

    def _restore_signals(self) -> None:
        if self._signals:
            loop = asyncio.get_running_loop()
            for signum, previous in self._signals.items():
                loop.remove_signal_handler(signum)
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            self._signals.clear()
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.__exit__(None, None, None)  # a signal received but not taken goes to the previous handler

    async def aclose(self) -> None:
        """Stop renewing and deregister (revoke the lease), also when cancelled. Idempotent."""
        for background in (self._task, self._signal_task):
            if background is not None and not background.current:
                background.cancel()
                await background.wait()
        self._task = self._signal_task = None
        self._restore_signals()
        client, self._client = self._client, None
        lease, self._reg.lease = self._reg.lease, 0
        if client is not None:
            # Under trio every await of a cancelled task is cancelled: the revoke must still go out.
            with cleanup(self._reg.config.timeout + self._reg.config.connect_timeout):
                try:
                    if lease:
                        await client.lease_revoke(lease)
                        _log.info("deregistered %s", self.key)
                except EtcdError as exc:
                    self._reg.revoke_failed(exc)
                finally:
                    await client.aclose()

    async def __aenter__(self) -> AsyncRegistrator:
        nest = Nest()
        nursery = await nest.enter()
        try:
            await self.start(nursery=nursery)
        except BaseException as exc:
            await nest.exit(exc)
            raise
        self._nest = nest
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        await self.aclose()
        nest, self._nest = self._nest, None
        return await nest.exit(exc) if nest is not None else False

    def __repr__(self) -> str:
        return f"AsyncRegistrator({self._reg!r})"
