"""The google-genai SDK (``genai.Client``: ``client.models`` and ``client.aio.models``).

Governed, sync and async, on the Gemini Developer API and Vertex AI alike:
``generate_content``, ``generate_content_stream`` and ``embed_content`` (and
whatever else reaches the same endpoints: ``chats``, automatic function
calling and stream continuation hops each count as one call). Everything else
(``count_tokens``, files, caches, images, videos, tunings, batches, live)
passes through ungoverned. Every client counts as the ``gemini`` service.

Choke points: ``BaseApiClient.request`` / ``async_request`` /
``async_request_streamed`` and the generator ``request_streamed``
``(http_method, path, request_dict, http_options)``, with the SDK's tenacity
retry loop inside. The governor owns retries: each attempt passes per-request
``http_options`` whose ``retry_options`` allow one attempt (which also turns
off the SDK's implicit aiohttp reconnect), while the client's own
``HttpRetryOptions.attempts`` (when configured) sets how many the governor
makes. So attempts never multiply.

Usage comes from the raw body's ``usageMetadata``; in a stream every chunk
carries the cumulative counts, so the last chunk's are the call's. Gemini
sends no rate-limit headers: a 429's wait is ``RetryInfo.retryDelay`` in the
error body.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from ..errors import GovernorError
from ..governor import FAILURE_ATTR, CallSpec, Governor, Ticket
from ..policies.retry import AttemptFailure
from ..pricing import Usage
from ._base import (
    Adapter,
    Call,
    GovernorGetter,
    Patch,
    Wrapper,
    async_governed,
    run_attempts,
    sync_governed,
)
from ._errors import sdk_rejection
from .streams import Settlement, UsageTracker, count, field, watch_aiter, watch_iter

__all__ = ["GeminiAdapter", "gemini_usage", "retry_delay"]

logger = logging.getLogger("llm_governor")
SERVICE = "gemini"
# "models/gemini-2.0-flash:generateContent", "publishers/google/models/x:predict",
# "models/x:streamGenerateContent?alt=sse": the resource's last segment and the action.
_ACTION = re.compile(r"([^/:?]+):([A-Za-z]+)(?:\?|$)")
OPERATIONS = {
    "generateContent": "generate_content",
    "streamGenerateContent": "generate_content",
    "embedContent": "embeddings",
    "batchEmbedContents": "embeddings",
}
_USAGE_KEY = re.compile(r'"usageMetadata"\s*:\s*')
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_DECODER = json.JSONDecoder()
_SDK_ATTEMPTS = 5  # google-genai's default when HttpRetryOptions.attempts is unset
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


# ------------------------------------------------------------------ parsing
def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


def _body_size(body: Any) -> int:
    """Bytes of the JSON body: an upper bound of the prompt's text tokens."""
    try:
        return len(json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                              default=str).encode())
    except (TypeError, ValueError):
        return len(repr(body).encode())


def gemini_usage(u: Any) -> Usage | None:
    """``usageMetadata`` → :class:`Usage`: thoughts and candidates are billed as output.

    ``promptTokenCount`` already includes the cached tokens
    (``cachedContentTokenCount``, billed at the cache rate) and excludes tool
    prompts (``toolUsePromptTokenCount``, billed as input).
    """
    if not isinstance(u, Mapping):
        return None
    return Usage(count(u.get("promptTokenCount")) + count(u.get("toolUsePromptTokenCount")),
                 count(u.get("candidatesTokenCount")) + count(u.get("thoughtsTokenCount")),
                 count(u.get("cachedContentTokenCount")))


def _usage_metadata(body: str) -> Any:
    """The body's top-level ``usageMetadata`` object, without parsing the whole body.

    Quotes inside JSON strings are escaped, so the last ``"usageMetadata":``
    in the text is a key, and (as Gemini writes it last) the top-level one.
    """
    at = body.rfind('"usageMetadata"')
    if at < 0:
        return None
    found = _USAGE_KEY.match(body, at)
    if found is None:
        return None
    try:
        return _DECODER.raw_decode(body, found.end())[0]
    except ValueError:
        return None


