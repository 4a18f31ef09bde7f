"""Fault injection: the unmodified SDKs against the fake provider's hostile modes.

Every scenario ends with the same audit (:func:`audit`): what the governor
recorded against what the provider billed (never less; equal when usage was
known), what the provider billed against the budget, no lease and nothing
reserved left behind, and (:func:`check_errors`) no governor, ``sqlite3`` or
``redis`` exception reaching user code unless it is also the SDK's own error.

``govern(kind)`` instruments on the memory, SQLite or Redis backend (the real
``redis-server`` of ``tests/_redis_server.py``; missing, it skips, and fails
under ``CI=true``). Limits are loose and the breaker and retry budget out of
the way: what these tests watch is money and state. ``lease_ttl`` is 5 s, so
the heartbeat renews leases (every 1.7 s) inside the longer scenarios too.

``pytest -v tests/faults`` ends with a table of every scenario's books.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import openai
import pytest
import redis
from google.genai import errors as genai_errors

import llm_governor
from llm_governor import GovernorError
from llm_governor.api import set_governor
from llm_governor.backends import Backend, CallRecord
from llm_governor.governor import Governor
from llm_governor.testing import FakeProvider
from tests.conftest import aclose_http_clients

T = TypeVar("T")
BACKENDS = ("memory", "sqlite", "redis")
SERVICES = ("openai", "anthropic", "gemini")
GPT = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-latest"
GEMINI = "gemini-2.0-flash"
MESSAGES: Any = [{"role": "user", "content": "Tell me about budgets"}]
# Limits loose enough that only what a test sets up throttles it; the breaker and the
# retry budget never trip (they are not what these tests watch).
LOOSE: dict[str, Any] = {
    "max_tokens": 1000, "refill_rate": 1000.0, "burst_capacity": 0, "min_interval": 0.001,
    "max_cost_per_minute": "1000", "max_queue_size": 10_000, "failure_threshold": 100_000,
    "request_timeout": 30,
}
RETRY: dict[str, Any] = {"max_wait": 0.05, "budget_ratio": 10, "budget_min_per_minute": 10_000}
SDK_ERRORS: tuple[type[BaseException], ...] = (openai.APIError, anthropic.APIError,
                                               genai_errors.APIError)


# ----------------------------------------------------------------- fixtures
@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """A fresh fake provider per test: hung connections never outlive their test."""
    with FakeProvider() as provider:
        yield provider


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The backend kind a test runs on (memory, sqlite, redis)."""
    return str(request.param)


def redis_url() -> str:
    from tests._redis_server import shared_server  # skips (fails in CI) without redis-server

    return shared_server().url


def namespace_for(tmp_path: Path) -> str:
    return "f-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]


def backend_config(kind: str, tmp_path: Path) -> dict[str, Any]:
    """The ``backend`` (and ``namespace``) keys of a config for ``kind``, private to the test."""
    if kind == "memory":
        return {"backend": "memory"}
    if kind == "sqlite":
        return {"backend": f"sqlite:///{tmp_path / 'state' / 'governor.db'}"}
    if kind == "redis":
        return {"backend": redis_url(), "namespace": namespace_for(tmp_path)}
    raise ValueError(kind)


