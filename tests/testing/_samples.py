"""Real media bytes for the multimodal billing tests, generated without dependencies."""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG of the given size (all black)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data))
        return struct.pack(">I", len(data)) + tag + data + crc

    row = b"\x00" + b"\x00\x00\x00" * width  # filter byte + pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height, 1))
        + chunk(b"IEND", b"")
    )


def wav(seconds: float, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of silence."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return buf.getvalue()


def pdf(pages: int) -> bytes:
    """A small PDF with ``pages`` page objects and one ``/Pages`` tree node."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = [
        "1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj",
        f"2 0 obj << /Type /Pages /Kids [{kids}] /Count {pages} >> endobj",
        *(
            f"{3 + i} 0 obj << /Type{' ' if i % 2 else ''}/Page /Parent 2 0 R >> endobj"
            for i in range(pages)
        ),
    ]
    return ("%PDF-1.4\n" + "\n".join(objects) + "\n%%EOF\n").encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{b64(data)}"
