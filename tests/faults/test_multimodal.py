"""Multimodal prompts: the reservation bounds the bill, and the budget admits what fits.

Images (base64 data URLs of several sizes, low and high detail; URLs the
governor cannot size, which it bounds by the model's context window),
Anthropic image blocks, Gemini ``inlineData``, OpenAI ``input_audio`` and PDF
file parts: the provider bills them by its documented token rules. Each
call's reservation is at least what the provider billed (no overrun), usage
is known so the governor records exactly the bill, and a budget of one
reservation plus 2.5 calls' cost lets exactly three calls through.
"""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from llm_governor.testing import FakeProvider

from .conftest import CLAUDE, GEMINI, Govern, Spy, audit, check_errors, overruns, spent


def png(width: int, height: int) -> bytes:
    """A valid (black) RGB PNG of the given size."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + \
            struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = (b"\x00" + b"\x00\x00\x00" * width) * height
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + \
        chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b"")


def wav(seconds: float, rate: int = 16_000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return buf.getvalue()


def pdf(pages: int) -> bytes:
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = ["1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj",
               f"2 0 obj << /Type /Pages /Kids [{kids}] /Count {pages} >> endobj",
               *(f"{3 + i} 0 obj << /Type /Page /Parent 2 0 R >> endobj" for i in range(pages))]
    return ("%PDF-1.4\n" + "\n".join(objects) + "\n%%EOF\n").encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{b64(data)}"


TEXT = {"type": "text", "text": "What is in here?"}


def openai_chat(model: str, *parts: dict[str, Any]) -> Callable[[FakeProvider], Any]:
    def call(fake: FakeProvider) -> Any:
        client = openai.OpenAI(api_key="sk-faults", base_url=fake.openai_base_url,
                               max_retries=0)
        return client.chat.completions.create(
            model=model, max_tokens=30,
            messages=[{"role": "user", "content": [TEXT, *parts]}])  # type: ignore[list-item]
    return call


def image(url: str, detail: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def anthropic_image(width: int, height: int) -> Callable[[FakeProvider], Any]:
    def call(fake: FakeProvider) -> Any:
        client = anthropic.Anthropic(api_key="sk-faults", base_url=fake.anthropic_base_url,
                                     max_retries=0)
        block = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                              "data": b64(png(width, height))}}
        return client.messages.create(model=CLAUDE, max_tokens=30, messages=[
            {"role": "user", "content": [block, TEXT]}])  # type: ignore[list-item]
    return call


def anthropic_pdf(pages: int) -> Callable[[FakeProvider], Any]:
    def call(fake: FakeProvider) -> Any:
        client = anthropic.Anthropic(api_key="sk-faults", base_url=fake.anthropic_base_url,
                                     max_retries=0)
        block = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                 "data": b64(pdf(pages))}}
        return client.messages.create(model=CLAUDE, max_tokens=30, messages=[
            {"role": "user", "content": [block, TEXT]}])  # type: ignore[list-item]
    return call


def gemini_inline(width: int, height: int) -> Callable[[FakeProvider], Any]:
    def call(fake: FakeProvider) -> Any:
        client = genai.Client(api_key="gemini-faults", http_options=genai_types.HttpOptions(
            base_url=fake.gemini_base_url))
        contents = [genai_types.Part.from_bytes(data=png(width, height), mime_type="image/png"),
                    "What is in here?"]
        return client.models.generate_content(
            model=GEMINI, contents=contents,
            config=genai_types.GenerateContentConfig(max_output_tokens=30))
    return call


CASES: dict[str, Callable[[FakeProvider], Any]] = {
    "openai-png-64-low": openai_chat("gpt-4o", image(data_url("image/png", png(64, 64)), "low")),
    "openai-png-1024x768-high": openai_chat(
        "gpt-4o", image(data_url("image/png", png(1024, 768)), "high")),
    "openai-png-3000x500-auto": openai_chat(
        "gpt-4o", image(data_url("image/png", png(3000, 500)), "auto")),
    "openai-mini-png-800-high": openai_chat(
        "gpt-4o-mini", image(data_url("image/png", png(800, 800)), "high")),
    "openai-two-images": openai_chat(
        "gpt-4o", image(data_url("image/png", png(512, 512)), "high"),
        image(data_url("image/png", png(100, 2000)), "low")),
    "openai-url-unsized": openai_chat(
        "gpt-4o", image("https://images.example/cat.png?w=1600&h=1200", "high")),
    "openai-input-audio-wav": openai_chat(
        "gpt-4o-audio-preview",
        {"type": "input_audio", "input_audio": {"data": b64(wav(2.0)), "format": "wav"}}),
    "openai-pdf-file": openai_chat(
        "gpt-4o", {"type": "file", "file": {"filename": "report.pdf",
                                            "file_data": data_url("application/pdf", pdf(3))}}),
    "anthropic-image-800x600": anthropic_image(800, 600),
    "anthropic-image-2000": anthropic_image(2000, 2000),
    "anthropic-pdf": anthropic_pdf(2),
    "gemini-inline-image": gemini_inline(1024, 1024),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reservation_bounds_the_bill_and_the_budget_admits_what_fits(
        case: str, fake: FakeProvider, govern: Govern, tmp_path: Path) -> None:
    call = CASES[case]
    # 1. unlimited: what one call reserves and what the provider bills for it
    gov = govern("memory")
    spy = Spy(gov)
    call(fake)
    (entry,) = fake.ledger.entries
    assert entry.billed and entry.cost > 0
    (reservation,) = spy.reserved
    cost = entry.cost
    assert reservation >= cost, f"{case}: reserved {reservation} < billed {cost}"
    assert overruns(gov) == 0
    assert spent(gov) == cost  # usage known: recorded exactly

    # 2. a budget of one reservation plus 2.5 calls' cost: exactly three calls fit
    # (a call is admitted when spent + its reservation <= budget: k * cost + R <= B)
    budget = reservation + cost * Decimal("2.5")
    fits = sum(1 for k in range(100) if k * cost + reservation <= budget)
    fake.reset()
    gov = govern("memory", budget)
    errors = []
    for _ in range(fits + 2):
        try:
            call(fake)
        except Exception as exc:
            errors.append(exc)
    check_errors(errors)
    assert fits == 3
    assert fake.ledger.served_count() == fits
    assert len(errors) == 2 and all("budget" in str(e) for e in errors)
    books = audit(gov, fake, budget, exact=True)
    assert books.billed == fits * cost
