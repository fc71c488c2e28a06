"""Background tasks of the etcd watch and lease, on asyncio or trio.

Under asyncio a background task is a task of the running loop. Under trio it needs a
nursery: the caller's (``nursery=``), or the one a :class:`Nest` opens for an
``async with`` block. Either way the owner gets a :class:`Background` handle to cancel it
(from any thread) and wait for its end. :func:`cleanup` lets the awaits of a ``finally``
run to their end in a cancelled trio task, for a bounded time (trio cancels every await
of a cancelled task, where asyncio cancels only the one that was waiting); closing an
httpx client needs none, httpcore shields its own closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .. import _aio

if TYPE_CHECKING:
    import trio

__all__ = ["Background", "Nest", "Nursery", "Opening", "cleanup", "library_for"]


class _Closable(Protocol):
    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class Nursery(Protocol):
    """What a background task needs of a trio nursery (an anyio task group also has it)."""

    def start_soon(self, async_fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> None: ...


def library_for(nursery: object, hint: str) -> str:
    """``"asyncio"`` or ``"trio"``, checking that ``nursery`` fits the running library.

    Raises:
        RuntimeError: under trio without a nursery (``hint`` says what to do instead),
            or outside asyncio and trio.
        TypeError: a nursery under asyncio, or a ``nursery`` that is not one.
    """
    library = _aio.current_library()
    if library == "asyncio":
        if nursery is not None:
            raise TypeError(f"nursery= is for trio: under asyncio the task runs in the running loop, got {nursery!r}")
    elif nursery is None:
        raise RuntimeError(f"under trio a background task needs a nursery: {hint}")
    elif not callable(getattr(nursery, "start_soon", None)):
        raise TypeError(f"nursery must be a trio nursery (with start_soon), got {nursery!r}")
    return library


def cleanup(seconds: float) -> contextlib.AbstractContextManager[object]:
    """A scope in which a cancelled trio task may still await, for at most ``seconds``; asyncio: nothing."""
    if _aio.running_asyncio_loop() is not None:
        return contextlib.nullcontext()
    import trio

    return trio.CancelScope(shield=True, deadline=trio.current_time() + seconds)


class Background:
    """One coroutine running in the background; :meth:`start` picks the library's kind."""

    @staticmethod
    def start(fn: Callable[..., Awaitable[None]], *args: Any, name: str, nursery: Nursery | None = None) -> Background:
        """Run ``fn(*args)`` as a task of the running asyncio loop, or in ``nursery`` under trio."""
        loop = _aio.running_asyncio_loop()
        if loop is not None:
            return _AsyncioBackground(loop, fn, args, name)
        if nursery is None:
            raise RuntimeError(f"under trio the {name} task needs a nursery")
        return _TrioBackground(nursery, fn, args, name)

    @property
    def done(self) -> bool:
        """Whether the task has ended (thread-safe)."""
        raise NotImplementedError

    @property
    def current(self) -> bool:
        """Whether the calling task is this one (call it from the task's library)."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Ask the task to stop; from any thread, and harmless once it has ended."""
        raise NotImplementedError

    async def wait(self) -> None:
        """Wait until the task has ended (not from the task itself, where it returns at once)."""
        raise NotImplementedError


class _AsyncioBackground(Background):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Awaitable[None]], args: tuple[Any, ...], name: str
    ) -> None:
        self._loop = loop

        async def run() -> None:
            await fn(*args)

        self._task = loop.create_task(run(), name=name)

    @property
    def done(self) -> bool:
        return self._task.done()

    @property
    def current(self) -> bool:
        return _aio.running_asyncio_loop() is self._loop and asyncio.current_task() is self._task

    def cancel(self) -> None:
        if self._task.done():
            return
        if _aio.running_asyncio_loop() is self._loop:
            self._task.cancel()
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: the task will never run again
                self._loop.call_soon_threadsafe(self._task.cancel)

    async def wait(self) -> None:
        if _aio.running_asyncio_loop() is self._loop and not self.current:
            await asyncio.wait({self._task})


class _TrioBackground(Background):
    def __init__(self, nursery: Nursery, fn: Callable[..., Awaitable[None]], args: tuple[Any, ...], name: str) -> None:
        import trio

        # Made here, entered by the task: a cancel() before the task first runs still counts.
        self._scope = trio.CancelScope()
        self._ended = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self._task: trio.lowlevel.Task | None = None
        nursery.start_soon(self._run, fn, args, name=name)

    async def _run(self, fn: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
        import trio

        self._task = trio.lowlevel.current_task()
        try:
            with self._scope:
                await fn(*args)
        finally:
            self._ended.set()

    @property
    def done(self) -> bool:
        return self._ended.is_set()

    @property
    def current(self) -> bool:
        import trio

        return self._task is not None and trio.lowlevel.current_task() is self._task

    def cancel(self) -> None:
        if threading.get_ident() == self._thread:
            self._scope.cancel()
            return
        import trio

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._scope.cancel)

    async def wait(self) -> None:
        if self.current:
            return
        import trio

        with trio.CancelScope(shield=True):  # it was cancelled and ends at once; wait for that though we are too
            await self._ended.wait()


class Nest:
    """The nursery of an ``async with`` block under trio; nothing under asyncio.

    :meth:`enter` opens it (``None`` under asyncio); :meth:`exit`, once the owner has
    stopped its tasks, closes it. A single exception comes out as it was raised, not
    wrapped in an exception group: the block's own, or a task's (the ``SystemExit`` of a
    chained signal handler).
    """

    def __init__(self) -> None:
        self._manager: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None

    async def enter(self) -> Nursery | None:
        if _aio.current_library() == "asyncio":
            return None
        import trio

        self._manager = trio.open_nursery()
        nursery: Nursery = await self._manager.__aenter__()
        return nursery

    async def exit(self, exc: BaseException | None) -> bool:
        """Close the nursery; whether ``exc``, the block's exception, was absorbed (a cancellation of ours)."""
        manager, self._manager = self._manager, None
        if manager is None:
            return False
        try:
            return bool(await manager.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None))
        except BaseExceptionGroup as group:
            only = group.exceptions[0] if len(group.exceptions) == 1 else None
            if only is None or isinstance(only, BaseExceptionGroup):
                raise
            context = only.__context__
            try:
                raise only  # the group adds nothing to its single exception
            finally:
                only.__context__ = context


class Opening(Generic[C]):
    """An ``async with`` for what ``start(nursery)`` makes, in a :class:`Nest`, closed with ``aclose()``."""

    def __init__(self, start: Callable[[Nursery | None], Awaitable[C]]) -> None:
        self._start = start
        self._nest = Nest()
        self._made: C | None = None
        self._entered = False

    async def __aenter__(self) -> C:
        if self._entered:
            raise RuntimeError("this opens one object for one 'async with' block; call open() again")
        self._entered = True
        nursery = await self._nest.enter()
        try:
            self._made = await self._start(nursery)
        except BaseException as exc:
            await self._nest.exit(exc)
            raise
        return self._made

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._made is not None:
            await self._made.aclose()
        return await self._nest.exit(exc)
