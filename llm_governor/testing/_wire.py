"""Provider wire formats: routing, accounting rules and response bodies.

Pure functions (no sockets), so the exact JSON each official SDK parses sits in
one readable place. Accounting rules, deterministic by design:

* input tokens = ceil(P / 4), where P is the UTF-8 byte length of every string
  value nested in the request's prompt fields, plus 4 per integer (token-id
  prompts count one token per id). Hence input tokens <= request body bytes
  for text prompts. Images, audio and documents in chat, responses, messages
  and Gemini prompts are not text: they add the providers' documented media
  tokens instead (see ``_multimodal``).
* output tokens = min(requested max, configured ``output_tokens``) per choice.
* audio seconds = WAV header duration if the body is a WAV file, else
  body bytes / ``audio_bytes_per_second`` (16 000 by default, i.e. 128 kbit/s);
  URL requests get a fixed ``url_audio_seconds``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from llm_governor.media import wav_seconds
from llm_governor.testing._ledger import ProviderName
from llm_governor.testing._multimodal import MediaError, count_prompt_tokens

JsonObj = dict[str, Any]

_WORDS = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
)

_PATHS: dict[str, tuple[ProviderName, str]] = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/responses": ("openai", "responses"),
    "/v1/embeddings": ("openai", "embeddings"),
    "/v1/completions": ("openai", "completions"),
    "/v1/messages": ("anthropic", "messages"),
    "/v1/messages/count_tokens": ("anthropic", "count_tokens"),
    "/v1/listen": ("deepgram", "listen"),
}
_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
_GEMINI_ACTIONS = {
    "generateContent": "generate",
    "streamGenerateContent": "generate",
    "embedContent": "embed",
    "batchEmbedContents": "embed",
    "countTokens": "count_tokens",
}
_FREE_ENDPOINTS = {"count_tokens"}


class BadRequestError(Exception):
    """The request cannot be understood (bad JSON, unknown path); answered with 400/404."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    """Knobs that shape responses and accounting."""

    output_tokens: int = 20
    url_audio_seconds: float = 60.0
    audio_bytes_per_second: int = 16_000
    embedding_dims: int = 16
    url_image_size: tuple[int, int] = (2048, 2048)  # images the fake cannot fetch
    page_tokens: int = 1500  # per PDF page (OpenAI files, Anthropic documents)
    url_file_pages: int = 10  # pages of a document given by file id or URL
    usage_always: bool = False  # OpenAI chat/completions streams always end with usage
    reasoning_tokens: int = 0  # billed output tokens an OpenAI/Gemini call spends reasoning
    cached_content_tokens: int = 1024  # tokens of a Gemini request's cachedContent


@dataclass
class Call:
    """A parsed request: what to bill, rate-limit and answer."""

    provider: ProviderName
    endpoint: str
    path: str
    model: str
    stream: bool = False
    metered: bool = True
    input_tokens: int = 0
    output_tokens: int = 0  # total over all choices
    pieces: list[str] = field(default_factory=list)  # text deltas of one choice
    choices: int = 1
    truncated: bool = False
    include_usage: bool = False  # end an OpenAI stream with a usage chunk
    usage_null: bool = False  # "usage": null on the other chunks (include_usage was asked)
    inputs: int = 0  # number of embedding vectors to return
    dims: int = 16
    as_base64: bool = False
    audio_seconds: float = 0.0
    audio_sha256: str = ""
    batch: bool = False  # gemini batchEmbedContents vs embedContent
    reasoning_tokens: int = 0  # the part of output_tokens spent reasoning (billed as output)
    service_tier: str | None = None  # OpenAI: the tier the response reports (and bills)
    cache_key: str = ""  # Anthropic: digest of the cacheable prompt prefix
    cache_tokens: int = 0  # Anthropic: tokens of that prefix
    cache_ttl: str = "5m"  # Anthropic: the prefix's cache TTL ("5m" / "1h")
    cache_read: int = 0  # input tokens read from a prompt cache (part of input_tokens)
    cache_write: int = 0  # input tokens written to a prompt cache (part of input_tokens)
    cache_write_1h: int = 0  # of which with the 1-hour TTL


@dataclass(frozen=True)
class Reply:
    """A response to send: a JSON body, or SSE frames sent with chunked encoding."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    events: tuple[bytes, ...] | None = None
    headers: tuple[tuple[str, str], ...] = ()


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


# --------------------------------------------------------------------- accounting


