"""Thread-safe record of every request the fake provider saw.

Tests use it to prove what the *server* observed (billing, limits respected,
concurrency), independently of what the client-side governor believes.

Semantics, one entry per HTTP request:

* ``status`` is the provider's verdict: 200 when it processed the request
  (even if the reply was then broken on the way), the error status when it
  refused it, 0 when the connection dropped before any processing.
* ``outcome`` says what the client got: ``served`` (a complete 200 reply),
  ``broken`` (processed and billed, but the reply hung, was reset, cut or
  malformed), ``rejected`` (an error reply, not billed) or ``reset`` (no
  reply, not billed).
* ``billed`` (served or broken, on a metered endpoint) means the provider
  charges for it: ``cost`` is the full price of the served call, tokens and
  audio seconds are what it counted. Everything else costs 0 and counts 0.
* An entry is appended when the response is committed (before its bytes are
  sent), so a test can read the bill as soon as the client returns or raises;
  a hanging request is appended at admission and its ``end`` updated when the
  connection closes.
* ``key_id`` is a non-reversible fingerprint of the API key
  (:func:`key_fingerprint`), never the key.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

ProviderName = Literal["openai", "anthropic", "gemini", "deepgram"]
Outcome = Literal["served", "broken", "rejected", "reset"]


def key_fingerprint(api_key: str) -> str:
    """First 8 hex digits of the key's SHA-256: tells keys apart, cannot be reversed."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class LedgerEntry:
    """One request as the provider saw it.

    ``time``/``end`` are ``time.monotonic()`` values: when the request was
    admitted (or rejected) and when its response was committed. Token counts,
    audio seconds and cost are 0 for anything but a processed (200) request.
    ``status`` 0 means the connection was reset without a response. See the
    module docstring for ``outcome``, :attr:`billed` and ``key_id``; an
    ``outcome`` left at "served" with a status other than 200 is normalised
    to "rejected" (or "reset" for status 0).
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
    key_id: str | None = None
    outcome: Outcome = "served"
    retry_count: str | None = None  # the request's x-stainless-retry-count header
    body_sha256: str = ""  # of the request body: differential tests compare bodies by it

    def __post_init__(self) -> None:
        if self.outcome == "served" and self.status != 200:
            object.__setattr__(self, "outcome", "reset" if self.status == 0 else "rejected")

    @property
    def billed(self) -> bool:
        """The provider did the work and charges for it (served or broken, metered)."""
        return self.metered and self.outcome in ("served", "broken")

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

    def replace(self, old: LedgerEntry, new: LedgerEntry) -> None:
        """Swap ``old`` (the same object) for ``new``, e.g. a hung request's final ``end``.

        A no-op if ``old`` is gone (the ledger was cleared meanwhile).
        """
        with self._lock:
            for index, entry in enumerate(self._entries):
                if entry is old:
                    self._entries[index] = new
                    return

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

    def _select(
        self, provider: ProviderName | None, key_id: str | None = None
    ) -> list[LedgerEntry]:
        return [
            e
            for e in self.entries
            if (provider is None or e.provider == provider)
            and (key_id is None or e.key_id == key_id)
        ]

    def total_billed(
        self, provider: ProviderName | None = None, *, key_id: str | None = None
    ) -> Decimal:
        """Sum of costs in USD; rejected and reset requests contribute 0, broken ones in full."""
        return sum((e.cost for e in self._select(provider, key_id)), Decimal(0))

    def billed_count(
        self, provider: ProviderName | None = None, *, key_id: str | None = None
    ) -> int:
        """Requests the provider charges for: served plus broken (:attr:`LedgerEntry.billed`)."""
        return sum(1 for e in self._select(provider, key_id) if e.billed)

    def served_count(
        self, provider: ProviderName | None = None, *, key_id: str | None = None
    ) -> int:
        """Requests answered with a complete 200 (including free ones such as count_tokens)."""
        return sum(
            1 for e in self._select(provider, key_id) if e.status == 200 and e.outcome == "served"
        )

    def count_by_status(
        self, provider: ProviderName | None = None, *, key_id: str | None = None
    ) -> dict[int, int]:
        """How many requests ended with each HTTP status (0 = reset; broken ones are 200)."""
        return dict(Counter(e.status for e in self._select(provider, key_id)))

    def count_by_outcome(
        self, provider: ProviderName | None = None, *, key_id: str | None = None
    ) -> dict[Outcome, int]:
        """How many requests were served, broken (billed), rejected or reset."""
        return dict(Counter(e.outcome for e in self._select(provider, key_id)))

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
