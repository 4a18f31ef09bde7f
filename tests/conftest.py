"""Shared fixtures: an exact fake clock, backend factories, a fresh active governor."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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
