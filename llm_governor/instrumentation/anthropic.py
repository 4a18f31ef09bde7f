"""The anthropic SDK (``Anthropic``, ``AsyncAnthropic``, and the Bedrock / Vertex variants).

Governed: messages (``create``, ``parse``, ``stream``, the beta namespace,
``with_raw_response``, ``with_streaming_response``) and legacy completions.
``count_tokens`` is free and passes through ungoverned, as do batches, files,
models and the admin endpoints. Bedrock and Vertex clients share the base
class and count as the ``anthropic`` service.

Stream usage: input tokens arrive in ``message_start``, the cumulative output
in ``message_delta``, so no option needs injecting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import GovernorError
from ..policies.adaptive import ProviderLimits
from ..pricing import Usage
from ._base import Call
from ._errors import out_of_credit
from ._headers import anthropic_limits
from ._stainless import StainlessAdapter
from .streams import UsageTracker, count, field

__all__ = ["AnthropicAdapter"]

OPERATIONS = {"/v1/messages": "chat", "/v1/complete": "text_completion"}


class AnthropicTracker(UsageTracker):
    """Usage of a message, or of ``message_start`` + ``message_delta`` stream events."""

    __slots__ = ("_cache", "_input")

    def __init__(self) -> None:
        super().__init__()
        self._input = 0
        self._cache = 0

    def _inputs(self, u: Any) -> None:
        cache_read = count(field(u, "cache_read_input_tokens"))
        # Anthropic's input_tokens exclude cache reads and writes; the pricer wants the total.
        self._input = count(field(u, "input_tokens")) + cache_read + \
            count(field(u, "cache_creation_input_tokens"))
        self._cache = cache_read

    def see(self, event: Any) -> bool:
        kind = field(event, "type")
        if kind == "message_start":
            u = field(field(event, "message"), "usage")
            if u is not None:
                self._inputs(u)
        elif kind == "message_delta":
            u = field(event, "usage")
            if u is not None:
                if field(u, "input_tokens") is not None:
                    self._inputs(u)
                self.usage = Usage(self._input, count(field(u, "output_tokens")), self._cache)
        return True

    def final(self, response: Any) -> Usage | None:
        u = field(response, "usage")
        if u is None:
            return None
        self._inputs(u)
        return Usage(self._input, count(field(u, "output_tokens")), self._cache)


class AnthropicAdapter(StainlessAdapter):
    module = "anthropic"
    distribution = "anthropic"
    versions = ("0.120", "3")
    operations = OPERATIONS
    error_prefix = "Anthropic"
    attempt_points = (("anthropic._base_client", "SyncAPIClient", "_attempt_request"),
                      ("anthropic._base_client", "AsyncAPIClient", "_attempt_request"))

    def attempt_response(self, result: Any) -> Any:
        return result[0]  # (response, prepared options)

    def replayable(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        options = args[0] if args else kwargs.get("options")
        return options is not None and not getattr(options, "files", None)

    def provider_limits(self, headers: Mapping[str, str]) -> ProviderLimits | None:
        return anthropic_limits(headers)

    def tracker(self, call: Call) -> UsageTracker:
        return AnthropicTracker()

    def error_body(self, exc: GovernorError, message: str) -> tuple[object, object]:
        # A spent budget is Anthropic's own "out of credit" situation: billing_error.
        kind = "billing_error" if out_of_credit(exc) else "rate_limit_error"
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return body, body
