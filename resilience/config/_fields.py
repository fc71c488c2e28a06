"""How schema fields are declared: defaults and descriptions taken from the options classes.

``opt(RetryOptions, "attempts", ge=1, le=100)`` is a pydantic field whose default is the
dataclass field's default and whose description is the ``Attributes:`` entry of the
class's docstring, so the schema, its JSON Schema and the README reference cannot drift
from the options they build. The bounds are declared here (for editors and the
reference); a test checks them against what the options class accepts.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NO_DEFAULT", "Section", "attribute_docs", "opt"]

NO_DEFAULT: Any = ...
"""Marks a required field."""

_FROM_CLASS: Any = object()


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, types are strict, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=False)


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` (or ``Args:``) entries of ``cls``'s docstring, one line of prose each."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    section = False
    current: str | None = None
    for line in doc.splitlines():
        if re.fullmatch(r"(Attributes|Args|Keys):", line.strip()):
            section = True
            current = None
            continue
        if not section:
            continue
        if line and not line.startswith(" "):
            section = False
            continue
        found = re.match(r"^    ([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*):\s*(.*)$", line)
        if found:
            names = found.group(1).split(", ")
            current = names[-1]
            for name in names:
                out[name] = found.group(2)
        elif current is not None and line.startswith("        "):
            out[current] = (out[current] + " " + line.strip()).strip()
        elif not line.strip():
            current = None
    return out


def _dataclass_default(cls: type, name: str) -> Any:
    if not dataclasses.is_dataclass(cls):
        parameter = inspect.signature(cls).parameters[name]
        return NO_DEFAULT if parameter.default is inspect.Parameter.empty else parameter.default
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return NO_DEFAULT
            return NO_DEFAULT
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def opt(cls: type, name: str, *, default: Any = _FROM_CLASS, doc: str | None = None, **bounds: Any) -> Any:
    """A field for option ``name`` of ``cls``: its default and its docstring come from ``cls``.

    ``default`` overrides the dataclass default where the config spells it differently
    (a backoff as a mapping, exception names as strings); ``doc`` overrides the description.
    """
    value = _dataclass_default(cls, name) if default is _FROM_CLASS else default
    description = doc if doc is not None else attribute_docs(cls).get(name, "")
    if value is NO_DEFAULT:
        return Field(description=description, **bounds)
    if isinstance(value, list | dict):
        return Field(default_factory=lambda: type(value)(value), description=description, **bounds)
    return Field(default=value, description=description, **bounds)
