"""A fake AI provider: a real HTTP server on 127.0.0.1 for tests, examples and demos.

It speaks the wire formats of OpenAI, Anthropic, Gemini and Deepgram closely
enough for the unmodified official SDKs, enforces its own RPM/TPM/concurrency
limits over a (scalable) sliding window, injects faults on demand and bills
every served request into a :class:`Ledger`. Nothing leaves the machine.

Point the SDKs at it::

    with FakeProvider(rpm=5, window=1.0) as fake:
        openai.OpenAI(api_key="k", base_url=fake.openai_base_url)
        anthropic.Anthropic(api_key="k", base_url=fake.anthropic_base_url)
        genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.gemini_base_url))
        DeepgramClient(api_key="k", environment=fake.deepgram_environment())
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

from llm_governor.testing import _wire
from llm_governor.testing._ledger import Ledger, LedgerEntry, ProviderName
from llm_governor.testing._limits import (
    Limits,
    RateLimiter,
    WindowState,
    ratelimit_headers,
    retry_after_headers,
)
from llm_governor.testing._pricing import ModelPrice, Pricer

if TYPE_CHECKING:
    from deepgram.environment import DeepgramClientEnvironment

FaultKind = Literal["error", "rate_limit", "insufficient_quota", "reset", "slow"]
"""error: a ``status`` error (5xx by default); rate_limit: 429 with retry-after;
insufficient_quota: the provider's out-of-credit error; reset: close the socket
without a response; slow: answer normally after an extra ``delay``."""

_KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")
_REQUEST_ID_HEADER: dict[ProviderName, str] = {
    "openai": "x-request-id",
    "anthropic": "request-id",
    "gemini": "x-request-id",
    "deepgram": "dg-request-id",
}


@dataclass(frozen=True)
class Fault:
    """One injected failure; ``provider`` None matches any request."""

    kind: FaultKind
    status: int = 500
    retry_after: float | None = 1.0
    delay: float = 5.0
    provider: ProviderName | None = None


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET


@dataclass(frozen=True)
class _Decision:
    now: float
    state: WindowState
    fault: Fault | None = None
    admitted: bool = False
    reason: str | None = None
    retry_after: float | None = None


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; all logic lives in :meth:`FakeProvider._serve`."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes; without NODELAY, Nagle plus
        # delayed ACKs would add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read the ledger, not stderr."""

    def do_POST(self) -> None:
        self.server.fake._serve(self)

    def do_GET(self) -> None:
        self.server.fake._serve(self)

    def read_body(self) -> bytes:
        """The request body, from Content-Length or chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_reply(self, reply: _wire.Reply, headers: Sequence[tuple[str, str]]) -> None:
        """Send JSON with Content-Length, or SSE frames chunked, so keep-alive stays usable."""
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in (*reply.headers, *headers):
            self.send_header(name, value)
        if reply.events is None:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for frame in reply.events:
            self.wfile.write(b"%X\r\n%s\r\n" % (len(frame), frame))
        self.wfile.write(b"0\r\n\r\n")

    def reset_connection(self) -> None:
        """Abort the connection with a TCP RST and no response bytes."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    """Tracks connection threads so stop() can close keep-alive sockets and join them."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, fake: FakeProvider) -> None:
        self.fake = fake
        self._conns_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run, args=(request, client_address), name="fake-provider-conn", daemon=True
        )
        with self._conns_lock:
            self._conns[request] = thread
        thread.start()

    def _run(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass
        finally:
            self.shutdown_request(request)
            with self._conns_lock:
                self._conns.pop(request, None)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection down and wait for its thread."""
        with self._conns_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connection errors are expected (resets, timeouts); don't print tracebacks."""


class FakeProvider:
    """Local multi-provider fake with server-side limits, faults and a billing ledger.

    Limits apply per provider (openai, anthropic, gemini, deepgram each have
    their own window). ``window`` scales "per minute" down for fast tests;
    ``latency`` delays every admitted response; ``output_tokens`` caps every
    completion; ``max_concurrency`` rejects excess in-flight requests with 429
    (Deepgram's model, usable for any provider). Free endpoints (count_tokens)
    skip limits and billing.

    Accounting is deterministic: input tokens = ceil(bytes of the prompt
    fields' string values / 4) <= request body bytes; output tokens =
    min(requested max, ``output_tokens``); audio seconds from a WAV header,
    else body bytes / ``audio_bytes_per_second``, and ``url_audio_seconds``
    for URL transcriptions. TPM counts input + output tokens at admission.
    """

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        window: float = 60.0,
        max_concurrency: int | None = None,
        latency: float = 0.0,
        output_tokens: int = 20,
        prices: Mapping[str, ModelPrice] | None = None,
        url_audio_seconds: float = 60.0,
        audio_bytes_per_second: int = 16_000,
    ) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.latency = latency
        self._limits = Limits(rpm=rpm, tpm=tpm, window=window, max_concurrency=max_concurrency)
        self._limiter = RateLimiter(self._limits)
        self._settings = _wire.Settings(
            output_tokens=output_tokens,
            url_audio_seconds=url_audio_seconds,
            audio_bytes_per_second=audio_bytes_per_second,
        )
        self._pricer = Pricer(prices)
        self._ledger = Ledger()
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._sticky_fault: Fault | None = None
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeProvider:
        """Bind a free port and serve in a background thread (idempotent)."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, abort open connections and join every thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections(timeout=5.0)
        server.server_close()
        thread.join(5.0)
        self._server = self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; only valid while started."""
        if self._server is None:
            raise RuntimeError("FakeProvider is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        """For ``OpenAI(base_url=...)`` (the SDK expects the /v1 prefix in it)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For ``Anthropic(base_url=...)``."""
        return self.base_url

    @property
    def gemini_base_url(self) -> str:
        """For ``genai.Client(http_options=types.HttpOptions(base_url=...))``."""
        return self.base_url

    @property
    def deepgram_base_url(self) -> str:
        """The ``base`` of a ``DeepgramClientEnvironment``; see :meth:`deepgram_environment`."""
        return self.base_url

    def deepgram_environment(self) -> DeepgramClientEnvironment:
        """For ``DeepgramClient(environment=...)``: REST goes here, websockets to ws://same."""
        from deepgram.environment import DeepgramClientEnvironment

        ws = self.base_url.replace("http://", "ws://", 1)
        return DeepgramClientEnvironment(
            base=self.base_url, production=ws, agent=ws, agent_rest=self.base_url
        )

    # ------------------------------------------------------------ control

    @property
    def ledger(self) -> Ledger:
        """Every request seen so far."""
        return self._ledger

    @property
    def limits(self) -> Limits:
        """A copy of the current limits."""
        with self._lock:
            return Limits(**vars(self._limits))

    def set_limits(
        self,
        *,
        rpm: int | _Unset | None = _UNSET,
        tpm: int | _Unset | None = _UNSET,
        window: float | _Unset = _UNSET,
        max_concurrency: int | _Unset | None = _UNSET,
    ) -> None:
        """Change limits at runtime; omitted ones stay, ``None`` means unlimited."""
        with self._lock:
            if not isinstance(rpm, _Unset):
                self._limits.rpm = rpm
            if not isinstance(tpm, _Unset):
                self._limits.tpm = tpm
            if not isinstance(window, _Unset):
                if window <= 0:
                    raise ValueError("window must be positive")
                self._limits.window = window
            if not isinstance(max_concurrency, _Unset):
                self._limits.max_concurrency = max_concurrency

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        kind: FaultKind = "error",
        retry_after: float | None = 1.0,
        delay: float = 5.0,
        provider: ProviderName | None = None,
    ) -> None:
        """Make the next ``n`` matching requests fail (before any limit check).

        ``status`` applies to kind "error" (429 there behaves like "rate_limit");
        ``retry_after`` to rate limits (None omits the header); ``delay`` to "slow".
        """
        fault = Fault(kind, status, retry_after, delay, provider)
        with self._lock:
            self._faults.extend([fault] * n)

    def set_fault(
        self,
        kind: FaultKind | None,
        status: int = 500,
        *,
        retry_after: float | None = 1.0,
        delay: float = 5.0,
        provider: ProviderName | None = None,
    ) -> None:
        """Fail every matching request until ``set_fault(None)`` (an outage)."""
        with self._lock:
            self._sticky_fault = (
                None if kind is None else Fault(kind, status, retry_after, delay, provider)
            )

    def clear_faults(self) -> None:
        """Drop queued and persistent faults."""
        with self._lock:
            self._faults.clear()
            self._sticky_fault = None

    def reset(self) -> None:
        """Clear the ledger, the limiter's history and all faults (limits stay)."""
        with self._lock:
            self._limiter.reset()
            self._faults.clear()
            self._sticky_fault = None
            self._ledger.clear()

    def max_in_window(
        self, window: float | None = None, provider: ProviderName | None = None
    ) -> int:
        """Ledger's :meth:`Ledger.max_in_window`, defaulting to the configured window."""
        return self._ledger.max_in_window(
            self.limits.window if window is None else window, provider
        )

    # ------------------------------------------------------------ serving

    def _take_fault(self, provider: ProviderName) -> Fault | None:
        for index, fault in enumerate(self._faults):
            if fault.provider in (None, provider):
                del self._faults[index]
                return fault
        sticky = self._sticky_fault
        if sticky is not None and sticky.provider in (None, provider):
            return sticky
        return None

    def _decide(self, call: _wire.Call) -> _Decision:
        with self._lock:
            now = time.monotonic()
            fault = self._take_fault(call.provider)
            if fault is not None and fault.kind != "slow":
                return _Decision(now, self._limiter.state(call.provider, now), fault)
            if not call.metered:
                return _Decision(now, self._limiter.state(call.provider, now), fault, admitted=True)
            verdict = self._limiter.admit(call.provider, call.input_tokens, call.output_tokens, now)
            return _Decision(
                now, verdict.state, fault, verdict.admitted, verdict.reason, verdict.retry_after
            )

    def _record(
        self,
        call: _wire.Call,
        start: float,
        status: int,
        api_key_seen: bool,
        request_bytes: int,
        fault: Fault | None = None,
        cost: tuple[Decimal, bool] = (Decimal(0), True),
        release: bool = False,
    ) -> None:
        served = status == 200
        with self._lock:
            if release:
                self._limiter.release(call.provider)
            self._ledger.append(
                LedgerEntry(
                    time=start,
                    end=time.monotonic(),
                    provider=call.provider,
                    endpoint=call.endpoint,
                    path=call.path,
                    model=call.model,
                    status=status,
                    input_tokens=call.input_tokens if served else 0,
                    output_tokens=call.output_tokens if served else 0,
                    audio_seconds=call.audio_seconds if served else 0.0,
                    cost=cost[0],
                    priced=cost[1],
                    stream=call.stream,
                    api_key_seen=api_key_seen,
                    metered=call.metered,
                    fault=None if fault is None else fault.kind,
                    request_bytes=request_bytes,
                )
            )

    def _serve(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        query = parse_qs(split.query)
        body = handler.read_body()
        key_seen = any(handler.headers.get(name) for name in _KEY_HEADERS) or "key" in query
        target = _wire.route(split.path)
        if target is None or handler.command != "POST":
            message = f"fake provider has no route for {handler.command} {split.path}"
            handler.send_reply(
                _wire.Reply(404, b'{"error":{"message":"%s"}}' % message.encode()), ()
            )
            return
        provider, endpoint, path_model = target
        content_type = handler.headers.get("Content-Type", "")
        try:
            call = _wire.parse_call(
                provider,
                endpoint,
                split.path,
                path_model,
                query,
                body,
                content_type,
                self._settings,
            )
        except _wire.BadRequestError as exc:
            call = _wire.Call(provider, endpoint, split.path, path_model or "")
            self._record(call, time.monotonic(), exc.status, key_seen, len(body))
            handler.send_reply(_wire.error_reply(provider, exc.status, message=str(exc)), ())
            return

        decision = self._decide(call)
        headers = [(_REQUEST_ID_HEADER[provider], _wire.new_id("req_"))]
        headers += ratelimit_headers(provider, decision.state, time.time())
        fault = decision.fault
        if fault is not None and fault.kind == "reset":
            self._record(call, decision.now, 0, key_seen, len(body), fault)
            handler.reset_connection()
            return
        if fault is not None and fault.kind != "slow":
            reply, retry_after = self._fault_reply(call, fault)
            if retry_after is not None and provider != "gemini":
                headers += retry_after_headers(retry_after)
            self._record(call, decision.now, reply.status, key_seen, len(body), fault)
            handler.send_reply(reply, headers)
            return
        if not decision.admitted:
            reply = _wire.error_reply(
                provider,
                429,
                reason=decision.reason,
                model=call.model,
                retry_after=decision.retry_after,
            )
            if decision.retry_after is not None and provider != "gemini":
                headers += retry_after_headers(decision.retry_after)
            self._record(call, decision.now, 429, key_seen, len(body), fault)
            handler.send_reply(reply, headers)
            return

        delay = self.latency + (fault.delay if fault is not None else 0.0)
        if delay > 0 and self._stopping.wait(delay):
            self._record(call, decision.now, 0, key_seen, len(body), fault, release=call.metered)
            handler.reset_connection()
            return
        reply = _wire.render(call)
        cost = (Decimal(0), True)
        if call.metered:
            cost = self._pricer.price(
                provider, call.model, call.input_tokens, call.output_tokens, call.audio_seconds
            )
        self._record(
            call, decision.now, 200, key_seen, len(body), fault, cost, release=call.metered
        )
        handler.send_reply(reply, headers)

    def _fault_reply(self, call: _wire.Call, fault: Fault) -> tuple[_wire.Reply, float | None]:
        if fault.kind == "insufficient_quota":
            status = _wire.quota_status(call.provider)
            return _wire.error_reply(call.provider, status, reason="quota", model=call.model), None
        if fault.kind == "rate_limit" or fault.status == 429:
            reply = _wire.error_reply(
                call.provider,
                429,
                reason="requests",
                model=call.model,
                retry_after=fault.retry_after,
            )
            return reply, fault.retry_after
        return _wire.error_reply(call.provider, fault.status, model=call.model), None
