"""What openai and anthropic have in common: Stainless-generated clients.

Both route every call through ``SyncAPIClient.request`` / ``AsyncAPIClient.request``
``(cast_to, options: FinalRequestOptions, *, stream, stream_cls)`` with the SDK's
retry loop inside, and every successful attempt through ``_process_response``
(where its headers are visible). Both return parsed models, ``Stream`` /
``AsyncStream`` objects, or raw response wrappers (``with_raw_response`` /
``with_streaming_response``). The vendor modules only add their URL table,
usage shapes, header names and error body.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from ..errors import GovernorError
from ..governor import CallSpec, Governor, Ticket
from ..policies.adaptive import ProviderLimits
from ..policies.retry import AttemptFailure
from ..pricing import Usage
from ._base import (
    Adapter,
    Call,
    GovernorGetter,
    Patch,
    Wrapper,
    async_governed,
    observe_provider,
    sync_governed,
)
from ._errors import classify_status, sdk_rejection
from .streams import Settlement, SSEScanner, watch_aiter, watch_iter

__all__ = ["StainlessAdapter"]

RAW_HEADER = "X-Stainless-Raw-Response"
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens",
                     "max_tokens_to_sample")


def _body_size(body: Mapping[str, Any]) -> int:
    """Bytes of the JSON body: an upper bound of the prompt's tokens."""
    try:
        return len(json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                              default=str).encode())
    except (TypeError, ValueError):  # circular or exotic content: stay conservative
        return len(repr(body).encode())


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


