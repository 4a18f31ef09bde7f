"""Cost estimates (upper bounds, reserved before a call) and settlement (real cost after).

Token prices come from ``genai-prices`` (its bundled snapshot; never fetched at
run time), looked up once per model and cached; ``[prices]`` entries override
them. Deepgram is not in genai-prices, so its per-audio-minute list prices live
in :data:`AUDIO_PRICES` (overridable the same way). A model with no price at
all falls back to the service's ``cost_per_request``, with one warning per
model that names it and the ``[prices]`` key to add: never a silent $0.

The providers' price rules, all from genai-prices' data: cache reads at the
cache-read price; Anthropic cache writes by TTL (1.25x the input price for
5-minute, 2x for 1-hour caches); OpenAI service tiers (``flex``,
``priority``…) from the tier the response reports; the Batch API's prices
(``Usage.batch``); Gemini cached content (``cachedContentTokenCount``) at the
cache-read price; reasoning tokens as output tokens. The one rule of our own:
a ``[prices]`` override without cache prices charges Anthropic cache writes at
1.25x / 2x its input price and cache reads at its ``cached_input`` (else input)
price.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .config import PriceOverride, RateLimitConfig
from .media import wav_seconds

__all__ = ["AUDIO_PRICES", "ModelPrice", "Pricer", "ResponseInfo", "Usage", "wav_seconds"]

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


_CACHE_WRITE = {"5m": Decimal("1.25"), "1h": Decimal(2)}  # Anthropic, x the input price
_DEFAULT_TIERS = frozenset({"default", "auto", "standard", "on_demand"})


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """What a response said about itself (telemetry only; never priced)."""

    id: str | None = None
    model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    system_fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """What a response said was consumed.

    Cache reads, cache writes and input audio tokens are parts of
    ``input_tokens`` (the total, as the conventions count it); reasoning tokens
    are part of ``output_tokens``. ``cache_write_1h_tokens`` is the part of
    ``cache_write_tokens`` written with a 1-hour TTL. ``service_tier`` is the tier
    the response reports (priced per tier); ``batch`` marks Batch API results.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    audio_seconds: float = 0.0
    input_audio_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    service_tier: str | None = None
    batch: bool = False
    response: ResponseInfo | None = field(default=None, compare=False)

    def priced_context(self) -> dict[str, str] | None:
        """genai-prices' price context of this usage (tier, batch), ``None`` for default."""
        return _context(self.service_tier, self.batch)


