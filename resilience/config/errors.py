"""What a refused config says: every problem, with its dotted path and its reason.

A config is checked whole before anything of it is used; :class:`ConfigError` lists
every problem found (``services.orders.retry.attempts: must be >= 1, got 0``). Values that
came from ``${ENV_VAR}`` substitution are never echoed: their path is known
(:class:`Secrets`), and any text is passed through :meth:`Secrets.redact` before it is
shown, logged or put in a ``repr``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["ConfigError", "ConfigIssue", "Secrets", "did_you_mean", "dotted"]

Loc = tuple[str | int, ...]


def dotted(loc: Sequence[str | int]) -> str:
    """``("http", "hosts", "api.example.com", "routes", 0)`` as ``http.hosts["api.example.com"].routes[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and all(c.isalnum() or c in "_-" for c in part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out or "(top level)"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem of a config: where (``path``, dotted) and what (``message``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(slots=True)
class Secrets:
    """The values a config got from the environment: where they are, and what they are.

    Attributes:
        paths: the location of every value that holds a substituted variable, with the
            variable names.
        values: the substituted values (never shown: :meth:`redact` masks them).
    """

    paths: dict[Loc, tuple[str, ...]] = field(default_factory=dict)
    values: set[str] = field(default_factory=set)

    def hidden(self, loc: Loc) -> str | None:
        """What to show instead of the value at ``loc`` (or inside it), or ``None`` for a plain value."""
        for where, names in self.paths.items():
            if loc[: len(where)] == where or where[: len(loc)] == loc:
                return "<hidden: from " + ", ".join("${" + name + "}" for name in names) + ">"
        return None

    def redact(self, text: str) -> str:
        """``text`` with every substituted value replaced by ``***`` (longest first)."""
        for value in sorted(self.values, key=len, reverse=True):
            if len(value) >= 3:
                text = text.replace(value, "***")
        return text


class ConfigError(ValueError):
    """A config that was refused, with every problem found in it.

    Nothing of a refused config is applied. ``str(error)`` lists the problems, one a line.

    Attributes:
        issues: each problem, with its dotted path and its reason.
        source: where the config came from (a file name, an etcd key), if known.
    """

    def __init__(self, issues: Sequence[ConfigIssue], source: str | None = None) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        where = f" {self.source}" if self.source else ""
        count = len(self.issues)
        head = f"config{where} refused: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([head, *(f"  {issue}" for issue in self.issues)])

    def __reduce__(self) -> tuple[object, ...]:
        return (ConfigError, (self.issues, self.source))
