"""SQLite specifics: private file modes, default location, fallback to memory."""

from __future__ import annotations

import logging
import stat
from decimal import Decimal
from pathlib import Path

import pytest

from llm_governor.backends import MemoryBackend, create_backend
from llm_governor.backends.sqlite import SQLiteBackend
from llm_governor.config import default_state_path


def test_state_directory_and_file_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "llm-governor" / "governor.db"
    SQLiteBackend(path, {}).close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_default_path_is_under_the_users_state_dir(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_path() == tmp_path / "llm-governor" / "governor.db"
    backend = create_backend("sqlite", {})
    assert isinstance(backend, SQLiteBackend) and backend.path == default_state_path()
    backend.close()


def test_unusable_state_location_falls_back_to_memory_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="llm_governor"):
        backend = create_backend(f"sqlite://{blocker}/governor.db", {"day": Decimal("1")})
    assert isinstance(backend, MemoryBackend)
    warnings = [r for r in caplog.records if "falling back to in-process memory" in r.message]
    assert len(warnings) == 1
    assert "NOT shared" in warnings[0].getMessage()


def test_namespaces_isolate_apps_sharing_a_file(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    a = SQLiteBackend(path, {}, namespace="app-a")
    b = SQLiteBackend(path, {}, namespace="app-b")
    a.set_emergency(True)
    assert a.emergency() and not b.emergency()
    a.close()
    b.close()


def test_namespaces_match_exactly_not_as_patterns(tmp_path: Path) -> None:
    """``a_b`` is not a pattern for ``aXb``, nor ``A_b`` the same name: every read and the
    reset see their own namespace's rows only."""
    from llm_governor.backends import CallRecord
    from tests.backends.test_contract import limits

    path = tmp_path / "g.db"
    names = ("a_b", "aXb", "A_b")
    stores = {n: SQLiteBackend(path, {}, namespace=n) for n in names}
    lim = limits()
    try:
        for n, store in stores.items():
            store.settle(None, lim, None,
                         CallRecord(f"svc-{n}", "m", None, Decimal("0.01"), "ok"))
            store.publish_process(f"p-{n}", {"pid": 1}, 60)
        for n, store in stores.items():
            assert store.services() == [f"svc-{n}"]
            assert list(store.counters()["cost"]) == [f"svc-{n}"]
            assert list(store.processes()) == [f"p-{n}"]
        stores["a_b"].reset()
        assert stores["a_b"].counters() == {} and stores["a_b"].processes() == {}
        assert list(stores["aXb"].counters()["cost"]) == ["svc-aXb"]
        assert list(stores["A_b"].processes()) == ["p-A_b"]
    finally:
        for store in stores.values():
            store.close()
