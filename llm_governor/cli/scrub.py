"""Backend passwords never reach the CLI's output: remember them, replace them by ``***``."""

from __future__ import annotations

import logging
from urllib.parse import unquote

__all__ = ["ScrubbingFormatter", "remember_url", "scrub"]

_secrets: set[str] = set()


def remember_url(url: str | None) -> None:
    """Note the password of a backend URL so no output can carry it."""
    if not url or "://" not in url or "@" not in url:
        return
    creds = url.split("://", 1)[1].rpartition("@")[0]
    password = creds.split(":", 1)[1] if ":" in creds else creds
    for variant in (password, unquote(password)):
        if len(variant) >= 3:
            _secrets.add(variant)


def scrub(text: str) -> str:
    """``text`` with every known backend password replaced by ``***``."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class ScrubbingFormatter(logging.Formatter):
    """A log formatter whose lines are scrubbed of every remembered password."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))
