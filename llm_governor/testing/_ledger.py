"""Thread-safe record of every request the fake provider saw.

Tests use it to prove what the *server* observed (billing, limits respected,
concurrency), independently of what the client-side governor believes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

ProviderName = Literal["openai", "anthropic", "gemini", "deepgram"]


@dataclass(frozen=True)
class LedgerEntry:
    """One request as the provider saw it.

    ``time``/``end`` are ``time.monotonic()`` values: when the request was
    admitted (or rejected) and when its response was committed. Token counts,
    audio seconds and cost are 0 for anything but a served (200) request.
    ``status`` 0 means the connection was reset without a response.
    """

    time: float
    end: float
    provider: ProviderName
    endpoint: str
    path: str
    model: str
    status: int
    input_tokens: int
    output_tokens: int
    audio_seconds: float
    cost: Decimal
    priced: bool
    stream: bool
    api_key_seen: bool
    metered: bool
    fault: str | None
    request_bytes: int

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens, the unit TPM limits count."""
        return self.input_tokens + self.output_tokens

    @property
    def admitted(self) -> bool:
        """Served and counted against the rate limits (free endpoints are not)."""
        return self.status == 200 and self.metered


class Ledger:
    """Append-only, thread-safe list of :class:`LedgerEntry` with summary helpers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LedgerEntry] = []

    def append(self, entry: LedgerEntry) -> None:
        """Record one request; called by the server before it sends the response."""
        with self._lock:
            self._entries.append(entry)

    def clear(self) -> None:
        """Forget everything, e.g. between phases of one test."""
        with self._lock:
            self._entries.clear()

    @property
    def entries(self) -> list[LedgerEntry]:
        """A snapshot copy, safe to iterate while requests keep arriving."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(self.entries)

    def _select(self, provider: ProviderName | None) -> list[LedgerEntry]:
        return [e for e in self.entries if provider is None or e.provider == provider]

    def total_billed(self, provider: ProviderName | None = None) -> Decimal:
        """Sum of costs in USD; rejected and failed requests contribute 0."""
        return sum((e.cost for e in self._select(provider)), Decimal(0))

    def served_count(self, provider: ProviderName | None = None) -> int:
        """Requests answered with 200 (including free ones such as count_tokens)."""
        return sum(1 for e in self._select(provider) if e.status == 200)

    def count_by_status(self, provider: ProviderName | None = None) -> dict[int, int]:
        """How many requests ended with each HTTP status (0 = connection reset)."""
        return dict(Counter(e.status for e in self._select(provider)))

    def max_in_window(self, window: float, provider: ProviderName | None = None) -> int:
        """Most admitted requests inside any half-open interval of ``window`` seconds.

        Uses the same (t - window, t] rule as the server's limiter, so
        ``max_in_window(window) <= rpm`` proves the RPM limit was never exceeded.
        """
        times = sorted(e.time for e in self._select(provider) if e.admitted)
        best, left = 0, 0
        for right, t in enumerate(times):
            while times[left] <= t - window:
                left += 1
            best = max(best, right - left + 1)
        return best

    def max_tokens_in_window(self, window: float, provider: ProviderName | None = None) -> int:
        """Most admitted tokens (input + output) inside any ``window``; compare with TPM."""
        admitted = sorted(
            ((e.time, e.total_tokens) for e in self._select(provider) if e.admitted),
        )
        best, left, running = 0, 0, 0
        for t, tokens in admitted:
            running += tokens
            while admitted[left][0] <= t - window:
                running -= admitted[left][1]
                left += 1
            best = max(best, running)
        return best

    def max_concurrency(self, provider: ProviderName | None = None) -> int:
        """Peak number of admitted requests in flight at once (admission to response)."""
        marks: list[tuple[float, int]] = []
        for e in self._select(provider):
            if e.admitted:
                marks.append((e.time, 1))
                marks.append((e.end, -1))
        marks.sort()  # at equal times the -1 (finish) sorts before the +1 (start)
        best = current = 0
        for _, delta in marks:
            current += delta
            best = max(best, current)
        return best
