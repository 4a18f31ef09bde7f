"""Fault kinds and the reply rewrites behind the billed ("hostile") faults.

Two families of faults:

* **Unbilled** (the provider refused or never processed the request):
  ``error``, ``rate_limit``, ``insufficient_quota`` and ``reset``. They fire
  before any limit check and cost nothing.
* **Billed** (the provider did the work and bills it in full, then something
  goes wrong on the way back, or the reply lies about usage): ``hang``,
  ``reset_after_send``, ``cut_stream``, ``no_usage``, ``malformed`` and
  ``inflate_usage``. Like ``slow``, they pass the rate limiter first and apply
  to the next requests it *admits* (a queued one survives a 429).

Pure functions over :class:`~llm_governor.testing.wire.Reply`; the socket
side (hanging, cutting, resetting) lives in the fake provider's handler.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Literal

from llm_governor.testing._ledger import ProviderName
from llm_governor.testing.wire import Reply

FaultKind = Literal[
    "error",
    "rate_limit",
    "insufficient_quota",
    "reset",
    "slow",
    "hang",
    "reset_after_send",
    "cut_stream",
    "no_usage",
    "malformed",
    "inflate_usage",
]
"""error: a ``status`` error (5xx by default); rate_limit: 429 with retry-after;
insufficient_quota: the provider's out-of-credit error; reset: close the socket
without a response (not billed); slow: answer normally after an extra ``delay``.
Billed kinds: hang: bill, then send nothing until the client or the server gives
up; reset_after_send: bill, then reset with no response bytes; cut_stream: send
headers and the first ``frames`` SSE frames (non-stream: half the body), then
reset; no_usage: a normal reply without any usage; malformed: a 200 whose JSON
(or one SSE data line mid-stream) does not parse; inflate_usage: serve, count
and bill ``extra_input_tokens`` more input tokens."""

REPLY_FAULTS: frozenset[str] = frozenset({"error", "rate_limit", "insufficient_quota"})
"""Answered with an error reply before any processing: not billed."""
BILLED_FAULTS: frozenset[str] = frozenset(
    {"hang", "reset_after_send", "cut_stream", "no_usage", "malformed", "inflate_usage"}
)
"""The provider processed and billed the request."""
BROKEN_FAULTS: frozenset[str] = frozenset({"hang", "reset_after_send", "cut_stream", "malformed"})
"""Billed, but the client gets no usable reply (ledger outcome "broken")."""

_USAGE_KEYS = ("usage", "usageMetadata")


def _split_frame(frame: bytes) -> tuple[list[str], str, str]:
    """``(other lines, data payload, newline)`` of one SSE frame."""
    text = frame.decode()
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = [line for line in text.split(newline) if line]
    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    other = [line for line in lines if not line.startswith("data: ")]
    return other, "\n".join(data), newline


def _join_frame(other: list[str], data: str, newline: str) -> bytes:
    return newline.join([*other, f"data: {data}", "", ""]).encode()


def _strip(obj: object, provider: ProviderName) -> None:
    """Remove every usage field of a decoded reply, in place."""
    if isinstance(obj, dict):
        for key in _USAGE_KEYS:
            obj.pop(key, None)
        metadata = obj.get("metadata")
        if provider == "deepgram" and isinstance(metadata, dict):
            metadata.pop("duration", None)
        for value in obj.values():
            _strip(value, provider)
    elif isinstance(obj, list):
        for value in obj:
            _strip(value, provider)


def strip_usage(reply: Reply, provider: ProviderName) -> Reply:
    """The same reply without usage: no ``usage`` / ``usageMetadata`` anywhere (Anthropic's
    ``message_start`` and ``message_delta`` included), no OpenAI final usage chunk,
    no Deepgram ``metadata.duration``."""
    if reply.events is None:
        body = json.loads(reply.body)
        _strip(body, provider)
        return replace(reply, body=json.dumps(body, separators=(",", ":")).encode())
    frames: list[bytes] = []
    for frame in reply.events:
        other, data, newline = _split_frame(frame)
        if data == "[DONE]" or not data:
            frames.append(frame)
            continue
        obj = json.loads(data)
        if isinstance(obj, dict) and obj.get("choices") == [] and "usage" in obj:
            continue  # OpenAI's usage-only chunk
        _strip(obj, provider)
        frames.append(_join_frame(other, json.dumps(obj, separators=(",", ":")), newline))
    return replace(reply, events=tuple(frames))


GARBAGE = '{"garbage": <not json'


def malform(reply: Reply) -> Reply:
    """A 200 that does not parse: half the JSON body plus garbage (``application/json``
    kept), or for a stream one garbage data line inserted mid-stream, under the
    event name of the frame before it so event-typed SDKs try to decode it."""
    if reply.events is None:
        body = reply.body[: len(reply.body) // 2] + GARBAGE.encode()
        return replace(reply, body=body, content_type="application/json")
    events = list(reply.events)
    at = max(1, len(events) // 2)
    other, _, newline = _split_frame(events[at - 1])
    events.insert(at, _join_frame(other, GARBAGE, newline))
    return replace(reply, events=tuple(events))
