"""Backend passwords never reach the CLI's output: one process-wide
:class:`~llm_governor.redaction.Scrubber` that every command's URLs are shown to."""

from __future__ import annotations

from .. import redaction

__all__ = ["ScrubbingFormatter", "remember_url", "scrub"]

_scrubber = redaction.Scrubber()


def remember_url(url: str | None) -> None:
    """Note the password of a backend URL so no output can carry it."""
    _scrubber.remember_url(url)


def scrub(text: str) -> str:
    """``text`` with every known backend password replaced by ``***``."""
    return _scrubber.scrub(text)


class ScrubbingFormatter(redaction.ScrubbingFormatter):
    """A log formatter whose lines are scrubbed of every remembered password."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(_scrubber, fmt)