class StainlessAdapter(Adapter):
    """Governs one Stainless SDK; subclasses fill in the vendor's specifics."""

    #: request path (query stripped) → GenAI operation name, for governed endpoints only
    operations: Mapping[str, str]
    #: prefix of the dynamic rejection classes ("OpenAI" → OpenAIRateLimitExceededError)
    error_prefix: str

    def __init__(self) -> None:
        self.sdk: Any = None
        self.raw_types: tuple[Any, ...] = ()

    # --------------------------------------------------------------- patches
    def patches(self, getter: GovernorGetter) -> list[Patch]:
        self.sdk = sys.modules[self.module]
        base = sys.modules[f"{self.module}._base_client"]
        # with_raw_response / with_streaming_response wrappers (the legacy one is openai's)
        self.raw_types = tuple(
            getattr(sys.modules.get(f"{self.module}.{mod}"), cls)
            for mod, cls in (("_response", "BaseAPIResponse"),
                             ("_legacy_response", "LegacyAPIResponse"))
            if hasattr(sys.modules.get(f"{self.module}.{mod}"), cls))
        return [
            Patch(base.SyncAPIClient, "request", sync_governed(self, getter)),
            Patch(base.AsyncAPIClient, "request", async_governed(self, getter)),
            Patch(base.SyncAPIClient, "_process_response", self._attempt_observer()),
            Patch(base.AsyncAPIClient, "_process_response", self._attempt_observer()),
        ]

    def _attempt_observer(self) -> Wrapper:
        """Reads a successful attempt's rate-limit headers (sync or async: before the call)."""
        limits = self.provider_limits

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            response = kwargs.get("response")
            if response is not None and response.is_success:
                observe_provider(limits(response.headers))
            return wrapped(*args, **kwargs)

        return wrapper

    @abc.abstractmethod
    def provider_limits(self, headers: Mapping[str, str]) -> ProviderLimits | None:
        """The rate-limit headers of a response."""

    # --------------------------------------------------------------- calls
    def service(self, instance: Any) -> str:
        """The governed service a client's calls count against."""
        return self.module

    def max_output_tokens(self, operation: str, body: Mapping[str, Any]) -> int | None:
        """The request's own cap on output tokens (bounds the cost estimate)."""
        for name in _MAX_TOKEN_FIELDS:
            found = _positive_int(body.get(name))
            if found is not None:
                return found
        return None

    def inject_usage(self, service: str, operation: str, body: Mapping[str, Any]) -> bool:
        """Whether to ask this stream for its usage the user did not request."""
        return False

    def describe(self, instance: Any, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any]) -> Call | None:
        # request(cast_to, options, *, stream=False, stream_cls=None)
        options = args[1] if len(args) > 1 else kwargs.get("options")
        if options is None or str(options.method).lower() != "post":
            return None
        operation = self.operations.get(options.url.split("?", 1)[0])
        if operation is None:
            return None
        body = options.json_data if isinstance(options.json_data, Mapping) else {}
        if isinstance(options.extra_json, Mapping) and options.extra_json:
            body = {**body, **options.extra_json}
        stream = bool(kwargs.get("stream", False))
        service = self.service(instance)
        headers = options.headers if isinstance(options.headers, Mapping) else {}
        model = body.get("model")
        spec = CallSpec(
            service=service, operation=operation,
            model=model if isinstance(model, str) and model else None, stream=stream,
            max_output_tokens=self.max_output_tokens(operation, body),
            prompt_bytes=_body_size(body), embedding=operation == "embeddings",
            max_retries=options.get_max_retries(instance.max_retries),
        )
        attempt_options = options.model_copy()
        attempt_options.max_retries = 0  # the governor owns retries
        if attempt_options.idempotency_key is None:  # one key for every attempt, as the SDK does
            attempt_options.idempotency_key = instance._idempotency_key()
        injected = stream and not headers.get(RAW_HEADER) and \
            self.inject_usage(service, operation, body)
        if injected:
            asked = body.get("stream_options")
            attempt_options.json_data = {
                **(options.json_data or {}),
                "stream_options": {**(asked if isinstance(asked, Mapping) else {}),
                                   "include_usage": True}}
        cast_to = args[0] if args else kwargs.get("cast_to")
        rest = {k: v for k, v in kwargs.items() if k not in ("cast_to", "options")}
        return Call(spec, (cast_to, attempt_options), rest,
                    {"instance": instance, "options": options, "injected": injected})

    # ------------------------------------------------------------- failures
    def classify(self, exc: BaseException) -> AttemptFailure:
        sdk = self.sdk
        if isinstance(exc, sdk.APIStatusError):
            code = getattr(exc, "code", None) or getattr(exc, "type", None)
            return classify_status(exc.status_code, exc.response.headers,
                                   code if isinstance(code, str) else None, self.provider_limits)
        if isinstance(exc, sdk.APITimeoutError):
            return AttemptFailure("failure", reason="timeout")
        if isinstance(exc, sdk.APIConnectionError):
            return AttemptFailure("failure", reason="connection")
        if isinstance(exc, (sdk.APIResponseValidationError, ValueError)):
            return AttemptFailure("fatal", reason="parse")
        return AttemptFailure("fatal", reason=type(exc).__name__)

    @abc.abstractmethod
    def error_body(self, exc: GovernorError, message: str) -> tuple[object, object]:
        """``(JSON body of the synthetic 429, body the SDK error carries)``."""

    def rejection(self, exc: GovernorError, call: Call) -> BaseException:
        httpx2 = sys.modules["httpx2"]
        instance, options = call.context["instance"], call.context["options"]
        try:
            url = instance._prepare_url(options.url)
        except Exception:  # never let the error path fail: a bare URL will do
            url = instance.base_url
        request = httpx2.Request(str(options.method).upper(), url)
        wait = exc.retry_after
        headers = {"retry-after": "60"}
        if wait is not None and math.isfinite(wait) and wait >= 0:
            headers = {"retry-after": str(max(1, math.ceil(wait))),
                       "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
        message = str(exc)
        body, carried = self.error_body(exc, message)
        response = httpx2.Response(429, headers=headers, json=body, request=request)
        return sdk_rejection(exc, self.sdk.RateLimitError, self.error_prefix, message,
                             response=response, body=carried)

    # ------------------------------------------------------------- results
    def complete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        if not self._watch(gov, t, call, result, asynchronous=False):
            gov.settle(t, self.usage(call, result))
        return result

    async def acomplete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        if not self._watch(gov, t, call, result, asynchronous=True):
            await gov.asettle(t, self.usage(call, result))
        return result

    def _watch(self, gov: Governor, t: Ticket, call: Call, result: Any,
               asynchronous: bool) -> bool:
        """Arrange a later settlement for a stream or an unread body (True), else False."""
        if isinstance(result, (self.sdk.Stream, self.sdk.AsyncStream)):
            self._watch_stream(gov, t, call, result, asynchronous)
            return True
        if isinstance(result, self.raw_types) and not result.http_response.is_closed:
            self._watch_raw(gov, t, call, result, asynchronous)
            return True
        return False

    def usage(self, call: Call, result: Any) -> Usage | None:
        """Usage of a parsed result, or of a raw response whose JSON body is read."""
        if not isinstance(result, self.raw_types):
            return self.tracker(call).final(result)
        response = result.http_response  # with_raw_response: the body is read already
        if "json" not in response.headers.get("content-type", ""):
            return None
        try:
            return self.tracker(call).final(json.loads(response.content))
        except ValueError:
            return None

    def _watch_stream(self, gov: Governor, t: Ticket, call: Call, stream: Any,
                      asynchronous: bool) -> None:
        """Swap the stream's iterator for a watching one; settle when it ends or closes."""
        s = Settlement(gov, t, self.tracker(call))
        source = stream._iterator
        stream._iterator = watch_aiter(source, s, self.failed) if asynchronous else \
            watch_iter(source, s, self.failed)
        _hook_close(stream.response, s, asynchronous)
        s.watch(stream.response)

    def _watch_raw(self, gov: Governor, t: Ticket, call: Call, result: Any,
                   asynchronous: bool) -> None:
        """An unread raw body: read its usage as the user reads it; settle when it closes.

        SSE usage events precede the end of the stream, so closing settles at
        once. A JSON body is parsed when it has been read whole, which (for a
        compressed body) is only after the response closed.
        """
        s = Settlement(gov, t, self.tracker(call))
        response = result.http_response
        headers = response.headers
        if "text/event-stream" in headers.get("content-type", ""):
            if headers.get("content-encoding", "identity") == "identity":
                _hook_bytes(response, s, SSEScanner(s.tracker).feed, None, asynchronous)
        else:
            body = bytearray()

            def parse_body() -> None:
                if s.tracker.usage is None and body and \
                        "json" in headers.get("content-type", ""):
                    with contextlib.suppress(ValueError):
                        s.tracker.usage = s.tracker.final(json.loads(body))

            _hook_bytes(response, s, body.extend, parse_body, asynchronous)
        _hook_close(response, s, asynchronous)
        s.watch(response)


def _hook_close(response: Any, s: Settlement, asynchronous: bool) -> None:
    """Make ``response.close()`` / ``aclose()`` settle ``s`` (instance attribute, no cycle)."""
    ref = weakref.ref(response)
    if asynchronous:
        original_aclose = type(response).aclose

        async def aclose() -> None:
            r = ref()
            if r is not None:
                await original_aclose(r)
            await s.aclose_hook()

        response.aclose = aclose
    else:
        original_close = type(response).close

        def close() -> None:
            r = ref()
            if r is not None:
                original_close(r)
            s.close_hook()

        response.close = close


def _hook_bytes(response: Any, s: Settlement, feed: Callable[[bytes], Any],
                end: Callable[[], None] | None, asynchronous: bool) -> None:
    """Feed the decoded body to ``feed`` however the user reads it.

    With ``end``, reading is one step of the settlement: a close meanwhile
    waits, and the end of reading calls ``end`` then settles.
    """
    ref = weakref.ref(response)
    if asynchronous:
        original_aiter = type(response).aiter_bytes

        async def aiter_bytes(chunk_size: int | None = None) -> AsyncIterator[bytes]:
            r = ref()
            if r is None:
                return
            s.iterating = end is not None
            try:
                async for chunk in original_aiter(r, chunk_size):
                    feed(chunk)
                    yield chunk
            finally:
                if end is not None:
                    s.iterating = False
                    end()
                    s.finish()

        response.aiter_bytes = aiter_bytes
    else:
        original_iter = type(response).iter_bytes

        def iter_bytes(chunk_size: int | None = None) -> Iterator[bytes]:
            r = ref()
            if r is None:
                return
            s.iterating = end is not None
            try:
                for chunk in original_iter(r, chunk_size):
                    feed(chunk)
                    yield chunk
            finally:
                if end is not None:
                    s.iterating = False
                    end()
                    s.finish()

        response.iter_bytes = iter_bytes
