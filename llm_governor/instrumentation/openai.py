"""The openai SDK (``OpenAI``, ``AsyncOpenAI``, ``AzureOpenAI``, ``AsyncAzureOpenAI``).

Governed: chat completions, Responses, embeddings, legacy completions, images
and audio (every POST to one of those endpoints, whichever helper made it:
``create``, ``parse``, ``stream``, ``with_raw_response``,
``with_streaming_response``). Everything else (files, models, batches,
moderations, retrievals) passes through ungoverned.

Azure clients are the service ``azure_openai``: their deployments have quotas
of their own. The governor asks OpenAI chat and completion streams for their
usage (``stream_options.include_usage``) and hides the extra chunk it brings,
so the user sees exactly the chunks they would have seen. Azure streams are
not asked (older api-versions reject the option): without a usage chunk they
settle at their reserved upper bound.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ..errors import GovernorError
from ..policies.adaptive import ProviderLimits
from ..pricing import Usage
from ._base import Call
from ._errors import out_of_credit
from ._genai import finish_reasons, info, openai_host_provider, openai_request
from ._headers import openai_limits
from ._stainless import StainlessAdapter
from .streams import UsageTracker, count, field

__all__ = ["OpenAIAdapter"]

OPERATIONS = {
    "/chat/completions": "chat",
    "/responses": "responses",
    "/embeddings": "embeddings",
    "/completions": "text_completion",
    "/images/generations": "images",
    "/images/edits": "images",
    "/images/variations": "images",
    "/audio/transcriptions": "audio",
    "/audio/translations": "audio",
    "/audio/speech": "audio",
}
_INJECTABLE = frozenset({"chat", "text_completion"})


def openai_usage(u: Any, source: Any = None,
                 finish: tuple[str, ...] | None = None) -> Usage | None:
    """Chat/completions (``prompt_tokens``…) and Responses/images (``input_tokens``…) usage;
    ``source``: the response (or chunk) it came with, for its tier and :class:`ResponseInfo`.

    Reasoning tokens are part of the completion (output) tokens, and billed as such.
    """
    if u is None:
        return None
    tier = field(source, "service_tier")
    facts: dict[str, Any] = {
        "service_tier": tier if isinstance(tier, str) and tier else None,
        "response": info(source, finish),
    }
    prompt = field(u, "prompt_tokens")
    if prompt is not None:
        details = field(u, "prompt_tokens_details")
        done = field(u, "completion_tokens_details")
        return Usage(count(prompt), count(field(u, "completion_tokens")),
                     count(field(details, "cached_tokens")),
                     reasoning_tokens=count(field(done, "reasoning_tokens")), **facts)
    details = field(u, "input_tokens_details")
    done = field(u, "output_tokens_details")
    return Usage(count(field(u, "input_tokens")), count(field(u, "output_tokens")),
                 count(field(details, "cached_tokens")),
                 reasoning_tokens=count(field(done, "reasoning_tokens")), **facts)


class OpenAITracker(UsageTracker):
    """Usage of chat chunks (last chunk) and Responses events (``response.completed``…).

    When the governor asked for the usage chunk (``injected``), it hides that
    chunk, but only from a server that honoured the request: such a server
    sends ``"usage": null`` on every earlier chunk, as api.openai.com does.
    A server that sends a usage chunk whatever was asked never does, and
    its chunk reaches the user as it would bare.
    """

    __slots__ = ("finish", "honoured", "injected")

    def __init__(self, injected: bool) -> None:
        super().__init__()
        self.injected = injected
        self.honoured = False  # an earlier chunk carried an explicit "usage": null
        self.finish: list[str] = []  # finish reasons of the chunks so far

    def see(self, event: Any) -> bool:
        u = field(event, "usage")
        source = event
        if u is None:  # Responses events carry theirs in the response
            response = field(event, "response")
            u = field(response, "usage")
            source = event if u is None else response
        if source is event:
            self.finish += finish_reasons(event)
        if u is not None:
            self.usage = openai_usage(u, source, tuple(self.finish) if source is event
                                      else None)
        if not self.injected:
            return True
        choices = field(event, "choices")
        if u is not None and isinstance(choices, list) and not choices:
            return not self.honoured  # the usage chunk the governor asked for
        fields_set = getattr(event, "__pydantic_fields_set__", None)
        if u is None and fields_set is not None and "usage" in fields_set:
            self.honoured = True
            fields_set.discard("usage")  # "usage": null came only because we asked
        elif isinstance(event, dict) and "usage" in event and event["usage"] is None:
            self.honoured = True
        return True

    def final(self, response: Any) -> Usage | None:
        return openai_usage(field(response, "usage"), response)


class OpenAIAdapter(StainlessAdapter):
    module = "openai"
    distribution = "openai"
    versions = ("2.31", "4")
    operations = OPERATIONS
    error_prefix = "OpenAI"
    # OpenAI and AsyncOpenAI override the base send (auth retries) without calling it.
    attempt_points = (("openai._base_client", "SyncAPIClient", "_send_request"),
                      ("openai._base_client", "AsyncAPIClient", "_send_request"),
                      ("openai._client", "OpenAI", "_send_request"),
                      ("openai._client", "AsyncOpenAI", "_send_request"))

    def replayable(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        request = args[0] if args else kwargs.get("request")
        return isinstance(getattr(request, "stream", None), self.http.ByteStream)

    def service(self, instance: Any) -> str:
        azure = sys.modules.get("openai.lib.azure")
        if azure is not None and isinstance(instance, azure.BaseAzureClient):
            return "azure_openai"
        return "openai"

    def provider_limits(self, headers: Mapping[str, str]) -> ProviderLimits | None:
        return openai_limits(headers)

    def provider_name(self, instance: Any, host: str | None) -> str:
        if self.service(instance) == "azure_openai":
            return "azure.ai.openai"
        return openai_host_provider(host)

    def genai_request(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return openai_request(operation, body)

    def pricing_facts(self, body: Mapping[str, Any]) -> dict[str, Any]:
        tier = body.get("service_tier")
        return {"service_tier": tier} if isinstance(tier, str) and tier else {}

    def max_output_tokens(self, operation: str, body: Mapping[str, Any]) -> int | None:
        per_choice = super().max_output_tokens(operation, body)
        if per_choice is None or operation not in _INJECTABLE:
            return per_choice
        choices = [c for c in (body.get("n"), body.get("best_of"))
                   if isinstance(c, int) and not isinstance(c, bool) and c > 1]
        return per_choice * max(choices, default=1)

    def inject_usage(self, service: str, operation: str, body: Mapping[str, Any]) -> bool:
        if service != "openai" or operation not in _INJECTABLE:
            return False
        asked = body.get("stream_options")
        return not (isinstance(asked, Mapping) and asked.get("include_usage") is True)

    def tracker(self, call: Call) -> UsageTracker:
        return OpenAITracker(bool(call.context.get("injected")))

    def error_body(self, exc: GovernorError, message: str) -> tuple[object, object]:
        # A spent budget is OpenAI's own "out of credit" situation: insufficient_quota.
        code = "insufficient_quota" if out_of_credit(exc) else "rate_limit_exceeded"
        error = {"message": message, "type": code, "param": None, "code": code}
        return {"error": error}, error
