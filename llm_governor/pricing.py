"""Cost estimates (upper bounds, reserved before a call) and settlement (real cost after).

Token prices come from ``genai-prices`` (its bundled snapshot; never fetched at
run time), looked up once per model and cached; ``[prices]`` entries override
them. Deepgram is not in genai-prices, so its per-audio-minute list prices live
in :data:`AUDIO_PRICES` (overridable the same way). A model with no price at
all falls back to the service's ``cost_per_request``, with one warning per
model: never a silent $0.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .config import PriceOverride, RateLimitConfig
from .media import wav_seconds

__all__ = ["AUDIO_PRICES", "ModelPrice", "Pricer", "Usage", "wav_seconds"]

logger = logging.getLogger("llm_governor")

_MILLION = Decimal(1_000_000)
_SIXTY = Decimal(60)
_ZERO = Decimal(0)

# genai-prices provider ids of our service names.
PROVIDER_IDS: dict[str, str] = {"openai": "openai", "azure_openai": "openai",
                                "anthropic": "anthropic", "gemini": "google"}

# Deepgram pre-recorded list prices, USD per audio minute (pay-as-you-go).
AUDIO_PRICES: dict[str, Decimal] = {
    "nova-3": Decimal("0.0043"),
    "nova-2": Decimal("0.0043"),
    "nova": Decimal("0.0043"),
    "enhanced": Decimal("0.0145"),
    "base": Decimal("0.0125"),
    "whisper": Decimal("0.0048"),
}

# Output caps used to bound a call's output when the request names none.
_OUTPUT_CAPS: tuple[tuple[str, int], ...] = (
    ("gpt-5", 128_000), ("o1", 100_000), ("o3", 100_000), ("o4", 100_000),
    ("gpt-4.1", 32_768), ("gpt-4o", 16_384), ("gpt-4-turbo", 4_096), ("gpt-4", 8_192),
    ("gpt-3.5", 4_096), ("claude", 64_000), ("gemini-2.5", 65_536), ("gemini", 8_192),
)
DEFAULT_OUTPUT_CAP = 16_384
DEFAULT_CONTEXT_WINDOW = 1_048_576  # bounds unsized media of a model with no known window


@dataclass(frozen=True, slots=True)
class Usage:
    """What a response said was consumed (cache and audio tokens are parts of the input)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    audio_seconds: float = 0.0
    input_audio_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Per-token (not per-million) prices of one model; ``exact`` = linear, no tiers."""

    input: Decimal = _ZERO
    output: Decimal = _ZERO
    input_audio: Decimal = _ZERO  # input audio tokens, when priced apart from text
    per_request: Decimal = _ZERO
    per_audio_minute: Decimal = _ZERO
    max_output_tokens: int | None = None
    context_window: int | None = None
    exact: bool = True
    source: str = "override"


def _output_cap(model: str) -> int:
    for prefix, cap in _OUTPUT_CAPS:
        if model.startswith(prefix):
            return cap
    return DEFAULT_OUTPUT_CAP


class Pricer:
    """Prices per (service, model), cached; estimates and settles costs."""

    def __init__(self, overrides: dict[str, PriceOverride] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._cache: dict[tuple[str, str], ModelPrice | None] = {}
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def price(self, service: str, model: str | None) -> ModelPrice | None:
        """The model's price, or ``None`` when nothing prices it."""
        key = (service, model or "")
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._lookup(service, model or "")
        with self._lock:
            self._cache[key] = found
        return found

    def _lookup(self, service: str, model: str) -> ModelPrice | None:
        override = self._overrides.get(model) or self._overrides.get(f"{service}/{model}")
        if override is not None:
            return ModelPrice(
                input=(override.input or _ZERO) / _MILLION,
                output=(override.output or _ZERO) / _MILLION,
                per_request=override.per_request or _ZERO,
                per_audio_minute=override.per_audio_minute or _ZERO,
                max_output_tokens=override.max_output_tokens,
            )
        if service == "deepgram":
            for prefix, per_minute in AUDIO_PRICES.items():
                if (model or "nova-3").startswith(prefix):
                    return ModelPrice(per_audio_minute=per_minute, source="llm-governor")
            return None
        if not model:
            return None
        # a custom service (an OpenAI-compatible host) is looked up under its own name
        return _genai_price(model, PROVIDER_IDS.get(service, service))

    def _fallback(self, service: str, model: str | None, cfg: RateLimitConfig) -> Decimal:
        key = (service, model or "")
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(
                "RATE_LIMIT no price known for %s model %r: using cost_per_request=%s per call "
                "(add it under [prices] to account it exactly)", service, model,
                cfg.cost_per_request,
            )
        return cfg.cost_per_request

    def estimate(
        self,
        service: str,
        model: str | None,
        cfg: RateLimitConfig,
        *,
        prompt_bytes: int = 0,
        media_tokens: int = 0,
        audio_tokens: int = 0,
        media_unbounded: bool = False,
        max_output_tokens: int | None = None,
        audio_bytes: int = 0,
        audio_seconds: float | None = None,
        embedding: bool = False,
    ) -> tuple[Decimal, int]:
        """Upper bound of a call's ``(cost, LLM tokens)`` from its request.

        Every token of text stands for at least one byte, so the text's byte
        size bounds its tokens; images, files and input audio come as
        ``media_tokens`` / ``audio_tokens``, already bounded by the provider's
        own rules (see :mod:`llm_governor.instrumentation._media`); media whose
        size nothing in the request tells (``media_unbounded``: a file id, an
        audio URL) are bounded by the model's context window, which no input
        can exceed. The output is bounded by the request's max tokens, else
        the model's cap.
        """
        price = self.price(service, model)
        if embedding:
            out_tokens = 0
        elif max_output_tokens is not None and max_output_tokens >= 0:
            out_tokens = max_output_tokens
        elif price is not None and price.max_output_tokens:
            out_tokens = price.max_output_tokens
        else:
            out_tokens = _output_cap(model or "")
        if media_unbounded:
            window = price.context_window if price is not None and price.context_window \
                else DEFAULT_CONTEXT_WINDOW
            media_tokens = max(media_tokens, window - prompt_bytes - audio_tokens)
        tokens = prompt_bytes + media_tokens + audio_tokens + out_tokens
        if service == "deepgram" or audio_bytes or audio_seconds:
            tokens = 0
        if price is None:
            return self._fallback(service, model, cfg), tokens
        cost = price.per_request
        cost += price.input * (prompt_bytes + media_tokens) + price.output * out_tokens
        if audio_tokens:
            cost += max(price.input, price.input_audio) * audio_tokens
        if price.per_audio_minute:
            seconds = audio_seconds if audio_seconds is not None else \
                audio_bytes / cfg.audio_bytes_per_second
            cost += price.per_audio_minute * Decimal(math.ceil(seconds)) / _SIXTY
        return cost, tokens

    def cost(
        self, service: str, model: str | None, usage: Usage, cfg: RateLimitConfig
    ) -> Decimal:
        """The real cost of ``usage``."""
        price = self.price(service, model)
        if price is None:
            return self._fallback(service, model, cfg)
        if not price.exact or ((usage.cache_read_tokens or usage.input_audio_tokens)
                               and price.source == "genai-prices"):
            return _genai_cost(model or "", PROVIDER_IDS.get(service, service), usage)
        audio = min(usage.input_audio_tokens, usage.input_tokens)
        total = price.per_request + price.input * (usage.input_tokens - audio) \
            + max(price.input, price.input_audio) * audio + price.output * usage.output_tokens
        if price.per_audio_minute and usage.audio_seconds:
            total += price.per_audio_minute * Decimal(str(usage.audio_seconds)) / _SIXTY
        return total