def _predict_usage(body: str) -> Usage | None:
    """Vertex ``:predict`` embeddings: ``predictions[].embeddings.statistics.token_count``."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    predictions = field(parsed, "predictions")
    if not isinstance(predictions, list):
        return None
    tokens = [field(field(field(p, "embeddings"), "statistics"), "token_count")
              for p in predictions]
    if not tokens or any(not isinstance(n, (int, float)) for n in tokens):
        return None
    return Usage(int(sum(tokens)), 0)


def retry_delay(details: Any) -> float | None:
    """``RetryInfo.retryDelay`` ("41s", "0.5s") of a Google error body, in seconds."""
    for info in _error_details(details):
        if field(info, "@type") == _RETRY_INFO:
            delay = field(info, "retryDelay")
            if isinstance(delay, Mapping):  # the proto form {"seconds": 1, "nanos": 5e8}
                seconds = delay.get("seconds", 0)
                nanos = delay.get("nanos", 0)
                try:
                    value = float(seconds) + float(nanos) / 1e9
                except (TypeError, ValueError):
                    return None
            else:
                match = _DURATION.match(delay) if isinstance(delay, str) else None
                if match is None:
                    return None
                value = float(match.group(1))
            return value if math.isfinite(value) and value >= 0 else None
    return None


def _error(details: Any) -> Any:
    if isinstance(details, list) and len(details) == 1:
        details = details[0]
    inner = field(details, "error")
    return inner if isinstance(inner, Mapping) else details


def _error_details(details: Any) -> list[Any]:
    found = field(_error(details), "details")
    return found if isinstance(found, list) else []


def _quota_exhausted(exc: Any, delay: float | None) -> bool:
    """A 429 no short wait fixes: a per-day quota, or credits/billing exhausted."""
    for info in _error_details(exc.details):
        for violation in field(info, "violations") or []:
            quota = field(violation, "quotaId")
            if isinstance(quota, str) and "PerDay" in quota:
                return True
    message = str(field(_error(exc.details), "message") or exc.message or "").lower()
    return delay is None and ("billing" in message or "credit" in message)


# ------------------------------------------------------------------ usage
class GeminiTracker(UsageTracker):
    """Usage of a response body, or of stream chunks (cumulative: the last one counts)."""

    __slots__ = ("_latest", "embedding_predict")

    def __init__(self, embedding_predict: bool = False) -> None:
        super().__init__()
        self._latest: Usage | None = None
        self.embedding_predict = embedding_predict

    def see(self, event: Any) -> bool:
        body = field(event, "body")
        if isinstance(body, str):
            u = gemini_usage(_usage_metadata(body))
            if u is not None:
                self._latest = u
                if '"finishReason"' in body:  # the chunk that ends the candidate
                    self.usage = u
        return True

    def ended(self) -> None:
        """The stream ran to its end: its last counts are the call's."""
        if self.usage is None:
            self.usage = self._latest

    def final(self, response: Any) -> Usage | None:
        body = field(response, "body")
        if not isinstance(body, str):
            return None
        if self.embedding_predict:
            return _predict_usage(body)
        return gemini_usage(_usage_metadata(body))


def _through(head: Iterable[Any], source: Iterator[Any], tracker: GeminiTracker) -> Iterator[Any]:
    yield from head
    yield from source
    tracker.ended()


async def _athrough(source: AsyncIterator[Any], tracker: GeminiTracker) -> AsyncIterator[Any]:
    async for item in source:
        yield item
    tracker.ended()


