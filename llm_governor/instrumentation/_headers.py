"""Provider rate-limit headers → :class:`ProviderLimits`, and ``retry-after`` → seconds.

Headers come from servers we do not control: every value is parsed
defensively, and anything absent, malformed, negative or not finite is
ignored (``None``) rather than fed to the adaptive limiter.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from ..policies.adaptive import ProviderLimits

__all__ = ["anthropic_limits", "openai_limits", "parse_duration", "retry_after"]

Headers = Mapping[str, str]
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _number(text: str | None) -> float | None:
    """A finite, non-negative number, else ``None``."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "120ms", "1h2m3.5s"; a bare number is seconds)."""
    if text is None:
        return None
    text = text.strip()
    plain = _number(text)
    if plain is not None:
        return plain
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _until(text: str | None, now: float) -> float | None:
    """Seconds from ``now`` until an RFC 3339 timestamp (Anthropic's resets); past → ``None``."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    delay = moment.timestamp() - now
    return delay if math.isfinite(delay) and delay >= 0 else None


def retry_after(headers: Headers) -> float | None:
    """The wait asked for: ``retry-after-ms``, else ``retry-after`` (seconds or HTTP date)."""
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    seconds = _number(value)
    if seconds is not None or value is None:
        return seconds
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delay = moment.timestamp() - time.time()
    return delay if math.isfinite(delay) and delay >= 0 else None


def _relevant(headers: Headers, prefix: str) -> dict[str, str]:
    """The rate-limit and retry headers, lower-cased, in one pass (lookups on the SDK's
    case-insensitive headers cost a scan each)."""
    return {k: v for k, v in ((k.lower(), v) for k, v in headers.items())
            if k.startswith(prefix) or k.startswith("retry-after")}


def _limits(headers: Headers, name: Callable[[str, str], str],
            reset: Callable[[str | None], float | None], tokens: str) -> ProviderLimits | None:
    if not headers:
        return None
    found = ProviderLimits(
        limit_requests=_number(headers.get(name("requests", "limit"))),
        remaining_requests=_number(headers.get(name("requests", "remaining"))),
        reset_requests=reset(headers.get(name("requests", "reset"))),
        limit_tokens=_number(headers.get(name(tokens, "limit"))),
        remaining_tokens=_number(headers.get(name(tokens, "remaining"))),
        reset_tokens=reset(headers.get(name(tokens, "reset"))),
        retry_after=retry_after(headers),
    )
    return None if found == _EMPTY else found


_EMPTY = ProviderLimits()


def openai_limits(headers: Headers) -> ProviderLimits | None:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; ``None`` when none is usable."""
    return _limits(_relevant(headers, "x-ratelimit-"),
                   lambda what, kind: f"x-ratelimit-{kind}-{what}", parse_duration, "tokens")


def anthropic_limits(headers: Headers) -> ProviderLimits | None:
    """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (RFC 3339 resets).

    The combined ``tokens`` limit is the one to respect; accounts that only
    report ``input-tokens`` fall back to that.
    """
    now = time.time()
    headers = _relevant(headers, "anthropic-ratelimit-")
    tokens = "tokens" if "anthropic-ratelimit-tokens-limit" in headers or \
        "anthropic-ratelimit-tokens-remaining" in headers else "input-tokens"
    return _limits(headers, lambda what, kind: f"anthropic-ratelimit-{what}-{kind}",
                   lambda text: _until(text, now), tokens)
