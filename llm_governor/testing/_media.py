"""What the fake provider needs to bill media: data URLs and sizes of images it cannot fetch.

Image sizes and PDF pages are read by :mod:`llm_governor.media`, the same
readers the instrumentation bounds a request with.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs, urlsplit

from llm_governor.media import image_size, pdf_pages

__all__ = ["b64decode", "image_size", "parse_data_url", "pdf_pages", "url_image_size"]

def b64decode(text: str) -> bytes:
    """Decode standard or URL-safe base64, padding optional; ValueError if it is not base64."""
    cleaned = "".join(text.split())
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned)
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid base64 data: {exc}") from exc


def parse_data_url(url: str) -> tuple[str, bytes] | None:
    """``(mime type, bytes)`` of a ``data:<mime>;base64,<data>`` URL, None for other URLs.

    Raises ValueError for a data URL whose payload is not base64.
    """
    if not url.startswith("data:"):
        return None
    head, sep, payload = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        raise ValueError("data URL must be base64 encoded")
    return head[: -len(";base64")].split(";")[0].lower(), b64decode(payload)


def url_image_size(url: str, default: tuple[int, int]) -> tuple[int, int]:
    """Size of an image the fake cannot fetch: ``?w=..&h=..`` in the URL, else ``default``."""
    query = parse_qs(urlsplit(url).query)
    try:
        width, height = int(query["w"][0]), int(query["h"][0])
    except (KeyError, IndexError, ValueError):
        return default
    return (width, height) if width > 0 and height > 0 else default
