"""Exact multimodal billing: header readers, the token rules, and the SDKs end to end."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from google.genai import types as genai_types

from llm_governor.testing import FakeProvider
from llm_governor.testing._media import image_size, parse_data_url, pdf_pages, url_image_size
from llm_governor.testing._multimodal import (
    anthropic_image_tokens,
    audio_tokens,
    gemini_image_tokens,
    openai_image_tokens,
)
from tests.testing._samples import b64, data_url, pdf, png, wav
from tests.testing.test_fake_provider import claude, gemini, genai_cost, oai


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


# ------------------------------------------------------------ header readers


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
@pytest.mark.parametrize("size", [(1, 1), (640, 480), (3000, 17)])
def test_image_size_reads_every_format(fmt: str, size: tuple[int, int]) -> None:
    pil = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    pil.new("RGB", size).save(buf, format=fmt)
    assert image_size(buf.getvalue()) == size
    if fmt == "WEBP":  # lossless (VP8L) and extended (VP8X) layouts too
        for options in ({"lossless": True}, {"exif": b"Exif\0\0"}):
            buf = io.BytesIO()
            pil.new("RGB", size).save(buf, format=fmt, **options)
            assert image_size(buf.getvalue()) == size


def test_image_size_of_generated_png_and_garbage() -> None:
    assert image_size(png(1024, 768)) == (1024, 768)
    assert image_size(b"") is None
    assert image_size(b"not an image at all") is None
    assert image_size(b"\xff\xd8\xff\xd9") is None  # JPEG without a frame header


def test_pdf_pages_data_urls_and_url_sizes() -> None:
    assert pdf_pages(pdf(3)) == 3  # "/Type /Page" and "/Type/Page", never "/Pages"
    assert pdf_pages(b"%PDF-1.4 nothing") == 1
    assert parse_data_url(data_url("image/png", b"abc")) == ("image/png", b"abc")
    assert parse_data_url("https://example.com/a.png") is None
    with pytest.raises(ValueError):
        parse_data_url("data:image/png;base64,@@@")
    assert url_image_size("https://x/a.png?w=300&h=200", (1, 1)) == (300, 200)
    assert url_image_size("https://x/a.png?w=300", (5, 6)) == (5, 6)


# ----------------------------------------------------------------- the rules


def test_openai_image_rule() -> None:
    assert openai_image_tokens(1024, 1024, "high") == 765  # the docs' examples
    assert openai_image_tokens(2048, 4096, "high") == 1105
    assert openai_image_tokens(4096, 8192, "low") == 85
    assert openai_image_tokens(512, 512, "auto") == 255
    assert openai_image_tokens(100, 100, "low", "gpt-4o-mini") == 2833
    assert openai_image_tokens(1024, 1024, "high", "gpt-4o-mini-2024-07-18") == 2833 + 4 * 5667


def test_anthropic_gemini_and_audio_rules() -> None:
    assert anthropic_image_tokens(1092, 1092) == 1590  # ceil(1092 * 1092 / 750)
    assert anthropic_image_tokens(2000, 1000) == 1640  # scaled to 1568 x 784 first
    assert gemini_image_tokens(384, 384) == 258
    assert gemini_image_tokens(385, 100) == 258  # one 768 tile
    assert gemini_image_tokens(1000, 800) == 4 * 258
    assert audio_tokens(1.5, 10) == 15 and audio_tokens(1.01, 10) == 11
    assert audio_tokens(2.0, 32) == 64


# -------------------------------------------------------------------- OpenAI


def _vision(image_part: dict[str, Any]) -> Any:
    text = {"type": "text", "text": "what is this?"}  # + "user" + "text": 21 bytes, 6 tokens
    return [{"role": "user", "content": [text, image_part]}]


@pytest.mark.parametrize(("model", "image_tokens"), [("gpt-4o", 765), ("gpt-4o-mini", 25501)])
def test_openai_chat_image_data_url(fake: FakeProvider, model: str, image_tokens: int) -> None:
    part = {"type": "image_url", "image_url": {"url": data_url("image/png", png(1024, 1024))}}
    reply = oai(fake).chat.completions.create(model=model, messages=_vision(part))
    assert reply.usage is not None and reply.usage.prompt_tokens == 6 + image_tokens
    (entry,) = fake.ledger.entries
    assert entry.input_tokens == 6 + image_tokens and entry.request_bytes > 1000
    assert entry.cost == genai_cost(entry, "openai") > 0


def test_openai_chat_image_urls_and_detail(fake: FakeProvider) -> None:
    client = oai(fake)
    cases = [
        ("https://example.com/cat.png?w=512&h=512", "auto", 255),
        ("https://example.com/cat.png", "high", 765),  # the default 2048 x 2048
        ("https://example.com/cat.png", "low", 85),
    ]
    for url, detail, tokens in cases:
        part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
        reply = client.chat.completions.create(model="gpt-4o", messages=_vision(part))
        assert reply.usage is not None and reply.usage.prompt_tokens == 6 + tokens
    with FakeProvider(url_image_size=(512, 512)) as small:
        part = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
        reply = oai(small).chat.completions.create(model="gpt-4o", messages=_vision(part))
        assert reply.usage is not None and reply.usage.prompt_tokens == 6 + 255


def test_openai_chat_audio_and_files() -> None:
    with FakeProvider(page_tokens=100, url_file_pages=3) as fake:
        client = oai(fake)

        def prompt_tokens(part: dict[str, Any]) -> int:
            messages: Any = [{"role": "user", "content": [part]}]  # "user": 1 token
            reply = client.chat.completions.create(model="gpt-4o", messages=messages)
            assert reply.usage is not None
            return reply.usage.prompt_tokens - 1

        wav_part = {"type": "input_audio", "input_audio": {"data": b64(wav(1.5)), "format": "wav"}}
        assert prompt_tokens(wav_part) == 15  # 10 tokens a second
        mp3 = {"type": "input_audio", "input_audio": {"data": b64(b"\1" * 8000), "format": "mp3"}}
        assert prompt_tokens(mp3) == 5  # 8000 bytes at 16 kB/s
        inline = {"type": "file", "file": {"file_data": data_url("application/pdf", pdf(2))}}
        assert prompt_tokens(inline) == 200
        bare = {"type": "file", "file": {"file_data": b64(pdf(4)), "filename": "a.pdf"}}
        assert prompt_tokens(bare) == 400
        assert prompt_tokens({"type": "file", "file": {"file_id": "file-abc"}}) == 300


def test_openai_responses_image_and_file(fake: FakeProvider) -> None:
    image = data_url("image/png", png(600, 2000))
    document = data_url("application/pdf", pdf(3))
    content = [
        {"type": "input_text", "text": "hi"},  # with "user", "input_text": 16 bytes, 4 tokens
        {"type": "input_image", "image_url": image, "detail": "high"},
        {"type": "input_file", "filename": "a.pdf", "file_data": document},
    ]
    prompt: Any = [{"role": "user", "content": content}]
    reply = oai(fake).responses.create(model="gpt-4o", input=prompt)
    # image: 2 x 4 tiles of 512 -> 85 + 8 * 170; file: 3 pages x 1500
    assert reply.usage is not None and reply.usage.input_tokens == 4 + 1445 + 4500
    assert fake.ledger.entries[0].input_tokens == 4 + 1445 + 4500


def test_undecodable_image_is_a_400_and_not_billed(fake: FakeProvider) -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError, match="invalid media"):
        oai(fake).chat.completions.create(model="gpt-4o", messages=_vision(part))
    (entry,) = fake.ledger.entries
    assert entry.status == 400 and not entry.billed and entry.cost == 0


def test_media_tokens_count_against_tpm() -> None:
    with FakeProvider(tpm=1000, window=5.0) as fake:
        client = oai(fake)
        part = {"type": "image_url", "image_url": {"url": "https://x/a.png?w=1024&h=1024"}}
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=_vision(part)
        )
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - (771 + 20))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-4o", messages=_vision(part))
        assert fake.ledger.max_tokens_in_window(5.0) == 791


# ----------------------------------------------------------------- Anthropic


def test_anthropic_image_and_document_blocks(fake: FakeProvider) -> None:
    client = claude(fake)
    model = "claude-3-5-haiku-latest"
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": b64(png(2000, 1000))},
    }
    text = {"type": "text", "text": "describe"}  # with "user", "text": 16 bytes, 4 tokens
    messages: Any = [{"role": "user", "content": [image, text]}]
    msg = client.messages.create(model=model, max_tokens=5, messages=messages)
    assert msg.usage.input_tokens == 4 + 1640
    assert client.messages.count_tokens(model=model, messages=messages).input_tokens == 4 + 1640

    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": b64(pdf(2))},
    }
    by_url = {"type": "image", "source": {"type": "url", "url": "https://x/y.png?w=100&h=75"}}
    messages = [{"role": "user", "content": [document, by_url, text]}]
    msg = client.messages.create(model=model, max_tokens=5, messages=messages)
    assert msg.usage.input_tokens == 4 + 3000 + 10  # 2 pages; ceil(100 * 75 / 750)
    billed = [e for e in fake.ledger.entries if e.metered]
    assert [e.input_tokens for e in billed] == [1644, 3014]
    assert all(e.cost == genai_cost(e, "anthropic") > 0 for e in billed)


def test_anthropic_bad_image_is_rejected(fake: FakeProvider) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    messages: Any = [{"role": "user", "content": [image]}]
    with pytest.raises(anthropic.BadRequestError):
        claude(fake).messages.create(
            model="claude-3-5-haiku-latest", max_tokens=5, messages=messages
        )


# -------------------------------------------------------------------- Gemini


def test_gemini_inline_image_audio_and_file_uri(fake: FakeProvider) -> None:
    client = gemini(fake)
    contents: Any = [
        genai_types.Part.from_bytes(data=png(1000, 800), mime_type="image/png"),
        genai_types.Part.from_bytes(data=wav(2.0), mime_type="audio/wav"),
        "what?",  # with the role "user": 9 bytes, 3 tokens
    ]
    reply = client.models.generate_content(model="gemini-2.0-flash", contents=contents)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata.prompt_token_count == 3 + 4 * 258 + 64

    linked: Any = [
        genai_types.Part.from_uri(file_uri="gs://b/x.png?w=300&h=300", mime_type="image/png"),
        "what?",
    ]
    reply = client.models.generate_content(model="gemini-2.0-flash", contents=linked)
    assert reply.usage_metadata is not None and reply.usage_metadata.prompt_token_count == 3 + 258
    entries = fake.ledger.entries
    assert [e.input_tokens for e in entries] == [1099, 261]
    assert all(e.cost == genai_cost(e, "google") > 0 for e in entries)
