"""A governor rejection inside an SDK call is also that SDK's RateLimitError (429).

Handlers written for the SDK (``except openai.RateLimitError``) and for the
governor (``except llm_governor.GovernorError``) both catch it; nothing reaches
the provider. Rate refusals carry ``retry-after``; a spent budget is "out of
credit" in each SDK's own terms (OpenAI ``insufficient_quota``, Anthropic
``billing_error``, ``x-should-retry: false``, no retry hint), unless its window
resets within ``retry.max_wait``.
"""

from __future__ import annotations

import sys
from typing import Any

import anthropic
import openai
import pytest

import llm_governor
from llm_governor import (
    BudgetExceededError,
    CircuitBreakerOpenError,
    GovernorError,
    RateLimitExceededError,
)
from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed

GPT = "gpt-4o"
CLAUDE = "claude-3-5-haiku-latest"
MESSAGES = [{"role": "user", "content": "hi"}]


async def call(d: Driver, sdk: str, max_tokens: int = 4) -> Any:
    if sdk == "openai":
        return await d.call(d.openai.chat.completions.create, model=GPT, messages=MESSAGES,
                            max_tokens=max_tokens)
    return await d.call(d.anthropic.messages.create, model=CLAUDE, messages=MESSAGES,
                        max_tokens=max_tokens)


SDK_ERRORS: dict[str, type[Exception]] = {"openai": openai.RateLimitError,
                                          "anthropic": anthropic.RateLimitError}


def assert_429(exc: BaseException, sdk: str, retry: bool = True) -> None:
    assert isinstance(exc, SDK_ERRORS[sdk]) and isinstance(exc, GovernorError)
    err: Any = exc
    assert err.status_code == 429
    if retry:
        assert int(err.response.headers["retry-after"]) >= 1
        assert "x-should-retry" not in err.response.headers
    else:
        assert "retry-after" not in err.response.headers
        assert "retry-after-ms" not in err.response.headers
        assert err.response.headers["x-should-retry"] == "false"
    assert err.response.status_code == 429
    assert str(err) == err.message and "RATE_LIMIT" in str(err)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_open_circuit_is_a_rate_limit_error(sdk: str, driver: Driver, fake: FakeProvider,
                                                  governed: Governed) -> None:
    governed({"services": {sdk: {"failure_threshold": 1, "recovery_timeout": 30}}})
    fake.set_fault("error", status=500)
    with pytest.raises(Exception) as first:
        await call(driver, sdk, 4)
    assert not isinstance(first.value, GovernorError)  # the provider's own 500
    seen = len(fake.ledger)

    try:
        await call(driver, sdk)
    except SDK_ERRORS[sdk] as err:  # the handler the app already has
        assert_429(err, sdk)
        assert isinstance(err, CircuitBreakerOpenError)
        assert err.retry_after is not None and 0 < err.retry_after <= 30
    else:
        pytest.fail("the open circuit let the call through")
    assert len(fake.ledger) == seen  # failing fast: the provider saw nothing


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_budget_refusal_is_a_rate_limit_error(sdk: str, driver: Driver, fake: FakeProvider,
                                                    governed: Governed) -> None:
    governed({"budget": {"per_day": "0.01"}})
    with pytest.raises(GovernorError) as caught:  # the governor's own handler works too
        await call(driver, sdk, max_tokens=20_000)
    assert_429(caught.value, sdk, retry=False)
    assert isinstance(caught.value, BudgetExceededError)
    err: Any = caught.value
    assert err.requested is not None and err.remaining is not None
    assert err.requested > err.remaining
    assert not err.should_retry and err.retry_after > 60  # the day resets later
    if sdk == "openai":
        assert err.code == "insufficient_quota"  # OpenAI's word for "out of credit"
        assert err.type == "insufficient_quota"
    else:
        assert err.body["error"]["type"] == "billing_error"  # Anthropic's
    assert len(fake.ledger) == 0


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_budget_resetting_within_max_wait_is_a_rate_limit(
        sdk: str, driver: Driver, fake: FakeProvider, governed: Governed) -> None:
    """A minute budget resets within ``retry.max_wait``: worth waiting for, so it reads
    as a rate limit with the reset as ``retry-after``."""
    governed({"budget": {"per_minute": "0.01"}, "retry": {"max_wait": 60}})
    with pytest.raises(GovernorError) as caught:
        await call(driver, sdk, max_tokens=20_000)
    err: Any = caught.value
    assert isinstance(err, BudgetExceededError) and err.should_retry
    assert_429(err, sdk, retry=True)
    assert int(err.response.headers["retry-after"]) <= 60
    if sdk == "openai":
        assert err.code == "rate_limit_exceeded"
    else:
        assert err.body["error"]["type"] == "rate_limit_error"


def test_refusal_finds_the_governor_error_anywhere_in_the_chain() -> None:
    refused = BudgetExceededError("spent")
    try:
        try:
            try:
                raise refused
            except GovernorError as exc:
                raise RuntimeError("framework wrapper") from exc
        except RuntimeError:
            raise ValueError("handled badly")  # noqa: B904 (implicit context on purpose)
    except ValueError as outer:
        assert llm_governor.refusal(outer) is refused
        assert not llm_governor.retryable(outer)
    group = ExceptionGroup("task group", [KeyError("x"), RuntimeError("y")])
    group.exceptions[1].__cause__ = RateLimitExceededError("slow down", retry_after=1.0)
    found = llm_governor.refusal(group)
    assert isinstance(found, RateLimitExceededError) and llm_governor.retryable(group)
    assert llm_governor.refusal(ValueError("unrelated")) is None
    assert llm_governor.refusal(None) is None
    assert llm_governor.retryable(ValueError("unrelated"))


async def test_queue_deadline_is_a_rate_limit_error(driver: Driver, fake: FakeProvider,
                                                    governed: Governed) -> None:
    governed({"services": {"openai": {"refill_rate": 0.2, "max_tokens": 1,
                                      "request_timeout": 0.2}}})
    await call(driver, "openai")
    with pytest.raises(openai.RateLimitError) as caught:
        await call(driver, "openai")
    assert isinstance(caught.value, RateLimitExceededError)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert len(fake.ledger) == 1


async def test_emergency_refusal_is_a_rate_limit_error(driver: Driver, fake: FakeProvider,
                                                       governed: Governed) -> None:
    governed({"emergency_action": "refuse"})
    llm_governor.enable_emergency_mode()
    with pytest.raises(anthropic.RateLimitError) as caught:
        await call(driver, "anthropic")
    assert isinstance(caught.value, llm_governor.EmergencyModeError)
    assert caught.value.response.headers["retry-after"] == "60"


def test_an_aiohttp_reset_while_reading_may_have_been_billed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp (google-genai's async transport when installed; not in this test
    environment, so its exception tree stands in): only a failure to connect proves
    nothing was sent. A ``ClientOSError`` is also what a reset while reading the answer
    raises, so it is charged as possibly billed."""
    import types

    from llm_governor.instrumentation._errors import transport_failure

    aiohttp = types.ModuleType("aiohttp")

    class ClientError(Exception):
        pass

    class ClientOSError(ClientError, OSError):
        pass

    class ClientConnectorError(ClientOSError):
        pass

    aiohttp.ClientError = ClientError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aiohttp", aiohttp)
    reset = transport_failure(ClientOSError(104, "Connection reset by peer"))
    refused = transport_failure(ClientConnectorError(111, "Connect call failed"))
    assert reset is not None and reset.lost
    assert refused is not None and not refused.lost
