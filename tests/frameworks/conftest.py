"""Framework tests: the fake provider and ``governed`` fixtures of the SDK tests, and
``need(module)``, which skips when a framework is not installed (fails under CI=true)."""

from __future__ import annotations

import importlib.util

from tests.conftest import require
from tests.instrumentation.conftest import fake, governed, shared_fake

__all__ = ["fake", "governed", "need", "shared_fake"]


def need(*modules: str) -> None:
    """Skip unless every module is importable (the ``frameworks`` extra); CI fails instead."""
    missing = [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None]
    require(not missing, f"needs {', '.join(missing)} (pip install 'llm-governor[frameworks]')")