def _genai_price(model: str, provider: str) -> ModelPrice | None:
    try:
        from genai_prices import Usage as GUsage
        from genai_prices import calc_price
    except ImportError:  # pragma: no cover - a core dependency
        return None
    try:
        calc = calc_price(GUsage(input_tokens=1, output_tokens=1), model_ref=model,
                          provider_id=provider)
    except Exception:  # LookupError for unknown models; never let prices break a call
        return None
    mp: Any = calc.model_price
    exact = isinstance(mp.input_mtok, (Decimal, type(None))) and \
        isinstance(mp.output_mtok, (Decimal, type(None))) and not getattr(mp, "requests_kcount",
                                                                           None)
    audio = getattr(mp, "input_audio_mtok", None)
    audio = audio if isinstance(audio, Decimal) else _ZERO
    window = getattr(calc.model, "context_window", None)
    window = window if isinstance(window, int) and window > 0 else None
    if exact:
        return ModelPrice(input=(mp.input_mtok or _ZERO) / _MILLION,
                          output=(mp.output_mtok or _ZERO) / _MILLION,
                          input_audio=audio / _MILLION, context_window=window,
                          source="genai-prices")
    # Tiered prices: bound the estimate with the highest tier, settle with genai-prices.
    def top(p: Any) -> Decimal:
        if p is None:
            return _ZERO
        if isinstance(p, Decimal):
            return p
        prices: list[Decimal] = [p.base, *(t.price for t in p.tiers)]
        return max(prices)
    return ModelPrice(input=top(mp.input_mtok) / _MILLION, output=top(mp.output_mtok) / _MILLION,
                      input_audio=top(getattr(mp, "input_audio_mtok", None)) / _MILLION,
                      context_window=window, exact=False, source="genai-prices")


def _genai_cost(model: str, provider: str, usage: Usage) -> Decimal:
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    result = calc_price(
        GUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
               cache_read_tokens=usage.cache_read_tokens or None,
               input_audio_tokens=usage.input_audio_tokens or None),
        model_ref=model, provider_id=provider,
    )
    total: Decimal = Decimal(result.total_price)
    return total
