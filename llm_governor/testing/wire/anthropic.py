"""Anthropic's wire format: messages (with prompt caching) and count_tokens."""

from __future__ import annotations

import hashlib

from llm_governor.testing._multimodal import count_prompt_tokens

from ._base import (
    Call,
    JsonObj,
    Reply,
    Settings,
    _dig,
    _dumps,
    _finish,
    _json,
    _output_count,
    _sse,
    _stream,
    _text,
    _text_of,
    new_id,
)


def _cache_prefix(call: Call, req: JsonObj, settings: Settings) -> None:
    """Anthropic prompt caching: the prompt up to its last ``cache_control`` block is
    the cacheable prefix (system blocks, then message content blocks, in order); the
    server resolves a read or a write against what it cached (see FakeProvider)."""
    parts: list[object] = []
    last, ttl = -1, "5m"
    system = req.get("system")
    blocks: list[object] = list(system) if isinstance(system, list) else [system]
    for message in req.get("messages") or []:
        content = _dig(message, "content")
        blocks += content if isinstance(content, list) else [content]
    for block in blocks:
        parts.append(block)
        control = _dig(block, "cache_control")
        if isinstance(control, dict):
            last, ttl = len(parts), "1h" if control.get("ttl") == "1h" else "5m"
    if last < 0:
        return
    prefix = parts[:last]
    call.cache_tokens = min(call.input_tokens,
                            count_prompt_tokens("anthropic", call.model, settings, prefix))
    call.cache_ttl = ttl
    call.cache_key = hashlib.sha256(_dumps([call.model, prefix])).hexdigest()


def _anthropic_messages(call: Call) -> Reply:
    stop = _finish(call, "end_turn", "max_tokens")
    usage = {  # input_tokens exclude the cache reads and writes, as Anthropic counts them
        "input_tokens": call.input_tokens - call.cache_read - call.cache_write,
        "output_tokens": call.output_tokens,
        "cache_creation_input_tokens": call.cache_write,
        "cache_read_input_tokens": call.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": call.cache_write - call.cache_write_1h,
            "ephemeral_1h_input_tokens": call.cache_write_1h,
        },
        "service_tier": "standard",
    }
    message: JsonObj = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": [{"type": "text", "text": _text_of(call)}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    if not call.stream:
        return _json(message)
    start_usage = {**usage, "output_tokens": min(1, call.output_tokens)}

    def frame(kind: str, **data: object) -> bytes:
        return _sse({"type": kind, **data}, kind)

    frames = [
        frame(
            "message_start",
            message={**message, "content": [], "stop_reason": None, "usage": start_usage},
        ),
        frame("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        frame("ping"),
    ]
    frames += [
        frame("content_block_delta", index=0, delta={"type": "text_delta", "text": p})
        for p in call.pieces
    ]
    frames += [
        frame("content_block_stop", index=0),
        frame("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage=usage),
        frame("message_stop"),
    ]
    return _stream(frames)


def _anthropic_count(call: Call) -> Reply:
    return _json({"input_tokens": call.input_tokens})


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _parse_anthropic(call: Call, req: JsonObj, conf: int, settings: Settings) -> None:
    call.input_tokens = count_prompt_tokens(
        "anthropic", call.model, settings, req.get("messages"), req.get("system")
    )
    if call.endpoint == "messages":
        _cache_prefix(call, req, settings)
    call.stream = bool(req.get("stream"))
    if call.endpoint == "messages":
        call.output_tokens, call.truncated = _output_count(req.get("max_tokens"), conf)
        fmt = _dig(req, "output_config", "format") or req.get("output_format")
        schema = _dig(fmt, "schema") if _dig(fmt, "type") == "json_schema" else None
        _text(call, call.output_tokens, schema)
