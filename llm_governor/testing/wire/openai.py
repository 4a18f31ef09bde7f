"""OpenAI's wire format: chat, completions, responses, embeddings."""

from __future__ import annotations

import base64
import hashlib
import struct
import time

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
    count_input_tokens,
    new_id,
)

_TIERS = frozenset({"default", "flex", "priority", "scale"})


def _parse_openai(call: Call, req: JsonObj, conf: int, settings: Settings) -> None:
    call.stream = bool(req.get("stream"))
    if call.endpoint in ("chat", "responses", "completions"):
        tier = req.get("service_tier")
        call.service_tier = tier if tier in _TIERS else "default"
    asked = bool(_dig(req, "stream_options", "include_usage"))
    # A server that always sends usage ignores stream_options: it never marks the
    # other chunks with "usage": null, as api.openai.com does when asked.
    always = settings.usage_always and call.endpoint in ("chat", "completions")
    call.usage_null = asked and not always
    call.include_usage = asked or always
    if call.endpoint == "embeddings":
        items = req.get("input")
        call.input_tokens = count_input_tokens(items)
        many = isinstance(items, list) and bool(items) and not isinstance(items[0], int)
        call.inputs = len(items) if many and isinstance(items, list) else 1
        dims = req.get("dimensions")
        call.dims = dims if isinstance(dims, int) and dims > 0 else settings.embedding_dims
        call.as_base64 = req.get("encoding_format") == "base64"
        return
    schema: object = None
    if call.endpoint == "chat":
        call.input_tokens = count_prompt_tokens("openai", call.model, settings, req.get("messages"))
        requested = req.get("max_completion_tokens")
        if requested is None:
            requested = req.get("max_tokens")
        rf = req.get("response_format")
        if _dig(rf, "type") == "json_schema":
            schema = _dig(rf, "json_schema", "schema") or {}
        elif _dig(rf, "type") == "json_object":
            schema = {"type": "object"}
    elif call.endpoint == "responses":
        call.input_tokens = count_prompt_tokens(
            "openai", call.model, settings, req.get("input"), req.get("instructions")
        )
        requested = req.get("max_output_tokens")
        if _dig(req, "text", "format", "type") == "json_schema":
            schema = _dig(req, "text", "format", "schema") or {}
    else:  # legacy completions
        call.input_tokens = count_input_tokens(req.get("prompt"))
        requested = req.get("max_tokens")
    n = req.get("n") if call.endpoint != "responses" else 1
    call.choices = n if isinstance(n, int) and n > 0 else 1
    per_choice, call.truncated = _output_count(requested, conf)
    call.output_tokens = per_choice * call.choices
    if call.endpoint != "completions":  # within the output cap, as max_completion_tokens
        call.reasoning_tokens = min(settings.reasoning_tokens, call.output_tokens)
    _text(call, per_choice, schema)


