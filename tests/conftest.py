"""Shared fixtures: an exact fake clock, backend factories, a fresh active governor."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import llm_governor
from llm_governor.api import set_governor
from llm_governor.backends import Backend, MemoryBackend
from llm_governor.backends.sqlite import SQLiteBackend
from llm_governor.governor import Governor

IN_CI = os.environ.get("CI", "").lower() == "true"

# Every HTTP client a test opens (the SDKs' own, through httpx or its fork httpx2) is
# kept alive until the test ends and closed then, inside the test's event loop, so no
# socket is left for the garbage collector to warn about (the suite runs clean under
# -W error::ResourceWarning). Clients opened outside a test are not kept.
_opened: list[Any] = []
_in_test = False


def _cached_by_a_library() -> bool:
    """A client a library keeps for the whole process (LangChain's ``@lru_cache``'d
    clients, made in ``langchain_*._client_utils``): closing it would break the
    library's next call."""
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return False
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith("langchain") and module.endswith("._client_utils"):
            return True
        frame = frame.f_back
    return False


def _track_http_clients() -> None:
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # httpx2 comes with the newest SDKs only
            continue
        for cls in (module.Client, module.AsyncClient):
            init = cls.__init__

            def tracked(self: Any, *args: Any, __init: Any = init, **kwargs: Any) -> None:
                __init(self, *args, **kwargs)
                if _in_test and not _cached_by_a_library():
                    _opened.append(self)

            cls.__init__ = tracked


_track_http_clients()


async def aclose_http_clients() -> None:
    """Close the HTTP clients the running test opened so far, in the running loop (a
    test that runs its SDK calls in a loop of its own calls it before that loop ends)."""
    opened, _opened[:] = list(_opened), []
    for client in opened:
        if client.is_closed:
            continue
        with contextlib.suppress(Exception):  # e.g. a client of a loop that is gone
            if hasattr(client, "aclose"):
                await client.aclose()
            else:
                client.close()


@pytest.fixture(autouse=True)
async def _close_http_clients() -> AsyncIterator[None]:
    global _in_test
    _in_test = True
    try:
        yield
    finally:
        _in_test = False
    await aclose_http_clients()


def require(condition: bool, reason: str) -> None:
    """Skip when a real part is missing; under CI=true, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


class FakeClock:
    """A clock tests move by hand: exact, instant."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BackendFactory = Callable[..., Backend]


def _memory(tmp: Path, budget_limits: dict[str, Decimal] | None = None,
            clock: Callable[[], float] | None = None) -> Backend:
    return MemoryBackend(budget_limits or {}, clock)


def _sqlite(tmp: Path, budget_limits: dict[str, Decimal] | None = None,
            clock: Callable[[], float] | None = None) -> Backend:
    return SQLiteBackend(tmp / "state" / "governor.db", budget_limits or {}, clock)


def _redis(tmp: Path, budget_limits: dict[str, Decimal] | None = None,
           clock: Callable[[], float] | None = None) -> Backend:
    from tests._redis_server import redis_backend  # skips (fails in CI) without redis-server

    # An injected clock replaces the server's TIME (a test-only argument of the
    # scripts), so the exact-clock contract cases run on Redis too.
    return redis_backend(tmp, budget_limits, clock=clock)


BACKEND_FACTORIES: dict[str, Callable[..., Backend]] = {"memory": _memory, "sqlite": _sqlite,
                                                        "redis": _redis}


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendFactory]:
    """A factory ``(budget_limits=None, clock=None) -> Backend`` for every backend kind."""
    made: list[Backend] = []

    def factory(budget_limits: dict[str, Decimal] | None = None,
                clock: Callable[[], float] | None = None) -> Backend:
        b = BACKEND_FACTORIES[request.param](tmp_path, budget_limits, clock)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


@pytest.fixture
def governor_factory(tmp_path: Path) -> Iterator[Callable[..., Governor]]:
    """Build a governor from a config mapping and make it the active one."""
    made: list[Governor] = []
    previous = set_governor(None)

    def factory(config: dict[str, Any] | None = None, **kw: Any) -> Governor:
        cfg = {"backend": "memory", **(config or {})}
        gov = Governor(llm_governor.load_config(cfg), **kw)
        set_governor(gov)
        made.append(gov)
        return gov

    yield factory
    llm_governor.stop_rate_limit_monitoring()
    set_governor(previous)
    for g in made:
        g.close()
