"""Reading what media inputs hold from their first bytes: WAV duration, image size, PDF pages.

Pure parsing, no I/O: the instrumentation bounds a call's input tokens with
these before it is made, and the bundled fake provider bills with the same
readers.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64_head", "b64_length", "image_size", "pdf_pages", "wav_seconds"]

def wav_seconds(audio: bytes | bytearray | memoryview, total: int | None = None) -> float | None:
    """Exact duration of a RIFF/WAVE file from its header, or ``None`` if it is not one.

    ``total`` is the whole file's size when ``audio`` holds only its first bytes.
    """
    head = bytes(audio[:4096]) if len(audio) > 4096 else bytes(audio)
    size_of_all = len(audio) if total is None else total
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        start = pos + 8
        if chunk == b"fmt " and size >= 12:
            byte_rate = int.from_bytes(head[start + 8:start + 12], "little")
        elif chunk == b"data":
            if byte_rate <= 0:
                return None
            return min(size, size_of_all - start) / byte_rate
        pos = start + size + (size & 1)
    return None


_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")  # a page object, not the /Pages tree


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` in pixels from a PNG, JPEG, GIF or WebP header, else None.

    JPEG EXIF orientation is ignored (providers bill the stored raster).
    """
    if data.startswith(_PNG) and len(data) >= 24 and data[12:16] == b"IHDR":
        return _positive(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return _positive(int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return _positive(width, height)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return _positive((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return _positive(width, height)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no frame header seen
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return _positive(width, height)
        pos += 2 + length
    return None


def pdf_pages(data: bytes) -> int:
    """Pages of a PDF: the number of ``/Type /Page`` objects (not ``/Pages``), at least 1."""
    return max(1, len(_PAGE.findall(data)))


def b64_head(text: str, size: int = 65536) -> bytes:
    """The first ``size`` bytes (about) of a base64 string, decoded leniently."""
    chunk = text[: (size // 3 + 1) * 4].strip()
    chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        return base64.b64decode(chunk)
    except (binascii.Error, ValueError):
        return b""


def b64_length(text: str) -> int:
    """Decoded size of a base64 string, without decoding it."""
    stripped = text.rstrip("=")
    return len(stripped) * 3 // 4
