"""What the two rate limits (:class:`~resilience.TokenBucket`, :class:`~resilience.RateLimit`)
share: keys taken from the call context, the two modes, their events and their error."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

from ..context import CallContext
from ..errors import RateLimitedError
from ..events import Event, emit

__all__ = ["KeyFunc", "RateLimitRejected", "RateLimitWaited"]

KeyFunc = Callable[[CallContext], str]
"""Builds the limit's key from the call context."""

_MODES = ("reject", "wait")


@dataclass(frozen=True, slots=True)
class RateLimitRejected(Event):
    """A rate limit turned a call away.

    Attributes:
        key: the key of the limit that was exceeded.
        retry_after: seconds until the next permit, when known.
        reason: ``"limit"`` (reject mode), ``"max_wait"`` or ``"deadline"`` (the wait
            would have been too long), or ``"storage"`` (the limit's storage failed and
            the policy fails closed).
    """

    key: str
    retry_after: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RateLimitWaited(Event):
    """A rate limit in ``"wait"`` mode holds a call back for ``delay`` seconds."""

    key: str
    delay: float


def compile_key(key: str | KeyFunc | None) -> KeyFunc | None:
    """The key option as a function of the context; ``None`` means one key for all calls.

    A string is a template: ``{service}`` and ``{method}`` are the context's fields, any
    other ``{name}`` is the call's tag ``name`` (empty when the call has no such tag), so
    ``"{service}:{method}:{tenant}"`` gives one limit per service, method and tenant. A
    template without fields is a constant key. A callable gets the
    :class:`~resilience.CallContext` and returns the key.

    Raises:
        ValueError: a template field with an attribute, index, conversion or format spec.
        TypeError: ``key`` is neither a string, a callable nor ``None``.
    """
    if key is None:
        return None
    if isinstance(key, str):
        return _compile_template(key)
    if callable(key):
        return key
    raise TypeError(f"key must be a template string, a callable(ctx) -> str, or None, got {key!r}")


def _compile_template(template: str) -> KeyFunc:
    literal_parts: list[str] = []
    getters: list[Callable[[CallContext], str]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"key must be a valid template such as '{{service}}:{{tenant}}', got {template!r}: {exc}")
    fmt: list[str] = []
    for literal, name, spec, conversion in parsed:
        fmt.append(literal.replace("%", "%%"))
        literal_parts.append(literal)
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"key template fields must be plain names ({{service}}, {{method}} or a tag name), "
                f"got {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} in {template!r}"
            )
        fmt.append("%s")
        getters.append(_field_getter(name))
    if not getters:
        constant = "".join(literal_parts)
        return lambda ctx: constant
    pattern = "".join(fmt)
    if len(getters) == 1:
        (only,) = getters
        return lambda ctx: pattern % only(ctx)
    return lambda ctx: pattern % tuple([get(ctx) for get in getters])


def _field_getter(name: str) -> Callable[[CallContext], str]:
    if name == "service":
        return lambda ctx: ctx.service
    if name == "method":
        return lambda ctx: ctx.method

    def tag(ctx: CallContext) -> str:
        tags = ctx.tags
        return tags.get(name, "") if tags is not None else ""

    return tag


def check_mode(mode: str) -> str:
    """``mode`` checked to be ``"reject"`` or ``"wait"``."""
    if mode not in _MODES:
        raise ValueError(f"mode must be 'reject' or 'wait', got {mode!r}")
    return mode


def rejection(policy: str, ctx: CallContext, key: str, retry_after: float | None, reason: str) -> RateLimitedError:
    """The error (and event) for a call a rate limit turns away."""
    if ctx.listeners:
        emit(ctx.listeners, RateLimitRejected(policy, ctx, key, retry_after, reason))
    where = f" for key {key!r}" if key else ""
    if reason == "limit":
        why = "rate limit exceeded"
    elif reason == "storage":
        why = "rate limit storage unavailable (failing closed)"
    else:
        why = f"the next permit comes after the {'deadline' if reason == 'deadline' else 'longest wait'}"
    when = f", next permit in {retry_after:.3f}s" if retry_after is not None else ""
    return RateLimitedError(f"{policy}: {why}{where}{when}", context=ctx, retry_after=retry_after)
