"""The google-genai SDK (``genai.Client``: ``client.models`` and ``client.aio.models``).

Governed, sync and async, on the Gemini Developer API and Vertex AI alike:
``generate_content``, ``generate_content_stream`` and ``embed_content`` (and
whatever else reaches the same endpoints: ``chats``, automatic function
calling and stream continuation hops each count as one call). Everything else
(``count_tokens``, files, caches, images, videos, tunings, batches, live)
passes through ungoverned. Every client counts as the ``gemini`` service.

Choke points: ``BaseApiClient.request`` / ``async_request`` /
``async_request_streamed`` and the generator ``request_streamed``
``(http_method, path, request_dict, http_options)`` govern the call; with the
SDK's tenacity loop inside (``_request`` / ``_async_request``), built from its
``HttpRetryOptions`` exactly as the SDK builds it, except that its sleep is
the governor's (it waits at least the SDK's wait and re-admits the attempt,
or vetoes the retry); each attempt passes ``_request_once`` /
``_async_request_once``, where it is observed. Without ``HttpRetryOptions``
the SDK makes one attempt, and so does the governor.

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
from dataclasses import replace
from typing import Any, cast

import tenacity

from ..errors import GovernorError
from ..governor import CallSpec, Governor, Ticket
from ..policies.retry import AttemptFailure
from ..pricing import Usage
from ._base import (
    Active,
    Adapter,
    Call,
    Do,
    GovernorGetter,
    Patch,
    Steps,
    Wrapper,
    active_for,
    arun_steps,
    async_governed,
    attempt_point,
    governed_call,
    note_veto,
    run_steps,
    sync_governed,
)
from ._errors import sdk_rejection, transport_failure
from ._genai import gemini_info, gemini_request
from ._media import gemini_media
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


def gemini_usage(u: Any) -> Usage | None:
    """``usageMetadata`` → :class:`Usage`: thoughts and candidates are billed as output.

    ``promptTokenCount`` already includes the cached tokens
    (``cachedContentTokenCount``, billed at the cache rate) and excludes tool
    prompts (``toolUsePromptTokenCount``, billed as input).
    """
    if not isinstance(u, Mapping):
        return None
    thoughts = count(u.get("thoughtsTokenCount"))
    return Usage(count(u.get("promptTokenCount")) + count(u.get("toolUsePromptTokenCount")),
                 count(u.get("candidatesTokenCount")) + thoughts,
                 count(u.get("cachedContentTokenCount")), reasoning_tokens=thoughts)


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

    __slots__ = ("_finish", "_latest", "embedding_predict")

    def __init__(self, embedding_predict: bool = False) -> None:
        super().__init__()
        self._latest: Usage | None = None
        self._finish: tuple[str, ...] = ()
        self.embedding_predict = embedding_predict

    def see(self, event: Any) -> bool:
        body = field(event, "body")
        if isinstance(body, str):
            about, self._finish = gemini_info(body, self._finish)
            u = gemini_usage(_usage_metadata(body))
            if u is not None:
                u = replace(u, response=about)
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
        u = gemini_usage(_usage_metadata(body))
        return None if u is None else replace(u, response=gemini_info(body)[0])


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
    """Governs ``google.genai`` through ``BaseApiClient``'s request methods."""

    module = "google.genai"
    distribution = "google-genai"
    versions = ("3.0", "4")

    def patches(self, getter: GovernorGetter) -> list[Patch]:
        base = sys.modules["google.genai._api_client"].BaseApiClient
        return [
            Patch(base, "request", sync_governed(self, getter)),
            Patch(base, "request_streamed", self._stream_wrapper(getter)),
            Patch(base, "async_request", async_governed(self, getter)),
            Patch(base, "async_request_streamed", async_governed(self, getter)),
            Patch(base, "_request_once", self._attempt_point(False)),
            Patch(base, "_async_request_once", self._attempt_point(True)),
            Patch(base, "_request", self._retry_loop(False)),
            Patch(base, "_async_request", self._retry_loop(True)),
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
        media = gemini_media(body)
        spec = CallSpec(
            service=SERVICE, operation=operation or "embeddings", model=model,
            stream=action == "streamGenerateContent",
            max_output_tokens=None if operation != "generate_content"
            else _max_output_tokens(body),
            prompt_bytes=media.text_bytes, media_tokens=media.media_tokens,
            audio_tokens=media.audio_tokens, media_unbounded=media.unbounded,
            embedding=operation != "generate_content",
            max_retries=_client_retries(instance, bound.get("http_options")),
        )
        return Call(spec, args, dict(kwargs),
                    {"instance": instance, "path": path, "predict": predict})

    def substitute_model(self, call: Call, model: str) -> Call | None:
        path = call.context.get("path")
        found = _ACTION.search(path) if isinstance(path, str) else None
        if found is None or not isinstance(path, str):
            return None
        new_path = path[:found.start(1)] + model + path[found.end(1):]
        args, kwargs = list(call.args), dict(call.kwargs)
        if len(args) > 1:
            args[1] = new_path
        else:
            kwargs["path"] = new_path
        return Call(replace(call.spec, model=model), tuple(args), kwargs,
                    {**call.context, "path": new_path})

    def tracker(self, call: Call) -> GeminiTracker:
        return GeminiTracker(bool(call.context.get("predict")))

    def provider_name(self, instance: Any, host: str | None) -> str:
        return "gcp.vertex_ai" if getattr(instance, "vertexai", False) else "gcp.gemini"

    def request_attributes(self, instance: Any, call: Call) -> dict[str, Any]:
        names = ("http_method", "path", "request_dict", "http_options")
        bound = dict(zip(names, call.args, strict=False))
        bound.update((k, v) for k, v in call.kwargs.items() if k in names)
        body = bound.get("request_dict")
        return gemini_request(call.spec.operation, body if isinstance(body, Mapping) else {},
                              call.spec.stream)

    def endpoint(self, instance: Any, call: Call) -> tuple[str | None, str | None]:
        base = getattr(getattr(instance, "_http_options", None), "base_url", None)
        credential = getattr(instance, "api_key", None)
        if not credential and getattr(instance, "vertexai", False):
            credential = f"{getattr(instance, 'project', '')}/{getattr(instance, 'location', '')}"
        return (base if isinstance(base, str) else None,
                credential if isinstance(credential, str) else None)

    # --------------------------------------------------------------- attempts
    def _attempt_point(self, asynchronous: bool) -> Wrapper:
        """``_request_once`` / ``_async_request_once``: one HTTP attempt of a governed call."""

        def ended(active: Active, exc: BaseException | None) -> Steps[bool]:
            """Record how the attempt went; True when it was throttled (and may be re-sent)."""
            active.attempting = False
            gov, t = active.gov, active.ticket
            if exc is None:
                gov.attempt_succeeded(t)
                return False
            if not isinstance(exc, Exception):
                return False
            errors = sys.modules["google.genai.errors"]
            failure = self.classify(exc)
            yield Do.of(gov.attempt_failed, gov.aattempt_failed, t, failure,
                        answered=isinstance(exc, errors.APIError))
            return failure.kind == "throttled" and _sdk_would_retry(active, exc)

        def attempts(wrapped: Callable[..., Any], active: Active, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Steps[Any]:
            """The attempt, and a throttled one re-sent while the governor re-queues it."""
            while True:
                try:
                    result = yield Do.of(wrapped, wrapped, *args, **kwargs)
                except BaseException as exc:
                    throttled = yield from ended(active, exc)
                    if not throttled or not (
                            yield Do.of(active.gov.requeue, active.gov.arequeue,
                                        active.ticket)):
                        raise
                    active.gov.attempt_started(active.ticket)
                    active.attempting = True
                    continue
                yield from ended(active, None)
                return result

        return attempt_point(attempts, asynchronous)

    def _retry_loop(self, asynchronous: bool) -> Wrapper:
        """``_request`` / ``_async_request``: the SDK's own tenacity loop, but the governor sleeps.

        The loop is the one the SDK would build (its ``retry_args`` of the
        request's or the client's ``HttpRetryOptions``: same stop, same retry
        predicate, same waits); only its ``sleep`` is the governor's, which
        waits at least the SDK's wait, re-admits the attempt, or vetoes the
        retry by raising the SDK's own error of the last attempt.
        """

        def plan(instance: Any, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
            names = ("http_request", "http_options", "stream")
            bound = dict(zip(names, args, strict=False))
            bound.update((k, v) for k, v in kwargs.items() if k in names)
            if "http_request" not in bound or set(kwargs) - set(names):
                return None  # a shape we do not know: the SDK's loop, ungoverned waits
            sdk = sys.modules["google.genai._api_client"]
            options, once_kwargs = bound.get("http_options"), {}
            retrying = instance._async_retry if asynchronous else instance._retry
            if options:
                model = sys.modules["google.genai.types"].HttpOptions(**options) \
                    if isinstance(options, dict) else options
                if model.retry_options:
                    loop_cls = tenacity.AsyncRetrying if asynchronous else tenacity.Retrying
                    retrying = loop_cls(**sdk.retry_args(model.retry_options))
                    if asynchronous:
                        once_kwargs = {"implicit_retry": False}
            once = instance._async_request_once if asynchronous else instance._request_once
            return retrying, (once, bound["http_request"], bool(bound.get("stream", False))), \
                once_kwargs

        def before_sleep(retrying: Any, last: list[BaseException]) -> Callable[[Any], None]:
            original = retrying.before_sleep

            def hook(state: Any) -> None:
                if state.outcome is not None and state.outcome.failed:
                    last[:] = [state.outcome.exception()]
                if original is not None:
                    original(state)
            return hook

        def pace(active: Active, last: list[BaseException], seconds: float) -> Steps[None]:
            """The governor's sleep: wait, re-admit, or veto with the SDK's last error."""
            refusal = yield Do.of(active.gov.retry, active.gov.aretry, active.ticket, seconds)
            if refusal is not None:
                if not last:
                    raise refusal
                raise note_veto(last[0], refusal)

        runner = arun_steps if asynchronous else run_steps

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            active = active_for(instance)
            planned = plan(instance, args, kwargs) if active is not None else None
            if active is None or planned is None:
                return wrapped(*args, **kwargs)
            retrying, call_args, call_kwargs = planned
            last: list[BaseException] = []

            def sleep(seconds: float) -> Any:  # a coroutine for the SDK's AsyncRetrying
                return runner(pace(active, last, seconds))

            active.sdk_retry = retrying.retry
            loop = retrying.copy(sleep=sleep, before_sleep=before_sleep(retrying, last))
            return loop(*call_args, **call_kwargs)

        return wrapper

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
        transport = transport_failure(exc)
        if transport is not None:
            return transport
        auth = sys.modules.get("google.auth.exceptions")
        if auth is not None and isinstance(exc, auth.TransportError):
            return AttemptFailure("failure", reason="connection")
        if isinstance(exc, (errors.UnknownApiResponseError, ValueError)):
            return AttemptFailure("fatal", reason="parse", lost=True)
        return AttemptFailure("fatal", reason=type(exc).__name__)

    def rejection(self, exc: GovernorError, call: Call) -> BaseException:
        """Google's own 429: ``ClientError`` code 429, RESOURCE_EXHAUSTED, with a RetryInfo."""
        errors = sys.modules["google.genai.errors"]
        message = str(exc)
        error: dict[str, Any] = {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED"}
        wait = exc.retry_after
        if exc.should_retry and wait is not None and math.isfinite(wait) and wait >= 0:
            error["details"] = [{"@type": _RETRY_INFO, "retryDelay": f"{math.ceil(wait)}s"}]
        body = {"error": error}
        return sdk_rejection(exc, errors.ClientError, "Gemini", 429, body,
                             _synthetic_response(call, body))

    # --------------------------------------------------------------- results
    async def acomplete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        if call.spec.stream:  # async_request_streamed: an async generator of chunks
            tracker = self.tracker(call)
            s = Settlement(gov, t, tracker)
            watched = watch_aiter(_athrough(result, tracker), s, self.failed)
            s.watch(watched)  # collected without ever being iterated: settle all the same
            return watched
        await gov.asettle(t, self.usage(call, result))
        return result

    def _stream_wrapper(self, getter: GovernorGetter) -> Wrapper:
        """``request_streamed`` is a generator: nothing is sent before its first ``next()``.

        So admission, the SDK's attempts (run by priming the generator to its
        first chunk, where an HTTP error surfaces) and settlement all happen
        inside the generator handed back, lazily, as the SDK would have sent
        the request.
        """

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            if active_for(instance) is not None:
                return wrapped(*args, **kwargs)
            try:
                call = self.describe(instance, args, kwargs)
            except Exception:  # an SDK shape we cannot read never breaks the user's call
                logger.warning("RATE_LIMIT cannot read this google.genai call: passing it "
                               "through ungoverned", exc_info=True)
                call = None
            if call is None:
                return wrapped(*args, **kwargs)
            return self._governed_stream(getter(), wrapped, instance, call)

        return wrapper

    def _governed_stream(self, gov: Governor, wrapped: Callable[..., Any], instance: Any,
                         call: Call) -> Iterator[Any]:
        """The common call lifecycle, run when the user first asks for a chunk; its result
        is the primed SDK generator, watched until it ends."""

        def first(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], Any]:
            source = wrapped(*args, **kwargs)
            try:
                return (next(source),), source
            except StopIteration:
                return (), source

        def watch(gov: Governor, t: Ticket, call: Call,
                  primed: tuple[tuple[Any, ...], Any]) -> Iterator[Any]:
            head, source = primed
            tracker = self.tracker(call)
            return watch_iter(_through(head, source, tracker), Settlement(gov, t, tracker),
                              self.failed)

        yield from run_steps(governed_call(self, gov, instance, call, first,
                                           complete=(watch, watch)))


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


def _sdk_would_retry(active: Active, exc: BaseException) -> bool:
    """Whether the SDK's own retry predicate for this call (its ``HttpRetryOptions``'
    ``http_status_codes``) retries ``exc``: only then is a 429 re-sent in place of that
    retry. Unknown (no loop seen): left to the SDK."""
    if active.sdk_retry is None:
        return False
    try:
        state = tenacity.RetryCallState(cast(Any, None), None, (), {})
        state.set_exception((type(exc), exc, exc.__traceback__))
        return bool(active.sdk_retry(state))
    except Exception:  # a strategy we cannot ask: leave the 429 to the SDK
        return False


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
