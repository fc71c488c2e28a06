"""Discovery from etcd: ``etcd://host:2379[,host2:2379...]/prefix``, ``etcds://`` over TLS.

**Key schema.** Each instance of a service is one key::

    <prefix>/<service>/<instance-id>   ->   {"address": "10.0.0.7:50051", "zone": "eu-west-1a",
                                             "weight": 1, "metadata": {"version": "1.4.2"}}

``address`` (``host:port``, IPv6 in brackets) is required; ``zone`` (string or null),
``weight`` (int in [1, 1_000_000], default 1) and ``metadata`` (strings to strings) are
optional, and other fields are ignored (see :meth:`Endpoint.from_dict`). The prefix
defaults to ``/services``; a service name has no ``/``; the instance id is the rest of
the key. :class:`~resilience.discovery.registration.Registrator` writes such keys under a
lease, so an instance that dies without deregistering is gone when its lease lapses.

**How it stays current.** The whole prefix is listed once, then watched from the next
revision over etcd's JSON gateway (one HTTP stream). After any break — a member killed,
a restart, a network blip — the watch resumes from the last revision seen + 1, so no
event is missed or applied twice; when that revision has been compacted meanwhile, the
prefix is listed again. Progress notifications are requested, so the resume point moves
even while the prefix is quiet. Reconnects go to the next member, with a capped, jittered
backoff. ``endpoints(service)`` reads a snapshot (a dict lookup); subscribers get each
new list (see :class:`~resilience.discovery.BaseDiscovery` for the delivery rules).

**When etcd fails** the last known endpoints stay in use. Starting while no member
answers raises :class:`EtcdUnavailableError` naming the members, unless ``fallback``
gives endpoints to use until etcd answers. A key outside the schema, or a value that is
not a valid endpoint, is skipped with a warning naming the key (logger
``resilience.discovery.etcd``); a key that held a good value keeps it until it changes
to a good one or is deleted.

**Sync, asyncio and trio.** ``EtcdDiscovery(url)`` watches from a daemon thread, which
serves sync and async code alike. ``async with EtcdDiscovery.open(url) as discovery:``
watches from a task instead, on asyncio or trio, for the length of the block; ``await
EtcdDiscovery.connect(url)`` starts such a task in the running asyncio loop, or under trio
in the ``nursery=`` given. ``close()`` / ``aclose()`` stop the thread or the task and close
the connections; nothing is left running.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from random import Random
from typing import Any

from ..policies.backoff import Backoff, ExponentialJitter
from ._etcd_client import AsyncEtcdClient, EtcdClient, KeyValue
from ._etcd_config import EtcdAuthError, EtcdConfig, EtcdError, EtcdUnavailableError, parse_etcd_uri
from ._etcd_task import Background, Nursery, Opening, library_for
from ._etcd_watch import Cursor, WatchControl, WatchEvent, WatchUpdate, arun_watch, run_watch
from .base import BaseDiscovery
from .endpoint import Endpoint

__all__ = [
    "AsyncEtcdClient",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdConfig",
    "EtcdDiscovery",
    "EtcdError",
    "EtcdUnavailableError",
    "KeyValue",
    "WatchEvent",
    "WatchUpdate",
    "instance_key",
    "parse_etcd_uri",
]

_log = logging.getLogger("resilience.discovery.etcd")

Fallback = Mapping[str, Iterable[str | Endpoint]]


def instance_key(prefix: str, service: str, instance_id: str) -> str:
    """The key of one instance: ``<prefix>/<service>/<instance-id>``.

    Raises:
        ValueError: on an empty or slash-bearing service name, or an empty instance id.
    """
    if not isinstance(service, str) or not service or "/" in service or service.strip() != service:
        raise ValueError(f"a service name must be non-empty, without '/' or surrounding spaces, got {service!r}")
    if not isinstance(instance_id, str) or not instance_id:
        raise ValueError(f"an instance id must be a non-empty string, got {instance_id!r}")
    return f"{prefix}/{service}/{instance_id}"


def _backoff(value: Backoff | None) -> Backoff:
    if value is None:
        return ExponentialJitter(0.1, 2.0, 5.0)
    if not isinstance(value, Backoff):
        raise TypeError(f"backoff must be a Backoff (e.g. ExponentialJitter(0.1, 2, 5)), got {value!r}")
    return value


class EtcdDiscovery(BaseDiscovery, scheme=("etcd", "etcds")):
    """Endpoints of every service under an etcd prefix, kept current by a watch (see the module doc).

    Args:
        url: ``etcd://[user:password@]host:2379[,host:2379...]/prefix`` (``etcds://`` for
            TLS, see :func:`parse_etcd_uri`), or an :class:`EtcdConfig`.
        fallback: endpoints per service to use when etcd does not answer at start
            (default: none, and starting fails). Replaced by etcd's view once it answers.
        backoff: the wait between reconnects (default ``ExponentialJitter(0.1, 2, 5)``:
            full jitter, at most 5 s).
        rng: the random source of the jitter (default a new ``random.Random``).
        idle_timeout: seconds without a line on the watch stream after which it is taken
            for dead and reopened (default ``None``: never). Set it above etcd's
            ``--experimental-watch-progress-notify-interval`` to detect a silent member.
        on_update: called with each :class:`WatchUpdate` after it is applied (in the
            watch's thread or task), for audit logs and tests.
        options: the options of :func:`parse_etcd_uri` (``username``, ``ca``, ``timeout``...).

    Raises:
        EtcdUnavailableError: no member answered at start and there is no ``fallback``.
        EtcdAuthError: etcd refused the credentials (or wants some).
        ValueError, TypeError: a malformed URI or option, naming it.
    """

    config: EtcdConfig
    client: EtcdClient | None = None
    """The client of the watch thread (``None`` for a discovery made by :meth:`connect`)."""
    aclient: AsyncEtcdClient | None = None
    """The client of the watch task (made by :meth:`connect` or :meth:`open`)."""
    _thread: threading.Thread | None = None
    _task: Background | None = None

    def __init__(
        self,
        url: str | EtcdConfig,
        *,
        fallback: Fallback | None = None,
        backoff: Backoff | None = None,
        rng: Random | None = None,
        idle_timeout: float | None = None,
        on_update: Callable[[WatchUpdate], None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self._setup(url, fallback, backoff, rng, idle_timeout, on_update, options)
        client = self.client = EtcdClient(self.config)
        try:
            self._started(*client.range_prefix(self.config.prefix))
        except EtcdError as exc:
            try:
                self._start_failed(exc)
            except BaseException:
                client.close()
                raise
        self._thread = threading.Thread(
            target=self._run, name=f"etcd-watch {self.config.where}", daemon=True, args=(client,)
        )
        self._thread.start()

    @classmethod
    async def connect(
        cls,
        url: str | EtcdConfig,
        *,
        nursery: Nursery | None = None,
        fallback: Fallback | None = None,
        backoff: Backoff | None = None,
        rng: Random | None = None,
        idle_timeout: float | None = None,
        on_update: Callable[[WatchUpdate], None] | None = None,
        **options: Any,
    ) -> EtcdDiscovery:
        """An :class:`EtcdDiscovery` that watches from a task: of the running asyncio loop, or of ``nursery``.

        ``nursery`` (trio only, and required there) is a trio nursery that outlives the
        discovery. Same other arguments and errors as the constructor; close it with
        :meth:`aclose`. :meth:`open` does both in one ``async with``.

        Raises:
            RuntimeError: under trio without a nursery.
            TypeError: a nursery under asyncio, or one that is not a nursery.
        """
        hint = "use 'async with EtcdDiscovery.open(url)', or pass nursery= to connect()"
        library_for(nursery, hint)
        self = cls.__new__(cls)
        BaseDiscovery.__init__(self)
        self._setup(url, fallback, backoff, rng, idle_timeout, on_update, options)
        client = self.aclient = AsyncEtcdClient(self.config)
        try:
            self._started(*(await client.range_prefix(self.config.prefix)))
        except BaseException as exc:
            try:
                if not isinstance(exc, EtcdError):
                    raise
                self._start_failed(exc)
            except BaseException:
                await client.aclose()  # httpcore shields its closing from a cancellation
                raise
        self._task = Background.start(self._arun, client, name=f"etcd-watch {self.config.where}", nursery=nursery)
        return self

    @classmethod
    def open(
        cls,
        url: str | EtcdConfig,
        *,
        fallback: Fallback | None = None,
        backoff: Backoff | None = None,
        rng: Random | None = None,
        idle_timeout: float | None = None,
        on_update: Callable[[WatchUpdate], None] | None = None,
        **options: Any,
    ) -> Opening[EtcdDiscovery]:
        """``async with EtcdDiscovery.open(url) as discovery:`` watches for the block, on asyncio or trio.

        The watch task runs in the running asyncio loop, or under trio in a nursery of
        the block's own; leaving the block closes the discovery and ends the task. An
        exception of the block comes out as raised. Same arguments and errors as the constructor.
        """
        kwargs = {"fallback": fallback, "backoff": backoff, "rng": rng, "idle_timeout": idle_timeout, **options}
        return Opening(lambda nursery: cls.connect(url, nursery=nursery, on_update=on_update, **kwargs))

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> EtcdDiscovery:
        """``discovery_from_uri("etcd://...", **options)``: the constructor's arguments."""
        return cls(uri, **options)

    def _setup(
        self,
        url: str | EtcdConfig,
        fallback: Fallback | None,
        backoff: Backoff | None,
        rng: Random | None,
        idle_timeout: float | None,
        on_update: Callable[[WatchUpdate], None] | None,
        options: dict[str, Any],
    ) -> None:
        if isinstance(url, EtcdConfig):
            if options:
                raise TypeError(f"options {sorted(options)} go with a URI, not with an EtcdConfig")
            self.config = url
        else:
            self.config = parse_etcd_uri(url, **options)
        if rng is not None and not isinstance(rng, Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float) or not idle_timeout > 0
        ):
            raise ValueError(f"idle_timeout must be a number of seconds > 0 or None, got {idle_timeout!r}")
        if on_update is not None and not callable(on_update):
            raise TypeError(f"on_update must be callable, got {on_update!r}")
        self._fallback: dict[str, tuple[Endpoint, ...]] = {}
        for service, items in (fallback or {}).items():
            if isinstance(items, str):
                raise TypeError(f"fallback endpoints of {service!r} must be a list of 'host:port', got {items!r}")
            self._fallback[service] = tuple(e if isinstance(e, Endpoint) else Endpoint(e) for e in items)
        self._use_fallback = fallback is not None
        self._on_update = on_update
        self._cursor = Cursor(self.config.prefix)
        self._control = WatchControl(_backoff(backoff), rng if rng is not None else Random(), idle_timeout)
        self._stop = threading.Event()
        self._services: dict[str, dict[str, Endpoint]] = {}  # service -> key -> endpoint
        self.fallback_active = False

    # -- starting --------------------------------------------------------------------------

    def _started(self, kvs: list[KeyValue], revision: int) -> None:
        self._apply(self._cursor.listed(kvs, revision))

    def _start_failed(self, exc: EtcdError) -> None:
        if isinstance(exc, EtcdAuthError) or not isinstance(exc, EtcdUnavailableError) or not self._use_fallback:
            if isinstance(exc, EtcdUnavailableError):
                raise EtcdUnavailableError(
                    f"etcd discovery cannot start: no member of {self.config.where} answered ({exc}); "
                    "pass fallback= endpoints to start without etcd",
                    url=self.config.where,
                ) from exc
            raise exc
        _log.warning("etcd %s does not answer (%s): using the fallback endpoints until it does", self.config.where, exc)
        self.fallback_active = True
        for service, endpoints in self._fallback.items():
            self._publish(service, endpoints)

    # -- applying what the watch saw ---------------------------------------------------------

    @property
    def revision(self) -> int:
        """The etcd revision this view is complete up to (0 before etcd first answered)."""
        return self._cursor.revision

    def services(self) -> list[str]:
        """The services that have endpoints now."""
        return sorted(s for s, eps in self._snapshot.items() if eps)

    def _service_of(self, key: str) -> str | None:
        """The service of ``key``, or ``None`` (with a warning) when the key is outside the schema."""
        prefix = self.config.prefix + "/"
        service, sep, instance = key[len(prefix) :].partition("/") if key.startswith(prefix) else ("", "", "")
        if not service or not sep or not instance:
            _log.warning("etcd key %r is not <prefix>/<service>/<instance-id>: skipped", key)
            return None
        return service

    @staticmethod
    def _endpoint(event: WatchEvent) -> Endpoint | None:
        try:
            return Endpoint.from_dict(json.loads(event.value))
        except (ValueError, TypeError) as exc:  # json's errors are ValueErrors
            _log.warning("etcd key %r holds no valid endpoint (%s): skipped, the others kept", event.key, exc)
            return None

    def _apply(self, update: WatchUpdate) -> None:
        touched: set[str] = set()
        if update.resync:
            old, self._services = self._services, {}
            touched.update(old)
            if self.fallback_active:
                touched.update(self._fallback)
                self.fallback_active = False
                _log.warning("etcd %s answers again: its endpoints replace the fallback", self.config.where)
        else:
            old = self._services
        for event in update.events:
            service = self._service_of(event.key)
            if service is None:
                continue
            if event.type == "delete":
                if self._services.get(service, {}).pop(event.key, None) is not None:
                    touched.add(service)
                continue
            endpoint = self._endpoint(event) or old.get(service, {}).get(event.key)  # else the last good value
            if endpoint is not None:
                self._services.setdefault(service, {})[event.key] = endpoint
                touched.add(service)
        for service in sorted(touched):
            keys = self._services.get(service)
            if keys is not None and not keys:
                del self._services[service]
            self._publish(service, [keys[k] for k in sorted(keys)] if keys else ())
        if self._on_update is not None:
            try:
                self._on_update(update)
            except Exception:
                _log.exception("etcd discovery on_update %r failed", self._on_update)

    # -- the watch thread or task ------------------------------------------------------------

    def _run(self, client: EtcdClient) -> None:
        try:
            run_watch(client, self._cursor, self._apply, self._stop, self._control)
        finally:
            client.close()

    async def _arun(self, client: AsyncEtcdClient) -> None:
        try:
            await arun_watch(client, self._cursor, self._apply, self._control)
        finally:
            await client.aclose()

    @property
    def running(self) -> bool:
        """Whether the watch thread or task is still alive."""
        thread, task = self._thread, self._task
        return bool((thread is not None and thread.is_alive()) or (task is not None and not task.done))

    def close(self) -> None:
        """Stop the watch and close its connections; ``endpoints()`` keeps the last snapshot.

        A discovery made by :meth:`connect` should be closed with :meth:`aclose`: ``close()``
        cancels its task, which ends at the library's next turn.
        """
        self._stop.set()
        stream = self._control.stream
        if stream is not None:
            stream.interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.config.timeout + self.config.connect_timeout + 1.0)
            if thread.is_alive():
                _log.warning("etcd watch thread of %s did not stop in time", self.config.where)
        if self._task is not None:
            self._task.cancel()
        super().close()

    async def aclose(self) -> None:
        """Stop the watch, wait for its thread or task to end, and close its connections."""
        self.close()
        if self._task is not None:
            await self._task.wait()
        if self.aclient is not None:  # an asyncio task cancelled before its first step did not run its finally
            await self.aclient.aclose()

    def __repr__(self) -> str:
        return f"EtcdDiscovery({self.config.where!r}, services={self.services()})"
