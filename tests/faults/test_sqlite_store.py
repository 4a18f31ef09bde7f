"""The SQLite state file misbehaves under a running process: locked for long, replaced.

A write lock another program holds longer than SQLite's busy timeout (5 s)
or a state file deleted from under the process (a cleanup job, a container
volume swapped) never reaches user code as a ``sqlite3`` error: the call
goes on under ``on_backend_error`` (``local``) with one warning, and the
shared file is used again once it is free, or re-created. (A file made
read-only takes the path a full disk takes: ``test_disk_full.py``.)
"""

from __future__ import annotations

import logging
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from llm_governor.testing import FakeProvider

from .conftest import GPT, MESSAGES, Govern, audit, check_errors, outcome, spent, wait_for

BUDGET = Decimal("0.50")


def test_a_write_lock_held_past_the_busy_timeout_degrades_then_recovers(
        fake: FakeProvider, govern: Govern, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    gov = govern("sqlite", BUDGET)
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=10)
    holder = sqlite3.connect(tmp_path / "state" / "governor.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program's long write transaction
    try:
        with caplog.at_level(logging.WARNING, logger="llm_governor"):
            result = outcome(client.chat.completions.create, model=GPT, messages=MESSAGES,
                             max_tokens=10)
        check_errors([result] if isinstance(result, BaseException) else [])
        assert not isinstance(result, BaseException)
        assert gov.backend.degraded
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "database is locked" in warnings[0], warnings
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert wait_for(lambda: not gov.backend.degraded, 10)
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=10)
    audit(gov, fake, BUDGET, exact=True)  # the degraded call's settlement was replayed


def test_a_state_file_deleted_under_the_process_is_created_again(
        fake: FakeProvider, govern: Govern, tmp_path: Path) -> None:
    gov = govern("sqlite", BUDGET)
    client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url, max_retries=0)
    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=10)
    db = tmp_path / "state" / "governor.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    time.sleep(1.1)  # the store checks the file's identity at most once a second
    for _ in range(2):
        result = outcome(client.chat.completions.create, model=GPT, messages=MESSAGES,
                         max_tokens=10)
        check_errors([result] if isinstance(result, BaseException) else [])
        assert not isinstance(result, BaseException)
    assert db.exists()
    entries = fake.ledger.entries
    assert spent(gov) == sum((e.cost for e in entries[1:]), Decimal(0))  # the new file's books
    _, reserved, leases = gov.backend.budget_status()
    assert (reserved, leases) == (0, 0)
