"""GenAI semantic-convention attributes (v1.41.1) of a request and its response.

Requests: what the SDK call asks for, read from its JSON body (operation and
provider names per client class and endpoint, ``server.*``, the request's own
max tokens, choice count, sampling settings, stream flag, service tier).
Responses: what the response says about itself (:class:`~..pricing.ResponseInfo`:
id, model, finish reasons, system fingerprint), read by the usage trackers.
Only what the SDK exposes is read; nothing here sends, parses prompts or
records content.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..pricing import ResponseInfo
from .streams import field

__all__ = [
    "anthropic_request",
    "cache_ttl",
    "finish_reasons",
    "gemini_info",
    "gemini_request",
    "info",
    "openai_host_provider",
    "openai_request",
    "server_attributes",
]

# OpenAI-compatible hosts with a well-known gen_ai.provider.name (the OpenAI client talks
# to them; the conventions name the provider by its best-known identity).
_HOSTS = (("api.openai.com", "openai"), ("openai.azure.com", "azure.ai.openai"),
          ("api.groq.com", "groq"), ("api.deepseek.com", "deepseek"), ("api.x.ai", "x_ai"),
          ("api.mistral.ai", "mistral_ai"), ("api.perplexity.ai", "perplexity"),
          ("api.cohere", "cohere"), ("generativelanguage.googleapis.com", "gcp.gemini"),
          ("aiplatform.googleapis.com", "gcp.vertex_ai"), ("bedrock", "aws.bedrock"),
          ("api.anthropic.com", "anthropic"))
_PORTS = {"https": 443, "http": 80}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def server_attributes(base_url: str | None) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of an endpoint URL (nothing else of it)."""
    return dict(_server(base_url)) if base_url else {}


@functools.lru_cache(maxsize=256)
def _server(base_url: str) -> tuple[tuple[str, Any], ...]:
    try:
        parts = urlsplit(base_url)
        host, port = parts.hostname, parts.port or _PORTS.get(parts.scheme)
    except ValueError:
        return ()
    if not host:
        return ()
    return (("server.address", host),) + ((("server.port", port),) if port else ())


def openai_host_provider(host: str | None) -> str:
    """``gen_ai.provider.name`` of an OpenAI-compatible host (``openai`` when unknown)."""
    if host:
        for suffix, name in _HOSTS:
            if suffix in host:
                return name
    return "openai"


def _sampling(body: Mapping[str, Any], attrs: dict[str, Any], *,
              stop: str = "stop", top_k: str = "top_k") -> None:
    for key, name in (("temperature", "gen_ai.request.temperature"),
                      ("top_p", "gen_ai.request.top_p"),
                      ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                      ("presence_penalty", "gen_ai.request.presence_penalty"),
                      (top_k, "gen_ai.request.top_k")):
        value = _num(body.get(key))
        if value is not None:
            attrs[name] = value
    stops = body.get(stop)
    if isinstance(stops, str):
        attrs["gen_ai.request.stop_sequences"] = [stops]
    elif isinstance(stops, list) and all(isinstance(s, str) for s in stops) and stops:
        attrs["gen_ai.request.stop_sequences"] = list(stops)
    seed = _int(body.get("seed"))
    if seed is not None:
        attrs["gen_ai.request.seed"] = seed


def _choices(attrs: dict[str, Any], n: Any) -> None:
    n = _int(n)
    if n is not None and n != 1:
        attrs["gen_ai.request.choice.count"] = n


# ------------------------------------------------------------------ requests
_OPENAI_OPERATIONS = {"responses": ("chat", "responses"), "chat": ("chat", "chat_completions")}


