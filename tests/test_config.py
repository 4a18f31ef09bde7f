"""Configuration: presets, sources, overrides and errors that name key, value and rule."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from llm_governor import ConfigError, GovernorConfig, RateLimitConfig, load_config
from llm_governor.presets import PRESETS


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LLM_GOVERNOR_ENV", "MONTAGE_ENV", "LLM_GOVERNOR_CONFIG", "LLM_GOVERNOR_BACKEND"):
        monkeypatch.delenv(var, raising=False)


def test_seed_defaults_of_rate_limit_config() -> None:
    c = RateLimitConfig()
    assert (c.max_tokens, c.refill_rate, c.burst_capacity) == (10, 1.0, 5)
    assert (c.max_cost_per_minute, c.cost_per_request) == (Decimal("1.00"), Decimal("0.01"))
    assert (c.failure_threshold, c.recovery_timeout, c.success_threshold) == (5, 30, 3)
    assert (c.max_queue_size, c.request_timeout) == (100, 300)
    assert (c.min_interval, c.max_interval, c.backoff_multiplier) == (0.1, 5.0, 1.5)


@pytest.mark.parametrize(("env", "service", "expected"), [
    ("production", "deepgram", (2, 0.5, "1.50", 60)),
    ("production", "openai", (2, 0.33, "1.00", 60)),
    ("production", "anthropic", (1, 0.25, "1.25", 90)),
    ("production", "gemini", (10, 2.0, "0.50", 30)),
    ("development", "deepgram", (10, 2.0, "5.00", 30)),
    ("development", "openai", (5, 1.0, "3.00", 30)),
    ("development", "anthropic", (3, 0.5, "4.00", 30)),
    ("development", "gemini", (20, 5.0, "1.00", 20)),
])
def test_seed_presets(env: str, service: str, expected: tuple[int, float, str, int]) -> None:
    c = load_config({"environment": env}).service(service)
    assert (c.max_tokens, c.refill_rate, str(c.max_cost_per_minute), c.recovery_timeout) == \
        expected


def test_presets_honour_the_seeds_words() -> None:
    def svc(env: str) -> RateLimitConfig:
        return load_config({"environment": env}).service("openai")
    dev, test, stage, prod = (svc(e) for e in ("development", "testing", "staging",
                                               "production"))
    assert test.max_cost_per_minute < prod.max_cost_per_minute  # very low cost
    assert test.max_queue_size < stage.max_queue_size < dev.max_queue_size  # small/medium/large
    assert test.recovery_timeout < stage.recovery_timeout < prod.recovery_timeout
    assert prod.refill_rate <= stage.refill_rate <= dev.refill_rate
    assert "emergency" in PRESETS
    emergency = load_config({}).emergency_service("gemini")
    assert emergency.max_tokens == 1 and emergency.refill_rate <= 0.1


def test_environment_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config().environment == "development"
    monkeypatch.setenv("MONTAGE_ENV", "staging")
    assert load_config().environment == "staging"
    monkeypatch.setenv("LLM_GOVERNOR_ENV", "Production")
    assert load_config().environment == "production"
    assert load_config({"environment": "testing"}).environment == "testing"
    assert load_config({"environment": "testing"}, environment="staging").environment == \
        "staging"


def test_toml_file_and_env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gov.toml"
    path.write_text('''
environment = "production"
backend = "memory"
[budget]
per_day = "200.00"
[services.openai]
llm_tokens_per_minute = 30000
max_retries = 4
[services.openai.models."gpt-4o"]
llm_tokens_per_minute = 10000
[services.my_service]
refill_rate = 3.0
[prices]
"my-model" = { per_request = "0.002" }
''')
    for cfg in (load_config(path), load_config(str(path))):
        assert cfg.environment == "production" and cfg.budget.per_day == Decimal("200.00")
        openai = cfg.service("openai")
        assert openai.refill_rate == 0.33 and openai.llm_tokens_per_minute == 30000
        assert cfg.service("openai", "gpt-4o").llm_tokens_per_minute == 10000
        assert cfg.service("openai", "gpt-4o").max_retries == 4
        assert cfg.service("my_service").refill_rate == 3.0
        assert cfg.service("my_service").max_tokens == 2  # production default preset
        assert cfg.prices["my-model"].per_request == Decimal("0.002")
    monkeypatch.setenv("LLM_GOVERNOR_CONFIG", str(path))
    monkeypatch.setenv("LLM_GOVERNOR_BACKEND", "sqlite:///tmp/x.db")
    cfg = load_config()
    assert cfg.environment == "production" and cfg.backend == "sqlite:///tmp/x.db"


def test_a_governor_config_round_trips() -> None:
    cfg = load_config({"services": {"openai": {"refill_rate": 9.0}}})
    again = load_config(cfg, environment="production")
    assert isinstance(again, GovernorConfig)
    assert again.service("openai").refill_rate == 9.0
    assert again.service("openai").max_tokens == 2


@pytest.mark.parametrize(("config", "needle"), [
    ({"environment": "prod"}, "environment = 'prod': allowed:"),
    ({"services": {"openai": {"refill_rate": 0}}}, "services.openai.refill_rate = 0"),
    ({"services": {"openai": {"refill_rate": -1.5}}}, "services.openai.refill_rate = -1.5"),
    ({"services": {"openai": {"max_tokens": 0}}}, "services.openai.max_tokens = 0"),
    ({"budget": {"per_day": "1.2.3"}}, "budget.per_day = '1.2.3': a decimal amount"),
    ({"budget": {"per_day": "-1"}}, "budget.per_day = '-1'"),
    ({"services": {"openai": {"max_cost_per_minute": "abc"}}},
     "services.openai.max_cost_per_minute = 'abc'"),
    ({"bogus": 1}, "bogus = 1: unknown key"),
    ({"services": {"openai": {"max_tokns": 3}}}, "services.openai.max_tokns = 3: unknown key"),
    ({"backend": "mysql://x"}, "backend = 'mysql://x'"),
    ({"on_backend_error": "retry"}, "on_backend_error = 'retry'"),
    ({"services": {"openai": {"models": {"gpt-4o": {"refill_rate": -1}}}}},
     "models.gpt-4o.refill_rate = -1"),
    ({"services": {"openai": {"min_interval": 2, "max_interval": 1}}}, "max_interval"),
    ({"prices": {"m": {}}}, "prices.m"),
    ({"namespace": "a b"}, "namespace = 'a b'"),
])
def test_invalid_config_names_key_value_and_rule(config: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert needle in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("environment = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="got int"):
        load_config(42)  # type: ignore[arg-type]


def test_redis_password_never_in_errors() -> None:
    cfg = load_config({"backend": "redis://user:hunter2@localhost:6379/0"})
    assert cfg.redacted_backend() == "redis://user:***@localhost:6379/0"
    with pytest.raises(ConfigError) as info:
        load_config({"backend": "redis://user:hunter2@localhost:6379/0", "namespace": "bad ns"})
    assert "hunter2" not in str(info.value)


def test_unknown_keys_list_the_allowed_ones_and_suggest_the_closest() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"budgets": {"per_day": "1"}, "services": {"openai": {"max_tokenz": 3},
                                                               "x": {"retry": {}}},
                     "monitor": {"intervall": 2}})
    text = str(err.value)
    assert "budgets = {…}: unknown key; did you mean 'budget'? (allowed: environment," in text
    assert "services.openai.max_tokenz = 3: unknown key; did you mean 'max_tokens'?" in text
    assert "monitor.intervall = 2: unknown key; did you mean 'interval'?" in text
    assert "service_overrides" not in text
    assert "services.x.retry = {…}: unknown key (allowed: max_tokens," in text  # nothing close


def test_every_error_is_reported_at_once() -> None:
    """Rules across fields run only on valid fields; they are reported in the same error."""
    with pytest.raises(ConfigError) as err:
        load_config({"services": {
            "openai": {"refill_rate": -1, "models": {"gpt-4o": {"refil_rate": 2}}},
            "anthropic": {"min_interval": 1.0, "max_interval": 0.5, "base_url": "ftp://x"},
            "groq": {"min_interval": -1, "max_interval": 0.05}}})
    lines = str(err.value).splitlines()[1:]
    assert any("services.openai.refill_rate = -1" in line for line in lines)
    assert any("models.gpt-4o.refil_rate = 2: unknown key; did you mean 'refill_rate'?" in line
               for line in lines)
    (anthropic,) = [line for line in lines if line.strip().startswith("services.anthropic =")]
    assert "max_interval (0.5) must be >= min_interval (1.0)" in anthropic
    assert "must be an http(s):// URL" in anthropic
    # groq's interval rule reads min_interval, itself invalid: only that is reported
    assert [line for line in lines if "groq" in line] == [
        "  services.groq.min_interval = -1: Input should be greater than 0"]


def test_service_names_no_sdk_reports_are_warned_about() -> None:
    from llm_governor.config import config_warnings

    cfg = load_config({"services": {"opneai": {"max_tokens": 2}, "my_tool": {},
                                    "groq": {"base_url": "https://api.groq.com/openai/v1"},
                                    "azure_openai": {}, "openai": {}}})
    warnings = config_warnings(cfg)
    assert len(warnings) == 2
    assert warnings[0].startswith("services.my_tool: not a service the SDKs report")
    assert "@rate_limited('my_tool')" in warnings[0] and "did you mean" not in warnings[0]
    assert warnings[1].startswith("services.opneai:") and "did you mean 'openai'?" in warnings[1]