def _openai_usage(call: Call) -> JsonObj:
    return {
        "prompt_tokens": call.input_tokens,
        "completion_tokens": call.output_tokens,  # reasoning included
        "total_tokens": call.input_tokens + call.output_tokens,
        "prompt_tokens_details": {"cached_tokens": call.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": call.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_chat(call: Call) -> Reply:
    ident, created = new_id("chatcmpl-"), int(time.time())
    base = {"id": ident, "created": created, "model": call.model, "system_fingerprint": "fp_fake",
            "service_tier": call.service_tier or "default"}
    finish = _finish(call, "stop", "length")
    if not call.stream:
        message: JsonObj = {
            "role": "assistant",
            "content": _text_of(call),
            "refusal": None,
            "annotations": [],
        }
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(call.choices)
        ]
        return _json(
            {**base, "object": "chat.completion", "choices": choices, "usage": _openai_usage(call)}
        )
    chunk = {**base, "object": "chat.completion.chunk"}
    if call.usage_null:
        chunk["usage"] = None  # the real API sends null usage on every chunk but the last

    def frame(choice: JsonObj) -> bytes:
        return _sse({**chunk, "choices": [choice]})

    frames: list[bytes] = []
    for i in range(call.choices):
        delta = {"role": "assistant", "content": "", "refusal": None}
        frames.append(frame({"index": i, "delta": delta, "logprobs": None, "finish_reason": None}))
        for piece in call.pieces:
            frames.append(
                frame(
                    {
                        "index": i,
                        "delta": {"content": piece},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            )
        frames.append(frame({"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}))
    if call.include_usage:
        frames.append(_sse({**chunk, "choices": [], "usage": _openai_usage(call)}))
    frames.append(_sse("[DONE]"))
    return _stream(frames)


def _openai_completions(call: Call) -> Reply:
    base = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": call.model,
    }
    finish = _finish(call, "stop", "length")
    usage = {
        "prompt_tokens": call.input_tokens,
        "completion_tokens": call.output_tokens,
        "total_tokens": call.input_tokens + call.output_tokens,
    }
    if not call.stream:
        choices = [
            {"text": _text_of(call), "index": i, "logprobs": None, "finish_reason": finish}
            for i in range(call.choices)
        ]
        return _json({**base, "choices": choices, "usage": usage})
    if call.usage_null:
        base["usage"] = None  # as on chat streams: null on every chunk but the last
    frames: list[bytes] = []
    for i in range(call.choices):
        for piece in call.pieces:
            frames.append(
                _sse(
                    {
                        **base,
                        "choices": [
                            {"text": piece, "index": i, "logprobs": None, "finish_reason": None}
                        ],
                    }
                )
            )
        frames.append(
            _sse(
                {
                    **base,
                    "choices": [
                        {"text": "", "index": i, "logprobs": None, "finish_reason": finish}
                    ],
                }
            )
        )
    if call.include_usage:
        frames.append(_sse({**base, "choices": [], "usage": usage}))
    frames.append(_sse("[DONE]"))
    return _stream(frames)


def _openai_embeddings(call: Call) -> Reply:
    data = []
    for index in range(call.inputs):
        vector = _vector(f"{call.model}:{index}", call.dims)
        embedding: object = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if call.as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": call.input_tokens, "total_tokens": call.input_tokens}
    return _json({"object": "list", "data": data, "model": call.model, "usage": usage})


def _vector(seed: str, dims: int) -> list[float]:
    digest = b""
    while len(digest) < dims:
        digest += hashlib.sha256(f"{seed}:{len(digest)}".encode()).digest()
    return [round(b / 127.5 - 1.0, 4) for b in digest[:dims]]


def _openai_responses(call: Call) -> Reply:
    ident, msg_id = new_id("resp_"), new_id("msg_")
    text = _text_of(call)
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    message = {
        "type": "message",
        "id": msg_id,
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }
    usage = {
        "input_tokens": call.input_tokens,
        "input_tokens_details": {"cached_tokens": call.cache_read},
        "output_tokens": call.output_tokens,  # reasoning included
        "output_tokens_details": {"reasoning_tokens": call.reasoning_tokens},
        "total_tokens": call.input_tokens + call.output_tokens,
    }
    response: JsonObj = {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if call.truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if call.truncated else None,
        "error": None,
        "model": call.model,
        "output": [message],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "service_tier": call.service_tier or "default",
        "usage": usage,
    }
    if not call.stream:
        return _json(response)
    seq = iter(range(1_000_000))

    def frame(kind: str, **data: object) -> bytes:
        return _sse({"type": kind, "sequence_number": next(seq), **data}, kind)

    started = {
        **response,
        "status": "in_progress",
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    ids = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    frames = [
        frame("response.created", response=started),
        frame("response.in_progress", response=started),
        frame(
            "response.output_item.added",
            output_index=0,
            item={**message, "status": "in_progress", "content": []},
        ),
        frame("response.content_part.added", **ids, part={**part, "text": ""}),
    ]
    frames += [
        frame("response.output_text.delta", **ids, delta=p, logprobs=[]) for p in call.pieces
    ]
    frames += [
        frame("response.output_text.done", **ids, text=text, logprobs=[]),
        frame("response.content_part.done", **ids, part=part),
        frame("response.output_item.done", output_index=0, item=message),
        frame("response.incomplete" if call.truncated else "response.completed", response=response),
    ]
    return _stream(frames)
