"""Provider wire formats, one module per provider: routing, parsing a request into a
:class:`Call`, and the response each official SDK parses. Pure functions (no sockets)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from llm_governor.testing._ledger import ProviderName
from llm_governor.testing._multimodal import MediaError

from ._base import (
    _FREE_ENDPOINTS,
    _PATHS,
    BadRequestError,
    Call,
    JsonObj,
    Reply,
    Settings,
    count_input_tokens,
    new_id,
)
from .anthropic import _anthropic_count, _anthropic_messages, _parse_anthropic
from .deepgram import _deepgram_listen, _parse_deepgram
from .errors import error_reply, quota_status
from .gemini import (
    _GEMINI_ACTIONS,
    _GEMINI_PATH,
    _gemini_count,
    _gemini_embed,
    _gemini_generate,
    _parse_gemini,
)
from .openai import (
    _openai_chat,
    _openai_completions,
    _openai_embeddings,
    _openai_responses,
    _parse_openai,
)

__all__ = ["BadRequestError", "Call", "Reply", "Settings", "count_input_tokens", "error_reply",
           "new_id", "parse_call", "quota_status", "render", "route"]


def route(path: str) -> tuple[ProviderName, str, str | None] | None:
    """Map a request path to ``(provider, endpoint, model-in-path)``."""
    path = path.rstrip("/")
    if path in _PATHS:
        provider, endpoint = _PATHS[path]
        return provider, endpoint, None
    match = _GEMINI_PATH.match(path)
    if match and match.group(2) in _GEMINI_ACTIONS:
        return "gemini", _GEMINI_ACTIONS[match.group(2)], match.group(1)
    return None


def parse_call(
    provider: ProviderName,
    endpoint: str,
    path: str,
    path_model: str | None,
    query: Mapping[str, list[str]],
    body: bytes,
    content_type: str,
    settings: Settings,
) -> Call:
    """Turn a raw request into a :class:`Call`; raises :class:`BadRequestError`."""
    if provider == "deepgram":
        return _parse_deepgram(endpoint, path, query, body, content_type, settings)
    try:
        req = json.loads(body or b"{}")
    except ValueError as exc:
        raise BadRequestError(f"invalid JSON body: {exc}") from exc
    if not isinstance(req, dict):
        raise BadRequestError("request body must be a JSON object")
    model = path_model or str(req.get("model") or "")
    call = Call(provider, endpoint, path, model, metered=endpoint not in _FREE_ENDPOINTS)
    try:
        _parse_json_call(call, req, settings)
    except MediaError as exc:
        raise BadRequestError(f"invalid media in the request: {exc}") from exc
    return call


def _parse_json_call(call: Call, req: JsonObj, settings: Settings) -> None:
    conf = settings.output_tokens
    provider = call.provider
    if provider == "openai":
        _parse_openai(call, req, conf, settings)
    elif provider == "anthropic":
        _parse_anthropic(call, req, conf, settings)
    else:
        _parse_gemini(call, req, conf, settings)


def render(call: Call) -> Reply:
    """The 200 response for an admitted call, JSON or SSE."""
    renderers = {
        ("openai", "chat"): _openai_chat,
        ("openai", "responses"): _openai_responses,
        ("openai", "embeddings"): _openai_embeddings,
        ("openai", "completions"): _openai_completions,
        ("anthropic", "messages"): _anthropic_messages,
        ("anthropic", "count_tokens"): _anthropic_count,
        ("gemini", "generate"): _gemini_generate,
        ("gemini", "embed"): _gemini_embed,
        ("gemini", "count_tokens"): _gemini_count,
        ("deepgram", "listen"): _deepgram_listen,
    }
    return renderers[(call.provider, call.endpoint)](call)
