"""pydantic's validation errors as :class:`ConfigIssue` s: a dotted path and a plain reason each.

The path follows the config as written: the tags pydantic adds for unions (``backoff.exponential``)
are dropped; an unknown key gets a "did you mean" from the keys allowed there; a value that
came from the environment is never shown.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ConfigIssue, Loc, Secrets, did_you_mean, dotted

__all__ = ["issues_of"]

_TYPES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "null",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_BOUND_KEYS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        out = []
        for arg in typing.get_args(tp):
            out.extend(_members(arg))
        return out
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tags(tp: Any) -> dict[str, type[BaseModel]]:
    """The ``kind`` values of the models of a union, and their model."""
    out: dict[str, type[BaseModel]] = {}
    for member in _members(tp):
        if _is_model(member) and "kind" in member.model_fields:
            for tag in typing.get_args(_unwrap(member.model_fields["kind"].annotation)):
                out[tag] = member
    return out


def _walk(root: type[BaseModel], loc: Loc) -> tuple[Loc, Any, bool]:
    """The loc as written (tags and union labels dropped), the type at its end, and whether
    the error came through a union member."""
    clean: list[str | int] = []
    tp: Any = root
    through_union = False
    for item in loc:
        members = [m for m in _members(tp) if m is not type(None)]
        if len(members) > 1:
            tags = _tags(tp)
            if isinstance(item, str) and item in tags:
                tp = tags[item]
                continue
            named = [m for m in members if getattr(m, "__name__", None) == item]
            models = [m for m in members if _is_model(m) and isinstance(item, str) and item in m.model_fields]
            if named or not models:
                through_union = True  # a label pydantic gives a member of a plain union ("str", "FunctionRef")
                tp = named[0] if named else typing.Any
                continue
            tp = models[0]
        elif members:
            tp = members[0]
        tp = _unwrap(tp)
        clean.append(item)
        origin = typing.get_origin(tp)
        if _is_model(tp):
            field = tp.model_fields.get(item) if isinstance(item, str) else None
            tp = field.annotation if field is not None else typing.Any
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin in (list, tuple):
            args = typing.get_args(tp)
            tp = (
                args[0]
                if args and (origin is list or len(args) == 1 or not isinstance(item, int))
                else (args[item] if isinstance(item, int) and item < len(args) else typing.Any)
            )
        else:
            tp = typing.Any
    return tuple(clean), tp, through_union


def _allowed(root: type[BaseModel], parent: Loc) -> list[str]:
    _, tp, _ = _walk(root, parent)
    names: list[str] = []
    for member in _members(tp):
        if _is_model(member):
            names.extend(n for n in member.model_fields if n not in names)
    return names


def _shown(value: object, loc: Loc, secrets: Secrets) -> str:
    hidden = secrets.hidden(loc)
    if hidden is not None:
        return hidden
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _message(error: Any, loc: Loc, root: type[BaseModel], secrets: Secrets) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    got = _shown(value, loc, secrets)
    if kind == "extra_forbidden":
        allowed = _allowed(root, loc[:-1])
        hint = did_you_mean(str(loc[-1]), allowed)
        return f"unknown key{hint}" if hint else f"unknown key; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return "is required"
    if kind in _BOUNDS:
        bound = ctx.get(_BOUND_KEYS[kind])
        return f"must be {_BOUNDS[kind]} {bound:g}, got {got}" if isinstance(bound, int | float) else error["msg"]
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}, got {got}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else ""
        return f"must be one of {expected}, got {got}{hint}"
    if kind == "union_tag_invalid":
        tag = ctx.get("tag", "")
        expected = ctx.get("expected_tags", "")
        choices = [c.strip().strip("'") for c in expected.split(",")]
        return f"kind must be one of {expected}, got {tag!r}{did_you_mean(str(tag), choices)}"
    if kind == "union_tag_not_found":
        _, tp, _ = _walk(root, loc)
        return f"needs a kind: one of {', '.join(repr(t) for t in _tags(tp))}"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind in ("value_error", "assertion_error"):
        return secrets.redact(str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, "))
    return secrets.redact(str(error["msg"]))


def issues_of(exc: ValidationError, root: type[BaseModel], secrets: Secrets, base: Loc = ()) -> list[ConfigIssue]:
    """Every error of ``exc`` (validating ``root`` at ``base``) as a :class:`ConfigIssue`."""
    found: dict[str, list[tuple[str, bool, Any]]] = {}
    for error in exc.errors(include_url=False):
        loc, _, through_union = _walk(root, tuple(error["loc"]))
        full = (*base, *loc)
        message = _message(error, full, root, secrets)
        found.setdefault(dotted(full), []).append((message, through_union, error))
    issues: list[ConfigIssue] = []
    for path, entries in found.items():
        issues.extend(ConfigIssue(path, m) for m in _merge(entries, path, secrets))
    return issues


def _merge(entries: Iterable[tuple[str, bool, Any]], path: str, secrets: Secrets) -> list[str]:
    """One message for the errors the members of a union gave about one value."""
    plain = [m for m, through, _ in entries if not through]
    union = [(m, e) for m, through, e in entries if through]
    if not union:
        return list(dict.fromkeys(plain))
    expected = [_TYPES[e["type"]] for _, e in union if e["type"] in _TYPES]
    deeper = [m for m, e in union if e["type"] not in _TYPES]
    if deeper:
        return list(dict.fromkeys(plain + deeper))
    value = union[0][1].get("input")
    shown = secrets.redact(repr(value))
    return list(dict.fromkeys([*plain, f"must be {' or '.join(dict.fromkeys(expected))}, got {shown}"]))
