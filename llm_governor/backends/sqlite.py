"""One SQLite file shared by every process on the host (the default backend).

WAL mode, one ``BEGIN IMMEDIATE`` transaction per step, so admission is
atomic across threads and processes; budgets, breaker state and the emergency
flag persist across restarts. The directory is created 0700 and the file
0600: cost data and circuit states are sensitive.

:class:`SQLiteStore` runs the steps and raises ``sqlite3.Error`` / ``OSError``
when the file cannot be used (disk full, read-only, locked longer than
``busy_timeout``); :class:`SQLiteBackend` wraps it in a
:class:`~.failover.FailoverBackend`, so those never reach user code. A file
replaced or deleted under a running process is noticed within a second and
reopened.

``readonly`` opens an existing file for reading only (what ``llm-governor
status``, ``monitor`` and ``export`` use): nothing is created, not even the
directory; a missing file raises ``FileNotFoundError``. A file nobody has open
is read as immutable, so SQLite leaves no ``-wal``/``-shm`` files behind
either, and is reopened as soon as a writer appears or the file changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..policies import budget
from ..policies.admission import ServiceState
from ..policies.scopes import ScopeState
from . import schema
from ._codec import dump_scope, dump_service, dump_spends, load_scope, load_service, load_spends
from .base import (
    Clock,
    Lease,
    Snapshot,
    TransactionalBackend,
    Txn,
    call_names,
    lease_totals,
    nest_counters,
)
from .failover import FailoverBackend, SharedStore

__all__ = ["SQLiteBackend", "SQLiteStore", "prepare_path"]

BUSY_TIMEOUT = 5.0  # seconds a step waits for the file's write lock before failing over
_FILE_CHECK = 1.0  # seconds between checks that the path still names the open file

# SQLite keeps the bookkeeping of its file locks per process, inside the library. A fork
# while a thread holds a lock on the file (the stream settler mid-settlement, say) leaves
# the child believing a connection of its own holds it: every connection the child opens
# then waits for a lock nobody will release. So nothing touches the file while the
# process forks: each step holds this guard, and a fork waits for the step to end.
_fork_guard = threading.RLock()


def _guard() -> threading.RLock:
    return _fork_guard


def _before_fork() -> None:
    _fork_guard.acquire()


def _after_fork_in_parent() -> None:
    _fork_guard.release()


def _after_fork_in_child() -> None:
    global _fork_guard
    _fork_guard = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, service TEXT NOT NULL,
                                   amount TEXT NOT NULL, expires REAL NOT NULL,
                                   scopes TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS scopes (key TEXT PRIMARY KEY, state TEXT NOT NULL,
                                   expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS scopes_by_expiry ON scopes (expires);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS processes (id TEXT PRIMARY KEY, expires REAL NOT NULL,
                                      doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS done (id TEXT PRIMARY KEY, until REAL NOT NULL);
"""
_TABLES = [stmt.strip() for stmt in _SCHEMA.split(";") if stmt.strip().startswith("CREATE TABLE")]


