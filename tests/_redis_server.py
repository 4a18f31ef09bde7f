"""A real ``redis-server`` on a free loopback port that tests can kill and restart.

No persistence (``--save "" --appendonly no``): a restart is an empty server,
like a lost cache node. The server dies with the test process (``PDEATHSIG``)
even if pytest is killed.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis

from llm_governor.backends import Backend

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RedisServer:
    """One ``redis-server`` process; ``kill()`` is ``kill -9``, ``start()`` reuses the port."""

    def __init__(self, password: str | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.password = password
        self._dir = tempfile.mkdtemp(prefix="llmg-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis[str]:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> RedisServer:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self._dir, "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client() as c:
                    c.ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """``kill -9``: no goodbye to clients."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


_shared: RedisServer | None = None


def shared_server() -> RedisServer:
    """One server for the whole test session (each backend gets its own namespace)."""
    from tests.conftest import require

    global _shared
    require(REDIS_SERVER is not None, "redis-server is not installed")
    if _shared is None:
        _shared = RedisServer().start()
        atexit.register(_shared.stop)
    return _shared


def redis_backend(tmp: Path, budget_limits: dict[str, Decimal] | None = None,
                  **kw: Any) -> Backend:
    """The contract-suite factory: server clock, one namespace per ``tmp`` (i.e. per test).

    Backends made for the same test share state, like SQLite files in ``tmp``.
    """
    from llm_governor.backends.redis import RedisBackend

    namespace = "t-" + hashlib.sha1(str(tmp).encode()).hexdigest()[:16]
    return RedisBackend(shared_server().url, budget_limits or {}, namespace=namespace, **kw)
