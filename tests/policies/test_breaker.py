"""Circuit breaker: the state machine, example by example and as a property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_governor.policies import breaker
from llm_governor.policies.breaker import BreakerState


def test_opens_after_threshold_consecutive_failures_only() -> None:
    s = BreakerState()
    for _ in range(4):
        s = breaker.record(s, False, 0.0, 5, 3)
    s = breaker.record(s, True, 0.0, 5, 3)
    assert s.state == "closed" and s.failures == 0
    for _ in range(5):
        s = breaker.record(s, False, 1.0, 5, 3)
    assert s.state == "open" and s.opened_at == 1.0


def test_open_refuses_until_recovery_then_half_open_then_closes() -> None:
    s = BreakerState("open", 5, 0, 100.0)
    allowed, s2, wait = breaker.allow(s, 110.0, 30.0)
    assert not allowed and wait == 20.0 and s2 is s
    allowed, s, _ = breaker.allow(s, 130.0, 30.0)
    assert allowed and s.state == "half_open"
    s = breaker.record(s, True, 131.0, 5, 2)
    assert s.state == "half_open"
    s = breaker.record(s, True, 132.0, 5, 2)
    assert s.state == "closed"


def test_half_open_admits_success_threshold_probes_at_a_time() -> None:
    s = BreakerState("open", 5, 0, 0.0)
    admitted = []
    for _ in range(30):
        allowed, s, wait = breaker.allow(s, 31.0, 30.0, 3)
        admitted.append(allowed)
    assert admitted.count(True) == 3 and s.probes == 3
    assert wait == pytest.approx(30.0)  # a probe that never reports stops counting then
    s = breaker.record(s, True, 32.0, 5, 3)  # one probe came back: room for one more
    assert breaker.allow(s, 32.0, 30.0, 3)[0]
    assert breaker.allow(s, 62.0, 30.0, 3)[0]  # stale probes are forgotten


def test_any_half_open_failure_reopens() -> None:
    s = BreakerState("half_open", 0, 2, 0.0)
    s = breaker.record(s, False, 50.0, 5, 3)
    assert s.state == "open" and s.opened_at == 50.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ok", "fail", "allow"]), st.floats(0, 40)),
                max_size=100),
       st.integers(1, 6), st.integers(1, 4))
def test_transitions_follow_the_state_machine(
    ops: list[tuple[str, float]], threshold: int, successes: int
) -> None:
    s, now, recovery = BreakerState(), 0.0, 30.0
    for op, gap in ops:
        now += gap
        before = s
        if op == "allow":
            allowed, s, _ = breaker.allow(s, now, recovery, successes)
            if before.state == "open":
                assert allowed == (now >= before.opened_at + recovery)
                assert s.state == ("half_open" if allowed else "open")
            elif before.state == "closed":
                assert allowed and s == before
            else:  # half-open: at most `successes` probes at a time, stale ones forgotten
                fresh = before.probes if now - before.probe_at < recovery else 0
                assert allowed == (fresh < successes)
                assert s.probes == (fresh + 1 if allowed else before.probes)
            continue
        s = breaker.record(s, op == "ok", now, threshold, successes)
        legal = {
            ("closed", "closed"), ("closed", "open"), ("open", "open"),
            ("half_open", "half_open"), ("half_open", "closed"), ("half_open", "open"),
        }
        assert (before.state, s.state) in legal
        if before.state == "closed" and s.state == "open":
            assert op == "fail" and before.failures + 1 >= threshold
        if before.state == "half_open" and s.state == "open":
            assert op == "fail"
        if before.state == "half_open" and s.state == "closed":
            assert op == "ok" and before.successes + 1 >= successes