# ------------------------------------------------------------------ adapter
class GeminiAdapter(Adapter):
    """Governs ``google.genai`` through ``BaseApiClient``'s four request methods."""

    module = "google.genai"

    def patches(self, getter: GovernorGetter) -> list[Patch]:
        base = sys.modules["google.genai._api_client"].BaseApiClient
        return [
            Patch(base, "request", sync_governed(self, getter)),
            Patch(base, "request_streamed", self._stream_wrapper(getter)),
            Patch(base, "async_request", async_governed(self, getter)),
            Patch(base, "async_request_streamed", async_governed(self, getter)),
        ]

    # --------------------------------------------------------------- calls
    def describe(self, instance: Any, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any]) -> Call | None:
        names = ("http_method", "path", "request_dict", "http_options")
        bound = dict(zip(names, args, strict=False))
        bound.update((k, v) for k, v in kwargs.items() if k in names)
        method, path, body = bound.get("http_method"), bound.get("path"), bound.get("request_dict")
        if not isinstance(method, str) or method.lower() != "post" or not isinstance(path, str):
            return None
        found = _ACTION.search(path)
        if found is None:
            return None
        model, action = found.group(1), found.group(2)
        operation = OPERATIONS.get(action)
        predict = action == "predict" and "embedding" in model
        if operation is None and not predict:
            return None
        body = body if isinstance(body, Mapping) else {}
        options = bound.get("http_options")
        spec = CallSpec(
            service=SERVICE, operation=operation or "embeddings", model=model,
            stream=action == "streamGenerateContent",
            max_output_tokens=None if operation != "generate_content"
            else _max_output_tokens(body),
            prompt_bytes=_body_size(body), embedding=operation != "generate_content",
            max_retries=_client_retries(instance, options),
        )
        attempt_kwargs = {k: v for k, v in kwargs.items() if k not in names}
        attempt_kwargs.update(bound)
        attempt_kwargs["http_options"] = _one_attempt(options)
        return Call(spec, (), attempt_kwargs,
                    {"instance": instance, "path": path, "predict": predict})

    def tracker(self, call: Call) -> GeminiTracker:
        return GeminiTracker(bool(call.context.get("predict")))

    # --------------------------------------------------------------- failures
    def classify(self, exc: BaseException) -> AttemptFailure:
        errors = sys.modules["google.genai.errors"]
        if isinstance(exc, errors.APIError):
            code = exc.code if isinstance(exc.code, int) else 0
            delay = retry_delay(exc.details)
            if code == 429:
                if _quota_exhausted(exc, delay):
                    return AttemptFailure("fatal", reason="insufficient_quota")
                return AttemptFailure("throttled", delay, reason="rate_limit")
            if code == 408:
                return AttemptFailure("failure", delay, reason="timeout")
            if code >= 500:
                return AttemptFailure("failure", delay, reason="server_error")
            return AttemptFailure("fatal", reason=f"http_{code}")
        if isinstance(exc, _transport_errors("TimeoutException")):
            return AttemptFailure("failure", reason="timeout")
        if isinstance(exc, _transport_errors("TransportError")):
            return AttemptFailure("failure", reason="connection")
        if isinstance(exc, (errors.UnknownApiResponseError, ValueError)):
            return AttemptFailure("fatal", reason="parse")
        return AttemptFailure("fatal", reason=type(exc).__name__)

    def rejection(self, exc: GovernorError, call: Call) -> BaseException:
        """Google's own 429: ``ClientError`` code 429, RESOURCE_EXHAUSTED, with a RetryInfo."""
        errors = sys.modules["google.genai.errors"]
        message = str(exc)
        error: dict[str, Any] = {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED"}
        wait = exc.retry_after
        if wait is not None and math.isfinite(wait) and wait >= 0:
            error["details"] = [{"@type": _RETRY_INFO, "retryDelay": f"{math.ceil(wait)}s"}]
        body = {"error": error}
        return sdk_rejection(exc, errors.ClientError, "Gemini", 429, body,
                             _synthetic_response(call, body))

    # --------------------------------------------------------------- results
    def complete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        usage = self.usage(call, result)
        gov.settle(t, usage, cost=t.reserved if usage is None else None)
        return result

    async def acomplete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        if call.spec.stream:  # async_request_streamed: an async generator of chunks
            tracker = self.tracker(call)
            s = Settlement(gov, t, tracker)
            watched = watch_aiter(_athrough(result, tracker), s, self.failed)
            s.watch(watched)  # collected without ever being iterated: settle all the same
            return watched
        usage = self.usage(call, result)
        await gov.asettle(t, usage, cost=t.reserved if usage is None else None)
        return result

    def _stream_wrapper(self, getter: GovernorGetter) -> Wrapper:
        """``request_streamed`` is a generator: nothing is sent before its first ``next()``.

        So admission, attempts (each one primed to its first chunk, where an
        HTTP error surfaces) and settlement all happen inside the generator
        handed back, lazily, as the SDK would have sent the request.
        """

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            try:
                call = self.describe(instance, args, kwargs)
            except Exception:  # an SDK shape we cannot read never breaks the user's call
                logger.warning("RATE_LIMIT cannot read this google.genai call: passing it "
                               "through ungoverned", exc_info=True)
                call = None
            if call is None:
                return wrapped(*args, **kwargs)
            return self._governed_stream(getter(), wrapped, call)

        return wrapper

    def _governed_stream(self, gov: Governor, wrapped: Callable[..., Any],
                         call: Call) -> Iterator[Any]:
        try:
            t = gov.admit(call.spec)
        except GovernorError as exc:
            raise self.rejection(exc, call) from None

        failed: list[Exception] = []

        def attempt() -> tuple[Iterator[Any], tuple[Any, ...]]:
            source = wrapped(*call.args, **call.kwargs)
            try:
                return source, (next(source),)
            except StopIteration:
                return source, ()
            except Exception as exc:
                if not hasattr(exc, FAILURE_ATTR):
                    setattr(exc, FAILURE_ATTR, self.classify(exc))
                failed[:] = [exc]
                raise

        source, head = run_attempts(self, gov, t, call, attempt, failed)
        tracker = self.tracker(call)
        yield from watch_iter(_through(head, source, tracker), Settlement(gov, t, tracker),
                              self.failed)


def _max_output_tokens(body: Mapping[str, Any]) -> int | None:
    """``maxOutputTokens`` × ``candidateCount``, plus an explicit thinking budget."""
    config = body.get("generationConfig")
    if not isinstance(config, Mapping):
        return None
    most = _positive(config.get("maxOutputTokens"))
    if most is None:
        return None
    most *= _positive(config.get("candidateCount")) or 1
    thinking = config.get("thinkingConfig")
    if isinstance(thinking, Mapping):  # the SDK sends this one in snake_case
        budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
        most += _positive(budget) or 0
    return most


def _client_retries(instance: Any, options: Any) -> int | None:
    """Retries the user configured (per request, else on the client); ``None`` when unset."""
    configured = field(options, "retry_options")
    if configured is None:
        configured = field(getattr(instance, "_http_options", None), "retry_options")
    if configured is None:
        return None
    attempts = field(configured, "attempts")
    if not isinstance(attempts, int) or isinstance(attempts, bool):
        return _SDK_ATTEMPTS - 1
    return max(attempts, 1) - 1


def _one_attempt(options: Any) -> Any:
    """The user's per-request ``http_options`` with the SDK's retries off."""
    types = sys.modules["google.genai.types"]
    if options is None:
        base = types.HttpOptions()
    elif isinstance(options, Mapping):
        base = types.HttpOptions.model_validate(dict(options))
    else:
        base = options
    return base.model_copy(update={"retry_options": types.HttpRetryOptions(attempts=1)})


def _transport_errors(name: str) -> tuple[type[BaseException], ...]:
    """``name`` from whichever HTTP stacks google-genai may be using (httpx2, httpx, aiohttp)."""
    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            found.append(cls)
    if name == "TransportError":
        aiohttp = sys.modules.get("aiohttp")
        if aiohttp is not None:
            found.append(aiohttp.ClientConnectionError)
        auth = sys.modules.get("google.auth.exceptions")
        if auth is not None:
            found.append(auth.TransportError)
    else:
        found.append(TimeoutError)
    return tuple(found)


def _synthetic_response(call: Call, body: dict[str, Any]) -> Any:
    """An httpx2 429 response for handlers that read ``err.response`` (None if unbuildable)."""
    httpx2 = sys.modules.get("httpx2")
    if httpx2 is None:
        return None
    try:
        base = call.context["instance"]._http_options.base_url or "https://localhost/"
        request = httpx2.Request("POST", base.rstrip("/") + "/" + call.context["path"])
        return httpx2.Response(429, json=body, request=request)
    except Exception:  # never let the error path fail
        return None
