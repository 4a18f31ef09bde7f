"""Secrets out of every output: the one place that knows what a secret in a URL looks like.

Two tools, one rule. :func:`redact_url` masks the credentials of a URL shown on
purpose (config summaries, the status document, ``validate``). A
:class:`Scrubber` remembers the secrets of URLs it was shown and removes them
from free text that may quote them (a driver's error message, a log line, a
traceback). The CLI keeps one process-wide scrubber (``cli/scrub.py``); each
Redis store keeps its own. The mask is always ``***``.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

__all__ = ["MASK", "MIN_SECRET", "Scrubber", "ScrubbingFormatter", "redact_url", "url_secrets"]

MASK = "***"

MIN_SECRET = 3
"""Shorter secrets are not scrubbed from free text (every ``a`` of a message would go);
:func:`redact_url` still masks them inside URLs."""


def _credentials(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, host…)`` of a URL with credentials, else ``None``."""
    if "://" not in url or "@" not in url:
        return None
    scheme, rest = url.split("://", 1)
    creds, _, host = rest.rpartition("@")
    return scheme, creds, host


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` → ``redis://user:***@host``; other URLs unchanged."""
    parts = _credentials(url)
    if parts is None:
        return url
    scheme, creds, host = parts
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:{MASK}@{host}"
    return f"{scheme}://{MASK}@{host}"


def url_secrets(url: str | None) -> set[str]:
    """The secret of a URL as it may be quoted: the password (or a lone user part,
    which servers such as Redis take as the password), raw and percent-decoded."""
    parts = _credentials(url or "")
    if parts is None:
        return set()
    creds = parts[1]
    password = creds.split(":", 1)[1] if ":" in creds else creds
    return {v for v in (password, unquote(password)) if len(v) >= MIN_SECRET}


class Scrubber:
    """Remembers secrets and replaces them by ``***`` in any text."""

    def __init__(self, *urls: str | None) -> None:
        self._secrets: set[str] = set()
        for url in urls:
            self.remember_url(url)

    def remember_url(self, url: str | None) -> None:
        """Note the secret of ``url`` so no scrubbed text can carry it."""
        self._secrets |= url_secrets(url)

    def scrub(self, text: str) -> str:
        """``text`` with every remembered secret replaced (longest first, so a secret
        containing another goes whole)."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


class ScrubbingFormatter(logging.Formatter):
    """A log formatter whose lines pass through a :class:`Scrubber`."""

    def __init__(self, scrubber: Scrubber, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        return self.scrubber.scrub(super().format(record))
