"""Sliding-window rate limiter and the providers' rate-limit headers.

The fake provider enforces its limits itself so tests can prove a governor
keeps traffic under them; ``window`` lets a test scale "per minute" down to
a second or two.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from llm_governor.testing._ledger import ProviderName

LimitReason = Literal["requests", "tokens", "concurrency"]


@dataclass
class Limits:
    """Per-provider limits; ``None`` means unlimited.

    ``per_key`` keeps one set of buckets per (provider, API key) instead of per
    provider, as two provider accounts would have.
    """

    rpm: int | None = None
    tpm: int | None = None
    window: float = 60.0
    max_concurrency: int | None = None
    per_key: bool = False


@dataclass(frozen=True)
class WindowState:
    """Usage in the current window, used to render rate-limit headers."""

    rpm: int | None
    tpm: int | None
    requests: int
    tokens: int
    input_tokens: int
    output_tokens: int
    requests_reset: float
    tokens_reset: float
    input_reset: float
    output_reset: float


@dataclass(frozen=True)
class Verdict:
    """Outcome of an admission attempt; ``retry_after`` is seconds until it would pass."""

    admitted: bool
    state: WindowState
    reason: LimitReason | None = None
    retry_after: float | None = None


@dataclass
class _Bucket:
    events: deque[tuple[float, int, int]] = field(default_factory=deque)  # (time, input, output)
    in_flight: int = 0


class RateLimiter:
    """RPM/TPM over a sliding window plus a concurrency cap, one bucket per scope.

    A scope is a provider, or a (provider, key fingerprint) pair when the
    caller passes ``scope`` (see ``Limits.per_key``). Not thread-safe by
    itself: the fake provider calls it under its lock. A request is admitted
    at ``now`` iff, counting it, the admitted requests with time in
    ``(now - window, now]`` stay within ``rpm`` and their tokens (input +
    output) within ``tpm``.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buckets: dict[tuple[ProviderName, str | None], _Bucket] = {}

    def reset(self) -> None:
        """Drop all history (limits stay)."""
        self._buckets.clear()

    def _bucket(self, provider: ProviderName, now: float, scope: str | None = None) -> _Bucket:
        bucket = self._buckets.setdefault((provider, scope), _Bucket())
        horizon = now - self.limits.window
        while bucket.events and bucket.events[0][0] <= horizon:
            bucket.events.popleft()
        return bucket

    def admit(
        self,
        provider: ProviderName,
        input_tokens: int,
        output_tokens: int,
        now: float,
        scope: str | None = None,
    ) -> Verdict:
        """Admit (and count) the request, or say why not and for how long."""
        lim = self.limits
        bucket = self._bucket(provider, now, scope)
        events = bucket.events
        cost = input_tokens + output_tokens
        if lim.max_concurrency is not None and bucket.in_flight >= lim.max_concurrency:
            return Verdict(False, self._state(bucket, now), "concurrency", None)
        if lim.rpm is not None and len(events) + 1 > lim.rpm:
            wait = (
                lim.window if lim.rpm <= 0 else events[len(events) - lim.rpm][0] + lim.window - now
            )
            return Verdict(False, self._state(bucket, now), "requests", wait)
        if lim.tpm is not None:
            used = sum(i + o for _, i, o in events)
            if used + cost > lim.tpm:
                wait = lim.window  # a request bigger than the whole budget never fits
                if cost <= lim.tpm:
                    for t, i, o in events:
                        used -= i + o
                        if used + cost <= lim.tpm:
                            wait = t + lim.window - now
                            break
                return Verdict(False, self._state(bucket, now), "tokens", wait)
        events.append((now, input_tokens, output_tokens))
        bucket.in_flight += 1
        return Verdict(True, self._state(bucket, now))

    def release(self, provider: ProviderName, scope: str | None = None) -> None:
        """Mark an admitted request finished (for the concurrency cap)."""
        bucket = self._buckets.get((provider, scope))
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def state(self, provider: ProviderName, now: float, scope: str | None = None) -> WindowState:
        """Current usage without admitting anything (for headers on faults)."""
        return self._state(self._bucket(provider, now, scope), now)

    def _state(self, bucket: _Bucket, now: float) -> WindowState:
        window = self.limits.window
        last_any: float | None = None
        last_tok: float | None = None
        last_in: float | None = None
        last_out: float | None = None
        input_tokens = output_tokens = 0
        for t, i, o in bucket.events:
            last_any = t
            input_tokens += i
            output_tokens += o
            if i + o:
                last_tok = t
            if i:
                last_in = t
            if o:
                last_out = t

        def reset(last: float | None) -> float:
            return 0.0 if last is None else max(0.0, last + window - now)

        return WindowState(
            rpm=self.limits.rpm,
            tpm=self.limits.tpm,
            requests=len(bucket.events),
            tokens=input_tokens + output_tokens,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            requests_reset=reset(last_any),
            tokens_reset=reset(last_tok),
            input_reset=reset(last_in),
            output_reset=reset(last_out),
        )


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: '120ms' below a second, else '1s', '1.5s', '6m0s', '1h2m3s'."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _rfc3339(wall_now: float, delay: float) -> str:
    """Anthropic's reset format: an RFC 3339 UTC timestamp, rounded up to the second."""
    moment = datetime.fromtimestamp(math.ceil(wall_now + delay), tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ratelimit_headers(
    provider: ProviderName, state: WindowState, wall_now: float
) -> list[tuple[str, str]]:
    """Rate-limit headers as OpenAI/Anthropic send them; only for configured limits."""
    out: list[tuple[str, str]] = []
    if provider == "openai":
        if state.rpm is not None:
            out += [
                ("x-ratelimit-limit-requests", str(state.rpm)),
                ("x-ratelimit-remaining-requests", str(max(0, state.rpm - state.requests))),
                ("x-ratelimit-reset-requests", format_duration(state.requests_reset)),
            ]
        if state.tpm is not None:
            out += [
                ("x-ratelimit-limit-tokens", str(state.tpm)),
                ("x-ratelimit-remaining-tokens", str(max(0, state.tpm - state.tokens))),
                ("x-ratelimit-reset-tokens", format_duration(state.tokens_reset)),
            ]
    elif provider == "anthropic":
        if state.rpm is not None:
            out += [
                ("anthropic-ratelimit-requests-limit", str(state.rpm)),
                ("anthropic-ratelimit-requests-remaining", str(max(0, state.rpm - state.requests))),
                ("anthropic-ratelimit-requests-reset", _rfc3339(wall_now, state.requests_reset)),
            ]
        if state.tpm is not None:
            for name, used, reset in (
                ("tokens", state.tokens, state.tokens_reset),
                ("input-tokens", state.input_tokens, state.input_reset),
                ("output-tokens", state.output_tokens, state.output_reset),
            ):
                out += [
                    (f"anthropic-ratelimit-{name}-limit", str(state.tpm)),
                    (f"anthropic-ratelimit-{name}-remaining", str(max(0, state.tpm - used))),
                    (f"anthropic-ratelimit-{name}-reset", _rfc3339(wall_now, reset)),
                ]
    return out


def retry_after_headers(
    seconds: float, provider: ProviderName | None = None
) -> list[tuple[str, str]]:
    """``retry-after`` (whole seconds, rounded up) and ``retry-after-ms``.

    Anthropic documents only ``retry-after``; Gemini sends neither (its wait is
    ``RetryInfo.retryDelay`` in the body), so it gets nothing here.
    """
    if provider == "gemini":
        return []
    ms = max(1, math.ceil(seconds * 1000))
    whole = [("retry-after", str(math.ceil(ms / 1000)))]
    return whole if provider == "anthropic" else [*whole, ("retry-after-ms", str(ms))]
