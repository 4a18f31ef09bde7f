"""What every provider's wire format shares: the parsed call, the reply, accounting
rules, structured outputs and rendering helpers.

Provider wire formats: routing, accounting rules and response bodies.

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

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llm_governor.media import wav_seconds
from llm_governor.testing._ledger import ProviderName

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


def _text_words(n: int) -> list[str]:
    return [_WORDS[i % len(_WORDS)] for i in range(n)]


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


def _json(obj: object) -> Reply:
    return Reply(200, _dumps(obj))


def _stream(frames: list[bytes]) -> Reply:
    return Reply(200, content_type="text/event-stream; charset=utf-8", events=tuple(frames))


def _text_of(call: Call) -> str:
    return "".join(call.pieces)


def _finish(call: Call, stop: str, length: str) -> str:
    return length if call.truncated else stop


_QUOTA_STATUS: dict[ProviderName, int] = {
    "openai": 429,
    "anthropic": 400,
    "gemini": 429,
    "deepgram": 402,
}
