"""Limit scope = provider account, end to end through the SDKs against real loopback hosts.

Two API keys of one provider (the fake provider with ``per_key=True``: one
window per key, like two accounts) and two hosts (two fake providers, one of
them named by ``[services.groq] base_url``) never share limits, blocks or a
circuit breaker: a 429, a ``retry-after`` or ``remaining = 0`` on one never
slows the other. ``llm_governor.reset_limits`` and ``llm-governor reset``
forget what the provider taught and the blocks it imposed, never the budget.
"""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import llm_governor
from llm_governor.accounts import host_of, scope_key
from llm_governor.governor import Governor
from llm_governor.policies.admission import ServiceState
from llm_governor.testing import FakeProvider

from .conftest import FAST, Governed

MESSAGES: Any = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parents[2]
# A block from the provider lasts 30 s here, a call waits at most 5 s for admission, and
# the slowest pace the provider's headers can impose is 2 calls/s (max_interval).
SCOPED = {"retry": {"max_wait": 0.05, "max_block": 30.0},
          "services": {"openai": {"request_timeout": 5.0, "failure_threshold": 2,
                                  "max_interval": 0.5},
                       "anthropic": {"request_timeout": 5.0, "max_interval": 0.5}}}


def chat(client: Any) -> Any:
    if isinstance(client, anthropic.Anthropic):
        return client.messages.create(model="claude-3-5-haiku-latest", messages=MESSAGES,
                                      max_tokens=4)
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)


def timed(fn: Any, *args: Any) -> float:
    start = time.monotonic()
    fn(*args)
    return time.monotonic() - start


def state(gov: Governor, key: str) -> ServiceState:
    return gov.backend.service_state(key)


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_two_keys_of_one_provider_never_block_each_other(vendor: str, fake: FakeProvider,
                                                         governed: Governed) -> None:
    fake.set_limits(rpm=2, window=60.0, per_key=True)
    gov = governed(SCOPED)
    if vendor == "openai":
        base, error = fake.openai_base_url, openai.RateLimitError
        a: Any = openai.OpenAI(api_key="sk-account-A", base_url=base, max_retries=0)
        b: Any = openai.OpenAI(api_key="sk-account-B", base_url=base, max_retries=0)
    else:
        base, error = fake.anthropic_base_url, anthropic.RateLimitError
        a = anthropic.Anthropic(api_key="sk-account-A", base_url=base, max_retries=0)
        b = anthropic.Anthropic(api_key="sk-account-B", base_url=base, max_retries=0)
    key_a = scope_key(vendor, host_of(base), "sk-account-A")
    key_b = scope_key(vendor, host_of(base), "sk-account-B")

    # account A: two calls take its window (the second answers remaining = 0), the third
    # waits for the provider's pace and meets its 429, with a retry-after of about a minute
    chat(a)
    chat(a)
    with pytest.raises(error) as provider_429:
        chat(a)
    assert not isinstance(provider_429.value, llm_governor.GovernorError)  # the provider's
    blocked = state(gov, key_a).adaptive
    assert blocked.blocked_until > gov.backend.now() + 20 and blocked.request_limit == 2

    # account B: as fast as if A did not exist, and nothing of A's in its state
    assert timed(lambda: [chat(b), chat(b)]) < 1.0
    other = state(gov, key_b).adaptive
    assert other.blocked_until == 0.0 and other.rate == 0.0 and other.throttled_at == 0.0

    # account A stays blocked: refused by the governor within its request_timeout,
    # without another request reaching the provider
    seen = len(fake.ledger.entries)
    with pytest.raises(error) as refused:
        chat(a)
    assert isinstance(refused.value, llm_governor.RateLimitExceededError)
    assert len(fake.ledger.entries) == seen
    assert state(gov, key_b).adaptive.blocked_until == 0.0


