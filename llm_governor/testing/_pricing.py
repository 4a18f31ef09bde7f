"""What the fake provider charges for a served request.

Token models are priced with ``genai_prices`` (the same data a governor would
use), so a test can compare its own spend accounting with the server's bill,
by the providers' rules: cache reads at the cache-read price, Anthropic cache
writes by TTL, OpenAI service tiers. Overrides are linear: cache reads at the
input price unless ``cached_input`` is given, cache writes at 1.25x (5-minute)
and 2x (1-hour) the input price.
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
    cached_input: Decimal | None = None

    def cost(self, input_tokens: int, output_tokens: int, audio_seconds: float,
             cache: Cache = (0, 0, 0)) -> Decimal:
        """Cost of one request under this price."""
        read, written, long_lived = cache
        plain = input_tokens - read - written
        total = (self.input * plain + self.output * output_tokens) / _MILLION
        total += (self.input if self.cached_input is None else self.cached_input) * read \
            / _MILLION
        total += self.input * (Decimal("1.25") * (written - long_lived) + 2 * long_lived) \
            / _MILLION
        if self.per_audio_minute is not None:
            total += self.per_audio_minute * Decimal(str(audio_seconds)) / _SIXTY
        if self.per_request is not None:
            total += self.per_request
        return total


# Deepgram is not in genai-prices; pay-as-you-go pre-recorded nova-3 list price.
DEEPGRAM_DEFAULT_PRICES: dict[str, ModelPrice] = {
    "nova-3": ModelPrice(per_audio_minute=Decimal("0.0043")),
}


Cache = tuple[int, int, int]  # (cache read, cache written, of which 1-hour) input tokens


@functools.lru_cache(maxsize=8192)
def _genai_price(
    provider_id: str, model: str, input_tokens: int, output_tokens: int,
    cache: Cache = (0, 0, 0), service_tier: str | None = None,
) -> Decimal | None:
    """genai-prices total for one usage, or None when it does not know the model."""
    from genai_prices import Usage, calc_price

    read, written, long_lived = cache
    context = {"service_tier": service_tier} if service_tier and service_tier != "default" \
        else None
    try:
        calc = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                  cache_read_tokens=read or None, cache_write_tokens=written or None,
                  cache_write_1h_tokens=(long_lived or None) if written else None),
            model_ref=model,
            provider_id=provider_id,
            price_context=context,
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
        *,
        cache: Cache = (0, 0, 0),
        service_tier: str | None = None,
    ) -> tuple[Decimal, bool]:
        """Return ``(cost, priced)``; unknown models cost 0 with ``priced=False``."""
        override = self._overrides.get(model)
        if override is not None:
            return override.cost(input_tokens, output_tokens, audio_seconds, cache), True
        if provider == "deepgram":
            table = DEEPGRAM_DEFAULT_PRICES.get(model)
            if table is None:
                return Decimal(0), False
            return table.cost(input_tokens, output_tokens, audio_seconds), True
        provider_id = _GENAI_PRICES_PROVIDER[provider]
        with self._lock:
            if (provider_id, model) in self._unknown:
                return Decimal(0), False
        total = _genai_price(provider_id, model, input_tokens, output_tokens, cache,
                             service_tier)
        if total is None:
            with self._lock:
                self._unknown.add((provider_id, model))
            return Decimal(0), False
        return total, True
