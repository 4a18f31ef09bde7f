"""The deepgram-sdk v7 (``DeepgramClient``, ``AsyncDeepgramClient``).

Governed: pre-recorded transcription, ``listen.v1.media.transcribe_file`` and
``transcribe_url`` (every POST to ``/v1/listen``, sync and async, including
``with_raw_response``). Everything else (live websockets, speak, read, manage,
agent) passes through ungoverned.

Choke point: ``deepgram.core.http_client.HttpClient.request`` /
``AsyncHttpClient.request``. The SDK retries by sleeping and calling
``request`` again with ``retries + 1``, so the outer call (``retries == 0``)
is governed and each nested call is a retry point: the SDK has decided to
retry and slept its own wait (recorded from its ``_retry_timeout``); the
governor waits whatever more it needs, re-admits, and either lets the SDK's
attempt go or vetoes it by handing back the previous attempt's outcome, just
as the SDK does when its retries run out. Every response passes the SDK's
``_should_retry``, where it is observed. ``request`` returns error responses
instead of raising; the SDK's caller raises its ``ApiError`` from them.

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
import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ..context import current_cost_override
from ..errors import GovernorError
from ..governor import CallSpec, Governor, Ticket
from ..media import wav_seconds
from ..policies.retry import AttemptFailure
from ..pricing import Usage
from ._base import (
    ACTIVE,
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
    note_veto,
    run_steps,
    sync_governed,
)
from ._errors import classify_status, sdk_rejection, transport_failure
from .streams import UsageTracker, field

__all__ = ["DeepgramAdapter", "DeepgramResponseError"]

logger = logging.getLogger("llm_governor")
SERVICE = "deepgram"
DEFAULT_MODEL = "nova-3"
_LISTEN = "v1/listen"
_ERROR_CODES = {429: "TOO_MANY_REQUESTS", 402: "ASR_PAYMENT_REQUIRED"}


class DeepgramResponseError(Exception):
    """Stands for an error status the SDK turns into its ``ApiError`` after the call.

    Only recorded (error type in telemetry); never raised into user code.
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
    distribution = "deepgram-sdk"
    versions = ("7.0", "8")

    def __init__(self) -> None:
        self._getter: GovernorGetter | None = None
        self._api_error: type[Exception] = Exception

    def patches(self, getter: GovernorGetter) -> list[Patch]:
        # deepgram imports its submodules lazily: load the two we patch (the SDK is in use).
        http = importlib.import_module("deepgram.core.http_client")
        self._api_error = importlib.import_module("deepgram.core.api_error").ApiError
        self._getter = getter
        return [
            Patch(http.HttpClient, "request", self._levels(sync_governed(self, getter), False)),
            Patch(http.AsyncHttpClient, "request",
                  self._levels(async_governed(self, getter), True)),
            Patch(http, "_should_retry", self._observer()),
            Patch(http, "_retry_timeout", self._sdk_wait()),
            Patch(http, "_retry_timeout_from_retries", self._sdk_wait()),
        ]

    def _levels(self, governed: Wrapper, asynchronous: bool) -> Wrapper:
        """The outer call is governed; a nested one (the SDK's retry) passes the retry point."""

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            active = active_for(instance)
            if active is None:
                return governed(self._first(wrapped), instance, args, kwargs)
            in_flight = sys.exc_info()[1]  # the SDK retries a connection error from its except
            waited, active.sdk_wait = active.sdk_wait or 0.0, None
            return runner(self._retry(active, wrapped, args, kwargs, in_flight, waited))

        runner = arun_steps if asynchronous else run_steps
        return wrapper

    def _retry(self, active: Active, wrapped: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any], in_flight: BaseException | None,
               waited: float) -> Steps[Any]:
        """The governor's part of the SDK's retry (the nested call), then the call."""
        if in_flight is not None and active.ticket.state == "sending":
            yield Do.of(active.gov.attempt_failed, active.gov.aattempt_failed, active.ticket,
                        self.classify(in_flight), answered=False)
        refusal = yield Do.of(active.gov.retry, active.gov.aretry, active.ticket, waited,
                              already_waited=waited)
        if refusal is not None:
            return self._veto(active, in_flight, refusal)
        active.gov.attempt_started(active.ticket)
        return (yield Do.of(wrapped, wrapped, *args, **kwargs))

    def _veto(self, active: Active, in_flight: BaseException | None,
              refusal: GovernorError) -> Any:
        """What the SDK does when it has no retry left: re-raise, or hand the response back."""
        if in_flight is not None:
            raise note_veto(in_flight, refusal)
        logger.info("RATE_LIMIT llm-governor did not retry a deepgram call: %s", refusal)
        return active.last

    def _first(self, wrapped: Callable[..., Any]) -> Callable[..., Any]:
        """The outer call's own attempt starts with it (admission is done by then)."""

        def first(*args: Any, **kwargs: Any) -> Any:
            active = ACTIVE.get()
            if active is not None:
                active.gov.attempt_started(active.ticket)
            return wrapped(*args, **kwargs)

        return first

    def _observer(self) -> Wrapper:
        """``_should_retry(response)`` sees every attempt's response: record how it went."""

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            active = ACTIVE.get()
            response = args[0] if args else kwargs.get("response")
            if active is not None and active.adapter is self and response is not None:
                active.last = response
                status = getattr(response, "status_code", 0)
                if 200 <= status < 300:
                    active.gov.attempt_succeeded(active.ticket)
                else:
                    active.gov.attempt_failed_in_hook(
                        active.ticket, self.classify(DeepgramResponseError(response)),
                        answered=True)
            return wrapped(*args, **kwargs)

        return wrapper

    def _sdk_wait(self) -> Wrapper:
        """The SDK's own wait before a retry, recorded so the governor waits only the rest."""

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            wait = wrapped(*args, **kwargs)
            active = ACTIVE.get()
            if active is not None and active.adapter is self:
                active.sdk_wait = float(wait)
            return wait

        return wrapper

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
        return Call(spec, args, dict(kwargs))

    def tracker(self, call: Call) -> DeepgramTracker:
        return DeepgramTracker()

    def provider_name(self, instance: Any, host: str | None) -> str:
        return "deepgram"

    def endpoint(self, instance: Any, call: Call) -> tuple[str | None, str | None]:
        base = call.kwargs.get("base_url") or instance.get_base_url(None)
        headers = instance.base_headers() if callable(getattr(instance, "base_headers", None)) \
            else {}
        credential = headers.get("Authorization") if isinstance(headers, Mapping) else None
        return (base if isinstance(base, str) else None,
                credential if isinstance(credential, str) else None)

    def substitute_model(self, call: Call, model: str) -> Call | None:
        kwargs = dict(call.kwargs)
        kwargs["params"] = {**(kwargs.get("params") or {}), "model": model}
        options = kwargs.get("request_options")
        if isinstance(options, Mapping) and isinstance(
                options.get("additional_query_parameters"), Mapping) \
                and "model" in options["additional_query_parameters"]:
            kwargs["request_options"] = {**options, "additional_query_parameters": {
                **options["additional_query_parameters"], "model": model}}
        return Call(replace(call.spec, model=model), call.args, kwargs, call.context)

    def limit_retries(self, call: Call, retries: int) -> Call:
        options = call.kwargs.get("request_options")
        options = dict(options) if isinstance(options, Mapping) else {}
        return Call(replace(call.spec, max_retries=retries), call.args,
                    {**call.kwargs, "request_options": {**options, "max_retries": retries}},
                    call.context)

    # --------------------------------------------------------------- failures
    def classify(self, exc: BaseException) -> AttemptFailure:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, (DeepgramResponseError, self._api_error)) and isinstance(status, int):
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None) or getattr(exc, "headers", None) or {}
            if status == 402:  # out of credit: no wait fixes it
                return AttemptFailure("fatal", reason="insufficient_quota")
            return classify_status(status, headers, None, lambda h: None)
        transport = transport_failure(exc)
        if transport is not None:
            return transport
        if isinstance(exc, ValueError):
            return AttemptFailure("fatal", reason="parse", lost=True)
        return AttemptFailure("fatal", reason=type(exc).__name__)

    def rejection(self, exc: GovernorError, call: Call) -> BaseException:
        """Deepgram's own 429: ``ApiError`` with ``status_code`` 429 and a ``retry-after``."""
        wait = exc.retry_after
        seconds = max(1, math.ceil(wait)) if wait is not None and math.isfinite(wait) \
            and wait >= 0 else 60
        body = {"err_code": _ERROR_CODES[429], "err_msg": str(exc)}
        headers = {"retry-after": str(seconds)} if exc.should_retry \
            else {"x-should-retry": "false"}
        return sdk_rejection(exc, self._api_error, "Deepgram",
                             headers={**headers, "content-type": "application/json"},
                             status_code=429, body=body)

    # --------------------------------------------------------------- results
    def complete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        if getattr(result, "status_code", 200) >= 400:
            gov.settle(t, error=DeepgramResponseError(result))
        else:
            gov.settle(t, self.usage(call, result))
        return result

    async def acomplete(self, gov: Governor, t: Ticket, call: Call, result: Any) -> Any:
        if getattr(result, "status_code", 200) >= 400:
            await gov.asettle(t, error=DeepgramResponseError(result))
        else:
            await gov.asettle(t, self.usage(call, result))
        return result


def _is_listen(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """The outer (``retries == 0``) POST to ``/v1/listen``."""
    if kwargs.get("retries"):
        return False
    path = args[0] if args else kwargs.get("path")
    method = kwargs.get("method")
    return isinstance(path, str) and path.strip("/") == _LISTEN and \
        isinstance(method, str) and method.upper() == "POST"
