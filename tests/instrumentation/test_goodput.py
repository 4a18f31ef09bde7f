"""Goodput: the unmodified openai SDK, governed, against a provider that enforces its limit.

The scenarios of ``benchmarks/_goodput.py`` (which documents the workload and
every measure): the fake provider counts 40 requests per 1-second sliding
window and sends accurate ``x-ratelimit-*`` headers; callers in a closed loop
ask for 4× what the binding limit allows, for 5 windows, through sync and
async clients, in one process or in three sharing one SQLite file (about 55 s
in all on two cores). Targets:
no error reaches user code, at most 2 provider 429s per 100 successes, and
the limit that binds served. The benchmark holds goodput to 97 % (measured
there: 97-98 %); a loaded machine's scheduling costs a point or two, so the
suite asks for 95 %: enough to catch any of the losses the policies were
fixed for (15 %, 8 %, 40 %). The p95 wait is held to a queue turn plus half
a window: a cold start that spent the provider's first window at once (every
caller then waits through a window's pause) misses it. Real time on a shared
machine: a run that misses a target is measured once more, and both runs are
reported.

(d), a foreign client taking half the account's quota, is held to the same
targets, of what the foreign client leaves, and the foreign client to most of
its own share.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from benchmarks._goodput import SCENARIOS, Client, Result, Scenario, run, scaled

pytestmark = pytest.mark.slow


def sized(key: str) -> Scenario:
    return scaled(SCENARIOS[key], rpm=40, window=1.0, duration=5.0)


def measured(sc: Scenario, client: Client, processes: int,
             meets: Callable[[Result], list[str]]) -> tuple[Result, list[str]]:
    """A run of ``sc``, measured again if it misses a target: (the run, what it missed)."""
    first = run(sc, client=client, processes=processes)
    missed = meets(first)
    if not missed:
        return first, []
    second = run(sc, client=client, processes=processes)
    again = meets(second)
    return second, [f"first run: {m}" for m in missed] + [f"second run: {m}" for m in again] \
        if again else []


def targets(sc: Scenario, goodput: float = 0.95, per_100: float = 2.0) -> Callable[
        [Result], list[str]]:
    def check(r: Result) -> list[str]:
        s = r.summary()
        missed = []
        if r.errors or r.calls.unfinished:
            missed.append(f"errors in user code {s['error_types']}, unfinished {s['unfinished']}")
        if r.per_100 > per_100:
            missed.append(f"{r.provider_429} provider 429s for {r.provider_200} successes")
        if r.goodput < goodput:
            missed.append(f"goodput {r.goodput:.1%} ({r.served} of {r.allowed:.0f} the "
                          f"{r.binds} allows)")
        # FIFO waits: a queue turn at the binding rate, and a cold start spread over the
        # first window (a burst would leave every caller a window's pause: ~1 s here)
        bound = sc.workers / sc.binding_rate + sc.window / 2
        if r.percentile(95) > bound:
            missed.append(f"p95 latency {r.percentile(95):.2f}s > {bound:.2f}s")
        return missed
    return check


@pytest.mark.parametrize(("key", "client"), [("a", "sync"), ("b", "async"), ("c", "sync")])
def test_the_governor_serves_the_limit_that_binds_without_429s(key: str, client: Client) -> None:
    """Each scenario with one client kind (sync and async share the call path; the
    benchmark runs both)."""
    """(a) configured below the provider: the configuration binds, no 429 at all; (b)
    configured 2× above it and (c) not configured at all: the provider's headers set the
    pace from its first answer."""
    sc = sized(key)
    r, missed = measured(sc, client, 1, targets(sc, per_100=0.0 if key == "a" else 2.0))
    assert not missed, (missed, r.summary())


def test_three_processes_on_one_sqlite_file_learn_the_limit_together() -> None:
    sc = sized("c")
    r, missed = measured(sc, "sync", 3, targets(sc))
    assert not missed, (missed, r.summary())


def test_a_foreign_client_on_the_same_account_keeps_its_share() -> None:
    """No error, at most 2 provider 429s per 100 and what the foreign client leaves,
    without starving it: the governor tells its own calls from the foreign client's in the
    provider's count and keeps to the rest of the window (policies/share.py). The foreign
    client meets a 429 when it sends a call before its own call of a window ago has
    left a full window (its retry is served): bare SDKs on the account drew one for
    each call it was served, the governor one for every 4-7 (BENCHMARKS.md)."""
    sc = sized("d")
    offered = sc.foreign_share * sc.provider_rate * sc.duration
    ours = targets(sc)

    def meets(r: Result) -> list[str]:
        missed = ours(r)
        if r.foreign_served < 0.9 * offered or r.foreign_429 > 0.3 * offered:
            missed.append(f"the foreign client served {r.foreign_served} of {offered:.0f}, "
                          f"with {r.foreign_429} 429s")
        return missed

    r, missed = measured(sc, "async", 1, meets)
    assert not missed, (missed, r.summary())
