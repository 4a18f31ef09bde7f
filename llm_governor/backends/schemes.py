"""Backend URL schemes: the one registry that config validation and ``create_backend`` share.

Each scheme names the factory that builds its backend, so a URL the config
accepts is one ``create_backend`` can build, and both refuse the rest with the
same words (:func:`problem`). Schemes are case-insensitive (``REDIS://h`` is
``redis://h``); the bare words ``memory`` and ``sqlite`` are the only URLs
without ``://``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ..errors import ConfigError
from ..redaction import redact_url
from .base import Backend, Clock
from .memory import MemoryBackend

__all__ = ["SCHEMES", "Options", "Scheme", "allowed", "create", "default_state_path", "normalize",
           "problem", "sqlite_path"]

logger = logging.getLogger("llm_governor")


@dataclass(frozen=True)
class Options:
    """What ``create_backend`` passes every factory besides the URL."""

    budget_limits: dict[str, Decimal]
    namespace: str = "default"
    clock: Clock | None = None
    on_error: str = "local"
    degraded_budget_share: float = 0.25
    readonly: bool = False


Factory = Callable[[str, Options], Backend]


@dataclass(frozen=True)
class Scheme:
    """One way to name a backend: its examples (shown when a URL is refused), whether
    the bare word and ``name://…`` name it, and the factory that builds it."""

    name: str
    examples: tuple[str, ...]
    bare: bool
    urls: bool
    factory: Factory


def default_state_path() -> Path:
    """Where the SQLite file lives by default: the user's state directory."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "llm-governor" / "governor.db"


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite`` / ``sqlite:///path`` backend URL names."""
    url = normalize(url)
    if url == "sqlite":
        return default_state_path()
    path = url.removeprefix("sqlite://")
    # sqlite:////abs/path leaves //abs/path: the same file, shown with one slash
    return Path("/" + path.lstrip("/") if path.startswith("//") else path)


def _memory(url: str, o: Options) -> Backend:
    return MemoryBackend(o.budget_limits, o.clock)


def _sqlite(url: str, o: Options) -> Backend:
    """A SQLite file that cannot be created or written falls back to memory with one
    clear warning (a read-only container still runs, governed per process); a
    ``readonly`` reader raises instead."""
    from .sqlite import SQLiteBackend

    path = sqlite_path(url)
    if o.readonly:
        return SQLiteBackend(path, o.budget_limits, o.clock, o.namespace, on_error=o.on_error,
                             degraded_budget_share=o.degraded_budget_share, readonly=True)
    try:
        return SQLiteBackend(path, o.budget_limits, o.clock, o.namespace, on_error=o.on_error,
                             degraded_budget_share=o.degraded_budget_share)
    except (OSError, Exception) as exc:  # sqlite3.Error included
        logger.warning(
            "RATE_LIMIT llm-governor cannot use the SQLite state file %s (%s); "
            "falling back to in-process memory: limits and budgets are NOT shared "
            "between processes and do not survive restarts", path, exc,
        )
        return MemoryBackend(o.budget_limits, o.clock)


def _redis(url: str, o: Options) -> Backend:
    try:
        from .redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"backend {redact_url(url)!r} needs the redis extra: "
            "pip install 'llm-governor[redis]'"
        ) from exc
    backend: Backend = RedisBackend(url, o.budget_limits, namespace=o.namespace,
                                    on_error=o.on_error,
                                    degraded_budget_share=o.degraded_budget_share)
    return backend


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("memory", ("memory",), True, False, _memory),
    Scheme("sqlite", ("sqlite", "sqlite:///path/to/file.db"), True, True, _sqlite),
    Scheme("redis", ("redis://host:6379/0",), False, True, _redis),
    Scheme("rediss", ("rediss://host:6380/0",), False, True, _redis),
    Scheme("unix", ("unix:///path/to/redis.sock",), False, True, _redis),
)}
"""Every backend scheme, by name (lower case)."""


def allowed() -> str:
    """The accepted forms, for error messages."""
    return ", ".join(repr(e) for s in SCHEMES.values() for e in s.examples)


def _scheme(url: str) -> Scheme | None:
    if url in SCHEMES and SCHEMES[url].bare:
        return SCHEMES[url]
    name, sep, _ = url.partition("://")
    scheme = SCHEMES.get(name.lower()) if sep else None
    return scheme if scheme is not None and scheme.urls else None


def normalize(url: str) -> str:
    """``url`` with its scheme in lower case (the rest untouched)."""
    name, sep, rest = url.partition("://")
    return f"{name.lower()}{sep}{rest}" if sep else url


def problem(url: str) -> str | None:
    """Why ``url`` names no backend (saying what is allowed), or ``None`` when it does."""
    if _scheme(url) is not None:
        return None
    return f"not a backend URL; allowed: {allowed()}"


def create(url: str, options: Options) -> Backend:
    """The backend ``url`` names, or ``ConfigError`` naming the URL (redacted) and
    the allowed forms."""
    scheme = _scheme(url)
    if scheme is None:
        raise ConfigError(f"backend {redact_url(url)!r}: {problem(url)}")
    return scheme.factory(normalize(url), options)
