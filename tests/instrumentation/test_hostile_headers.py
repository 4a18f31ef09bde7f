"""Hostile rate-limit headers, end to end through the unmodified SDKs: no header blocks a
later call for longer than ``retry.max_block``.

A ``retry-after`` of 1e9 seconds, ``remaining = 0`` with a reset 31 years away,
a ``limit`` of 1e-308: the fake provider sends them, the SDK parses what it
parses, the governor bounds what it learns. ``max_block`` is 1 s here, and
the slowest pace headers may impose is 4 calls/s (``max_interval``), well
inside it. A ``retry-after`` above the SDK's own cap is ignored as that SDK
ignores it, and the governor does not block the account for it: openai 3
(cap 120 s) does not retry such a 429, openai 2 and anthropic before 1 (cap
60 s) retry after their own back-off. Newer anthropic releases honour any
wait, so the governor blocks that account for ``max_block``. Which case
applies is asked of the installed SDK's own retry-wait computation.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anthropic
import openai
import pytest

from llm_governor.accounts import host_of, scope_key
from llm_governor.governor import Governor
from llm_governor.testing import FakeProvider

from .conftest import ANTHROPIC_KEY, OPENAI_KEY, Governed

MESSAGES: Any = [{"role": "user", "content": "hi"}]
MAX_BLOCK = 1.0
SLACK = 0.5  # scheduling, the SDK's own work, loopback HTTP
HOSTILE = {"retry": {"max_wait": 0.05, "max_block": MAX_BLOCK},
           "services": {"openai": {"max_interval": 0.25}, "anthropic": {"max_interval": 0.25}}}
FAR = "9999-12-31T23:59:59Z"  # anthropic resets are RFC 3339 instants


def clients(fake: FakeProvider, **kw: Any) -> dict[str, Any]:
    return {"openai": openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.openai_base_url, **kw),
            "anthropic": anthropic.Anthropic(api_key=ANTHROPIC_KEY,
                                             base_url=fake.anthropic_base_url, **kw)}


def call(vendor: str, client: Any) -> Any:
    if vendor == "anthropic":
        return client.messages.create(model="claude-3-5-haiku-latest", messages=MESSAGES,
                                      max_tokens=4)
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)


def sdk_waits_for(client: Any, seconds: float) -> bool:
    """Whether the SDK's own retry wait honours ``retry-after: seconds`` (its back-off,
    used otherwise, is at most 8 s)."""
    sdk = openai if isinstance(client, openai.OpenAI) else anthropic
    base = sys.modules[f"{sdk.__name__}._base_client"]
    http = getattr(base, "httpx2", None) or base.httpx
    options = sys.modules[f"{sdk.__name__}._models"].FinalRequestOptions.construct(
        method="post", url="/")
    headers = http.Headers({"retry-after": f"{seconds:g}"})
    wait = client._calculate_retry_timeout(2, options, headers)
    return bool(wait > 8.0)


def timed_call(vendor: str, client: Any) -> float:
    start = time.monotonic()
    call(vendor, client)
    return time.monotonic() - start


def blocked_for(gov: Governor, vendor: str, fake: FakeProvider) -> float:
    base = fake.openai_base_url if vendor == "openai" else fake.anthropic_base_url
    key = scope_key(vendor, host_of(base), OPENAI_KEY if vendor == "openai" else ANTHROPIC_KEY)
    return max(0.0, gov.backend.service_state(key).adaptive.blocked_until - gov.backend.now())


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_a_retry_after_of_a_billion_seconds(vendor: str, fake: FakeProvider,
                                            governed: Governed) -> None:
    gov = governed(HOSTILE)
    fake.set_headers({"retry-after": "1e9"}, statuses=[429])
    fake.fail_next(1, kind="rate_limit", retry_after=None)
    client = clients(fake, max_retries=0)[vendor]
    error = openai.RateLimitError if vendor == "openai" else anthropic.RateLimitError
    with pytest.raises(error):
        call(vendor, client)
    if not sdk_waits_for(client, 1e9):  # above the SDK's cap: ignored, as the SDK ignores it
        assert blocked_for(gov, vendor, fake) == 0.0
        assert timed_call(vendor, client) < SLACK
    else:  # honoured, bounded
        assert 0.5 * MAX_BLOCK < blocked_for(gov, vendor, fake) <= MAX_BLOCK
        assert timed_call(vendor, client) <= MAX_BLOCK + SLACK


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_nothing_left_until_a_reset_31_years_away(vendor: str, fake: FakeProvider,
                                                  governed: Governed) -> None:
    gov = governed(HOSTILE)
    if vendor == "openai":
        fake.set_headers({"x-ratelimit-limit-requests": "100",
                          "x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": "999999999s"}, provider="openai")
    else:
        fake.set_headers({"anthropic-ratelimit-requests-limit": "100",
                          "anthropic-ratelimit-requests-remaining": "0",
                          "anthropic-ratelimit-requests-reset": FAR}, provider="anthropic")
    client = clients(fake)[vendor]
    call(vendor, client)
    waits = [timed_call(vendor, client) for _ in range(3)]
    assert max(waits) <= MAX_BLOCK + SLACK, waits
    assert blocked_for(gov, vendor, fake) == 0.0


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_a_vanishing_limit(vendor: str, fake: FakeProvider, governed: Governed) -> None:
    governed(HOSTILE)
    if vendor == "openai":
        fake.set_headers({"x-ratelimit-limit-requests": "1e-308",
                          "x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": "1s"}, provider="openai")
    else:
        fake.set_headers({"anthropic-ratelimit-requests-limit": "1e-308",
                          "anthropic-ratelimit-requests-remaining": "0"}, provider="anthropic")
    client = clients(fake)[vendor]
    call(vendor, client)
    waits = [timed_call(vendor, client) for _ in range(3)]
    assert max(waits) <= MAX_BLOCK + SLACK, waits


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_a_retry_after_above_the_openai_cap_on_a_retried_call(
        vendor: str, fake: FakeProvider, governed: Governed) -> None:
    """200 s, to a client with its default 2 retries, governed exactly as bare: openai 3
    does not retry a 429 that asks for more than its cap; openai 2 and older anthropic
    retry after their own back-off; neither blocks the account. Newer anthropic retries
    after any wait: the governed one re-sends once the block (at most max_block) ends."""
    gov = governed(HOSTILE)
    fake.fail_next(1, kind="rate_limit", retry_after=200.0)
    client = clients(fake)[vendor]
    if vendor == "openai" and hasattr(openai._constants, "MAX_RETRY_AFTER_DELAY"):
        with pytest.raises(openai.RateLimitError):  # openai 3: no retry beyond its cap
            call(vendor, client)
        assert [e.status for e in fake.ledger.entries] == [429]
        assert blocked_for(gov, vendor, fake) == 0.0
        assert timed_call(vendor, client) < SLACK
    elif not sdk_waits_for(client, 200.0):  # retried after the SDK's own back-off
        took = timed_call(vendor, client)
        assert [e.status for e in fake.ledger.entries] == [429, 200]
        assert blocked_for(gov, vendor, fake) == 0.0
        assert took < 8.0 + SLACK
        assert timed_call(vendor, client) < SLACK
    else:
        took = timed_call(vendor, client)
        assert [e.status for e in fake.ledger.entries] == [429, 200]
        assert 0.5 * MAX_BLOCK < took <= MAX_BLOCK + SLACK