def test_two_hosts_never_share_limits_blocks_or_breaker(fake: FakeProvider,
                                                        governed: Governed) -> None:
    """The same key at two hosts: the fake at its own URL (service openai) and a second
    fake named as ``[services.groq] base_url`` (OpenAI-compatible, service groq)."""
    with FakeProvider() as other:
        gov = governed({**SCOPED, "services": {
            **SCOPED["services"],
            "groq": {**FAST, "base_url": other.openai_base_url, "request_timeout": 5.0,
                     "max_interval": 0.5,
                     "failure_threshold": 2, "recovery_timeout": 60}}})
        main = openai.OpenAI(api_key="sk-same-key", base_url=fake.openai_base_url,
                             max_retries=0)
        groq = openai.OpenAI(api_key="sk-same-key", base_url=other.openai_base_url,
                             max_retries=0)
        key_main = scope_key("openai", host_of(fake.openai_base_url), "sk-same-key")
        key_groq = scope_key("groq", host_of(other.openai_base_url), "sk-same-key")
        chat(groq)
        assert gov.scopes("groq") == [key_groq]  # the configured base_url names the service

        # a provider block on the first host ...
        fake.set_limits(rpm=1, window=60.0)
        chat(main)
        with pytest.raises(openai.RateLimitError):
            chat(main)
        assert state(gov, key_main).adaptive.blocked_until > gov.backend.now() + 20
        # ... leaves the second alone
        assert timed(lambda: [chat(groq) for _ in range(3)]) < 1.0
        assert state(gov, key_groq).adaptive.blocked_until == 0.0

        # the second host's circuit opens on its own 5xx ...
        other.set_fault("error", status=500)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                chat(groq)
        seen = len(other.ledger.entries)
        with pytest.raises(openai.APIError) as opened:
            chat(groq)
        assert isinstance(opened.value, llm_governor.CircuitBreakerOpenError)
        assert len(other.ledger.entries) == seen
        # ... and the first host's stays closed
        assert state(gov, key_groq).breaker.state == "open"
        assert state(gov, key_main).breaker.state == "closed"
        fake.set_limits(rpm=None)
        fake.reset()
        assert key_main in llm_governor.reset_limits("openai")
        chat(main)  # the first host serves again; the second's circuit is still open
        assert state(gov, key_groq).breaker.state == "open"


def _learn_and_block(gov: Governor, fake: FakeProvider) -> tuple[str, Decimal]:
    """Spend on the budget, learn the provider's limit and take a block; return the
    scope and what the day's budget has spent."""
    client = openai.OpenAI(api_key="sk-reset", base_url=fake.openai_base_url, max_retries=0)
    fake.set_limits(rpm=1, window=60.0)
    chat(client)
    with pytest.raises(openai.RateLimitError):
        chat(client)
    key = scope_key("openai", host_of(fake.openai_base_url), "sk-reset")
    learned = state(gov, key).adaptive
    assert learned.blocked_until > gov.backend.now() and learned.request_limit == 1
    spent = gov.budget_report()["day"]["spent"]
    assert spent > 0
    return key, spent


def test_reset_limits_forgets_blocks_and_learned_limits_not_budgets(
        fake: FakeProvider, governed: Governed) -> None:
    gov = governed({**SCOPED, "budget": {"per_day": "10.00"}})
    key, spent = _learn_and_block(gov, fake)
    assert key not in llm_governor.reset_limits("anthropic")  # another service
    assert state(gov, key).adaptive.blocked_until > 0
    assert key in llm_governor.reset_limits("openai")
    assert state(gov, key) == ServiceState()
    assert gov.budget_report()["day"]["spent"] == spent
    # the governor admits at once again; the provider itself still says no
    client = openai.OpenAI(api_key="sk-reset", base_url=fake.openai_base_url, max_retries=0)
    with pytest.raises(openai.RateLimitError) as provider_429:
        chat(client)
    assert not isinstance(provider_429.value, llm_governor.GovernorError)


def test_the_cli_resets_every_process_on_the_backend(fake: FakeProvider, governed: Governed,
                                                     tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'state' / 'governor.db'}"
    gov = governed({**SCOPED, "backend": db, "budget": {"per_day": "10.00"}})
    key, spent = _learn_and_block(gov, fake)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
           "XDG_STATE_HOME": str(tmp_path / "xdg-state")}
    done = subprocess.run([sys.executable, "-m", "llm_governor", "reset", "openai",
                           "--backend", db], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert key in done.stdout and "budgets are untouched" in done.stdout
    assert state(gov, key) == ServiceState()  # what this process reads from the file now
    assert gov.budget_report()["day"]["spent"] == spent