def _context(tier: str | None, batch: bool = False) -> dict[str, str] | None:
    if batch:
        return {"processing": "batch"}
    if tier and tier.lower() not in _DEFAULT_TIERS:
        return {"service_tier": tier.lower()}
    return None


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Per-token (not per-million) prices of one model; ``exact`` = linear, no tiers."""

    input: Decimal = _ZERO
    output: Decimal = _ZERO
    input_audio: Decimal = _ZERO  # input audio tokens, when priced apart from text
    cache_read: Decimal | None = None  # None: the input price
    cache_write: Decimal | None = None  # 5-minute writes; None: no write surcharge
    cache_write_1h: Decimal | None = None
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
    """Prices per (service, model, service tier), cached; estimates and settles costs.

    ``base_urls`` maps OpenAI-compatible services to their endpoint, which
    genai-prices recognises its providers by (Groq, DeepSeek, xAI…).
    """

    def __init__(self, overrides: Mapping[str, PriceOverride] | None = None,
                 base_urls: Mapping[str, str] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._base_urls = dict(base_urls or {})
        self._cache: dict[tuple[str, str, str | None], ModelPrice | None] = {}
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def price(self, service: str, model: str | None,
              service_tier: str | None = None) -> ModelPrice | None:
        """The model's price (in ``service_tier``), or ``None`` when nothing prices it."""
        tier = service_tier.lower() if service_tier else None
        if tier in _DEFAULT_TIERS:
            tier = None
        key = (service, model or "", tier)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._lookup(service, model or "", tier)
        with self._lock:
            self._cache[key] = found
        return found

    def _where(self, service: str) -> dict[str, str]:
        """genai-prices' provider argument for ``service``: its id, else its endpoint."""
        known = PROVIDER_IDS.get(service)
        if known is not None:
            return {"provider_id": known}
        url = self._base_urls.get(service)
        return {"provider_api_url": url} if url else {"provider_id": service}

    def _lookup(self, service: str, model: str, tier: str | None) -> ModelPrice | None:
        override = self._overrides.get(model) or self._overrides.get(f"{service}/{model}")
        if override is not None:
            def per_token(value: Decimal | None) -> Decimal | None:
                return None if value is None else value / _MILLION
            return ModelPrice(
                input=(override.input or _ZERO) / _MILLION,
                output=(override.output or _ZERO) / _MILLION,
                cache_read=per_token(override.cached_input),
                cache_write=per_token(override.cache_write),
                cache_write_1h=per_token(override.cache_write_1h),
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
        return _genai_price(model, self._where(service), _context(tier))

    def _fallback(self, service: str, model: str | None, cfg: RateLimitConfig) -> Decimal:
        key = (service, model or "")
        if key not in self._warned:
            self._warned.add(key)
            name = model or "the model"
            logger.warning(
                "RATE_LIMIT no price known for %s model %r: each call is charged "
                "cost_per_request=$%s instead of its tokens. Add its price (USD per million "
                "tokens) to your configuration to account it exactly: [prices] %r = "
                "{ input = \"…\", output = \"…\" } (or \"%s/%s\" for this service only)",
                service, model, cfg.cost_per_request, name, service, name,
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
        service_tier: str | None = None,
        cache_ttl: str | None = None,
    ) -> tuple[Decimal, int]:
        """Upper bound of a call's ``(cost, LLM tokens)`` from its request.

        Every token of text stands for at least one byte, so the text's byte
        size bounds its tokens; images, files and input audio come as
        ``media_tokens`` / ``audio_tokens``, already bounded by the provider's
        own rules (see :mod:`llm_governor.instrumentation._media`); media whose
        size nothing in the request tells (``media_unbounded``: a file id, an
        audio URL) are bounded by the model's context window, which no input
        can exceed. The output is bounded by the request's max tokens, else
        the model's cap. The request's ``service_tier`` prices it; a request
        that may write a prompt cache (``cache_ttl`` "5m" / "1h") bounds its
        input at the cache-write price.
        """
        price = self.price(service, model, service_tier)
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
        per_input = price.input
        if cache_ttl is not None:
            per_input = max(per_input, _write_price(price, cache_ttl == "1h"))
        cost = price.per_request
        cost += per_input * (prompt_bytes + media_tokens) + price.output * out_tokens
        if audio_tokens:
            cost += max(per_input, price.input_audio) * audio_tokens
        if price.per_audio_minute:
            seconds = audio_seconds if audio_seconds is not None else \
                audio_bytes / cfg.audio_bytes_per_second
            cost += price.per_audio_minute * Decimal(math.ceil(seconds)) / _SIXTY
        return cost, tokens

    def cost(
        self, service: str, model: str | None, usage: Usage, cfg: RateLimitConfig
    ) -> Decimal:
        """The real cost of ``usage``, by the provider's price rules (see the module doc)."""
        tier = None if usage.batch else usage.service_tier
        price = self.price(service, model, tier)
        if price is None:
            return self._fallback(service, model, cfg)
        special = usage.cache_read_tokens or usage.input_audio_tokens or \
            usage.cache_write_tokens or usage.batch
        if price.source == "genai-prices" and (not price.exact or special):
            return _genai_cost(model or "", self._where(service), usage)
        audio = min(usage.input_audio_tokens, usage.input_tokens)
        read = min(usage.cache_read_tokens, usage.input_tokens - audio)
        written = min(usage.cache_write_tokens, usage.input_tokens - audio - read)
        long_lived = min(usage.cache_write_1h_tokens, written)
        plain = usage.input_tokens - audio - read - written
        total = price.per_request + price.input * plain \
            + max(price.input, price.input_audio) * audio + price.output * usage.output_tokens
        if read:
            total += (price.input if price.cache_read is None else price.cache_read) * read
        if written:
            total += _write_price(price, False) * (written - long_lived) \
                + _write_price(price, True) * long_lived
        if price.per_audio_minute and usage.audio_seconds:
            total += price.per_audio_minute * Decimal(str(usage.audio_seconds)) / _SIXTY
        return total


def _write_price(price: ModelPrice, one_hour: bool) -> Decimal:
    """Per-token price of a prompt-cache write: the model's, else Anthropic's rule
    (1.25x the input price for a 5-minute cache, 2x for a 1-hour one)."""
    given = price.cache_write_1h if one_hour else price.cache_write
    if given is None and one_hour:
        given = None if price.cache_write is None else \
            price.cache_write / _CACHE_WRITE["5m"] * _CACHE_WRITE["1h"]
    return given if given is not None else price.input * _CACHE_WRITE["1h" if one_hour else "5m"]


def _top(p: Any) -> Decimal | None:
    """A price, or the highest tier of a tiered one (an upper bound)."""
    if p is None:
        return None
    if isinstance(p, Decimal):
        return p
    prices: list[Decimal] = [p.base, *(t.price for t in p.tiers)]
    return max(prices)


def preload() -> None:
    """Load genai-prices' bundled price table now, not in the first call that needs it.

    Importing the table and its first lookup take 100-150 ms: paid at start-up
    (``instrument()``, before workers fork), not as one call's extra latency in
    every process. Never fails: a call would look the price up again anyway.
    """
    try:
        from genai_prices.data_snapshot import get_snapshot
    except ImportError:  # pragma: no cover - a core dependency
        return
    try:
        get_snapshot()
        _genai_price("gpt-4o-mini", {"provider_id": "openai"}, None)
    except Exception:  # pragma: no cover - a price table that cannot load prices nothing
        logger.debug("RATE_LIMIT preloading genai-prices failed", exc_info=True)


def _genai_price(model: str, where: Mapping[str, str],
                 context: Mapping[str, str] | None) -> ModelPrice | None:
    try:
        from genai_prices import Usage as GUsage
        from genai_prices import calc_price
    except ImportError:  # pragma: no cover - a core dependency
        return None
    try:
        calc = calc_price(GUsage(input_tokens=1, output_tokens=1), model_ref=model,
                          price_context=context, **where)  # type: ignore[call-overload]
    except Exception:  # LookupError for unknown models; never let prices break a call
        return None
    mp: Any = calc.model_price
    exact = isinstance(mp.input_mtok, (Decimal, type(None))) and \
        isinstance(mp.output_mtok, (Decimal, type(None))) and not getattr(mp, "requests_kcount",
                                                                           None)
    window = getattr(calc.model, "context_window", None)
    window = window if isinstance(window, int) and window > 0 else None

    def per_token(name: str) -> Decimal | None:
        value = _top(getattr(mp, name, None))
        return None if value is None else value / _MILLION

    # Tiered prices: the estimate is bounded with the highest tier, genai-prices settles.
    return ModelPrice(input=per_token("input_mtok") or _ZERO,
                      output=per_token("output_mtok") or _ZERO,
                      input_audio=per_token("input_audio_mtok") or _ZERO,
                      cache_read=per_token("cache_read_mtok"),
                      cache_write=per_token("cache_write_mtok"),
                      cache_write_1h=per_token("cache_write_1h_mtok"),
                      context_window=window, exact=exact, source="genai-prices")


def _genai_cost(model: str, where: Mapping[str, str], usage: Usage) -> Decimal:
    from genai_prices import Usage as GUsage
    from genai_prices import calc_price

    written = usage.cache_write_tokens or None
    result = calc_price(
        GUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
               cache_read_tokens=usage.cache_read_tokens or None,
               cache_write_tokens=written,
               cache_write_1h_tokens=(usage.cache_write_1h_tokens or None) if written else None,
               input_audio_tokens=usage.input_audio_tokens or None),
        model_ref=model, price_context=usage.priced_context(),
        **where,  # type: ignore[call-overload]
    )
    total: Decimal = Decimal(result.total_price)
    return total
