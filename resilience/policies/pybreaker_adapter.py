"""Put an existing ``pybreaker.CircuitBreaker`` in a :class:`~resilience.Pipeline`.

For users who already have pybreaker breakers (with their listeners and storages) and
want them in a pipeline next to the other policies. Needs the optional dependency:
``pip install 'resilience-policies[pybreaker]'``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

try:
    import pybreaker
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resilience.policies.pybreaker_adapter needs the pybreaker package: "
        "pip install 'resilience-policies[pybreaker]'"
    ) from exc

from ..context import CallContext
from ..errors import CircuitOpenError
from ..outcome import Outcome
from ..policy import AsyncNext, Policy, SyncNext

__all__ = ["PyBreakerPolicy"]


class _ResultFailure(Exception):
    """Carries a result the classifier called a failure through pybreaker's accounting."""


class _Box:
    """What the guarded function saw, for the sync executor to tell a trip from a rejection."""

    __slots__ = ("error", "failed_result", "ran", "result")

    def __init__(self) -> None:
        self.ran = False
        self.error: BaseException | None = None
        self.failed_result = False
        self.result: Any = None


def _succeed() -> None:
    return None


def _fail(exc: BaseException) -> None:
    raise exc


class PyBreakerPolicy(Policy):
    """A ``pybreaker.CircuitBreaker`` as a pipeline policy.

    **Sync** calls run through the breaker's own ``call``, so pybreaker's rules, listeners
    and storage apply unchanged, pybreaker's lock included (it is held for the whole call,
    so calls through one pybreaker breaker are serialised: pybreaker's design). Two things
    differ from calling pybreaker directly, so that the pipeline sees what happened: a
    rejection raises :class:`~resilience.CircuitOpenError` (with ``retry_after``, the rest of
    the break) instead of ``pybreaker.CircuitBreakerError``; and the call whose failure
    trips the breaker raises its own error, not ``CircuitBreakerError``.

    **Async** calls never run inside pybreaker's ``call`` (it would hold a thread lock
    across an ``await``). The state is checked before the call through the public
    ``current_state``; an open breaker whose ``reset_timeout`` has passed is moved to
    half-open with ``half_open()``, and then one probe at a time is let through (the
    one-call-at-a-time pybreaker gives sync callers). The outcome is recorded after the
    call by replaying it through ``breaker.call`` with a function that returns, or raises
    the call's error, at once: pybreaker's own rules decide (its ``exclude`` list,
    ``fail_max``, ``success_threshold``, listeners, storage), and its lock is held for
    microseconds, never across the awaited call. An outcome that arrives after the state
    changed under it (a call admitted while closed that ends after the breaker opened) is
    dropped. A cancelled call records nothing.

    **Failures** are what pybreaker calls them: every exception goes through pybreaker
    (an excluded one counts as a success, pybreaker's rule). In addition, a result the
    pipeline's classifier calls a failure is recorded as one (the result itself is
    returned unchanged).

    ``retry_after`` is read from the breaker's storage (``opened_at``) and pybreaker's
    clock (``datetime.now(UTC)`` as pybreaker reads it); it is ``None`` when unknown.

    Args:
        breaker: the pybreaker breaker.
        name: the policy's name in events (default: the breaker's name, else ``"pybreaker"``).
    """

    __slots__ = ("_lock", "_probing", "breaker")

    def __init__(self, breaker: pybreaker.CircuitBreaker, *, name: str | None = None) -> None:
        if not isinstance(breaker, pybreaker.CircuitBreaker):
            raise TypeError(f"breaker must be a pybreaker.CircuitBreaker, got {breaker!r}")
        super().__init__(name if name is not None else (breaker.name or "pybreaker"))
        self.breaker = breaker
        self._lock = threading.Lock()
        self._probing = False

    # -- shared by both executors -----------------------------------------------------------

    def retry_after(self) -> float | None:
        """Seconds until pybreaker lets a call through again (0.0 if it would now), or ``None`` if unknown."""
        if self.breaker.current_state != pybreaker.STATE_OPEN:
            return 0.0
        storage = getattr(self.breaker, "_state_storage", None)  # pybreaker has no public getter
        opened_at = getattr(storage, "opened_at", None)
        if not isinstance(opened_at, datetime):
            return None
        # pybreaker reads the time as datetime.now(UTC) through its module's `datetime`.
        now = getattr(pybreaker, "datetime", datetime).now(UTC)
        left = opened_at + timedelta(seconds=self.breaker.reset_timeout) - now
        return max(0.0, left.total_seconds())

    def _rejected(self, ctx: CallContext, retry_after: float | None, why: str) -> CircuitOpenError:
        return CircuitOpenError(f"{self.name}: pybreaker circuit {why}", context=ctx, retry_after=retry_after)

    def _admit(self, ctx: CallContext) -> bool:
        """Before an async call: ``True`` for a half-open probe, ``False`` for a closed call; or raise."""
        state = self.breaker.current_state
        if state == pybreaker.STATE_CLOSED:
            return False
        if state == pybreaker.STATE_OPEN:
            left = self.retry_after()
            if left is None or left > 0:
                raise self._rejected(ctx, left, "open")
        with self._lock:
            if self._probing:
                raise self._rejected(ctx, None, "half-open with its probe in flight")
            self._probing = True
        if state == pybreaker.STATE_OPEN:
            self.breaker.half_open()
        return True

    def _record(self, probe: bool, error: BaseException | None) -> None:
        """After an async call: replay its outcome through pybreaker (``error=None``: a success)."""
        try:
            expected = pybreaker.STATE_HALF_OPEN if probe else pybreaker.STATE_CLOSED
            if self.breaker.current_state != expected:
                return  # the state changed during the call: this outcome is stale
            if error is None:
                self.breaker.call(_succeed)
                return
            saved = error.__traceback__, error.__context__, error.__suppress_context__
            try:
                self.breaker.call(_fail, error)
            except pybreaker.CircuitBreakerError:
                pass
            except BaseException as raised:
                if raised is not error:
                    raise
            finally:
                error.__traceback__, error.__context__, error.__suppress_context__ = saved
        finally:
            if probe:
                with self._lock:
                    self._probing = False

    @staticmethod
    def _failed_result(ctx: CallContext, result: object) -> bool:
        return ctx.classifier.checks_results and ctx.classifier.result(result) is Outcome.FAILURE

    # -- executors ------------------------------------------------------------------------

    def wrap(self, next: SyncNext) -> SyncNext:
        breaker = self.breaker

        def pybreaker_sync(ctx: CallContext) -> Any:
            box = _Box()

            def guarded() -> Any:
                box.ran = True
                try:
                    result = next(ctx)
                except BaseException as exc:
                    box.error = exc
                    raise
                if self._failed_result(ctx, result):
                    box.failed_result = True
                    box.result = result
                    raise _ResultFailure()
                return result

            try:
                return breaker.call(guarded)
            except _ResultFailure:
                return box.result
            except pybreaker.CircuitBreakerError as err:
                if not box.ran:
                    raise self._rejected(ctx, self.retry_after(), "open") from err
            # This call's failure tripped the breaker: give the pipeline the call's own outcome.
            if box.failed_result:
                return box.result
            assert box.error is not None
            raise box.error

        return pybreaker_sync

    def wrap_async(self, next: AsyncNext) -> AsyncNext:
        async def pybreaker_async(ctx: CallContext) -> Any:
            probe = self._admit(ctx)
            try:
                result = await next(ctx)
            except Exception as exc:
                self._record(probe, exc)
                raise
            except BaseException:
                if probe:  # cancelled: nothing to record, but the probe slot is free again
                    with self._lock:
                        self._probing = False
                raise
            self._record(probe, _ResultFailure() if self._failed_result(ctx, result) else None)
            return result

        return pybreaker_async

    def __repr__(self) -> str:
        return f"PyBreakerPolicy({self.breaker.name!r}, state={self.breaker.current_state!r})"
