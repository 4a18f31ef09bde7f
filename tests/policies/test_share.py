"""The scope's own admissions over the provider's window (policies/share.py)."""

from __future__ import annotations

import itertools
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


def test_a_report_places_its_attempt_exactly_and_a_burst_as_one_step() -> None:
    """Between snapshots the counter reads linearly: the 3rd of 10 calls over a second
    read as sent at 0.3 s. Its report says 0.5 s: the counter is 2 until then, 3 from
    then; a 4th call at the same instant makes that one step of two."""
    points = ((NOW, 0), (NOW + 1.0, 10))
    assert share.sent_at(points, NOW + 0.5, NOW + 2, 10) == 5.0  # read between snapshots
    placed = share.stepped(points, NOW + 0.5, 3)
    assert placed == ((NOW, 0), (NOW + 0.5 - share.TICK, 2), (NOW + 0.5, 3), (NOW + 1.0, 10))
    assert share.sent_at(placed, NOW + 0.5, NOW + 2, 10) == 3.0
    assert share.sent_at(placed, NOW + 0.5 - share.TICK, NOW + 2, 10) == 2.0
    burst = share.stepped(placed, NOW + 0.5, 4)
    assert burst == ((NOW, 0), (NOW + 0.5 - share.TICK, 2), (NOW + 0.5, 4), (NOW + 1.0, 10))
    assert share.reached(burst, 4, NOW + 2, 10) == NOW + 0.5


def test_an_attempt_that_contradicts_the_snapshots_or_overflows_them_is_not_placed() -> None:
    points = ((NOW, 2), (NOW + 1.0, 10))
    assert share.stepped(points, NOW - 0.1, 1) is points  # before the oldest snapshot
    assert share.stepped(points, NOW + 0.5, 11) is points  # the counter was 10 after it
    assert share.stepped(points, NOW + 0.5, 2) is points  # it was 2 before it already
    assert share.stepped((), NOW, 1) == ()
    full = tuple((NOW + k * 1e-3, k) for k in range(share.KEEP - share.STEPS - 3))
    assert share.stepped(full, NOW + 0.0105, 11) is full  # no room: snapshots alone tell


def test_a_refused_attempt_leaves_every_window_that_held_it_and_no_other() -> None:
    """The 17th call (sent at 1.7 s, 10 a second) got a 429: of the 8 calls of ours
    sent after 1.0 s the provider counted 7, and one fewer frees a slot a second after
    them; a window that ended before it (the 6th call's, from 0.5 s; its answer can
    come after the 429) still holds what it held."""
    points = ((NOW, 0), (NOW + 0.5, 5), (NOW + 1.0, 10), (NOW + 1.5, 15))
    taken = share.refused(points, 17, NOW + 0.7)
    assert taken == ((NOW, 0), (NOW + 0.5, 5), (NOW + 1.0, 11), (NOW + 1.5, 16))
    assert 18 - share.sent_at(taken, NOW + 1.0, NOW + 1.8, 18) == 7
    assert share.sent_at(taken, NOW + 0.5, NOW + 1.8, 18) == 5.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 40), st.booleans()),
                max_size=60))
def test_placing_and_refusing_attempts_keeps_the_counter_a_counter(
        events: list[tuple[float, int, bool]]) -> None:
    """Whatever reports say, in whatever order: instants in order, counts never down."""
    points: share.Points = ((NOW, 0), (NOW + 2.0, 40))
    for at, attempt, was_refused in events:
        points = share.refused(points, attempt, NOW + at - 1.0) if was_refused \
            else share.stepped(points, NOW + at, attempt)
        assert all(t0 <= t1 and n0 <= n1 for (t0, n0), (t1, n1) in itertools.pairwise(points))
        assert share.parse(share.dump(points)) == points