def prepare_path(path: Path) -> None:
    """Create the state directory (0700) and file (0600), or raise ``OSError``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise PermissionError(f"{path} is not writable")


class _SQLiteTxn(Txn):
    def __init__(self, conn: sqlite3.Connection, namespace: str, readonly: bool = False) -> None:
        self._c = conn
        self._ns = namespace
        self._readonly = readonly

    def service(self, name: str) -> ServiceState:
        row = self._c.execute("SELECT state FROM services WHERE name=?",
                              (f"{self._ns}|{name}",)).fetchone()
        return load_service(row[0] if row else None)

    def put_service(self, name: str, state: ServiceState) -> None:
        self._c.execute("INSERT OR REPLACE INTO services VALUES (?, ?)",
                        (f"{self._ns}|{name}", dump_service(state)))

    def spends(self) -> dict[str, budget.WindowSpend]:
        row = self._c.execute("SELECT value FROM kv WHERE key=?",
                              (f"{self._ns}|spends",)).fetchone()
        return load_spends(row[0] if row else None)

    def put_spends(self, spends: dict[str, budget.WindowSpend]) -> None:
        self._c.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)",
                        (f"{self._ns}|spends", dump_spends(spends)))

    def leases(self, now: float, max_ttl: float | None = None) -> list[Lease]:
        prefix = f"{self._ns}|"
        if max_ttl is not None and not self._readonly:
            self._c.execute("UPDATE leases SET expires = ? WHERE expires > ?"
                            " AND service >= ? AND service < ?",
                            (now + max_ttl, now + max_ttl, prefix, f"{self._ns}}}"))
        return [
            Lease(i, s.removeprefix(prefix), Decimal(a), e, tuple(sc.split()))
            for i, s, a, e, sc in self._c.execute(
                "SELECT id, service, amount, expires, scopes FROM leases"
                " WHERE service >= ? AND service < ? AND expires > ?",
                (prefix, f"{self._ns}}}", now),
            )
        ]

    def expire(self, now: float) -> list[Lease]:
        prefix = f"{self._ns}|"
        rows = self._c.execute(
            "DELETE FROM leases WHERE expires <= ? AND service >= ? AND service < ?"
            " RETURNING id, service, amount, expires, scopes",
            (now, prefix, f"{self._ns}}}")).fetchall()
        return [Lease(i, s.removeprefix(prefix), Decimal(a), e, tuple(sc.split()))
                for i, s, a, e, sc in rows]

    def done(self, settle_id: str, now: float) -> bool:
        return self._c.execute("SELECT 1 FROM done WHERE id=? AND until > ?",
                               (f"{self._ns}|{settle_id}", now)).fetchone() is not None

    def mark_done(self, settle_id: str, until: float) -> None:
        self._c.execute("DELETE FROM done WHERE until <= ?", (until - 3600.0,))
        self._c.execute("INSERT OR REPLACE INTO done VALUES (?, ?)",
                        (f"{self._ns}|{settle_id}", until))

    def add_lease(self, lease: Lease) -> None:
        self._c.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                        (lease.id, f"{self._ns}|{lease.service}", str(lease.amount),
                         lease.expires_at, " ".join(lease.scopes)))

    def pop_lease(self, lease_id: str) -> Lease | None:
        row = self._c.execute(
            "DELETE FROM leases WHERE id=? RETURNING service, amount, expires, scopes",
            (lease_id,)).fetchone()
        if row is None:
            return None
        return Lease(lease_id, row[0].split("|", 1)[1], Decimal(row[1]), row[2],
                     tuple(row[3].split()))

    def renew_lease(self, lease_id: str, expires_at: float) -> bool:
        cur = self._c.execute("UPDATE leases SET expires=? WHERE id=?", (expires_at, lease_id))
        return cur.rowcount > 0

    def emergency(self) -> bool:
        row = self._c.execute("SELECT value FROM kv WHERE key=?",
                              (f"{self._ns}|emergency",)).fetchone()
        return bool(row and row[0] == "1")

    def scope(self, key: str) -> ScopeState:
        row = self._c.execute("SELECT state FROM scopes WHERE key=?",
                              (f"{self._ns}|{key}",)).fetchone()
        return load_scope(row[0] if row else None)

    def put_scope(self, key: str, state: ScopeState) -> None:
        self._c.execute("INSERT OR REPLACE INTO scopes VALUES (?, ?, ?)",
                        (f"{self._ns}|{key}", dump_scope(state), state.expires))

    def drop_idle_scopes(self, now: float) -> None:
        self._c.execute("DELETE FROM scopes WHERE expires <= ? AND key >= ? AND key < ?",
                        (now, f"{self._ns}|", f"{self._ns}}}"))

    def scopes_of(self, kind: str | None) -> dict[str, ScopeState]:
        prefix = f"{self._ns}|" if kind is None else f"{self._ns}|{kind}="
        return {k.split("|", 1)[1]: load_scope(st) for k, st in self._c.execute(
            "SELECT key, state FROM scopes WHERE key >= ? AND key < ?",
            (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))}

    def incr(self, key: str, amount: int | Decimal) -> None:
        k = f"{self._ns}|{key}"
        row = self._c.execute("SELECT value FROM counters WHERE key=?", (k,)).fetchone()
        if isinstance(amount, Decimal):
            value = str((Decimal(row[0]) if row else Decimal(0)) + amount)
        else:
            value = str((int(row[0]) if row else 0) + amount)
        self._c.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (k, value))



def _span(prefix: str) -> tuple[str, str]:
    """The key range of ``prefix`` (``key >= a AND key < b``): unlike ``LIKE``, exact and
    case-sensitive, so namespace ``a_b`` never reads ``aXb``'s rows nor ``A_b``'s."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)

