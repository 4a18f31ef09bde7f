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
from ._genai import anthropic_request, cache_ttl, info
from ._headers import anthropic_limits
from ._stainless import StainlessAdapter
from .streams import UsageTracker, count, field

__all__ = ["AnthropicAdapter"]

OPERATIONS = {"/v1/messages": "chat", "/v1/complete": "text_completion"}


class AnthropicTracker(UsageTracker):
    """Usage of a message, or of ``message_start`` + ``message_delta`` stream events.

    Cache writes are priced by TTL: ``cache_creation.ephemeral_1h_input_tokens`` at
    the 1-hour price, the rest of ``cache_creation_input_tokens`` at the 5-minute one.
    """

    __slots__ = ("_cache", "_input", "_message", "_tier", "_write", "_write_1h")

    def __init__(self) -> None:
        super().__init__()
        self._input = 0
        self._cache = 0
        self._write = 0
        self._write_1h = 0
        self._tier: str | None = None
        self._message: Any = None  # the message_start message: id and model

    def _inputs(self, u: Any) -> None:
        cache_read = count(field(u, "cache_read_input_tokens"))
        written = count(field(u, "cache_creation_input_tokens"))
        # Anthropic's input_tokens exclude cache reads and writes; the pricer wants the total.
        self._input = count(field(u, "input_tokens")) + cache_read + written
        self._cache = cache_read
        self._write = written
        self._write_1h = min(written, count(field(field(u, "cache_creation"),
                                                  "ephemeral_1h_input_tokens")))
        tier = field(u, "service_tier")
        self._tier = tier if isinstance(tier, str) and tier else self._tier

    def _usage(self, u: Any, stop: Any) -> Usage:
        about = info(self._message, (stop,) if isinstance(stop, str) else ())
        return Usage(self._input, count(field(u, "output_tokens")), self._cache,
                     cache_write_tokens=self._write, cache_write_1h_tokens=self._write_1h,
                     service_tier=self._tier, response=about)

    def see(self, event: Any) -> bool:
        kind = field(event, "type")
        if kind == "message_start":
            self._message = field(event, "message")
            u = field(self._message, "usage")
            if u is not None:
                self._inputs(u)
        elif kind == "message_delta":
            u = field(event, "usage")
            if u is not None:
                if field(u, "input_tokens") is not None:
                    self._inputs(u)
                self.usage = self._usage(u, field(field(event, "delta"), "stop_reason"))
        return True

    def final(self, response: Any) -> Usage | None:
        u = field(response, "usage")
        if u is None:
            return None
        self._inputs(u)
        self._message = response
        return self._usage(u, field(response, "stop_reason"))


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

    def provider_name(self, instance: Any, host: str | None) -> str:
        named = getattr(type(instance), "_gen_ai_provider_name", None)  # the SDK's own word
        if isinstance(named, str) and named and named != "anthropic":
            return named
        names = {c.__name__ for c in type(instance).__mro__}
        if any("Bedrock" in n for n in names):
            return "aws.bedrock"
        if any("Vertex" in n or "GoogleCloud" in n for n in names):
            return "gcp.vertex_ai"
        return "anthropic"

    def genai_request(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return anthropic_request(operation, body)

    def own_spans(self, instance: Any) -> bool:
        """anthropic's own tracing: a GenAI span per API call while the client has a tracer
        (on by default with a tracer provider; ``open_telemetry=False`` or
        ``ANTHROPIC_OPEN_TELEMETRY=false`` turn it off). It records no metrics."""
        options = getattr(instance, "_open_telemetry", None)
        if not isinstance(options, Mapping):
            return False
        traces = options.get("traces")
        if not isinstance(traces, Mapping) or not traces.get("enabled"):
            return False  # an SDK without its own tracing, or with it off
        from opentelemetry import trace

        provider = options.get("tracer_provider") or trace.get_tracer_provider()
        # spans of the default (unset) global provider go nowhere: no GenAI span yet
        return not isinstance(provider, (trace.NoOpTracerProvider, trace.ProxyTracerProvider))

    def pricing_facts(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ttl = cache_ttl(body)
        return {"cache_ttl": ttl} if ttl else {}

    def tracker(self, call: Call) -> UsageTracker:
        return AnthropicTracker()

    def error_body(self, exc: GovernorError, message: str) -> tuple[object, object]:
        # A spent budget is Anthropic's own "out of credit" situation: billing_error.
        kind = "billing_error" if out_of_credit(exc) else "rate_limit_error"
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return body, body
