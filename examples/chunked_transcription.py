"""A long recording split into chunks, each transcribed by Deepgram and costed per video.

Every chunk is a governed ``transcribe_file`` call: paced, at most two in
flight (Deepgram limits concurrent requests), reserved before it is sent from
the WAV header's duration, settled from the response's ``metadata.duration``
at the per-audio-minute price, and attributed to its video with
``llm_governor.job(...)``. The per-job cost comes from
``llm_governor.export_rate_limit_metrics()``.

Offline by default: a synthetic 4-minute WAV and the bundled fake provider
(which bills nova-3 at $0.0043 per audio minute, like Deepgram).
``--live`` sends the chunks of your own WAV file to Deepgram instead, using
``DEEPGRAM_API_KEY``.

Run: python examples/chunked_transcription.py [--live recording.wav]
"""

from __future__ import annotations

import json
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import httpx
from deepgram import DeepgramClient

import llm_governor
from llm_governor.testing import FakeProvider

CHUNK_SECONDS = 30


def synthetic_wav(seconds: int, rate: int = 8_000) -> bytes:
    """A mono 16-bit PCM WAV of a quiet tone (a stand-in for a video's soundtrack)."""
    period = b"".join(struct.pack("<h", 800 if i < 10 else -800) for i in range(20))
    data = period * (seconds * rate // 20)
    return wav_file(data, rate, channels=1, bits=16)


def wav_file(data: bytes, rate: int, channels: int, bits: int) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def split_wav(audio: bytes, seconds: int) -> list[bytes]:
    """Cut a PCM WAV into standalone WAV files of ``seconds`` each (header copied)."""
    channels, rate = struct.unpack("<HI", audio[22:28])
    block, bits = struct.unpack("<HH", audio[32:36])
    start = audio.index(b"data") + 8
    pcm = audio[start:]
    step = rate * block * seconds
    return [wav_file(pcm[i:i + step], rate, channels, bits) for i in range(0, len(pcm), step)]


live = "--live" in sys.argv
with ExitStack() as stack:
    http = stack.enter_context(httpx.Client(timeout=60))  # closed with the stack
    if live:
        client = DeepgramClient(httpx_client=http)  # reads DEEPGRAM_API_KEY
        recordings = {"video_123": Path(sys.argv[-1]).read_bytes()}
    else:
        fake = stack.enter_context(FakeProvider(max_concurrency=2, latency=0.05))
        client = DeepgramClient(api_key="dg-example-key", environment=fake.deepgram_environment(),
                                httpx_client=http)
        recordings = {"video_123": synthetic_wav(4 * 60), "video_456": synthetic_wav(75)}

    llm_governor.instrument({
        "backend": "memory",  # the default is a SQLite file shared by every process on the host
        "budget": {"per_hour": "1.00"},
        "services": {"deepgram": {"max_concurrency": 2, "max_tokens": 2, "refill_rate": 5.0}},
    })

    def transcribe(video: str, index: int, chunk: bytes) -> str:
        with llm_governor.job(video):  # costs and metrics attributed per video
            result = client.listen.v1.media.transcribe_file(request=chunk, model="nova-3")
        alternatives = result.results.channels[0].alternatives if result.results else None
        return f"{video} chunk {index}: {alternatives[0].transcript[:40] if alternatives else ''}"

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:  # more workers than Deepgram allows in flight
        futures = [pool.submit(transcribe, video, i, chunk)
                   for video, audio in recordings.items()
                   for i, chunk in enumerate(split_wav(audio, CHUNK_SECONDS))]
        for future in futures:
            print(future.result())
    print(f"{len(futures)} chunks in {time.monotonic() - started:.1f}s")

    metrics = json.loads(llm_governor.export_rate_limit_metrics())
    for video, cost in sorted(metrics["costs"]["by_job"].items()):
        print(f"job {video}: ${Decimal(cost):.6f}")
    if not live:
        print(f"provider billed ${fake.ledger.total_billed('deepgram'):.6f} in total, "
              f"at most {fake.ledger.max_concurrency('deepgram')} requests in flight")
    llm_governor.uninstrument()
