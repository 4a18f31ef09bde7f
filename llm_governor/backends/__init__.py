"""Backends chosen by URL: ``memory``, ``sqlite`` / ``sqlite:///path``, ``redis://…``.

``create_backend`` is the registry. A SQLite file that cannot be created or
written falls back to memory with one clear warning, so a read-only container
still runs, governed per process.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from ..config import sqlite_path
from ..errors import ConfigError
from ..redaction import redact_url
from .base import Backend, CallRecord, Clock, Lease, TransactionalBackend
from .memory import MemoryBackend

__all__ = ["Backend", "CallRecord", "Lease", "MemoryBackend", "TransactionalBackend",
           "create_backend"]

logger = logging.getLogger("llm_governor")


def create_backend(
    url: str,
    budget_limits: dict[str, Decimal],
    *,
    namespace: str = "default",
    clock: Clock | None = None,
    on_error: str = "local",
    degraded_budget_share: float = 0.25,
    readonly: bool = False,
) -> Backend:
    """The backend ``url`` names.

    ``readonly`` (status readers): a SQLite file is opened for reading only and
    must exist; failing that raises ``OSError`` / ``sqlite3.Error`` instead of
    falling back to memory.
    """
    if url == "memory":
        return MemoryBackend(budget_limits, clock)
    if url == "sqlite" or url.startswith("sqlite://"):
        from .sqlite import SQLiteBackend

        path = sqlite_path(url)
        if readonly:
            return SQLiteBackend(path, budget_limits, clock, namespace, on_error=on_error,
                                 degraded_budget_share=degraded_budget_share, readonly=True)
        try:
            return SQLiteBackend(path, budget_limits, clock, namespace, on_error=on_error,
                                 degraded_budget_share=degraded_budget_share)
        except (OSError, Exception) as exc:  # sqlite3.Error included
            logger.warning(
                "RATE_LIMIT llm-governor cannot use the SQLite state file %s (%s); "
                "falling back to in-process memory: limits and budgets are NOT shared "
                "between processes and do not survive restarts", path, exc,
            )
            return MemoryBackend(budget_limits, clock)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from .redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                f"backend {redact_url(url)!r} needs the redis extra: "
                "pip install 'llm-governor[redis]'"
            ) from exc
        backend: Backend = RedisBackend(url, budget_limits, namespace=namespace, on_error=on_error,
                            degraded_budget_share=degraded_budget_share)
        return backend
    raise ConfigError(f"backend {redact_url(url)!r} is not one of memory, sqlite, redis")
