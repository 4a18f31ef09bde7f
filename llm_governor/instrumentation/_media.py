"""Upper bounds of a request's image, audio and file input tokens, by the providers' rules.

Prompt text is bounded by its bytes (a token stands for at least one byte);
media are not, so each media part is bounded by its provider's documented
token rule, from the size its header gives where the request carries the
data, else by a documented per-part worst case. A part whose size nothing in
the request tells (a file id, a file or audio URL, a video) makes the input
unbounded: the pricer then bounds it by the model's context window, which no
input can exceed. The rules, per provider (tokens):

================  ==========================================================
OpenAI image      ``detail: low`` 85; else scaled to fit 2048×2048, shortest
                  side to 768, 85 + 170 per 512-px tile (gpt-4o-mini: 2833 +
                  5667 per tile); patch models (gpt-4.1-mini/nano, o4-mini,
                  gpt-5-mini/nano) 32-px patches, at most 1536, × their
                  multiplier. Unknown size: 8 tiles (1445; gpt-4o-mini 48169),
                  or 1536 patches.
Anthropic image   the long edge scaled to 1568 px, ⌈w×h/750⌉; unknown size 3279
Gemini image      ≤384×384: 258; else 258 per 768-px tile; unknown size 4128
OpenAI audio      10 per second (WAV header, else bytes at 8 kbit/s)
Gemini audio      32 per second (likewise); video: unbounded
PDF file          pages × 4445 (OpenAI), × 4600 (Anthropic), × 258 (Gemini)
================  ==========================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..media import b64_head, b64_length, image_size, pdf_pages, wav_seconds

__all__ = ["MediaBound", "anthropic_image_tokens", "gemini_image_tokens", "gemini_media",
           "media_bound", "openai_image_tokens"]

_AUDIO_BYTES_PER_SECOND = 1000  # 8 kbit/s: below any speech codec a provider accepts
_PATCH_MODELS = (("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("o4-mini", 1.72),
                 ("gpt-5-mini", 1.62), ("gpt-5-nano", 2.46))
_PAGE_TOKENS = {"openai": 4445, "anthropic": 4600, "gemini": 258}
_AUDIO_PER_SECOND = {"openai": 10, "gemini": 32}
ANTHROPIC_IMAGE_WORST = 3279
GEMINI_IMAGE_WORST = 4128


@dataclass(frozen=True, slots=True)
class MediaBound:
    """A request's input, bounded: text bytes, media and audio tokens, unsized media."""

    text_bytes: int
    media_tokens: int = 0
    audio_tokens: int = 0
    unbounded: bool = False


def openai_image_tokens(model: str, size: tuple[int, int] | None, detail: str | None) -> int:
    """OpenAI's image token rule for ``model`` (upper bound when ``size`` is unknown)."""
    for prefix, multiplier in _PATCH_MODELS:
        if model.startswith(prefix):
            if size is None:
                return math.ceil(1536 * multiplier)
            patches = min(1536, math.ceil(size[0] / 32) * math.ceil(size[1] / 32))
            return math.ceil(patches * multiplier)
    base, tile = (2833, 5667) if model.startswith("gpt-4o-mini") else (85, 170)
    if detail == "low":
        return base
    if size is None:
        return base + tile * 8
    width, height = (max(1, d) for d in size)
    fit = min(1.0, 2048 / max(width, height))
    w, h = width * fit, height * fit
    short = min(1.0, 768 / min(w, h))
    return base + tile * math.ceil(w * short / 512) * math.ceil(h * short / 512)


def anthropic_image_tokens(size: tuple[int, int] | None) -> int:
    """Anthropic's rule: ⌈w×h/750⌉ once the long edge is at most 1568 px."""
    if size is None:
        return ANTHROPIC_IMAGE_WORST
    w, h = (max(1, d) for d in size)
    fit = min(1.0, 1568 / max(w, h))
    return math.ceil(w * fit * h * fit / 750)


def gemini_image_tokens(size: tuple[int, int] | None) -> int:
    """Gemini's rule: 258 for a small image, else 258 per 768-px tile."""
    if size is None:
        return GEMINI_IMAGE_WORST
    w, h = size
    if w <= 384 and h <= 384:
        return 258
    return 258 * math.ceil(w / 768) * math.ceil(h / 768)