def openai_request(operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The request attributes of an openai call (Responses is ``chat`` + ``openai.api.type``)."""
    op, api = _OPENAI_OPERATIONS.get(operation, (operation, None))
    attrs: dict[str, Any] = {"gen_ai.operation.name": op}
    if api is not None:
        attrs["openai.api.type"] = api
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        found = _int(body.get(key))
        if found is not None:
            attrs["gen_ai.request.max_tokens"] = found
            break
    _choices(attrs, body.get("n"))
    _sampling(body, attrs)
    tier = body.get("service_tier")
    if isinstance(tier, str):
        attrs["openai.request.service_tier"] = tier
    fmt = body.get("response_format")
    kind = field(fmt, "type") if isinstance(fmt, Mapping) else None
    if kind is None and operation == "responses":
        kind = field(field(body.get("text"), "format"), "type")
    if kind in ("json_schema", "json_object"):
        attrs["gen_ai.output.type"] = "json"
    elif kind == "text":
        attrs["gen_ai.output.type"] = "text"
    if operation == "embeddings":
        dims = _int(body.get("dimensions"))
        if dims is not None:
            attrs["gen_ai.embeddings.dimension.count"] = dims
        fmt_name = body.get("encoding_format")
        if isinstance(fmt_name, str):
            attrs["gen_ai.request.encoding_formats"] = [fmt_name]
    if body.get("stream") is True:
        attrs["gen_ai.request.stream"] = True
    return attrs


def anthropic_request(operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The request attributes of an anthropic call (the request's own ``max_tokens``)."""
    attrs: dict[str, Any] = {"gen_ai.operation.name": operation}
    found = _int(body.get("max_tokens", body.get("max_tokens_to_sample")))
    if found is not None:
        attrs["gen_ai.request.max_tokens"] = found
    _sampling(body, attrs, stop="stop_sequences")
    if body.get("stream") is True:
        attrs["gen_ai.request.stream"] = True
    return attrs


def cache_ttl(body: Mapping[str, Any]) -> str | None:
    """The longest prompt-cache TTL an anthropic request may write ("1h", "5m"), if any."""
    found: str | None = None
    top = body.get("cache_control")  # automatic caching of the whole prompt
    if isinstance(top, Mapping):
        if top.get("ttl") == "1h":
            return "1h"
        found = "5m"
    stack: list[Any] = [body.get("system"), body.get("messages"), body.get("tools")]
    seen = 0
    while stack and seen < 100_000:
        item = stack.pop()
        seen += 1
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, Mapping):
            control = item.get("cache_control")
            if isinstance(control, Mapping):
                if control.get("ttl") == "1h":
                    return "1h"
                found = "5m"
            content = item.get("content")
            if isinstance(content, list):
                stack.append(content)
    return found


def gemini_request(operation: str, body: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    """The request attributes of a google-genai call (the request's ``maxOutputTokens``)."""
    attrs: dict[str, Any] = {"gen_ai.operation.name": operation}
    config = body.get("generationConfig")
    if isinstance(config, Mapping):
        found = _int(config.get("maxOutputTokens"))
        if found is not None:
            attrs["gen_ai.request.max_tokens"] = found
        _choices(attrs, config.get("candidateCount"))
        _sampling(config, attrs, stop="stopSequences", top_k="topK")
        for key, name in (("topP", "gen_ai.request.top_p"),
                          ("frequencyPenalty", "gen_ai.request.frequency_penalty"),
                          ("presencePenalty", "gen_ai.request.presence_penalty")):
            value = _num(config.get(key))
            if value is not None:
                attrs[name] = value
        mime = config.get("responseMimeType")
        if mime == "application/json":
            attrs["gen_ai.output.type"] = "json"
        elif mime == "text/plain":
            attrs["gen_ai.output.type"] = "text"
        dims = _int(config.get("outputDimensionality"))
        if dims is not None and operation == "embeddings":
            attrs["gen_ai.embeddings.dimension.count"] = dims
    if stream:
        attrs["gen_ai.request.stream"] = True
    return attrs


# ------------------------------------------------------------------ responses
_GEMINI_ID = re.compile(r'"responseId"\s*:\s*"([^"\\]{1,200})"')
_GEMINI_MODEL = re.compile(r'"modelVersion"\s*:\s*"([^"\\]{1,200})"')
_GEMINI_FINISH = re.compile(r'"finishReason"\s*:\s*"([A-Z_]{1,64})"')


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def finish_reasons(obj: Any) -> list[str]:
    """The finish reasons an openai/anthropic response, chunk or event states."""
    reasons = []
    choices = field(obj, "choices")
    if isinstance(choices, list):
        reasons += [r for c in choices if isinstance(r := field(c, "finish_reason"), str)]
    stop = field(obj, "stop_reason")
    if isinstance(stop, str):
        reasons.append(stop)
    status = field(obj, "status")  # Responses API: completed / incomplete
    if isinstance(status, str) and field(obj, "object") == "response":
        reasons.append(status)
    return reasons


def info(obj: Any, finish: tuple[str, ...] | None = None) -> ResponseInfo | None:
    """The ``ResponseInfo`` of an openai/anthropic response, chunk or event (dict or
    model); ``finish``: the finish reasons a stream stated so far, instead of ``obj``'s."""
    if obj is None:
        return None
    reasons = finish if finish is not None else tuple(finish_reasons(obj))
    return ResponseInfo(id=_text(field(obj, "id")), model=_text(field(obj, "model")),
                        finish_reasons=tuple(reasons),
                        system_fingerprint=_text(field(obj, "system_fingerprint")))


def gemini_info(body: str, finish: tuple[str, ...] = ()) -> tuple[ResponseInfo,
                                                                  tuple[str, ...]]:
    """The ``ResponseInfo`` of a Gemini body or chunk, and its finish reasons so far."""
    reasons = finish + tuple(_GEMINI_FINISH.findall(body))
    ident, model = _GEMINI_ID.search(body), _GEMINI_MODEL.search(body)
    return ResponseInfo(id=ident.group(1) if ident else None,
                        model=model.group(1) if model else None,
                        finish_reasons=reasons), reasons
