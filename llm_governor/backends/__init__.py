"""Backends chosen by URL: ``memory``, ``sqlite`` / ``sqlite:///path``, ``redis://…``.

``create_backend`` builds what :data:`.schemes.SCHEMES` (the one registry, also
used by config validation) names. A SQLite file that cannot be created or
written falls back to memory with one clear warning, so a read-only container
still runs, governed per process.
"""

from __future__ import annotations

from decimal import Decimal

from . import schemes
from .base import Backend, CallRecord, Clock, Lease, TransactionalBackend
from .memory import MemoryBackend

__all__ = ["Backend", "CallRecord", "Lease", "MemoryBackend", "TransactionalBackend",
           "create_backend"]


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
    """The backend ``url`` names (see :data:`.schemes.SCHEMES`).

    ``readonly`` (status readers): a SQLite file is opened for reading only and
    must exist; failing that raises ``OSError`` / ``sqlite3.Error`` instead of
    falling back to memory.
    """
    return schemes.create(url, schemes.Options(budget_limits, namespace, clock, on_error,
                                               degraded_budget_share, readonly))
