"""The retry budget: a floor of retries per minute plus a share of the calls made."""

from __future__ import annotations

from llm_governor.retry_budget import RetryBudget


def test_retry_budget_allows_floor_plus_ratio_of_calls() -> None:
    rb = RetryBudget(ratio=0.1, min_per_minute=2)
    for i in range(50):
        rb.record_call(float(i) / 10)
    granted = sum(rb.try_retry(5.0) for _ in range(20))
    assert granted == 7  # 2 + 0.1 * 50
    assert rb.try_retry(70.0)  # a minute later the window is empty again