def _prompt_bytes(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return 4
    if isinstance(value, list):
        return sum(_prompt_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_prompt_bytes(v) for v in value.values())
    return 0


def count_input_tokens(*prompt_fields: object) -> int:
    """ceil(bytes of nested string values / 4), +1 per integer token id."""
    return math.ceil(sum(_prompt_bytes(v) for v in prompt_fields) / 4)


def _output_count(requested: object, configured: int) -> tuple[int, bool]:
    if isinstance(requested, int) and not isinstance(requested, bool) and requested >= 0:
        return min(requested, configured), requested < configured
    return configured, False


def audio_seconds(audio: bytes, bytes_per_second: int) -> float:
    """WAV header duration, else body size at the assumed bitrate; rounded to ms."""
    seconds = wav_seconds(audio)
    if seconds is None:
        seconds = len(audio) / bytes_per_second
    return round(seconds, 3)


# ---------------------------------------------------------- structured outputs


def schema_instance(schema: object, root: object = None, depth: int = 0) -> object:
    """A minimal JSON value valid for a (JSON / OpenAPI) schema, for ``parse`` helpers."""
    if not isinstance(schema, dict) or depth > 32:
        return "x"
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: object = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return schema_instance(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [
                o
                for o in options
                if not (isinstance(o, dict) and str(o.get("type")).lower() == "null")
            ]
            return schema_instance((usable or options)[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower() if kind is not None else ("object" if "properties" in schema else "")
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required")
        names = required if isinstance(required, list) else list(props)
        return {name: schema_instance(props.get(name, {}), root, depth + 1) for name in names}
    if kind == "array":
        count = int(schema.get("minItems") or 0)
        return [schema_instance(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema)


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    value = 1.0
    low, xlow, high = schema.get("minimum"), schema.get("exclusiveMinimum"), schema.get("maximum")
    if isinstance(low, (int, float)) and value < low:
        value = float(low)
    if isinstance(xlow, (int, float)) and value <= xlow:
        value = float(xlow) + 1
    if isinstance(high, (int, float)) and value > high:
        value = float(high)
    return math.ceil(value) if integer else value


_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "email": "x@example.com",
    "uri": "https://example.com",
}


def _string(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _STRING_FORMATS:
        return _STRING_FORMATS[fmt]
    return "x" * max(1, int(schema.get("minLength") or 1))


# ------------------------------------------------------------------ parsing


def _dig(obj: object, *keys: str) -> object:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _split(text: str, parts: int) -> list[str]:
    if not text:
        return []
    size = math.ceil(len(text) / max(1, min(parts, len(text))))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _text(call: Call, n: int, schema: object) -> None:
    """Fill ``call.pieces`` with n word tokens, or a schema instance split in n parts."""
    if schema is not None:
        call.pieces = _split(json.dumps(schema_instance(schema)), n)
        call.truncated = False  # parse helpers reject truncated JSON; keep them usable
    else:
        call.pieces = [("" if i == 0 else " ") + _WORDS[i % len(_WORDS)] for i in range(n)]


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
    provider, endpoint = call.provider, call.endpoint
    if provider == "openai":
        _parse_openai(call, req, conf, settings)
    elif provider == "anthropic":
        call.input_tokens = count_prompt_tokens(
            provider, call.model, settings, req.get("messages"), req.get("system")
        )
        if endpoint == "messages":
            _cache_prefix(call, req, settings)
        call.stream = bool(req.get("stream"))
        if endpoint == "messages":
            call.output_tokens, call.truncated = _output_count(req.get("max_tokens"), conf)
            fmt = _dig(req, "output_config", "format") or req.get("output_format")
            schema = _dig(fmt, "schema") if _dig(fmt, "type") == "json_schema" else None
            _text(call, call.output_tokens, schema)
    else:
        _parse_gemini(call, req, conf, settings)


_TIERS = frozenset({"default", "flex", "priority", "scale"})


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


def _parse_deepgram(
    endpoint: str,
    path: str,
    query: Mapping[str, list[str]],
    body: bytes,
    content_type: str,
    settings: Settings,
) -> Call:
    model = (query.get("model") or ["nova-3"])[0]
    call = Call("deepgram", endpoint, path, model)
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            req = json.loads(body or b"{}")
        except ValueError as exc:
            raise BadRequestError(f"invalid JSON body: {exc}") from exc
        if not isinstance(req, dict) or not isinstance(req.get("url"), str):
            raise BadRequestError("JSON body must be {'url': ...}")
        call.audio_seconds = settings.url_audio_seconds
    else:
        if not body:
            raise BadRequestError("empty audio body")
        call.audio_seconds = audio_seconds(body, settings.audio_bytes_per_second)
    call.audio_sha256 = hashlib.sha256(body).hexdigest()
    call.pieces = _text_words(settings.output_tokens)
    return call


def _text_words(n: int) -> list[str]:
    return [_WORDS[i % len(_WORDS)] for i in range(n)]


# ---------------------------------------------------------------- rendering


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _sse(data: object, event: str | None = None, *, crlf: bool = False) -> bytes:
    nl = "\r\n" if crlf else "\n"
    head = f"event: {event}{nl}" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {payload}{nl}{nl}".encode()


def new_id(prefix: str) -> str:
    """A random provider-style id such as ``msg_3f2a...``."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


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


def _json(obj: object) -> Reply:
    return Reply(200, _dumps(obj))


def _stream(frames: list[bytes]) -> Reply:
    return Reply(200, content_type="text/event-stream; charset=utf-8", events=tuple(frames))


def _text_of(call: Call) -> str:
    return "".join(call.pieces)


def _finish(call: Call, stop: str, length: str) -> str:
    return length if call.truncated else stop


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


def _deepgram_listen(call: Call) -> Reply:
    model_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"deepgram:{call.model}"))
    words = call.pieces
    step = call.audio_seconds / max(1, len(words))
    word_items = [
        {
            "word": w,
            "start": round(i * step, 3),
            "end": round((i + 1) * step, 3),
            "confidence": 0.99,
        }
        for i, w in enumerate(words)
    ]
    metadata = {
        "transaction_key": "deprecated",
        "request_id": str(uuid.uuid4()),
        "sha256": call.audio_sha256,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "duration": call.audio_seconds,
        "channels": 1,
        "models": [model_id],
        "model_info": {
            model_id: {
                "name": f"general-{call.model}",
                "version": "2025-01-01.0",
                "arch": call.model,
            }
        },
    }
    alternative = {"transcript": " ".join(words), "confidence": 0.99, "words": word_items}
    return _json({"metadata": metadata, "results": {"channels": [{"alternatives": [alternative]}]}})


# ------------------------------------------------------------------- errors

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
_QUOTA_STATUS: dict[ProviderName, int] = {
    "openai": 429,
    "anthropic": 400,
    "gemini": 429,
    "deepgram": 402,
}
_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


def quota_status(provider: ProviderName) -> int:
    """The status each provider uses for 'out of credit'."""
    return _QUOTA_STATUS[provider]


def error_reply(
    provider: ProviderName,
    status: int,
    *,
    reason: str | None = None,
    model: str = "",
    retry_after: float | None = None,
    message: str | None = None,
    limit: int | None = None,
) -> Reply:
    """A provider-shaped error; ``reason`` is requests/tokens/concurrency/quota or None.

    ``limit`` (the exceeded RPM/TPM) is reported in Gemini's QuotaFailure ``quotaValue``.
    """
    if message is None:
        message = _default_message(status, reason, model)
        if reason == "quota" and provider == "anthropic":
            message = "Your credit balance is too low to access the Anthropic API."
    body: JsonObj
    if provider == "openai":
        if reason == "quota":
            kind, code = "insufficient_quota", "insufficient_quota"
        elif status == 429:
            kind, code = ("tokens" if reason == "tokens" else "requests"), "rate_limit_exceeded"
        else:
            kind, code = ("server_error" if status >= 500 else "invalid_request_error"), None
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    elif provider == "anthropic":
        default = "api_error" if status >= 500 else "invalid_request_error"
        error = {"type": _ANTHROPIC_TYPES.get(status, default), "message": message}
        body = {"type": "error", "error": error, "request_id": new_id("req_")}
    elif provider == "gemini":
        google: JsonObj = {
            "code": status,
            "message": message,
            "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
        }
        if status == 429:
            details: list[JsonObj] = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [_gemini_violation(reason, model, limit)],
                }
            ]
            if retry_after is not None and reason != "quota":
                delay = f"{max(1, math.ceil(retry_after))}s"
                details.append(
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
                )
            google["details"] = details
        body = {"error": google}
    else:
        codes = {429: "TOO_MANY_REQUESTS", 402: "ASR_PAYMENT_REQUIRED", 400: "Bad Request"}
        default = "INTERNAL_SERVER_ERROR" if status >= 500 else "REQUEST_FAILED"
        body = {
            "err_code": codes.get(status, default),
            "err_msg": message,
            "request_id": str(uuid.uuid4()),
        }
    return Reply(status, _dumps(body))


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


def _default_message(status: int, reason: str | None, model: str) -> str:
    if reason == "quota":
        return _QUOTA_MESSAGE
    if reason == "concurrency":
        return "Too many concurrent requests. Please try again later."
    if status == 429:
        what = "tokens per min (TPM)" if reason == "tokens" else "requests per min (RPM)"
        return f"Rate limit reached for {model or 'this model'} on {what}. Please try again later."
    if status >= 500:
        return "The server had an error while processing your request. Sorry about that!"
    return f"Request failed with status {status}."
