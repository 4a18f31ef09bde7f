"""A fake AI provider: a real HTTP server on 127.0.0.1 for tests, examples and demos.

It speaks the wire formats of OpenAI, Anthropic, Gemini and Deepgram closely
enough for the unmodified official SDKs, enforces its own RPM/TPM/concurrency
limits over a (scalable) sliding window, injects faults on demand and bills
every processed request into a :class:`Ledger`. Nothing leaves the machine.

Faults come in two families (see ``FaultKind``): unbilled ones the provider
answers before doing any work (errors, 429s, resets), and billed, hostile ones
where the provider did the work and charges for it but the reply hangs, is
reset, cut, malformed or lies about usage: what a governor's budget must
survive. ``set_headers`` adds or overrides response headers (absurd
``retry-after`` values, lying ``x-ratelimit-*``), and ``per_key`` gives each
API key its own limits, like separate provider accounts.

Point the SDKs at it::

    with FakeProvider(rpm=5, window=1.0) as fake:
        openai.OpenAI(api_key="k", base_url=fake.openai_base_url)
        anthropic.Anthropic(api_key="k", base_url=fake.anthropic_base_url)
        genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.gemini_base_url))
        DeepgramClient(api_key="k", environment=fake.deepgram_environment())
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from llm_governor.testing import wire
from llm_governor.testing._faults import (
    BROKEN_FAULTS,
    REPLY_FAULTS,
    FaultKind,
    malform,
    strip_usage,
)
from llm_governor.testing._http import Handler, Server
from llm_governor.testing._ledger import (
    Ledger,
    LedgerEntry,
    Outcome,
    ProviderName,
    key_fingerprint,
)
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

__all__ = ["FakeProvider", "Fault", "FaultKind"]

_KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")
_REQUEST_ID_HEADER: dict[ProviderName, str] = {
    "openai": "x-request-id",
    "anthropic": "request-id",
    "gemini": "x-request-id",
    "deepgram": "dg-request-id",
}


# Framing is the server's business: overriding these would corrupt the connection.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


@dataclass(frozen=True)
class Fault:
    """One injected failure; ``provider`` None matches any request.

    ``status`` is for kind "error", ``retry_after`` for rate limits, ``delay``
    for "slow", ``frames`` for "cut_stream" (SSE frames sent before the reset)
    and ``extra_input_tokens`` for "inflate_usage".
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | None = 1.0
    delay: float = 5.0
    provider: ProviderName | None = None
    frames: int = 2
    extra_input_tokens: int = 1000


@dataclass(frozen=True)
class _HeaderRule:
    headers: tuple[tuple[str, str], ...]
    provider: ProviderName | None
    statuses: frozenset[int] | None

    def matches(self, provider: ProviderName | None, status: int) -> bool:
        return self.provider in (None, provider) and (
            self.statuses is None or status in self.statuses
        )


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
    scope: str | None = None  # the limiter bucket's key fingerprint (per_key), else None