class SQLiteStore(TransactionalBackend, SharedStore):
    """State in one SQLite file; safe across threads, processes and ``fork()``."""

    name = "sqlite"
    blocking = True
    errors = (sqlite3.Error, OSError)

    def __init__(
        self,
        path: str | os.PathLike[str],
        budget_limits: dict[str, Decimal] | None = None,
        clock: Clock | None = None,
        namespace: str = "default",
        *,
        readonly: bool = False,
    ) -> None:
        super().__init__(budget_limits or {}, clock)
        text = os.fspath(path)  # "sqlite:////abs/path" leaves "//abs/path": the same file
        self.path = Path("/" + text.lstrip("/") if text.startswith("//") else text)
        self.url = f"sqlite:///{self.path}"
        self.namespace = namespace
        self.readonly = readonly
        self._local = threading.local()
        with _guard():
            self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and self._local.pid == pid:
            now = time.monotonic()
            if now - self._local.checked < _FILE_CHECK:
                return conn
            self._local.checked = now
            if self._same_file(self._local.file):
                return conn
            conn.close()  # replaced or deleted: the path is the truth, reopen it
        conn = self._open_readonly() if self.readonly else self._open()
        self._local.conn = conn
        self._local.pid = pid
        self._local.checked = time.monotonic()
        self._local.file = self._identity()
        return conn

    def _open(self) -> sqlite3.Connection:
        prepare_path(self.path)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(leases)")}
        if "scopes" not in columns:  # a file written before scopes existed
            conn.execute("ALTER TABLE leases ADD COLUMN scopes TEXT NOT NULL DEFAULT ''")
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        """The existing file, read only; tables an older file lacks read as empty."""
        if not self.path.is_file():
            raise FileNotFoundError(2, "no llm-governor state file", str(self.path))
        # Nobody has it open (no -wal file): read it as immutable, which creates no
        # -wal/-shm files; _identity() notices a writer and the reconnect reads normally.
        immutable = "" if os.path.exists(f"{self.path}-wal") else "&immutable=1"
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro{immutable}"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            conn.execute("PRAGMA temp_store=MEMORY")
            present = {name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            for stmt in _TABLES:
                if stmt.split()[5] not in present:  # CREATE TABLE IF NOT EXISTS <name>
                    conn.execute(stmt.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
            columns = {row[1] for row in conn.execute("PRAGMA table_info(leases)")}
            if "scopes" not in columns:  # a file written before scopes: a temp view shadows it
                conn.execute("CREATE TEMP VIEW leases AS SELECT *, '' AS scopes FROM main.leases")
        except BaseException:
            conn.close()
            raise
        return conn

    def _identity(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if not self.readonly:
            return st.st_dev, st.st_ino
        # a reader also follows writes made while nobody held the file open
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size,
                int(os.path.exists(f"{self.path}-wal")))

    def _same_file(self, opened: tuple[int, ...] | None) -> bool:
        return opened is not None and self._identity() == opened

    def ping(self) -> None:
        """A real write (a read when read-only), so a full disk or a read-only file fails
        here."""
        if self.readonly:
            self._connect().execute("SELECT count(*) FROM counters").fetchone()
            return
        with self.transaction() as tx:
            tx.incr("probe", 1)

    def add_counters(self, deltas: dict[str, int]) -> None:
        with self.transaction() as tx:
            for key, value in deltas.items():
                tx.incr(key, value)

    @contextmanager
    def transaction(self) -> Iterator[Txn]:
        with _guard():
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTxn(conn, self.namespace)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT (disk full) leaves it open
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[Txn]:
        """A deferred (shared-lock) transaction: status reads never queue behind admissions."""
        with _guard():
            conn = self._connect()
            conn.execute("BEGIN")
            try:
                yield _SQLiteTxn(conn, self.namespace, readonly=True)
            finally:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("COMMIT")

    def _kv(self, key: str) -> str | None:
        with _guard():
            row = self._connect().execute("SELECT value FROM kv WHERE key=?",
                                          (f"{self.namespace}|{key}",)).fetchone()
            return row[0] if row else None

    def emergency(self) -> bool:
        return self._kv("emergency") == "1"

    def set_emergency(self, enabled: bool) -> None:
        with self.transaction():
            self._connect().execute("INSERT OR REPLACE INTO kv VALUES (?, ?)",
                                    (f"{self.namespace}|emergency", "1" if enabled else "0"))

    def services(self) -> list[str]:
        with _guard():
            conn = self._connect()
            prefix = f"{self.namespace}|"
            names = {n.removeprefix(prefix) for (n,) in conn.execute(
                "SELECT name FROM services WHERE name >= ? AND name < ?", _span(prefix))}
            for kind in schema.CALL_KINDS:
                for (k,) in conn.execute("SELECT key FROM counters WHERE key >= ? AND key < ?",
                                         _span(f"{prefix}{kind}{schema.SEP}")):
                    names.add(schema.split(k.removeprefix(prefix))[1])
            return sorted(names)

    def counters(self) -> dict[str, Any]:
        with _guard():
            prefix = f"{self.namespace}|"
            rows = self._connect().execute(
                "SELECT key, value FROM counters WHERE key >= ? AND key < ?",
                _span(prefix)).fetchall()
            flat: list[tuple[str, int | Decimal]] = []
            for key, value in rows:
                k = key.removeprefix(prefix)
                flat.append((k, Decimal(value) if schema.is_money(k) else int(value)))
            return nest_counters(iter(flat))

    def publish_process(self, process_id: str, doc: dict[str, Any], ttl: float) -> None:
        with self.transaction():
            conn = self._connect()
            now = self._clock()
            conn.execute("DELETE FROM processes WHERE expires <= ?", (now,))
            conn.execute("INSERT OR REPLACE INTO processes VALUES (?, ?, ?)",
                         (f"{self.namespace}|{process_id}", now + ttl, json.dumps(doc)))

    def processes(self) -> dict[str, dict[str, Any]]:
        with _guard():
            prefix = f"{self.namespace}|"
            rows = self._connect().execute(
                "SELECT id, doc FROM processes WHERE id >= ? AND id < ? AND expires > ?",
                (*_span(prefix), self._clock())).fetchall()
            return {i.removeprefix(prefix): json.loads(d) for i, d in rows}

    def snapshot(self, scopes: bool = True) -> Snapshot:
        """Every table of the namespace in one deferred read transaction."""
        with self.read() as tx:
            now = self._clock()
            conn = self._connect()
            prefix = f"{self.namespace}|"
            states = {n.removeprefix(prefix): load_service(raw) for n, raw in conn.execute(
                "SELECT name, state FROM services WHERE name >= ? AND name < ?", _span(prefix))}
            flat: list[tuple[str, int | Decimal]] = []
            for key, value in conn.execute(
                    "SELECT key, value FROM counters WHERE key >= ? AND key < ?", _span(prefix)):
                k = key.removeprefix(prefix)
                flat.append((k, Decimal(value) if schema.is_money(k) else int(value)))
            live = [(le.service, le.amount, le.scopes) for le in tx.leases(now)]
            return Snapshot(
                now, tx.emergency(), states, call_names(states, (k for k, _ in flat)),
                {w: budget.roll(sp, w, now) for w, sp in tx.spends().items()},
                counters=nest_counters(iter(flat)), processes=self.processes(),
                scopes=tx.scopes_of(None) if scopes else {}, **lease_totals(live))

    def reset(self) -> None:
        with self.transaction():
            conn = self._connect()
            for table, col in (("services", "name"), ("kv", "key"), ("leases", "service"),
                               ("counters", "key"), ("processes", "id"), ("done", "id"),
                               ("scopes", "key")):
                conn.execute(f"DELETE FROM {table} WHERE {col} >= ? AND {col} < ?",
                             _span(f"{self.namespace}|"))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class SQLiteBackend(FailoverBackend):
    """State in one SQLite file: a :class:`SQLiteStore` whose failures follow ``on_error``.

    Raises ``OSError`` / ``sqlite3.Error`` at construction when the file
    cannot be created or opened at all (``create_backend`` then falls back
    to memory for the process's life).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        budget_limits: dict[str, Decimal] | None = None,
        clock: Clock | None = None,
        namespace: str = "default",
        *,
        on_error: str = "local",
        degraded_budget_share: float = 0.25,
        probe_interval: float = 1.0,
        readonly: bool = False,
    ) -> None:
        store = SQLiteStore(path, budget_limits, clock, namespace, readonly=readonly)
        super().__init__(store, budget_limits, on_error=on_error,
                         degraded_budget_share=degraded_budget_share,
                         probe_interval=probe_interval)
        self.path = store.path
        self.namespace = namespace
