"""The output learner and how a call's reservation mode is chosen (no SDK involved)."""

from __future__ import annotations

import pytest

import llm_governor
from llm_governor import ConfigError
from llm_governor.config import LearnedReservationConfig
from llm_governor.reservations import OutputLearner, reservation_mode


def test_learner_warms_up_then_bounds_by_a_high_percentile_above_a_floor() -> None:
    learner = OutputLearner(LearnedReservationConfig(percentile=0.9, window=10, warmup=4,
                                                     floor=50))
    for tokens in (10, 20, 30):
        learner.record("openai", "m", tokens)
    assert learner.bound("openai", "m") is None  # warming up: the worst case
    learner.record("openai", "m", 40)
    assert learner.bound("openai", "m") == 50  # p90 is 40, the floor is 50
    for tokens in range(100, 1100, 100):  # the window keeps the last 10
        learner.record("openai", "m", tokens)
    assert learner.bound("openai", "m") == 900
    assert learner.bound("openai", "other") is None and learner.seen("openai", "m") == 10


def test_mode_comes_from_scope_then_service_then_global() -> None:
    config = llm_governor.load_config({
        "reservation": "learned",
        "services": {"anthropic": {"reservation": "worst_case"}},
        "scopes": {"tenant": {"overrides": {"big": {"reservation": "worst_case"}}},
                   "user": {"reservation": "learned"}},
    })
    assert reservation_mode(config, config.service("openai"), {}) == "learned"
    assert reservation_mode(config, config.service("anthropic"), {}) == "worst_case"
    assert reservation_mode(config, config.service("anthropic"), {"user": "u"}) == "learned"
    assert reservation_mode(config, config.service("openai"), {"tenant": "big"}) == "worst_case"
    assert reservation_mode(config, config.service("openai"),
                            {"tenant": "big", "user": "u"}) == "worst_case"  # the safer wins


@pytest.mark.parametrize("bad", [
    {"reservation": "optimistic"},
    {"services": {"openai": {"reservation": "guess"}}},
    {"scopes": {"tenant": {"reservation": "best_case"}}},
    {"learned": {"warmup": 500, "window": 100}},
    {"learned": {"percentile": 1.5}},
])
def test_bad_reservation_settings_name_key_value_and_allowed(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        llm_governor.load_config(bad)
    text = str(caught.value)
    assert "reservation" in text or "learned" in text
    if "reservation" in str(bad) and "learned" not in bad:
        assert "'worst_case' or 'learned'" in text
