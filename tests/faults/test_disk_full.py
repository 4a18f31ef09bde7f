"""The SQLite state file's disk fills up under a running process, then frees up.

Two ways to fill it, each in a forked child (a crash there cannot take pytest
down): lower the soft ``RLIMIT_FSIZE`` to just above the state file's size
(``SIGXFSZ`` ignored), so the next write to the file (its WAL) fails, which
SQLite reports as "disk I/O error" (``EFBIG``); or, when this runs as root and
may mount, put the file on a 2 MiB tmpfs and fill the tmpfs with another file:
a real ``ENOSPC``, "database or disk is full".

Calls keep working, degraded to per-process limits (``on_backend_error =
"local"``) with one warning; no ``sqlite3`` error reaches user code. When the
space comes back the probe finds the file writable, replays the settlements
made meanwhile into it, and shared limits resume: the spend in the file equals
what the provider billed, and no lease is left.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from llm_governor.backends.sqlite import SQLiteStore
from llm_governor.testing import FakeProvider
from tests.conftest import require

from .conftest import GPT, MESSAGES, Books, config, report

try:
    import resource
except ImportError:  # not POSIX
    resource = None  # type: ignore[assignment]

FORK = multiprocessing.get_context("fork")
BUDGET = Decimal("1.00")
MESSAGE = {"rlimit": "disk I/O error", "tmpfs": "database or disk is full"}


class Disk:
    """Fills and frees the state file's disk, one of the two ways."""

    def __init__(self, how: str, state: Path) -> None:
        self.how = how
        self.state = state
        self.filler = state.parent.parent / "filler"
        self.limits: tuple[int, int] | None = None

    def fill(self) -> None:
        if self.how == "rlimit":
            import signal

            assert resource is not None
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            self.limits = resource.getrlimit(resource.RLIMIT_FSIZE)
            files = [self.state, self.state.with_name(self.state.name + "-wal")]
            size = max(f.stat().st_size for f in files if f.exists())
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 512, self.limits[1]))
            return
        with open(self.filler, "wb") as fh:  # until the tmpfs is full
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    def free(self) -> None:
        if self.how == "rlimit":
            assert resource is not None and self.limits is not None
            resource.setrlimit(resource.RLIMIT_FSIZE, self.limits)
        else:
            self.filler.unlink()


def _fill_the_disk(cfg: dict[str, Any], disk: Disk, base_url: str, conn: Connection) -> None:
    """In a forked child: calls before, during and after a full disk; report by pipe."""
    import logging

    import openai

    import llm_governor

    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    logger = logging.getLogger("llm_governor")
    logger.addHandler(Keep(logging.WARNING))
    logger.propagate = False  # pytest's captured stderr is a file: it may be "full" too
    gov = llm_governor.instrument(cfg)
    client = openai.OpenAI(api_key="sk-faults", base_url=base_url, max_retries=0)
    errors: list[str] = []

    def calls(n: int) -> None:
        for i in range(n):
            try:
                if i % 2:
                    list(client.chat.completions.create(model=GPT, messages=MESSAGES,
                                                        max_tokens=12, stream=True))
                else:
                    client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=12)
            except Exception as exc:
                errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")

    out: dict[str, Any] = {}
    calls(3)
    out["degraded_before"] = gov.backend.degraded
    disk.fill()
    calls(6)
    out["degraded_during"] = gov.backend.degraded
    disk.free()
    deadline = time.monotonic() + 5
    while gov.backend.degraded and time.monotonic() < deadline:
        time.sleep(0.05)
    out["degraded_after"] = gov.backend.degraded
    calls(3)
    out["errors"] = errors
    out["warnings"] = warnings
    llm_governor.uninstrument()
    gov.close()
    conn.send(out)
    conn.close()


@contextlib.contextmanager
def small_tmpfs(where: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at ``where`` (skips unless root and allowed to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the rlimit variant covers this)")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); "
                    "the rlimit variant covers this")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("how", ["rlimit", "tmpfs"])
def test_full_disk_degrades_to_local_and_replays_on_recovery(
        how: str, fake: FakeProvider, tmp_path: Path) -> None:
    require(resource is not None and hasattr(resource, "RLIMIT_FSIZE"),
            "RLIMIT_FSIZE is needed to fill the disk under the state file")
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(small_tmpfs(tmp_path / "disk")) if how == "tmpfs" \
            else tmp_path
        state = base / "state" / "governor.db"
        cfg = config("sqlite", base, BUDGET, on_backend_error="local")
        assert cfg["backend"] == f"sqlite:///{state}"
        ours, theirs = FORK.Pipe(duplex=False)
        child = FORK.Process(target=_fill_the_disk,
                             args=(cfg, Disk(how, state), fake.openai_base_url, theirs))
        child.start()
        try:
            assert ours.poll(30), "the child did not report"
            out = ours.recv()
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0

        # the file has every settlement, the outage's included (replayed), no lease left
        store = SQLiteStore(state, {"day": BUDGET})
        try:
            spends, reserved, leases = store.budget_status()
            counted = store.counters()["calls"]["openai"][GPT]
        finally:
            store.close()

    assert out["errors"] == []  # every call worked, no sqlite3 error reached user code
    assert (out["degraded_before"], out["degraded_during"], out["degraded_after"]) == \
        (False, True, False)
    lost = [w for w in out["warnings"] if "cannot use its sqlite backend" in w]
    assert len(lost) == 1, out["warnings"]
    assert MESSAGE[how] in lost[0], lost[0]
    assert sum("is back" in w for w in out["warnings"]) == 1
    assert len(fake.ledger) == fake.ledger.served_count() == 12
    books = report(Books(fake.ledger.total_billed(), spends["day"].spent, BUDGET))
    assert books.recorded == books.billed
    assert (reserved, leases) == (0, 0)
    assert counted == {"ok": 12}
