"""Gemini's wire format: generateContent (and its stream), embeddings, countTokens,
and its quota errors."""

from __future__ import annotations

import re

from llm_governor.testing._multimodal import count_prompt_tokens

from ._base import (
    Call,
    JsonObj,
    Reply,
    Settings,
    _dig,
    _finish,
    _json,
    _output_count,
    _sse,
    _stream,
    _text,
    _text_of,
    new_id,
)
from .openai import _vector

_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")


_GEMINI_ACTIONS = {
    "generateContent": "generate",
    "streamGenerateContent": "generate",
    "embedContent": "embed",
    "batchEmbedContents": "embed",
    "countTokens": "count_tokens",
}


def _parse_gemini(call: Call, req: JsonObj, conf: int, settings: Settings) -> None:
    if call.endpoint == "embed":
        requests = req.get("requests")
        call.batch = isinstance(requests, list)
        contents = (
            [_dig(r, "content") for r in requests]
            if isinstance(requests, list)
            else [req.get("content")]
        )
        call.input_tokens = count_prompt_tokens("gemini", call.model, settings, contents)
        call.inputs = len(contents)
        first = requests[0] if isinstance(requests, list) and requests else req
        dims = _dig(first, "outputDimensionality")
        call.dims = dims if isinstance(dims, int) and dims > 0 else settings.embedding_dims
        return
    call.input_tokens = count_prompt_tokens(
        "gemini", call.model, settings, req.get("contents"), req.get("systemInstruction")
    )
    if call.endpoint == "count_tokens":
        return
    if isinstance(req.get("cachedContent"), str):  # a context cache: its tokens are read
        call.cache_read = settings.cached_content_tokens
        call.input_tokens += call.cache_read
    call.stream = call.path.endswith(":streamGenerateContent")
    gen = req.get("generationConfig")
    call.output_tokens, call.truncated = _output_count(_dig(gen, "maxOutputTokens"), conf)
    call.reasoning_tokens = min(settings.reasoning_tokens, call.output_tokens)
    schema = _dig(gen, "responseJsonSchema") or _dig(gen, "responseSchema")
    if schema is None and _dig(gen, "responseMimeType") == "application/json":
        schema = {"type": "object"}
    _text(call, call.output_tokens, schema)


def _gemini_usage(call: Call, output_tokens: int) -> JsonObj:
    thoughts = min(call.reasoning_tokens, output_tokens)
    usage: JsonObj = {
        "promptTokenCount": call.input_tokens,  # cached content included, as Gemini counts
        "candidatesTokenCount": output_tokens - thoughts,  # thoughts counted apart
        "totalTokenCount": call.input_tokens + output_tokens,
    }
    if call.cache_read:
        usage["cachedContentTokenCount"] = call.cache_read
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _gemini_generate(call: Call) -> Reply:
    finish = _finish(call, "STOP", "MAX_TOKENS")
    base = {"modelVersion": call.model, "responseId": new_id("")}
    if not call.stream:
        whole: JsonObj = {
            "content": {"parts": [{"text": _text_of(call)}], "role": "model"},
            "finishReason": finish,
            "index": 0,
        }
        return _json(
            {
                "candidates": [whole],
                "usageMetadata": _gemini_usage(call, call.output_tokens),
                **base,
            }
        )
    frames: list[bytes] = []
    pieces = call.pieces or [""]
    for number, piece in enumerate(pieces, start=1):
        candidate: JsonObj = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
        last = number == len(pieces)
        if last:
            candidate["finishReason"] = finish
        done = call.output_tokens if last else min(number, call.output_tokens)
        chunk = {"candidates": [candidate], "usageMetadata": _gemini_usage(call, done), **base}
        frames.append(_sse(chunk, crlf=True))
    return _stream(frames)


def _gemini_embed(call: Call) -> Reply:
    embeddings = [{"values": _vector(f"{call.model}:{i}", call.dims)} for i in range(call.inputs)]
    usage = {"promptTokenCount": call.input_tokens, "totalTokenCount": call.input_tokens}
    if call.batch:
        return _json({"embeddings": embeddings, "usageMetadata": usage})
    return _json({"embedding": embeddings[0], "usageMetadata": usage})


def _gemini_count(call: Call) -> Reply:
    return _json({"totalTokens": call.input_tokens})


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


_GEMINI_QUOTAS = {
    # reason: (quotaMetric suffix, quotaId) as Google reports them for the paid tier
    "tokens": (
        "generate_content_paid_tier_input_token_count",
        "GenerateContentPaidTierInputTokensPerModelPerMinute",
    ),
    "quota": (
        "generate_content_free_tier_requests",
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
    ),
}


_GEMINI_REQUESTS_QUOTA = (
    "generate_content_paid_tier_requests",
    "GenerateRequestsPerMinutePerProjectPerModel",
)


def _gemini_violation(reason: str | None, model: str, limit: int | None) -> JsonObj:
    """One ``QuotaFailure`` violation; a per-day quotaId marks an exhausted daily quota."""
    metric, quota_id = _GEMINI_QUOTAS.get(reason or "", _GEMINI_REQUESTS_QUOTA)
    violation: JsonObj = {
        "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": model or "unknown"},
    }
    if limit is not None:
        violation["quotaValue"] = str(limit)
    return violation
