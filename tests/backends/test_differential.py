"""The Redis Lua scripts against the Python policies: random operation sequences on
MemoryBackend and RedisBackend, the same fake clock, identical results demanded.

Decisions (retry-after floats bit for bit, remaining money as Decimal),
service states, budgets, leases and counters must all agree. The Redis side
takes its time from the scripts' test-only clock override.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llm_governor.backends import MemoryBackend
from llm_governor.backends.base import Backend, CallRecord
from llm_governor.policies import adaptive, share
from llm_governor.policies.adaptive import ProviderLimits
from llm_governor.policies.admission import AdmitRequest, Limits, Observation
from llm_governor.policies.budget import WINDOWS
from llm_governor.policies.scopes import ScopeRequest
from tests._redis_server import RedisServer, shared_server
from tests.conftest import FakeClock

SERVICES = ("openai", "anthropic")


@pytest.fixture(scope="module")
def server() -> RedisServer:
    return shared_server()


def money(max_nanos: int) -> st.SearchStrategy[Decimal]:
    """USD amounts with at most 9 decimal places, round ones more likely."""
    return st.one_of(
        st.sampled_from([Decimal(0), Decimal("0.01"), Decimal("0.03"), Decimal("0.1")]),
        st.integers(0, max_nanos).map(lambda n: Decimal(n).scaleb(-9)),
    )


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    refill = draw(st.sampled_from([0.2, 1.0, 3.0, 500.0]))
    floor, ceiling = adaptive.bounds(refill, draw(st.sampled_from([0.001, 0.1, 0.5])),
                                     draw(st.sampled_from([2.0, 5.0, 30.0])))
    cpm = draw(st.sampled_from([Decimal("0.05"), Decimal("0.3"), Decimal("2.5")]))
    return Limits(
        capacity=float(draw(st.sampled_from([1, 2, 3, 5, 10, 50]))), refill_rate=refill,
        rate_floor=floor, rate_ceiling=ceiling,
        backoff_multiplier=draw(st.sampled_from([1.5, 2.0])),
        tokens_per_minute=draw(st.sampled_from([0.0, 500.0, 30000.0])),
        cost_per_minute=cpm, cost_per_minute_f=float(cpm),
        max_concurrency=draw(st.integers(0, 3)), failure_threshold=draw(st.integers(1, 3)),
        success_threshold=draw(st.integers(1, 3)),
        recovery_timeout=draw(st.sampled_from([0.5, 5.0, 60.0])),
    )


# hostile header values too: huge resets and retry-afters, a vanishing limit
opt_float = st.one_of(st.none(), st.floats(-5, 200, allow_nan=False),
                      st.sampled_from([0.0, 1.0, 0.5, 1e9, 999999999.0, 1e-308, 1e300]))
providers = st.one_of(st.none(), st.builds(
    ProviderLimits, opt_float, opt_float, opt_float, opt_float, opt_float, opt_float, opt_float))
# ages: how long ago the attempt was sent (credit for the provider's refill since, which
# decrease a 429 belongs to, when a cold start's window began), hostile ones too; sent
# counts: the attempt's admission, within the scope's count or not (then calls in flight)
observations = st.builds(
    Observation, st.sampled_from(["success", "failure", "throttled", "neutral"]), providers,
    st.sampled_from([0.0, 0.0, 0.002, 0.05, 0.3, 5.0, 1e9, -1.0, float("inf"), float("nan")]),
    st.sampled_from([0, 0, 1, 2, 3, 7, 10**6]))

SCOPE_KEYS = ("tenant=acme", "tenant=beta", "user=u-1")
scope_budgets = st.dictionaries(
    st.sampled_from(WINDOWS),
    st.one_of(st.sampled_from([Decimal("0.05"), Decimal("0.2")]),
              st.integers(1, 300_000_000).map(lambda n: Decimal(n).scaleb(-9))), max_size=3)
scope_requests = st.lists(
    st.builds(ScopeRequest, st.sampled_from(SCOPE_KEYS), scope_budgets,
              st.sampled_from([0.0, 2.0, 2.0, 30.0]), st.sampled_from([0.0, 500.0]),
              st.sampled_from([False, False, True])),
    max_size=3, unique_by=lambda sr: sr.key).map(tuple)
# what a settlement charges to each scope: its budget windows (or "day" only)
scope_charges = st.lists(
    st.tuples(st.sampled_from(SCOPE_KEYS),
              st.lists(st.sampled_from(WINDOWS), min_size=1, max_size=2, unique=True).map(tuple)),
    max_size=3, unique_by=lambda c: c[0]).map(tuple)

ops = st.one_of(
    st.tuples(st.just("admit"), st.sampled_from(SERVICES), st.integers(0, 5),
              st.sampled_from([0.0, 1.0, 150.0, 800.0]), money(150_000_000), st.booleans(),
              st.sampled_from([True, True, False]), st.booleans(), st.sampled_from([0.5, 30.0]),
              st.integers(1, 6), scope_requests, st.sampled_from([False, False, True])),
    st.tuples(st.just("settle"), st.integers(0, 9), money(150_000_000),
              st.one_of(st.none(), observations), st.sampled_from([None, "job-a"]),
              st.integers(1, 3), st.sampled_from(["ok", "error"]), scope_charges),
    st.tuples(st.just("observe"), st.sampled_from(SERVICES), observations, st.integers(1, 12)),
    st.tuples(st.just("emergency"), st.booleans()),
    st.tuples(st.just("reset_budget"), st.sampled_from([None, ["minute"], ["day", "hour"]])),
    st.tuples(st.just("advance"),
              st.sampled_from([0.0, 1e-6, 0.05, 0.3, 1.0, 2.5, 7.0, 59.999, 61.0, 3600.5])),
    # the wall clock stepped back (NTP, a restored VM) or far forward
    st.tuples(st.just("advance"), st.sampled_from([-1.0, -3600.5, -86400.0, 86400.0])),
    # land exactly on a boundary: the last retry-after, or the last lease's expiry
    st.tuples(st.just("wait")),
    st.tuples(st.just("expire")),
)

budgets = st.dictionaries(
    st.sampled_from(WINDOWS),
    st.one_of(st.sampled_from([Decimal("0.05"), Decimal("0.1"), Decimal("0.25")]),
              st.integers(1, 600_000_000).map(lambda n: Decimal(n).scaleb(-9))), max_size=3)


@pytest.fixture
def pair(server: RedisServer, tmp_path: Path) -> Iterator[Any]:
    from llm_governor.backends.redis import RedisBackend

    made: list[Backend] = []
    n = itertools.count()

    def make(budget: dict[str, Decimal], clock: FakeClock) -> tuple[Backend, RedisBackend]:
        mem = MemoryBackend(budget, clock)
        red = RedisBackend(server.url, budget, namespace=f"diff-{tmp_path.name}-{next(n)}",
                           clock=clock)
        made.extend((mem, red))
        return mem, red

    yield make
    for b in made:
        b.reset()
        b.close()


def _state(b: Backend) -> tuple[Any, ...]:
    return (tuple(b.service_state(s) for s in SERVICES), b.budget_status(),
            tuple(b.in_flight(s) for s in SERVICES), b.counters(), b.emergency(),
            b.scope_status())


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(budget=budgets, lim=limits(), emergency_lim=limits(),
       start=st.one_of(st.floats(1_800_000_000.0, 1_800_086_400.0),
                       # just before a calendar month ends (Dec → Jan, Feb → Mar of 2028)
                       st.sampled_from([1798761600.0 - 30, 1835481600.0 - 0.5,
                                        1835481600.0 - 3600.25])),
       steps=st.lists(ops, min_size=10, max_size=60))
def test_redis_scripts_decide_exactly_like_the_python_policies(
    pair: Any, budget: dict[str, Decimal], lim: Limits,
    emergency_lim: Limits, start: float, steps: list[tuple[Any, ...]],
) -> None:
    clock = FakeClock(start)
    mem, red = pair(budget, clock)
    leases: list[str] = []
    retry_after, expiry = 0.0, 0.0
    for i, op in enumerate(steps):
        kind = op[0]
        if kind == "admit":
            _, service, prio, tokens, cost, reserve, use_lease, refuse, ttl, repeat, scopes, \
                observing = op
            req = AdmitRequest(service, prio, tokens, cost, lim, emergency_lim,
                               reserve=reserve, refuse_in_emergency=refuse, scopes=scopes,
                               observe=observing)
            for k in range(repeat):
                lease = f"lease-{i}-{k}" if use_lease and reserve else None
                got = [b.admit(req, lease, ttl) for b in (mem, red)]
                assert got[0] == got[1], f"step {i}.{k}: {op}"
                event(got[0].outcome + (" by a scope" if got[0].scope else ""))
                retry_after = got[0].retry_after or retry_after
                if got[0].admitted and lease:
                    leases.append(lease)
                    expiry = clock.now + ttl
        elif kind == "settle":
            _, pick, cost, obs, job, attempts, status, charges = op
            lease = leases.pop(pick % len(leases)) if leases and pick < 8 else None
            rec = CallRecord(SERVICES[pick % 2], "model-x", job, cost, status, None, attempts,
                             scopes=charges)
            charged = [b.settle(lease, lim, obs, rec) for b in (mem, red)]
            assert charged[0] == charged[1], f"step {i}: {op}"
        elif kind == "observe":
            for _ in range(op[3]):
                for b in (mem, red):
                    b.observe(op[1], lim, op[2])
        elif kind == "emergency":
            for b in (mem, red):
                b.set_emergency(op[1])
        elif kind == "reset_budget":
            forgotten = [b.reset_budget(op[1]) for b in (mem, red)]
            assert forgotten[0] == forgotten[1], f"step {i}: {op}"
        elif kind == "advance":
            clock.advance(op[1])
        elif kind == "wait":
            clock.advance(retry_after)
        else:
            clock.now = max(clock.now, expiry)
        assert _state(mem) == _state(red), f"after step {i}: {op}"
    assert not red.degraded


# A busy scope against a provider others share: admissions, answers of a window's
# counts with sane headers (the snapshots of share.py, its estimate of others' calls, the
# wait for our next own call to expire) and short steps of time, Python against Lua.
shared_ops = st.one_of(
    st.tuples(st.just("admit"), st.integers(1, 4)),
    st.tuples(st.just("observe"), st.sampled_from(["success", "success", "throttled"]),
              st.integers(0, 40), st.sampled_from([0.4, 0.95, 1.0, 2.0]),
              st.sampled_from([0.003, 0.05, 0.1, 0.3, 1.5]), st.integers(1, 60)),
    st.tuples(st.just("advance"), st.sampled_from([0.01, 0.05, 0.125, 0.3, 1.1, 2.5, 9.0])),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lim=limits(), start=st.floats(1_800_000_000.0, 1_800_086_400.0),
       steps=st.lists(shared_ops, min_size=20, max_size=120))
def test_redis_scripts_tell_others_calls_like_the_python_policies(
    pair: Any, lim: Limits, start: float, steps: list[tuple[Any, ...]],
) -> None:
    clock = FakeClock(start)
    mem, red = pair({}, clock)
    req = AdmitRequest("openai", 0, 0.0, Decimal(0), lim, lim, reserve=False)
    for i, op in enumerate(steps):
        if op[0] == "admit":
            for k in range(op[1]):
                got = [b.admit(req, None, 30.0) for b in (mem, red)]
                assert got[0] == got[1], f"step {i}.{k}: {op}"
        elif op[0] == "observe":
            _, outcome, remaining, reset, age, sent = op
            obs = Observation(outcome, ProviderLimits(40.0, float(remaining), reset,
                                                      retry_after=0.05 if remaining == 0
                                                      else None), age, sent)
            for b in (mem, red):
                b.observe("openai", lim, obs)
            state = mem.service_state("openai")
            event("others in force" if adaptive.others_in_force(state.adaptive, clock.now)
                  else "no others")
            event(f"{state.sends.count(';') + 1} snapshots")
        else:
            clock.advance(op[1])
        assert _state(mem) == _state(red), f"after step {i}: {op}"
    assert not red.degraded


@pytest.mark.parametrize("theirs", [10.0, 20.0])
def test_redis_scripts_share_an_account_like_the_python_policies(pair: Any,
                                                                 theirs: float) -> None:
    """The scope against a sliding-window provider a foreign client shares (the goodput
    scenario d, in virtual time: tests/policies/test_admission.py), every decision and
    state through MemoryBackend and the Lua scripts alike: the others' count, the exact
    places of our calls, a refused attempt taken out, the scope's own window."""
    from tests.policies.test_admission import EXACT, NOW, SlidingWindow

    clock = FakeClock(NOW)
    mem, red = pair({}, clock)
    provider = SlidingWindow()
    req = AdmitRequest("openai", 0, 0.0, Decimal(0), EXACT, EXACT, reserve=False)
    foreign = [NOW - 1.0 + k / theirs for k in range(int(3.0 * theirs))]
    answers: list[tuple[float, int, Observation]] = []
    seen: set[str] = set()
    for tick in range(2000):
        clock.now = NOW + tick * 0.001
        answers.sort(key=lambda a: a[:2])
        while answers and answers[0][0] <= clock.now:
            obs = answers.pop(0)[2]
            for b in (mem, red):
                b.observe("openai", EXACT, obs)
            state = mem.service_state("openai")
            if adaptive.others_in_force(state.adaptive, clock.now):
                seen.add("others in force")
            if state.sends.count(";") > 2 * share.STEPS + 2:
                seen.add("calls placed exactly")
        while foreign and foreign[0] <= clock.now:
            ok, p = provider.call(foreign.pop(0))
            if not ok:
                foreign.insert(0, clock.now + (p.retry_after or 0.0))
        while True:
            got = [b.admit(req, None, 30.0) for b in (mem, red)]
            assert got[0] == got[1], f"at {tick} ms"
            if not got[0].admitted:
                seen.add(f"waits for the {got[0].bound}")
                break
            ok, p = provider.call(clock.now)
            age = 0.1 if ok else 0.002
            if not ok:
                seen.add("refused")
            answers.append((clock.now + age, tick * 100 + len(answers), Observation(
                "success" if ok else "throttled", p, age, got[0].sent)))
        assert _state(mem) == _state(red), f"at {tick} ms"
    assert {"others in force", "calls placed exactly", "waits for the provider",
            "waits for the requests"} <= seen, seen
