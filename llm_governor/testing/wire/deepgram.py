"""Deepgram's wire format: pre-recorded transcription (listen)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from ._base import BadRequestError, Call, Reply, Settings, _json, _text_words, audio_seconds


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