def _data_url(url: Any) -> tuple[str, str] | None:
    """``(mime type, base64 payload)`` of a ``data:`` URL."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    head, _, payload = url.partition(",")
    return head[5:].split(";", 1)[0], payload


class _Walk:
    """One walk over a request body, adding up its media parts by ``provider``'s rules."""

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.payload_bytes = 0  # base64 text not to count as prompt text
        self.media = 0
        self.audio = 0
        self.unbounded = False

    def visit(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                if isinstance(item, (dict, list)):
                    self.visit(item)
        elif isinstance(node, dict) and not self.part(node):
            for value in node.values():
                if isinstance(value, (dict, list)):
                    self.visit(value)

    def part(self, node: dict[str, Any]) -> bool:
        """Count ``node`` if it is a media part (True); else descend into it."""
        kind = node.get("type")
        if kind == "image_url" and isinstance(node.get("image_url"), Mapping):
            image = node["image_url"]
            self.image(image.get("url"), image.get("detail"))
        elif kind == "input_image":
            self.image(node.get("image_url"), node.get("detail"))
        elif kind == "input_audio" and isinstance(node.get("input_audio"), Mapping):
            audio = node["input_audio"]
            self.audio_b64(audio.get("data"), audio.get("format"))
        elif kind == "file" and isinstance(node.get("file"), Mapping):
            self.file(node["file"].get("file_data"))
        elif kind == "input_file":
            self.file(node.get("file_data"))
        elif kind in ("image", "document") and isinstance(node.get("source"), Mapping):
            self.anthropic_source(kind, node["source"])
        else:
            inline = node.get("inlineData", node.get("inline_data"))
            if isinstance(inline, Mapping):
                self.inline(inline.get("mimeType", inline.get("mime_type")), inline.get("data"))
                return True
            stored = node.get("fileData", node.get("file_data"))
            if isinstance(stored, Mapping):
                mime = stored.get("mimeType", stored.get("mime_type"))
                if isinstance(mime, str) and mime.startswith("image/"):
                    self.media += gemini_image_tokens(None)
                else:
                    self.unbounded = True
                return True
            return False
        return True

    def image(self, url: Any, detail: Any) -> None:
        size = None
        found = _data_url(url)
        if found is not None:
            self.payload_bytes += len(found[1])
            size = image_size(b64_head(found[1]))
        self.media += self.image_tokens(size, detail if isinstance(detail, str) else None)

    def image_tokens(self, size: tuple[int, int] | None, detail: str | None) -> int:
        if self.provider == "anthropic":
            return anthropic_image_tokens(size)
        if self.provider == "gemini":
            return gemini_image_tokens(size)
        return openai_image_tokens(self.model, size, detail)

    def audio_b64(self, data: Any, fmt: Any) -> None:
        if not isinstance(data, str):
            self.unbounded = True
            return
        self.payload_bytes += len(data)
        total = b64_length(data)
        seconds = wav_seconds(b64_head(data, 4096), total) if fmt in (None, "wav") else None
        if seconds is None:
            seconds = total / _AUDIO_BYTES_PER_SECOND
        self.audio += math.ceil(seconds * _AUDIO_PER_SECOND.get(self.provider, 32))

    def file(self, data: Any) -> None:
        if not isinstance(data, str) or not data:
            self.unbounded = True  # a file id or URL: its size is not in the request
            return
        found = _data_url(data)
        payload = found[1] if found is not None else data
        self.payload_bytes += len(data)
        self.pages(payload)

    def pages(self, payload: str) -> None:
        self.media += pdf_pages(b64_head(payload, len(payload))) * \
            _PAGE_TOKENS.get(self.provider, 4600)

    def anthropic_source(self, kind: str, source: Mapping[str, Any]) -> None:
        data = source.get("data")
        if source.get("type") == "base64" and isinstance(data, str):
            self.payload_bytes += len(data)
            if kind == "image":
                self.media += anthropic_image_tokens(image_size(b64_head(data)))
            elif source.get("media_type") == "application/pdf":
                self.pages(data)
            return
        if source.get("type") == "text":
            return  # plain-text documents are prompt text
        if kind == "image":
            self.media += anthropic_image_tokens(None)
        else:
            self.unbounded = True

    def inline(self, mime: Any, data: Any) -> None:
        if not isinstance(data, str):
            self.unbounded = True
            return
        self.payload_bytes += len(data)
        mime = mime if isinstance(mime, str) else ""
        if mime.startswith("image/"):
            self.media += gemini_image_tokens(image_size(b64_head(data)))
        elif mime.startswith("audio/"):
            self.audio_b64(data, "wav" if "wav" in mime else "other")
            self.payload_bytes -= len(data)  # counted once
        elif mime == "application/pdf":
            self.pages(data)
        else:
            self.unbounded = True  # video and the rest: no cheap bound


def _body_size(body: Any) -> int:
    """Bytes of the JSON body: an upper bound of the prompt text's tokens."""
    try:
        return len(json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                              default=str).encode())
    except (TypeError, ValueError):  # circular or exotic content: stay conservative
        return len(repr(body).encode())


def media_bound(provider: str, model: str | None, body: Any) -> MediaBound:
    """The input bound of a request body sent to ``provider`` ("openai", "anthropic",
    "gemini")."""
    walk = _Walk(provider, model or "")
    walk.visit(body)
    total = _body_size(body)
    return MediaBound(max(0, total - walk.payload_bytes), walk.media, walk.audio, walk.unbounded)


def gemini_media(body: Any) -> MediaBound:
    """:func:`media_bound` for a Gemini request."""
    return media_bound("gemini", None, body)
