"""What never goes into a span, an event, a metric or a log: credentials and the like.

- **Headers and metadata**: ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and
  ``Set-Cookie``, every gRPC metadata key ending in ``-bin`` (binary values: tokens,
  serialized credentials), and the names given in ``redact_headers``. Their values are
  never recorded; the values seen in a call are also scrubbed from any text recorded
  for it (an error message that echoes a header).
- **URLs**: the user-info (``user:password@``) becomes ``REDACTED:REDACTED@``, as the
  semantic conventions ask for ``url.full``; the values of the query parameters named
  in ``redact_query_params`` — and always ``AWSAccessKeyId``, ``Signature``, ``sig`` and
  ``X-Goog-Signature``, the conventions' default list — become ``REDACTED``. Those
  values are scrubbed from recorded text too.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "SENSITIVE_HEADERS", "SIGNATURE_PARAMS", "Redactor"]

REDACTED = "REDACTED"
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
"""Header (and metadata) names whose values are never recorded, lower case."""
SIGNATURE_PARAMS = frozenset({"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"})
"""Query parameters always redacted (the semantic conventions' list for ``url.full``)."""

_MIN_SCRUB = 4
"""Secret values shorter than this are not scrubbed from text (a 1-character cookie would eat every message)."""


def _names(label: str, names: Iterable[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(f"{label} must be a sequence of names, not one string, got {names!r}")
    out = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{label} must hold non-empty strings, got {name!r}")
        out.append(name)
    return tuple(out)


class Redactor:
    """Redacts URLs, headers and text for one listener (see the module's docstring).

    Args:
        redact_query_params: query parameter names whose values are redacted in URLs
            (matched exactly, as the conventions' list is), besides the default list.
        redact_headers: header or metadata names whose values are never recorded,
            besides :data:`SENSITIVE_HEADERS` and ``-bin`` keys (case-insensitive).
    """

    __slots__ = ("headers", "params")

    def __init__(self, redact_query_params: Collection[str] = (), redact_headers: Collection[str] = ()) -> None:
        self.params = frozenset(_names("redact_query_params", redact_query_params)) | SIGNATURE_PARAMS
        self.headers = frozenset(n.lower() for n in _names("redact_headers", redact_headers)) | SENSITIVE_HEADERS

    def secret_key(self, key: str) -> bool:
        """Whether a header or metadata key's value must never be recorded."""
        key = key.lower()
        return key in self.headers or key.endswith("-bin")

    def secrets_of(self, items: Iterable[tuple[object, object]]) -> list[str]:
        """The values of the secret keys among ``items`` (header or metadata pairs), as text."""
        found: list[str] = []
        for key, value in items:
            name = key.decode("latin-1") if isinstance(key, bytes) else str(key)
            if not self.secret_key(name):
                continue
            text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
            found.append(text)
            if name.lower() in ("authorization", "proxy-authorization") and " " in text:
                found.append(text.split(" ", 1)[1])  # the credentials of "Bearer <token>"
        return [s for s in found if len(s) >= _MIN_SCRUB]

    def url(self, url: str) -> tuple[str, list[str]]:
        """``url`` redacted, and the secret values taken out of it (to scrub from text)."""
        secrets: list[str] = []
        scheme, sep, rest = url.partition("://")
        if sep:
            end = len(rest)
            for stop in "/?#":
                i = rest.find(stop)
                if i != -1 and i < end:
                    end = i
            authority = rest[:end]
            at = authority.rfind("@")
            if at != -1:
                user, _, password = authority[:at].partition(":")
                secrets += [s for s in (unquote_plus(password), password, authority[:at]) if s]
                if user:
                    secrets.append(user)
                rest = f"{REDACTED}:{REDACTED}@{authority[at + 1 :]}{rest[end:]}"
            url = f"{scheme}://{rest}"
        base, q, query = url.partition("?")
        if not q:
            return url, [s for s in secrets if len(s) >= _MIN_SCRUB]
        query, h, fragment = query.partition("#")
        parts = []
        for part in query.split("&"):
            name, eq, value = part.partition("=")
            if eq and unquote_plus(name) in self.params and value:
                secrets += [value, unquote_plus(value)]
                part = f"{name}={REDACTED}"
            parts.append(part)
        redacted = f"{base}?{'&'.join(parts)}{h}{fragment}"
        return redacted, [s for s in secrets if len(s) >= _MIN_SCRUB]

    @staticmethod
    def scrub(text: str, secrets: Collection[str]) -> str:
        """``text`` with every one of ``secrets`` replaced by ``REDACTED``, longest first."""
        for secret in sorted(secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __repr__(self) -> str:
        return f"Redactor(params={sorted(self.params)}, headers={sorted(self.headers)})"
