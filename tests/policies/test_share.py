"""The scope's own admissions over the provider's window (policies/share.py)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_governor.policies import share

NOW = 1_800_000_000.0


def test_snapshots_survive_their_text_and_nonsense_reads_as_none() -> None:
    points = ((NOW - 0.3, 4), (NOW - 0.125, 9), (NOW, 12))
    assert share.parse(share.dump(points)) == points
    assert share.dump(()) == share.EMPTY and share.parse(share.EMPTY) == ()
    for bad in ("", "1:2;x", "nan:3", "inf:1", "1.5:2.5", "1:2:3"):
        assert share.parse(bad) == (), bad


def test_a_new_scope_counts_every_call_since_the_report_as_ours_and_none_freed() -> None:
    """Nothing known of the counter's past: its last value (0) until the provider counted
    the reporting call, then linear to now."""
    points = share.mark((), NOW, 6, NOW - 0.1, 1.0)
    assert points == ((NOW - 0.1, 0), (NOW, 6))
    assert share.sent_at(points, NOW - 1.1, NOW, 6) == 0.0  # a window before the count
    assert share.sent_at(points, NOW - 0.05, NOW, 6) == 3.0
    assert share.sent_at(points, NOW + 1.0, NOW, 6) == 6.0


def test_snapshots_are_taken_a_step_apart_and_dropped_when_no_query_needs_them() -> None:
    points = share.mark((), NOW, 1, NOW - 0.1, 1.0)
    half = 0.5 / share.STEPS
    assert share.mark(points, NOW + half, 3, NOW, 1.0) is points  # under a step: kept as is
    now, sent = NOW, 1
    for _ in range(40):  # 5 windows of steady reports, 2 calls per step
        now, sent = now + 1.0 / share.STEPS, sent + 2
        points = share.mark(points, now, sent, now - 0.1, 1.0)
    assert len(points) <= share.KEEP
    assert points[0][0] <= now - 0.1 - 1.0 < points[1][0]  # the oldest query stays covered
    # at a steady pace the counter a window back is exact
    assert math.isclose(share.sent_at(points, now - 1.0, now, sent), sent - 2 * share.STEPS)


def test_an_idle_scope_or_a_clock_stepped_back_starts_over_from_its_last_count() -> None:
    points = ((NOW - 0.2, 10), (NOW, 12))
    for now in (NOW + 5.0, NOW - 60.0):  # idle for two windows; the clock stepped back
        fresh = share.mark(points, now, 15, now - 0.1, 1.0)
        assert fresh == ((now - 0.1, 12), (now, 15))
    assert share.mark(points, NOW + 0.5, 15, NOW + 0.4, math.inf) is points  # no window


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.001, 0.5), st.integers(0, 5)), min_size=1,
                      max_size=30),
       fraction=st.floats(0.0, 1.0))
def test_reached_is_the_inverse_of_sent_at(steps: list[tuple[float, int]],
                                            fraction: float) -> None:
    points: share.Points = ()
    now, sent = NOW, 0
    for dt, n in steps:
        now, sent = now + dt, sent + n
        points = share.mark(points, now, sent, now - 0.05, 1.0)
    low = points[0][1] if points else sent
    if sent <= low:
        return
    count = low + max(fraction * (sent - low), 1e-6)
    when = share.reached(points, count, now, sent)
    # instants near 1.8e9 s resolve to 2.4e-7 s: at up to 5000 calls/s, 1e-3 of a call
    assert math.isclose(share.sent_at(points, when, now, sent), count, abs_tol=1e-3)
    assert share.reached(points, low, now, sent) == -math.inf
    assert share.reached(points, sent + 1, now, sent) == math.inf


def test_others_are_the_providers_count_less_ours() -> None:
    assert share.others(40, 19, 1) == 20
    assert share.others(40, 30, 15) == 0  # ours counted high: never below none
    for limit, remaining in ((None, 3), (40, None), (40, 41), (40, -1), (math.inf, 3),
                             (40, math.nan)):
        assert share.others(limit, remaining, 0) == 0.0
