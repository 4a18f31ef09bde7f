"""Input tokens of multimodal prompts, following each provider's documented rules.

The fake bills images, audio and documents the way the real providers say they
do, so a governor's upper bound for such prompts can be tested against an
exact server-side count. A prompt's tokens are::

    ceil(text bytes / 4) + sum of each media part's tokens

where *text bytes* are the UTF-8 bytes of every string value outside media
parts (plus 4 per integer, as in ``wire.count_input_tokens``): a media
part's own fields (its base64 payload, URL, mime type, detail...) are never
counted as text. Media parts recognised:

* OpenAI chat: ``image_url``, ``input_audio`` and ``file`` content parts;
  Responses: ``input_image``, ``input_audio`` and ``input_file`` items.
* Anthropic: ``image`` and ``document`` blocks (base64, url or file sources).
* Gemini: ``inlineData`` / ``fileData`` parts with image, audio or PDF mime types
  (other mime types fall back to the text rule).

Media the fake cannot fetch (URLs, file ids) uses the settings' defaults; an
image URL's ``?w=..&h=..`` query sets its size. Undecodable inline media is a
:class:`MediaError`, answered with 400 as the real providers do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from llm_governor.media import wav_seconds
from llm_governor.testing._ledger import ProviderName
from llm_governor.testing._media import (
    b64decode,
    image_size,
    parse_data_url,
    pdf_pages,
    url_image_size,
)

GEMINI_TOKENS_PER_PAGE = 258


class MediaError(ValueError):
    """Inline media that cannot be decoded (bad base64, unreadable image header)."""


class MediaSettings(Protocol):
    """The settings the media rules read (``wire.Settings`` satisfies it)."""

    @property
    def url_image_size(self) -> tuple[int, int]: ...
    @property
    def page_tokens(self) -> int: ...
    @property
    def url_file_pages(self) -> int: ...
    @property
    def audio_bytes_per_second(self) -> int: ...
    @property
    def url_audio_seconds(self) -> float: ...


# ------------------------------------------------------------------ the rules


def _scale_to_fit(width: int, height: int, longest: int) -> tuple[int, int]:
    """Scale down (never up) so the longer side is at most ``longest`` px; floors."""
    big = max(width, height)
    if big <= longest:
        return width, height
    return max(1, width * longest // big), max(1, height * longest // big)


def openai_image_tokens(width: int, height: int, detail: str = "auto", model: str = "") -> int:
    """OpenAI vision pricing (platform.openai.com/docs/guides/images-vision, "Calculating costs").

    ``low`` detail costs the base alone. ``high``/``auto``: fit within 2048x2048,
    then scale down so the shortest side is at most 768 px, and add a per-tile
    price for each 512 px tile: base + per_tile * ceil(w/512) * ceil(h/512).
    Base/per-tile are 85/170, and 2833/5667 for ``gpt-4o-mini*`` models.
    """
    base, per_tile = (2833, 5667) if model.startswith("gpt-4o-mini") else (85, 170)
    if detail == "low":
        return base
    w, h = _scale_to_fit(width, height, 2048)
    short = min(w, h)
    if short > 768:
        w, h = max(1, w * 768 // short), max(1, h * 768 // short)
    return base + per_tile * math.ceil(w / 512) * math.ceil(h / 512)


def anthropic_image_tokens(width: int, height: int) -> int:
    """Anthropic vision (docs.anthropic.com, "Vision", "Calculate image costs").

    Images whose long edge exceeds 1568 px are scaled down to 1568 first;
    tokens = ceil(width * height / 750).
    """
    w, h = _scale_to_fit(width, height, 1568)
    return math.ceil(w * h / 750)


def gemini_image_tokens(width: int, height: int) -> int:
    """Gemini (ai.google.dev/gemini-api/docs/tokens, "Multimodal tokens").

    258 tokens when both sides are at most 384 px; larger images are cut into
    768x768 tiles of 258 tokens each: ceil(w/768) * ceil(h/768) * 258.
    """
    if width <= 384 and height <= 384:
        return 258
    return math.ceil(width / 768) * math.ceil(height / 768) * 258


def audio_tokens(seconds: float, per_second: int) -> int:
    """Audio input tokens: ``per_second`` tokens per second, rounded up.

    OpenAI chat ``input_audio``: 10 per second; Gemini: 32 per second
    (ai.google.dev/gemini-api/docs/audio, "Technical details").
    """
    return max(0, math.ceil(seconds * per_second - 1e-9))


OPENAI_AUDIO_TOKENS_PER_SECOND = 10
GEMINI_AUDIO_TOKENS_PER_SECOND = 32


def document_tokens(pages: int, page_tokens: int) -> int:
    """PDF input: a fixed ``page_tokens`` per page (the providers bill each page's
    text plus its page image, so a flat per-page figure is the fake's model)."""
    return pages * page_tokens


def audio_duration(audio: bytes, bytes_per_second: int) -> float:
    """WAV header duration, else ``len / bytes_per_second`` (128 kbit/s by default)."""
    seconds = wav_seconds(audio)
    return len(audio) / bytes_per_second if seconds is None else seconds


# ------------------------------------------------------------------ the walk


@dataclass(frozen=True)
class _Context:
    provider: ProviderName
    model: str
    settings: MediaSettings


def count_prompt_tokens(
    provider: ProviderName, model: str, settings: MediaSettings, *prompt_fields: object
) -> int:
    """Input tokens of the prompt fields: text rule for text, media rules for media."""
    ctx = _Context(provider, model, settings)
    text_bytes = media = 0
    for value in prompt_fields:
        t, m = _walk(value, ctx)
        text_bytes += t
        media += m
    return math.ceil(text_bytes / 4) + media


def _walk(value: object, ctx: _Context) -> tuple[int, int]:
    """``(text bytes, media tokens)`` of a JSON value."""
    if isinstance(value, str):
        return len(value.encode("utf-8")), 0
    if isinstance(value, bool) or value is None:
        return 0, 0
    if isinstance(value, int):
        return 4, 0
    if isinstance(value, dict):
        tokens = _media_tokens(value, ctx)
        if tokens is not None:
            return 0, tokens
        items: list[object] = list(value.values())
    elif isinstance(value, list):
        items = value
    else:
        return 0, 0
    text = media = 0
    for item in items:
        t, m = _walk(item, ctx)
        text += t
        media += m
    return text, media


def _get(obj: object, *keys: str) -> object:
    """The first present key of a mapping (camelCase and snake_case spellings)."""
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj:
                return obj[key]
    return None


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _decode(text: str) -> bytes:
    try:
        return b64decode(text)
    except ValueError as exc:
        raise MediaError(str(exc)) from exc


def _data_url(url: str) -> tuple[str, bytes] | None:
    try:
        return parse_data_url(url)
    except ValueError as exc:
        raise MediaError(str(exc)) from exc


def _image_bytes_size(data: bytes) -> tuple[int, int]:
    size = image_size(data)
    if size is None:
        raise MediaError("could not read the image (PNG, JPEG, GIF or WebP expected)")
    return size


def _url_size(url: str, ctx: _Context) -> tuple[int, int]:
    """Size of an image given by URL: inline data URLs are read, others use the default."""
    inline = _data_url(url)
    if inline is not None:
        return _image_bytes_size(inline[1])
    return url_image_size(url, ctx.settings.url_image_size)


def _file_pages(file_data: str) -> int:
    inline = _data_url(file_data)
    return pdf_pages(inline[1] if inline is not None else _decode(file_data))


def _media_tokens(part: Mapping[str, object], ctx: _Context) -> int | None:
    """Tokens of a media part, or None when ``part`` is not one."""
    if ctx.provider == "openai":
        return _openai_part(part, ctx)
    if ctx.provider == "anthropic":
        return _anthropic_block(part, ctx)
    if ctx.provider == "gemini":
        return _gemini_part(part, ctx)
    return None


def _openai_part(part: Mapping[str, object], ctx: _Context) -> int | None:
    kind = part.get("type")
    s = ctx.settings
    if kind == "image_url":  # chat: {"image_url": {"url": ..., "detail": ...}}
        inner = part.get("image_url")
        url = _str(_get(inner, "url")) if isinstance(inner, Mapping) else _str(inner)
        detail = _str(_get(inner, "detail")) or "auto"
        return openai_image_tokens(*_url_size(url, ctx), detail, ctx.model)
    if kind == "input_image":  # responses: {"image_url": ... | "file_id": ..., "detail": ...}
        url = _str(part.get("image_url"))
        size = _url_size(url, ctx) if url else s.url_image_size
        return openai_image_tokens(*size, _str(part.get("detail")) or "auto", ctx.model)
    if kind == "input_audio":
        inner = part.get("input_audio")
        data = _str(_get(inner, "data")) if isinstance(inner, Mapping) else _str(part.get("data"))
        seconds = audio_duration(_decode(data), s.audio_bytes_per_second)
        return audio_tokens(seconds, OPENAI_AUDIO_TOKENS_PER_SECOND)
    if kind in ("file", "input_file"):
        inner = part.get("file") if kind == "file" else part
        file_data = _str(_get(inner, "file_data"))
        pages = _file_pages(file_data) if file_data else s.url_file_pages
        return document_tokens(pages, s.page_tokens)
    return None


def _anthropic_block(block: Mapping[str, object], ctx: _Context) -> int | None:
    kind = block.get("type")
    source = block.get("source")
    if kind not in ("image", "document") or not isinstance(source, Mapping):
        return None
    s = ctx.settings
    source_type = source.get("type")
    if kind == "image":
        if source_type == "base64":
            size = _image_bytes_size(_decode(_str(source.get("data"))))
        elif source_type == "url":
            size = _url_size(_str(source.get("url")), ctx)
        else:  # "file" (Files API) and anything else the fake cannot see
            size = s.url_image_size
        return anthropic_image_tokens(*size)
    if source_type == "base64":
        return document_tokens(pdf_pages(_decode(_str(source.get("data")))), s.page_tokens)
    if source_type in ("url", "file"):
        return document_tokens(s.url_file_pages, s.page_tokens)
    return None  # plain-text / content documents: their text is counted as text


def _gemini_part(part: Mapping[str, object], ctx: _Context) -> int | None:
    inline = _get(part, "inlineData", "inline_data")
    linked = _get(part, "fileData", "file_data")
    blob = inline if isinstance(inline, Mapping) else linked
    if not isinstance(blob, Mapping):
        return None
    mime = _str(_get(blob, "mimeType", "mime_type")).lower()
    s = ctx.settings
    data: bytes | None = None
    if blob is inline:
        data = _decode(_str(blob.get("data")))
    if mime.startswith("image/"):
        if data is not None:
            return gemini_image_tokens(*_image_bytes_size(data))
        uri = _str(_get(blob, "fileUri", "file_uri"))
        return gemini_image_tokens(*url_image_size(uri, s.url_image_size))
    if mime.startswith("audio/"):
        seconds = (
            s.url_audio_seconds if data is None else audio_duration(data, s.audio_bytes_per_second)
        )
        return audio_tokens(seconds, GEMINI_AUDIO_TOKENS_PER_SECOND)
    if mime == "application/pdf":
        pages = s.url_file_pages if data is None else pdf_pages(data)
        return pages * GEMINI_TOKENS_PER_PAGE
    return None