class FakeProvider:
    """Local multi-provider fake with server-side limits, faults and a billing ledger.

    Limits apply per provider (openai, anthropic, gemini, deepgram each have
    their own window), or per provider and API key with ``per_key``.
    ``window`` scales "per minute" down for fast tests; ``latency`` delays
    every admitted response; ``output_tokens`` caps every completion;
    ``max_concurrency`` rejects excess in-flight requests with 429 (Deepgram's
    model, usable for any provider). Free endpoints (count_tokens) skip limits
    and billing.

    Accounting is deterministic: input tokens = ceil(bytes of the prompt
    fields' string values / 4) <= request body bytes, plus the providers'
    documented tokens for images, audio and PDFs (``_multimodal``: images
    the fake cannot fetch are ``url_image_size``, documents by id or URL
    ``url_file_pages`` pages of ``page_tokens`` each); output tokens =
    min(requested max, ``output_tokens``); audio seconds from a WAV header,
    else body bytes / ``audio_bytes_per_second``, and ``url_audio_seconds``
    for URL transcriptions. TPM counts input + output tokens at admission.
    ``usage_always`` makes OpenAI chat/completions streams end with a usage
    chunk whatever ``stream_options`` asked, as some compatible servers do
    (such a server never sends ``"usage": null`` on the other chunks).

    Billing follows the providers' price rules: OpenAI answers in the
    ``service_tier`` asked for (``auto`` is ``default``) and bills that tier;
    ``reasoning_tokens`` of a chat/Responses/Gemini call's output are reported
    as reasoning (and billed as output); Anthropic prompt caching: the prompt up
    to its last ``cache_control`` block is written to a cache (billed 1.25x the
    input price, 2x with ``"ttl": "1h"``) and read by later requests with the
    same prefix while it lives (billed at the cache-read price); a Gemini
    request naming ``cachedContent`` reads ``cached_content_tokens`` more input
    tokens from that cache (billed at the cache-read price).
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
        per_key: bool = False,
        usage_always: bool = False,
        url_image_size: tuple[int, int] = (2048, 2048),
        page_tokens: int = 1500,
        url_file_pages: int = 10,
        reasoning_tokens: int = 0,
        cached_content_tokens: int = 1024,
    ) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.latency = latency
        self._limits = Limits(
            rpm=rpm, tpm=tpm, window=window, max_concurrency=max_concurrency, per_key=per_key
        )
        self._limiter = RateLimiter(self._limits)
        self._settings = wire.Settings(
            output_tokens=output_tokens,
            url_audio_seconds=url_audio_seconds,
            audio_bytes_per_second=audio_bytes_per_second,
            url_image_size=url_image_size,
            page_tokens=page_tokens,
            url_file_pages=url_file_pages,
            usage_always=usage_always,
            reasoning_tokens=reasoning_tokens,
            cached_content_tokens=cached_content_tokens,
        )
        self._pricer = Pricer(prices)
        self._prompt_cache: dict[str, float] = {}  # Anthropic prefix digest → expiry
        self._ledger = Ledger()
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._sticky_fault: Fault | None = None
        self._header_rules: list[_HeaderRule] = []
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeProvider:
        """Bind a free port and serve in a background thread (idempotent)."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = Server(self._serve)
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
        per_key: bool | _Unset = _UNSET,
    ) -> None:
        """Change limits at runtime; omitted ones stay, ``None`` means unlimited.

        Switching ``per_key`` starts counting in the other set of buckets
        (per provider, or per provider and key) from their own history.
        """
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
            if not isinstance(per_key, _Unset):
                self._limits.per_key = per_key

    @property
    def output_tokens(self) -> int:
        """The most output tokens a completion bills (less when the request caps it)."""
        return self._settings.output_tokens

    @output_tokens.setter
    def output_tokens(self, tokens: int) -> None:
        with self._lock:
            self._settings = dataclasses.replace(self._settings, output_tokens=tokens)

    @property
    def usage_always(self) -> bool:
        """Whether OpenAI chat/completions streams always end with a usage chunk."""
        return self._settings.usage_always

    @usage_always.setter
    def usage_always(self, enabled: bool) -> None:
        with self._lock:
            self._settings = dataclasses.replace(self._settings, usage_always=enabled)

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        kind: FaultKind = "error",
        retry_after: float | None = 1.0,
        delay: float = 5.0,
        provider: ProviderName | None = None,
        frames: int = 2,
        extra_input_tokens: int = 1000,
    ) -> None:
        """Make the next ``n`` matching requests fail.

        Unbilled kinds (error, rate_limit, insufficient_quota, reset) fire
        before any limit check; the others (slow and the billed kinds) apply to
        the next ``n`` matching requests the limiter admits. ``status`` applies
        to kind "error" (429 there behaves like "rate_limit"); ``retry_after``
        to rate limits (None omits the header); ``delay`` to "slow"; ``frames``
        to "cut_stream"; ``extra_input_tokens`` to "inflate_usage".
        """
        fault = Fault(kind, status, retry_after, delay, provider, frames, extra_input_tokens)
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
        frames: int = 2,
        extra_input_tokens: int = 1000,
    ) -> None:
        """Fail every matching request until ``set_fault(None)`` (an outage).

        Parameters as for :meth:`fail_next`.
        """
        with self._lock:
            self._sticky_fault = (
                None
                if kind is None
                else Fault(kind, status, retry_after, delay, provider, frames, extra_input_tokens)
            )

    def clear_faults(self) -> None:
        """Drop queued and persistent faults."""
        with self._lock:
            self._faults.clear()
            self._sticky_fault = None

    def set_headers(
        self,
        overrides: Mapping[str, str] | None,
        *,
        provider: ProviderName | None = None,
        statuses: Iterable[int] | None = None,
    ) -> None:
        """Add or override response headers, e.g. to test "provider headers are the truth".

        Every later response of ``provider`` (any if None) whose status is in
        ``statuses`` (any if None) carries ``overrides``, replacing headers of
        the same name (case-insensitive) such as ``retry-after`` or
        ``x-ratelimit-remaining-requests``; Content-Length and
        Transfer-Encoding are never overridden. Calls accumulate (later ones
        win). ``set_headers(None)`` drops every rule, ``set_headers(None,
        provider=p)`` those for ``p``; :meth:`reset` drops them too.
        """
        with self._lock:
            if overrides is None:
                self._header_rules = [
                    r for r in self._header_rules if provider is not None and r.provider != provider
                ]
                return
            pairs = tuple(
                (name, value)
                for name, value in overrides.items()
                if name.lower() not in _FRAMING_HEADERS
            )
            codes = None if statuses is None else frozenset(statuses)
            self._header_rules.append(_HeaderRule(pairs, provider, codes))

    def reset(self) -> None:
        """Clear the ledger, limiter history, faults, header overrides and prompt caches
        (limits stay)."""
        with self._lock:
            self._limiter.reset()
            self._faults.clear()
            self._sticky_fault = None
            self._header_rules.clear()
            self._ledger.clear()
            self._prompt_cache.clear()

    def max_in_window(
        self, window: float | None = None, provider: ProviderName | None = None
    ) -> int:
        """Ledger's :meth:`Ledger.max_in_window`, defaulting to the configured window."""
        return self._ledger.max_in_window(
            self.limits.window if window is None else window, provider
        )

    # ------------------------------------------------------------ serving

    def _take_fault(self, provider: ProviderName) -> tuple[Fault | None, bool]:
        """The fault for this request and whether it came from the ``fail_next`` queue."""
        for index, fault in enumerate(self._faults):
            if fault.provider in (None, provider):
                del self._faults[index]
                return fault, True
        sticky = self._sticky_fault
        if sticky is not None and sticky.provider in (None, provider):
            return sticky, False
        return None, False

    def _decide(self, call: wire.Call, key_id: str | None) -> _Decision:
        with self._lock:
            now = time.monotonic()
            scope = key_id if self._limits.per_key else None
            fault, queued = self._take_fault(call.provider)
            if fault is not None and (fault.kind in REPLY_FAULTS or fault.kind == "reset"):
                state = self._limiter.state(call.provider, now, scope)
                return _Decision(now, state, fault, scope=scope)
            extra = fault.extra_input_tokens if fault and fault.kind == "inflate_usage" else 0
            call.input_tokens += extra  # the provider counts them: TPM, usage and bill
            if not call.metered:
                state = self._limiter.state(call.provider, now, scope)
                return _Decision(now, state, fault, admitted=True, scope=scope)
            verdict = self._limiter.admit(
                call.provider, call.input_tokens, call.output_tokens, now, scope
            )
            if not verdict.admitted and fault is not None:
                call.input_tokens -= extra
                if queued:  # the 429 is the limiter's: the fault waits for an admitted request
                    self._faults.appendleft(fault)
                fault = None
            return _Decision(
                now,
                verdict.state,
                fault,
                verdict.admitted,
                verdict.reason,
                verdict.retry_after,
                scope,
            )

    def _overrides(self, provider: ProviderName | None, status: int) -> list[tuple[str, str]]:
        merged: dict[str, tuple[str, str]] = {}
        with self._lock:
            rules = list(self._header_rules)
        for rule in rules:
            if rule.matches(provider, status):
                for name, value in rule.headers:
                    merged[name.lower()] = (name, value)
        return list(merged.values())

    def _record(
        self,
        call: wire.Call,
        start: float,
        status: int,
        api_key_seen: bool,
        request_bytes: int,
        fault: Fault | None = None,
        cost: tuple[Decimal, bool] = (Decimal(0), True),
        release: bool = False,
        *,
        key_id: str | None = None,
        scope: str | None = None,
        outcome: Outcome = "served",
        retry_count: str | None = None,
        body_sha256: str = "",
    ) -> LedgerEntry:
        served = status == 200
        entry = LedgerEntry(
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
            key_id=key_id,
            outcome=outcome,
            retry_count=retry_count,
            body_sha256=body_sha256,
        )
        with self._lock:
            if release:
                self._limiter.release(call.provider, scope)
            self._ledger.append(entry)
        return entry

    def _serve(self, handler: Handler) -> None:
        split = urlsplit(handler.path)
        query = parse_qs(split.query)
        body = handler.read_body()
        api_key = _api_key(handler, query)
        key_seen = api_key is not None
        key_id = None if api_key is None else key_fingerprint(api_key)
        retry_count = handler.headers.get("x-stainless-retry-count")
        body_sha256 = hashlib.sha256(body).hexdigest()
        target = wire.route(split.path)
        if target is None or handler.command != "POST":
            message = f"fake provider has no route for {handler.command} {split.path}"
            handler.send_reply(
                wire.Reply(404, b'{"error":{"message":"%s"}}' % message.encode()),
                (),
                self._overrides(None, 404),
            )
            return
        provider, endpoint, path_model = target
        content_type = handler.headers.get("Content-Type", "")
        try:
            call = wire.parse_call(
                provider,
                endpoint,
                split.path,
                path_model,
                query,
                body,
                content_type,
                self._settings,
            )
        except wire.BadRequestError as exc:
            call = wire.Call(provider, endpoint, split.path, path_model or "")
            self._record(call, time.monotonic(), exc.status, key_seen, len(body), key_id=key_id,
                         retry_count=retry_count, body_sha256=body_sha256)
            reply = wire.error_reply(provider, exc.status, message=str(exc))
            handler.send_reply(reply, (), self._overrides(provider, reply.status))
            return

        decision = self._decide(call, key_id)
        headers = [(_REQUEST_ID_HEADER[provider], wire.new_id("req_"))]
        headers += ratelimit_headers(provider, decision.state, time.time())
        fault = decision.fault
        record = functools.partial(
            self._record, call, decision.now, api_key_seen=key_seen,
            request_bytes=len(body), fault=fault, key_id=key_id, scope=decision.scope,
            retry_count=retry_count, body_sha256=body_sha256,
        )  # fmt: skip
        if fault is not None and fault.kind == "reset":
            record(status=0)
            handler.reset_connection()
            return
        if fault is not None and fault.kind in REPLY_FAULTS:
            reply, retry_after = self._fault_reply(call, fault)
            if retry_after is not None:
                headers += retry_after_headers(retry_after, provider)
            record(status=reply.status)
            handler.send_reply(reply, headers, self._overrides(provider, reply.status))
            return
        if not decision.admitted:
            limit = decision.state.tpm if decision.reason == "tokens" else decision.state.rpm
            reply = wire.error_reply(
                provider,
                429,
                reason=decision.reason,
                model=call.model,
                retry_after=decision.retry_after,
                limit=limit,
            )
            if decision.retry_after is not None:
                headers += retry_after_headers(decision.retry_after, provider)
            record(status=429)
            handler.send_reply(reply, headers, self._overrides(provider, 429))
            return
        self._serve_admitted(handler, call, decision, headers, record)

    def _resolve_cache(self, call: wire.Call) -> None:
        """An Anthropic prompt prefix marked for caching: read if cached and alive (its
        TTL refreshed), else written; 5 minutes or 1 hour, as its ``cache_control`` says."""
        if not call.cache_key or not call.cache_tokens:
            return
        now = time.monotonic()
        ttl = 3600.0 if call.cache_ttl == "1h" else 300.0
        with self._lock:
            alive = self._prompt_cache.get(call.cache_key, 0.0) > now
            self._prompt_cache[call.cache_key] = now + ttl
        if alive:
            call.cache_read = call.cache_tokens
        else:
            call.cache_write = call.cache_tokens
            call.cache_write_1h = call.cache_tokens if call.cache_ttl == "1h" else 0

    def _serve_admitted(
        self,
        handler: Handler,
        call: wire.Call,
        decision: _Decision,
        headers: list[tuple[str, str]],
        record: Callable[..., LedgerEntry],
    ) -> None:
        """Process an admitted request: bill it, then reply (or misbehave, per the fault)."""
        fault = decision.fault
        kind = None if fault is None else fault.kind
        outcome: Outcome = "broken" if kind in BROKEN_FAULTS else "served"
        cost = (Decimal(0), True)
        if call.metered:
            self._resolve_cache(call)
            cost = self._pricer.price(
                call.provider, call.model, call.input_tokens, call.output_tokens,
                call.audio_seconds, service_tier=call.service_tier,
                cache=(call.cache_read, call.cache_write, call.cache_write_1h),
            )
        if kind == "hang":
            entry = record(status=200, cost=cost, outcome=outcome)  # billed at admission
            handler.wait_for_disconnect(self._stopping)
            with self._lock:
                if call.metered:
                    self._limiter.release(call.provider, decision.scope)
                self._ledger.replace(entry, dataclasses.replace(entry, end=time.monotonic()))
            handler.reset_connection()
            return
        delay = self.latency + (fault.delay if fault is not None and kind == "slow" else 0.0)
        if delay > 0 and self._stopping.wait(delay):
            record(status=0, release=call.metered)
            handler.reset_connection()
            return
        reply = wire.render(call)
        if kind == "no_usage":
            reply = strip_usage(reply, call.provider)
        elif kind == "malformed":
            reply = malform(reply)
        record(status=200, cost=cost, release=call.metered, outcome=outcome)
        if kind == "reset_after_send":
            handler.reset_connection()
        elif kind == "cut_stream" and fault is not None:
            handler.send_cut(reply, headers, self._overrides(call.provider, 200), fault.frames)
        else:
            handler.send_reply(reply, headers, self._overrides(call.provider, reply.status))

    def _fault_reply(self, call: wire.Call, fault: Fault) -> tuple[wire.Reply, float | None]:
        if fault.kind == "insufficient_quota":
            status = wire.quota_status(call.provider)
            return wire.error_reply(call.provider, status, reason="quota", model=call.model), None
        if fault.kind == "rate_limit" or fault.status == 429:
            reply = wire.error_reply(
                call.provider,
                429,
                reason="requests",
                model=call.model,
                retry_after=fault.retry_after,
            )
            return reply, fault.retry_after
        return wire.error_reply(call.provider, fault.status, model=call.model), None


def _api_key(handler: Handler, query: Mapping[str, list[str]]) -> str | None:
    """The request's API key (Bearer/Token scheme stripped), or None if it sent none."""
    for name in _KEY_HEADERS:
        value = handler.headers.get(name)
        if value:
            scheme, _, rest = value.strip().partition(" ")
            return rest.strip() if rest and scheme.lower() in ("bearer", "token") else value
    keys = query.get("key")
    return keys[0] if keys else None
