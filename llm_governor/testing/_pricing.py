"""What the fake provider charges for a served request.

Token models are priced with ``genai_prices`` (the same data a governor would
use), so a test can compare its own spend accounting with the server's bill.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from llm_governor.testing._ledger import ProviderName

_MILLION = Decimal(1_000_000)
_SIXTY = Decimal(60)

_GENAI_PRICES_PROVIDER: dict[ProviderName, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
}


@dataclass(frozen=True)
class ModelPrice:
    """A price override: USD per million tokens, per audio minute and per request."""

    input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    per_audio_minute: Decimal | None = None
    per_request: Decimal | None = None

    def cost(self, input_tokens: int, output_tokens: int, audio_seconds: float) -> Decimal:
        """Cost of one request under this price."""
        total = (self.input * input_tokens + self.output * output_tokens) / _MILLION
        if self.per_audio_minute is not None:
            total += self.per_audio_minute * Decimal(str(audio_seconds)) / _SIXTY
        if self.per_request is not None:
            total += self.per_request
        return total


# Deepgram is not in genai-prices; pay-as-you-go pre-recorded nova-3 list price.
DEEPGRAM_DEFAULT_PRICES: dict[str, ModelPrice] = {
    "nova-3": ModelPrice(per_audio_minute=Decimal("0.0043")),
}


@functools.lru_cache(maxsize=8192)
def _genai_price(
    provider_id: str, model: str, input_tokens: int, output_tokens: int
) -> Decimal | None:
    """genai-prices total for one usage, or None when it does not know the model."""
    from genai_prices import Usage, calc_price

    try:
        calc = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=model,
            provider_id=provider_id,
        )
    except LookupError:
        return None
    return calc.total_price


class Pricer:
    """Resolves the cost of a request: overrides first, then built-in tables."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._unknown: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def price(
        self,
        provider: ProviderName,
        model: str,
        input_tokens: int,
        output_tokens: int,
        audio_seconds: float,
    ) -> tuple[Decimal, bool]:
        """Return ``(cost, priced)``; unknown models cost 0 with ``priced=False``."""
        override = self._overrides.get(model)
        if override is not None:
            return override.cost(input_tokens, output_tokens, audio_seconds), True
        if provider == "deepgram":
            table = DEEPGRAM_DEFAULT_PRICES.get(model)
            if table is None:
                return Decimal(0), False
            return table.cost(input_tokens, output_tokens, audio_seconds), True
        provider_id = _GENAI_PRICES_PROVIDER[provider]
        with self._lock:
            if (provider_id, model) in self._unknown:
                return Decimal(0), False
        total = _genai_price(provider_id, model, input_tokens, output_tokens)
        if total is None:
            with self._lock:
                self._unknown.add((provider_id, model))
            return Decimal(0), False
        return total, True
