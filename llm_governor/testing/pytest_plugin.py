"""A pytest plugin: the ``governor`` fixture, llm-governor on the in-memory backend.

Tests that share the default SQLite state file share budgets, buckets and
circuits with each other, with earlier runs and with your dev server. The
``governor`` fixture gives each test its own: ``llm_governor.instrument()`` on
the ``memory`` backend (permissive limits unless configured), undone after the
test, the SDKs' patching included::

    def test_summary(governor):
        summarise("…")                           # governed, in memory
        assert governor.budget_report() == {}

    @pytest.fixture
    def governor_config():                       # optional: what the fixture instruments with
        return {"budget": {"per_day": "0.10"}}

Installed with the package, pytest loads it by itself (the ``pytest11`` entry
point); otherwise enable it with ``-p llm_governor.testing.pytest_plugin`` or
``pytest_plugins = ["llm_governor.testing.pytest_plugin"]`` in a conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from llm_governor.governor import Governor

__all__ = ["governor", "governor_config"]


@pytest.fixture
def governor_config() -> dict[str, Any]:
    """The configuration mapping the ``governor`` fixture instruments with (override it)."""
    return {}


@pytest.fixture
def governor(governor_config: dict[str, Any]) -> Iterator[Governor]:
    """``llm_governor.instrument(governor_config)`` on the memory backend, for one test."""
    from llm_governor import api

    config = dict(governor_config)
    if "environment" not in config:
        config.setdefault("defaults", "permissive")
    was_instrumented = api._instrumentor is not None
    previous = api.set_governor(None)
    gov = api.instrument(config, backend="memory")
    try:
        yield gov
    finally:
        if not was_instrumented:
            api.uninstrument()
        api.set_governor(previous)
        gov.close()
