"""What openai and anthropic have in common: Stainless-generated clients.

Both route every call through ``SyncAPIClient.request`` / ``AsyncAPIClient.request``
``(cast_to, options: FinalRequestOptions, *, stream, stream_cls)`` with the SDK's
retry loop inside; each attempt through one method (openai ``_send_request``,
anthropic ``_attempt_request``), and each retry through ``_sleep_for_retry``
``(*, retries_taken, max_retries, options, response)``, called only once the
SDK has decided to retry. Both return parsed models, ``Stream`` /
``AsyncStream`` objects, or raw response wrappers (``with_raw_response`` /
``with_streaming_response``). The vendor modules only add their URL table,
attempt method, usage shapes, header names and error body.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import json
import logging
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any, NoReturn

from ..errors import GovernorError
from ..governor import CallSpec, Governor, Ticket
from ..policies._fast import builder
from ..policies.adaptive import ProviderLimits
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
    evolve_spec,
    note_veto,
    run_steps,
    sync_governed,
)
from ._errors import classify_status, retry_headers, sdk_rejection, transport_failure
from ._media import MediaBound, media_bound
from .streams import Settlement, SSEFilter, SSEScanner, watch_aiter, watch_iter

__all__ = ["StainlessAdapter"]

_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens",
                     "max_tokens_to_sample")
# CallSpec(**fields) at about half the cost of its frozen dataclass __init__ (one per call)
_call_spec = builder(CallSpec)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None



logger = logging.getLogger("llm_governor")

def _honoured_retry_after(module: str, base: Any, http: Any) -> float | None:
    """The longest ``retry-after`` the SDK's own retry wait honours (None: any).

    Newer releases name it (``MAX_RETRY_AFTER_DELAY``); older ones hard-code 60 s
    in ``_calculate_retry_timeout`` and back off on their own beyond it, so we ask
    that computation, as the SDK would, for a few waits.
    """
    cap = getattr(sys.modules.get(f"{module}._constants"), "MAX_RETRY_AFTER_DELAY", None)
    if isinstance(cap, (int, float)):
        return float(cap)
    client = base.SyncAPIClient
    try:
        options = sys.modules[f"{module}._models"].FinalRequestOptions.construct(
            method="post", url="/")

        def honours(seconds: float) -> bool:
            stub = SimpleNamespace(max_retries=2)
            stub._parse_retry_after_header = functools.partial(
                client._parse_retry_after_header, stub)
            wait = client._calculate_retry_timeout(
                stub, 2, options, http.Headers({"retry-after": f"{seconds:g}"}))
            return bool(wait == seconds)

        for limit in (60.0, 120.0):
            if honours(limit) and not honours(limit + 1):
                return limit
    except Exception:  # a release we cannot ask: treat every wait as honoured
        logger.debug("could not read %s's retry-after cap", module, exc_info=True)
    return None

class StainlessAdapter(Adapter):
    """Governs one Stainless SDK; subclasses fill in the vendor's specifics."""

    #: request path (query stripped) → GenAI operation name, for governed endpoints only
    operations: Mapping[str, str]
    #: prefix of the dynamic rejection classes ("OpenAI" → OpenAIRateLimitExceededError)
    error_prefix: str
    #: ``(module, class, method)`` of the SDK's per-attempt sends
    attempt_points: tuple[tuple[str, str, str], ...]

    def __init__(self) -> None:
        self.sdk: Any = None
        #: the HTTP library the SDK is built on (httpx2 since openai 3 / anthropic 1, else httpx)
        self.http: Any = None
        self.raw_types: tuple[Any, ...] = ()
        #: the longest ``retry-after`` the SDK honours (it does not retry beyond it)
        self.max_retry_after: float | None = None

    # --------------------------------------------------------------- patches
    def patches(self, getter: GovernorGetter) -> list[Patch]:
        self.sdk = sys.modules[self.module]
        base = sys.modules[f"{self.module}._base_client"]
        self.http = getattr(base, "httpx2", None) or base.httpx
        self.max_retry_after = _honoured_retry_after(self.module, base, self.http)
        # with_raw_response / with_streaming_response wrappers (the legacy one is openai's)
        self.raw_types = tuple(
            getattr(sys.modules.get(f"{self.module}.{mod}"), cls)
            for mod, cls in (("_response", "BaseAPIResponse"),
                             ("_legacy_response", "LegacyAPIResponse"))
            if hasattr(sys.modules.get(f"{self.module}.{mod}"), cls))
        patches = [
            Patch(base.SyncAPIClient, "request", sync_governed(self, getter)),
            Patch(base.AsyncAPIClient, "request", async_governed(self, getter)),
            Patch(base.SyncAPIClient, "_sleep_for_retry", self._retry_point(False)),
            Patch(base.AsyncAPIClient, "_sleep_for_retry", self._retry_point(True)),
        ]
        for module, cls, method in self.attempt_points:
            owner = getattr(sys.modules[module], cls)
            patches.append(Patch(owner, method,
                                 self._attempt_point(issubclass(owner, base.AsyncAPIClient))))
        return patches

    @abc.abstractmethod
    def provider_limits(self, headers: Mapping[str, str]) -> ProviderLimits | None:
        """The rate-limit headers of a response."""

    def attempt_response(self, result: Any) -> Any:
        """The HTTP response of what the attempt method returned."""
        return result

    # --------------------------------------------------------------- attempts
    def _attempt_point(self, asynchronous: bool) -> Wrapper:
        """Report each attempt of a governed call: started, answered or failed.

        An error status's body is read at once (the SDK reads it too before
        raising), so its error code classifies it and a veto can raise the
        SDK's own error with it.
        """

        def failed(active: Active, exc: BaseException) -> Steps[None]:
            active.attempting = False
            if isinstance(exc, Exception):
                yield Do.of(active.gov.attempt_failed, active.gov.aattempt_failed,
                            active.ticket, self.classify(exc), answered=False)

        def attempts(wrapped: Callable[..., Any], active: Active, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Steps[Any]:
            """The attempt, and a throttled one re-sent while the governor re-queues it."""
            while True:
                try:
                    result = yield Do.of(wrapped, wrapped, *args, **kwargs)
                except BaseException as exc:
                    yield from failed(active, exc)
                    raise
                active.attempting = False
                response = self.attempt_response(result)
                if not response.is_success and not response.is_closed:
                    with contextlib.suppress(Exception):
                        yield Do.of(response.read, response.aread)
                yield from self._answered(active, response)
                if not self._absorbable(active, response, args, kwargs) or \
                        not (yield Do.of(active.gov.requeue, active.gov.arequeue,
                                         active.ticket)):
                    return result
                yield Do.of(response.close, response.aclose)
                active.gov.attempt_started(active.ticket)
                active.attempting = True

        return attempt_point(attempts, asynchronous)

    def _absorbable(self, active: Active, response: Any, args: tuple[Any, ...],
                    kwargs: Mapping[str, Any]) -> bool:
        """A 429 the SDK itself would retry, of an attempt that can be sent again as is."""
        if response.status_code != 429 or active.ticket.failure is None \
                or active.ticket.failure.kind != "throttled":
            return False
        try:
            return bool(active.instance._should_retry(response)) and \
                self.replayable(args, kwargs)
        except Exception:  # an SDK shape we do not know: leave the 429 to the SDK
            return False

    def replayable(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        """Whether the attempt method's arguments can be sent once more."""
        return False

    def _answered(self, active: Active, response: Any) -> Steps[None]:
        gov, t = active.gov, active.ticket
        if response.is_success:
            gov.attempt_succeeded(t, self.provider_limits(response.headers))
        else:
            yield Do.of(gov.attempt_failed, gov.aattempt_failed, t,
                        self._status_failure(response), answered=True)

    def _status_failure(self, response: Any) -> AttemptFailure:
        code: str | None = None
        with contextlib.suppress(Exception):
            if getattr(response, "_content", None) is not None:
                body = response.json()
                error = body.get("error") if isinstance(body, Mapping) else None
                found = error.get("code") or error.get("type") \
                    if isinstance(error, Mapping) else None
                code = found if isinstance(found, str) else None
        return classify_status(response.status_code, response.headers, code,
                               self.provider_limits, self.max_retry_after)

    # --------------------------------------------------------------- retries
    def _retry_point(self, asynchronous: bool) -> Wrapper:
        """The SDK decided to retry: the governor paces and re-admits, or vetoes."""

        def sdk_wait(instance: Any, kwargs: Mapping[str, Any]) -> float | None:
            response = kwargs.get("response")
            try:
                remaining = kwargs["max_retries"] - kwargs["retries_taken"]
                wait = instance._calculate_retry_timeout(
                    remaining, kwargs["options"],
                    response.headers if response is not None else None)
                return float(wait)
            except Exception:  # an SDK shape we do not know: wait our own back-off
                return None

        def pace(active: Active, wait: float | None, response: Any,
                 in_flight: BaseException | None) -> Steps[None]:
            refusal = yield Do.of(active.gov.retry, active.gov.aretry, active.ticket, wait)
            if refusal is not None:
                self._raise_veto(active.instance, response, in_flight, refusal)

        runner = arun_steps if asynchronous else run_steps

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            active = active_for(instance)
            if active is None or args:
                return wrapped(*args, **kwargs)
            return runner(pace(active, sdk_wait(instance, kwargs), kwargs.get("response"),
                               sys.exc_info()[1]))

        return wrapper

    def _raise_veto(self, instance: Any, response: Any, in_flight: BaseException | None,
                    refusal: GovernorError) -> NoReturn:
        """Raise what the SDK raises when it does not retry this attempt's failure."""
        if response is not None:
            try:
                err = instance._make_status_error_from_response(response)
            except Exception:  # the body could not be read: the status says enough
                err = self.sdk.APIStatusError(f"Error code: {response.status_code}",
                                              response=response, body=None)
            raise note_veto(err, refusal) from None
        if in_flight is None:
            raise refusal
        http = self.http
        if http is not None and isinstance(in_flight, http.TransportError):
            request = None
            with contextlib.suppress(RuntimeError):
                request = in_flight.request
            wrapped_cls = self.sdk.APITimeoutError \
                if isinstance(in_flight, http.TimeoutException) else self.sdk.APIConnectionError
            raise note_veto(wrapped_cls(request=request), refusal) from in_flight
        raise note_veto(in_flight, refusal)

    # --------------------------------------------------------------- calls
    def endpoint(self, instance: Any, call: Call) -> tuple[str | None, str | None]:
        credential = getattr(instance, "api_key", None) or getattr(instance, "auth_token", None)
        return str(instance.base_url), credential if isinstance(credential, str) else None

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

    def media(self, model: str | None, body: Mapping[str, Any]) -> MediaBound:
        """The request's input, bounded (text bytes, image/file and audio tokens)."""
        return media_bound(self.module, model, body)

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
        model = body.get("model")
        model = model if isinstance(model, str) and model else None
        bound = self.media(model, body)
        spec = _call_spec(
            service=service, operation=operation, model=model, stream=stream,
            max_output_tokens=self.max_output_tokens(operation, body),
            prompt_bytes=bound.text_bytes, media_tokens=bound.media_tokens,
            audio_tokens=bound.audio_tokens, media_unbounded=bound.unbounded,
            embedding=operation == "embeddings",
            max_retries=options.get_max_retries(instance.max_retries),
        )
        # raw streams too: an SSEFilter hides the usage event from their bytes
        injected = stream and self.inject_usage(service, operation, body)
        if injected:
            asked = body.get("stream_options")
            options = options.model_copy()
            options.json_data = {
                **(options.json_data or {}),
                "stream_options": {**(asked if isinstance(asked, Mapping) else {}),
                                   "include_usage": True}}
        cast_to = args[0] if args else kwargs.get("cast_to")
        rest = {k: v for k, v in kwargs.items() if k not in ("cast_to", "options")}
        return Call(spec, (cast_to, options), rest,
                    {"instance": instance, "options": options, "injected": injected})

    def substitute_model(self, call: Call, model: str) -> Call | None:
        cast_to, options = call.args
        if not isinstance(options.json_data, Mapping) or "model" not in options.json_data:
            return None
        options = options.model_copy()
        options.json_data = {**options.json_data, "model": model}
        if isinstance(options.extra_json, Mapping) and "model" in options.extra_json:
            options.extra_json = {**options.extra_json, "model": model}
        return Call(evolve_spec(call.spec, {"model": model}), (cast_to, options), call.kwargs,
                    {**call.context, "options": options})

    def limit_retries(self, call: Call, retries: int) -> Call:
        cast_to, options = call.args
        options = options.model_copy()
        options.max_retries = retries
        return Call(evolve_spec(call.spec, {"max_retries": retries}), (cast_to, options),
                    call.kwargs, call.context)

    # ------------------------------------------------------------- telemetry
    def annotation(self, instance: Any, call: Call, base_url: str | None,
                   genai: bool = True) -> dict[str, Any]:
        return {**super().annotation(instance, call, base_url, genai),
                **self.pricing_facts(_request_body(call))}

    def request_attributes(self, instance: Any, call: Call) -> dict[str, Any]:
        return self.genai_request(call.spec.operation, _request_body(call))

    def genai_request(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The GenAI attributes of a request body (the vendor's field names)."""
        return {}

    def pricing_facts(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``CallSpec`` fields that price the request (service tier, cache writes)."""
        return {}

    # ------------------------------------------------------------- failures
    def classify(self, exc: BaseException) -> AttemptFailure:
        sdk = self.sdk
        if isinstance(exc, sdk.APIStatusError):
            code = getattr(exc, "code", None) or getattr(exc, "type", None)
            return classify_status(exc.status_code, exc.response.headers,
                                   code if isinstance(code, str) else None, self.provider_limits,
                                   self.max_retry_after)
        transport = transport_failure(exc)
        if transport is not None:
            return transport
        if isinstance(exc, sdk.APITimeoutError):
            return AttemptFailure("failure", reason="timeout", lost=True)
        if isinstance(exc, sdk.APIConnectionError):
            return AttemptFailure("failure", reason="connection", lost=True)
        if isinstance(exc, (sdk.APIResponseValidationError, ValueError)):
            return AttemptFailure("fatal", reason="parse", lost=True)
        return AttemptFailure("fatal", reason=type(exc).__name__)

    @abc.abstractmethod
    def error_body(self, exc: GovernorError, message: str) -> tuple[object, object]:
        """``(JSON body of the synthetic 429, body the SDK error carries)``: the provider's
        own error type for the situation (out of credit when ``exc`` should not be retried)."""

    def rejection(self, exc: GovernorError, call: Call) -> BaseException:
        http = self.http
        instance, options = call.context["instance"], call.context["options"]
        try:
            url = instance._prepare_url(options.url)
        except Exception:  # never let the error path fail: a bare URL will do
            url = instance.base_url
        request = http.Request(str(options.method).upper(), url)
        headers = retry_headers(exc)
        message = str(exc)
        body, carried = self.error_body(exc, message)
        response = http.Response(429, headers=headers, json=body, request=request)
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

        The user reads decoded bytes, lines, text or ``.parse()``'s stream, all
        through ``iter_bytes`` (``iter_raw``, the undecoded body, is not read).
        SSE usage events precede the end of the stream, so closing settles at
        once. A JSON body is parsed when it has been read whole, which (for a
        compressed body) is only after the response closed.
        """
        s = Settlement(gov, t, self.tracker(call))
        response = result.http_response
        headers = response.headers
        if "text/event-stream" in headers.get("content-type", ""):
            if call.context.get("injected"):  # hide the usage event the governor asked for
                sse = SSEFilter(s.tracker)
                _hook_bytes(response, s, sse.feed, None, asynchronous, sse.flush)
            else:
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


def _request_body(call: Call) -> Mapping[str, Any]:
    """The JSON body a governed call sends (``extra_json`` merged in)."""
    options = call.context.get("options")
    body = getattr(options, "json_data", None)
    body = body if isinstance(body, Mapping) else {}
    extra = getattr(options, "extra_json", None)
    return {**body, **extra} if isinstance(extra, Mapping) and extra else body


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
                end: Callable[[], None] | None, asynchronous: bool,
                tail: Callable[[], bytes] | None = None) -> None:
    """Feed the decoded body to ``feed`` however the user reads it.

    ``feed`` returning bytes replaces the chunk the user reads (``tail()``
    gives what is left at the end); returning ``None`` leaves it unchanged.
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
                    passed = feed(chunk)
                    if passed is None:
                        yield chunk
                    elif passed:
                        yield passed
                if tail is not None and (rest := tail()):
                    yield rest
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
                    passed = feed(chunk)
                    if passed is None:
                        yield chunk
                    elif passed:
                        yield passed
                if tail is not None and (rest := tail()):
                    yield rest
            finally:
                if end is not None:
                    s.iterating = False
                    end()
                    s.finish()

        response.iter_bytes = iter_bytes
