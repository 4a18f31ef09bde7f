"""SDK instrumentation: one module per vendor SDK (being built)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

__all__ = ["GovernorInstrumentor"]


class GovernorInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Placeholder until the SDK adapters land: patches nothing."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return []

    def _instrument(self, **kwargs: Any) -> None:
        pass

    def _uninstrument(self, **kwargs: Any) -> None:
        pass
