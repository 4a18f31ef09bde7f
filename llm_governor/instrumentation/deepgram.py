"""The deepgram-sdk v7 (``DeepgramClient``, ``AsyncDeepgramClient``).

Governed: pre-recorded transcription, ``listen.v1.media.transcribe_file`` and
``transcribe_url`` (every POST to ``/v1/listen``, sync and async, including
``with_raw_response``). Everything else (live websockets, speak, read, manage,
agent) passes through ungoverned.

Choke point: ``deepgram.core.http_client.HttpClient.request`` /
``AsyncHttpClient.request``. The SDK retries by calling ``request`` again with
``retries + 1``, so ``retries == 0`` marks the outer call: only that one is
governed, with ``request_options["max_retries"] = 0`` so the SDK never
recurses; the governor's retries use the client's ``max_retries`` (default 2).
``request`` returns error responses instead of raising: an attempt whose
status is >= 400 is turned into an exception for the governor's retry loop,
and the last one is handed back to the SDK unchanged, which raises its usual
``ApiError``.

Cost is per audio minute (``[prices]``, else the list prices in
``llm_governor.pricing.AUDIO_PRICES``). The reservation bounds the audio's
length before the call: a WAV header's exact duration, else the payload's size
at ``audio_bytes_per_second`` (a floor on the bitrate of the files you send:
lower it for low-bitrate codecs). The length of a URL's audio (or of a
streamed upload) is unknown: the reservation is then the stated
``llm_governor.cost_estimate(...)``, else the service's ``cost_per_request``.
The call settles at ``metadata.duration``; without one (``callback`` requests)
at the reservation. Deepgram limits concurrent requests: set
``max_concurrency`` for the service.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..context import current_cost_override
from ..errors import GovernorError
from ..governor import FAILURE_ATTR, CallSpec, Governor, Ticket
from ..policies.retry import AttemptFailure
from ..pricing import Usage, wav_seconds
from ._base import Adapter, Call, GovernorGetter, Patch, Wrapper, async_governed, sync_governed
from ._errors import classify_status, sdk_rejection
from .streams import UsageTracker, field

__all__ = ["DeepgramAdapter", "DeepgramResponseError"]

SERVICE = "deepgram"
DEFAULT_MODEL = "nova-3"
_LISTEN = "v1/listen"
_ERROR_CODES = {429: "TOO_MANY_REQUESTS", 402: "ASR_PAYMENT_REQUIRED"}


class DeepgramResponseError(Exception):
    """An error status returned by one attempt, raised so the governor's retry loop sees it.

    Never reaches user code: the final one's response goes back to the SDK.
    """

    def __init__(self, response: Any) -> None:
        super().__init__(f"Deepgram answered HTTP {response.status_code}")
        self.response = response
        self.status_code: int = response.status_code


def _json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class DeepgramTracker(UsageTracker):
    """Audio seconds of a transcription response (``metadata.duration``)."""

    __slots__ = ()

    def see(self, event: Any) -> bool:  # no streams here
        return True

    def final(self, response: Any) -> Usage | None:
        body = _json_or_none(response) if hasattr(response, "json") else response
        duration = field(field(body, "metadata"), "duration")
        if isinstance(duration, (int, float)) and not isinstance(duration, bool) \
                and math.isfinite(duration) and duration >= 0:
            return Usage(audio_seconds=float(duration))
        return None


class DeepgramAdapter(Adapter):
    """Governs ``deepgram`` through ``HttpClient.request`` / ``AsyncHttpClient.request``."""

    module = "deepgram"

    def __init__(self) -> None:
        self._getter: GovernorGetter | None = None
        self._api_error: type[Exception] = Exception

    def patches(self, getter: GovernorGetter) -> list[Patch]:
        # deepgram imports its submodules lazily: load the two we patch (the SDK is in use).
        http = importlib.import_module("deepgram.core.http_client")
        self._api_error = importlib.import_module("deepgram.core.api_error").ApiError
        self._getter = getter
        return [
            Patch(http.HttpClient, "request", self._outer(sync_governed(self, getter), False)),
            Patch(http.AsyncHttpClient, "request", self._outer(async_governed(self, getter), True)),
        ]

    def _outer(self, governed: Wrapper, asynchronous: bool) -> Wrapper:
        """Attempts raise on error statuses; the last error's response goes back to the SDK."""

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            if not _is_listen(args, kwargs):
                return wrapped(*args, **kwargs)
            one_shot = _one_shot(kwargs)
            if asynchronous:
                return _returning_async(governed(self._checked_async(wrapped, one_shot),
                                                 instance, args, kwargs))
            try:
                return governed(self._checked(wrapped, one_shot), instance, args, kwargs)
            except DeepgramResponseError as exc:
                return exc.response

        return wrapper

    def _raise_for(self, response: Any, one_shot: bool) -> Any:
        if response.status_code < 400:
            return response
        err = DeepgramResponseError(response)
        failure = self.classify(err)
        if one_shot:  # the body was an iterator, now consumed: a retry would send nothing
            failure = AttemptFailure("fatal", failure.retry_after, failure.provider,
                                     "one_shot_body")
        setattr(err, FAILURE_ATTR, failure)
        raise err

    def _checked(self, wrapped: Callable[..., Any], one_shot: bool) -> Callable[..., Any]:
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                response = wrapped(*args, **kwargs)
            except Exception as exc:
                self._no_retry(exc, one_shot)
                raise
            return self._raise_for(response, one_shot)
        return checked

    def _checked_async(self, wrapped: Callable[..., Awaitable[Any]],
                       one_shot: bool) -> Callable[..., Awaitable[Any]]:
        async def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                response = await wrapped(*args, **kwargs)
            except Exception as exc:
                self._no_retry(exc, one_shot)
                raise
            return self._raise_for(response, one_shot)
        return checked

    def _no_retry(self, exc: Exception, one_shot: bool) -> None:
        if one_shot and not hasattr(exc, FAILURE_ATTR):
            failure = self.classify(exc)
            setattr(exc, FAILURE_ATTR, AttemptFailure("fatal", failure.retry_after,
                                                      failure.provider, "one_shot_body"))

    # --------------------------------------------------------------- calls
    def describe(self, instance: Any, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any]) -> Call | None:
        if not _is_listen(args, kwargs):
            return None
        options = kwargs.get("request_options")
        options = options if isinstance(options, Mapping) else {}
        query = {**(kwargs.get("params") or {}),
                 **(options.get("additional_query_parameters") or {})}
        model = query.get("model")
        model = model if isinstance(model, str) and model else DEFAULT_MODEL
        content = kwargs.get("content")
        audio_bytes, seconds, cost = 0, None, None
        if isinstance(content, (bytes, bytearray, memoryview)):
            audio_bytes, seconds = len(content), wav_seconds(content)
        elif current_cost_override() is None and self._getter is not None:
            # a URL, or a streamed upload: no length to bound, so the configured bound
            cost = self._getter().service_config(SERVICE, model).cost_per_request
        retries = options.get("max_retries", getattr(instance, "base_max_retries", None))
        spec = CallSpec(
            service=SERVICE, operation="transcription", model=model,
            audio_bytes=audio_bytes, audio_seconds=seconds, cost=cost,
            max_retries=retries if isinstance(retries, int) and retries >= 0 else None,
        )
        attempt = {**kwargs, "request_options": {**options, "max_retries": 0}}
        return Call(spec, args, attempt)

    def tracker(self, call: Call) -> DeepgramTracker:
        return DeepgramTracker()

    # --------------------------------------------------------------- failures
    def classify(self, exc: BaseException) -> AttemptFailure:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, (DeepgramResponseError, self._api_error)) and isinstance(status, int):
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None) or getattr(exc, "headers", None) or {}
            if status == 402:  # out of credit: no wait fixes it
                return AttemptFailure("fatal", reason="insufficient_quota")
            return classify_status(status, headers, None, lambda h: None)
        httpx = sys.modules.get("httpx")
        if httpx is not None:
            if isinstance(exc, httpx.TimeoutException):
                return AttemptFailure("failure", reason="timeout")
            if isinstance(exc, httpx.TransportError):
                return AttemptFailure("failure", reason="connection")
        if isinstance(exc, ValueError):
            return AttemptFailure("fatal", reason="parse")
        return AttemptFailure("fatal", reason=type(exc).__name__)

    def rejection(self, exc: GovernorError, call: Call) -> BaseException:
        """Deepgram's own 429: ``ApiError`` with ``status_code`` 429 and a ``retry-after``."""
        wait = exc.retry_after
        seconds = max(1, math.ceil(wait)) if wait is not None and math.isfinite(wait) \
            and wait >= 0 else 60
        body = {"err_code": _ERROR_CODES[429], "err_msg": str(exc)}
        return sdk_rejection(exc, self._api_error, "Deepgram",
                             headers={"retry-after": str(seconds),
                                      "content-type": "application/json"},
                             status_code=429, body=body)

    # --------------------------------------------------------------- results
    def complete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        usage = self.usage(call, result)
        gov.settle(t, usage, cost=t.reserved if usage is None else None)
        return result

    async def acomplete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        usage = self.usage(call, result)
        await gov.asettle(t, usage, cost=t.reserved if usage is None else None)
        return result


def _is_listen(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """The outer (``retries == 0``) POST to ``/v1/listen``."""
    if kwargs.get("retries"):
        return False
    path = args[0] if args else kwargs.get("path")
    method = kwargs.get("method")
    return isinstance(path, str) and path.strip("/") == _LISTEN and \
        isinstance(method, str) and method.upper() == "POST"


def _one_shot(kwargs: Mapping[str, Any]) -> bool:
    """The audio is an iterator: sent once, it cannot be sent again."""
    content = kwargs.get("content")
    return content is not None and not isinstance(content, (bytes, bytearray, memoryview))


async def _returning_async(governed: Awaitable[Any]) -> Any:
    try:
        return await governed
    except DeepgramResponseError as exc:
        return exc.response