def config(kind: str, tmp_path: Path, budget: Decimal | str | None = None,
           services: dict[str, dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
    """A governor config on ``kind`` with loose limits (``services`` entries override)."""
    cfg: dict[str, Any] = {**backend_config(kind, tmp_path), "retry": dict(RETRY),
                           "lease_ttl": 5, **top}
    if budget is not None:
        cfg["budget"] = {"per_day": str(budget)}
    svc = {name: dict(LOOSE) for name in SERVICES}
    for name, override in (services or {}).items():
        svc[name] = {**svc.get(name, LOOSE), **override}
    cfg["services"] = svc
    return cfg


def make_backend(kind: str, tmp_path: Path, budget_limits: dict[str, Decimal],
                 clock: Callable[[], float] | None = None) -> Backend:
    """A ready backend of ``kind`` (private to the test), e.g. on a fake clock."""
    if kind == "memory":
        from llm_governor.backends import MemoryBackend

        return MemoryBackend(budget_limits, clock)
    if kind == "sqlite":
        from llm_governor.backends.sqlite import SQLiteBackend

        return SQLiteBackend(tmp_path / "state" / "governor.db", budget_limits, clock)
    from llm_governor.backends.redis import RedisBackend

    return RedisBackend(redis_url(), budget_limits, namespace=namespace_for(tmp_path),
                        clock=clock)


Govern = Callable[..., Governor]


@pytest.fixture
def govern(tmp_path: Path) -> Iterator[Govern]:
    """``govern(kind="memory", budget=None, services=None, backend=None, meter_provider=None,
    **top)``: instrument.

    ``backend`` (a ready :class:`Backend`) replaces the one ``kind`` names.
    Undone after the test: uninstrumented, the previous governor restored.
    """
    previous = set_governor(None)
    made: list[Governor] = []

    def factory(kind: str = "memory", budget: Decimal | str | None = None,
                services: dict[str, dict[str, Any]] | None = None,
                backend: Backend | None = None, meter_provider: Any = None,
                **top: Any) -> Governor:
        cfg = config(kind, tmp_path, budget, services, **top)
        gov = llm_governor.instrument(config=cfg, backend=backend,
                                      meter_provider=meter_provider)
        made.append(gov)
        return gov

    yield factory
    llm_governor.uninstrument()
    set_governor(previous)
    for gov in made:
        gov.close()


# ----------------------------------------------------------------- the audit
@dataclass(frozen=True)
class Books:
    """The money of one scenario: provider's bill, governor's record, the budget."""

    billed: Decimal
    recorded: Decimal
    budget: Decimal | None

    @property
    def overshoot(self) -> Decimal:
        if self.budget is None:
            return Decimal(0)
        return max(Decimal(0), self.billed - self.budget)


REPORT: list[tuple[str, Books]] = []
_current: list[str] = [""]


@pytest.fixture(autouse=True)
def _scenario_name(request: pytest.FixtureRequest) -> None:
    _current[0] = request.node.nodeid.split("::", 1)[-1]


def report(books: Books) -> Books:
    """Keep ``books`` for the summary ``-v`` prints."""
    REPORT.append((_current[0], books))
    return books


def spent(gov: Governor) -> Decimal:
    """Everything the governor charged (calls and lost attempts), all services and models."""
    costs = gov.backend.counters().get("cost", {})
    return sum((c for models in costs.values() for c in models.values()), Decimal(0))


def calls(gov: Governor, service: str | None = None) -> int:
    """Settled calls (any status) the governor counted."""
    counted = gov.backend.counters().get("calls", {})
    return sum(n for svc, models in counted.items() if service in (None, svc)
               for statuses in models.values() for n in statuses.values())


def overruns(gov: Governor) -> Decimal:
    found = gov.backend.counters().get("overrun", {})
    return sum((c for models in found.values() for c in models.values()), Decimal(0))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def flying(gov: Governor, service: str) -> int:
    """Calls of ``service`` in flight on the backend, over all its provider accounts."""
    return sum(gov.backend.in_flight(key) for key in gov.scopes(service))


def idle(gov: Governor) -> bool:
    """No lease, nothing reserved, nothing in flight: on the backend and in this process."""
    _, reserved, leases = gov.backend.budget_status()
    local = gov.local_status()["in_flight"]
    return reserved == 0 and leases == 0 and not any(local.values()) \
        and all(flying(gov, s) == 0 for s in SERVICES)


def audit(gov: Governor, fake: FakeProvider, budget: Decimal | str | None = None, *,
          exact: bool = False, overshoot: Decimal = Decimal(0), settle_wait: float = 10.0
          ) -> Books:
    """The books after the dust settles (settlements on the reaper thread included).

    ``exact``: usage was known for every billed request, so recorded == billed.
    ``overshoot``: how far the provider's bill may pass the budget (one overrun call).
    """
    assert wait_for(lambda: idle(gov), settle_wait), (
        f"leases or reservations left: {gov.backend.budget_status()}, "
        f"local in flight {gov.local_status()['in_flight']}")
    limit = None if budget is None else Decimal(budget)
    books = report(Books(fake.ledger.total_billed(), spent(gov), limit))
    assert books.recorded >= books.billed, books
    if exact:
        assert books.recorded == books.billed, books
    if limit is not None:
        assert books.billed <= limit + overshoot, books
        day = gov.budget_report()["day"]
        assert day["spent"] == books.recorded and day["reserved"] == 0, day
    return books


def check_errors(errors: list[BaseException]) -> None:
    """Only the SDK's own errors reached user code (governor refusals are SDK errors too)."""
    for exc in errors:
        assert not isinstance(exc, (sqlite3.Error, redis.RedisError)), repr(exc)
        if isinstance(exc, GovernorError) or type(exc).__module__.startswith("llm_governor"):
            assert isinstance(exc, SDK_ERRORS), f"{type(exc).__mro__} reached user code"


class Spy:
    """Watches the backend: each reservation admitted and each settlement's record."""

    def __init__(self, gov: Governor) -> None:
        self.reserved: list[Decimal] = []
        self.records: list[CallRecord] = []
        backend = gov.backend
        admit, settle = backend.admit, backend.settle
        lock = threading.Lock()

        def spy_admit(req: Any, lease_id: str | None, ttl: float) -> Any:
            decision = admit(req, lease_id, ttl)
            if decision.admitted and lease_id is not None:
                with lock:
                    self.reserved.append(req.cost)
            return decision

        def spy_settle(lease_id: str | None, limits: Any, obs: Any, record: CallRecord) -> None:
            with lock:
                self.records.append(record)
            settle(lease_id, limits, obs, record)

        backend.admit = spy_admit  # type: ignore[method-assign]
        backend.settle = spy_settle  # type: ignore[method-assign]

    @property
    def charges(self) -> list[Decimal]:
        return [r.cost for r in self.records]

    @property
    def lost(self) -> list[CallRecord]:
        """Lost attempts charged before a retry."""
        return [r for r in self.records if not r.final]


class Clients:
    """The sync or async openai and anthropic clients against the fake."""

    def __init__(self, fake: FakeProvider, is_async: bool, **kw: Any) -> None:
        self.is_async = is_async
        oa = openai.AsyncOpenAI if is_async else openai.OpenAI
        an = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        self.openai: Any = oa(api_key="sk-faults-openai", base_url=fake.openai_base_url, **kw)
        self.anthropic: Any = an(api_key="sk-faults-anthropic",
                                 base_url=fake.anthropic_base_url, **kw)


async def maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable (one test body for sync and async clients)."""
    return await value if inspect.isawaitable(value) else value


async def collect(iterable: Any) -> list[Any]:
    if hasattr(iterable, "__aiter__"):
        return [item async for item in iterable]
    return list(iterable)


@contextlib.asynccontextmanager
async def entered(manager: Any) -> AsyncIterator[Any]:
    if hasattr(manager, "__aenter__"):
        async with manager as value:
            yield value
    else:
        with manager as value:
            yield value


# ----------------------------------------------------------------- running calls
def outcome(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | Exception:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return exc


async def aoutcome(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
                   ) -> T | Exception:
    try:
        return await fn(*args, **kwargs)
    except Exception as exc:
        return exc


def in_threads(n: int, fn: Callable[[int], T]) -> list[T | Exception]:
    """``fn(i)`` for i in range(n), all at once in threads; exceptions returned, not raised."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: outcome(fn, i), range(n)))


async def in_tasks(n: int, fn: Callable[[int], Awaitable[T]]) -> list[T | Exception]:
    return list(await asyncio.gather(*(aoutcome(fn, i) for i in range(n))))


def run_calls(is_async: bool, n: int, sync_fn: Callable[[int], Any],
              async_fn: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``n`` concurrent calls, threads or asyncio tasks (a fresh event loop, which closes
    the test's async clients before it ends)."""
    if is_async:
        async def calls_then_close() -> list[Any]:
            try:
                return await in_tasks(n, async_fn)
            finally:
                await aclose_http_clients()

        return asyncio.run(calls_then_close())
    return in_threads(n, sync_fn)


def errors_of(results: list[Any]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """With ``-v``: the books of every fault scenario (billed, recorded, budget, overshoot)."""
    if not REPORT or terminalreporter.config.option.verbose < 1:
        return
    tr = terminalreporter
    tr.section("fault scenarios: provider billed vs governor recorded")
    tr.write_line(f"{'scenario':<78} {'billed':>12} {'recorded':>12} {'budget':>8} "
                  f"{'overshoot':>10}")
    for name, b in REPORT:
        short = name if len(name) <= 78 else f"{name[:38]}…{name[-39:]}"
        tr.write_line(f"{short:<78} {b.billed:>12.7f} {b.recorded:>12.7f} "
                      f"{'-' if b.budget is None else f'{b.budget:.4f}':>8} "
                      f"{b.overshoot:>10.7f}")

