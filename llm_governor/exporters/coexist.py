"""Which SDK calls another GenAI instrumentation already reports.

With ``telemetry.genai = "auto"`` llm-governor emits no GenAI span or
``gen_ai.client.*`` metric for a call that another instrumentation in this
process already covers, so dashboards do not count it twice; its own
``llm_governor.*`` data stays. Two signs, either one enough:

* a wrapper from a foreign module on the SDK's public method of that
  operation (``Completions.create``, ``Messages.create``,
  ``Models.generate_content``…): how opentelemetry-instrumentation-openai-v2 /
  -anthropic / -google-genai, OpenLLMetry and OpenLIT all patch (wrapt);
* for an operation without a known public method, an active
  ``BaseInstrumentor`` singleton of a known GenAI instrumentation of that SDK.

Nothing here imports an SDK or an instrumentation: only modules already
loaded are looked at. The answer is cached for a second, so an
instrumentation activated (or removed) after llm-governor is noticed within
one, at the cost of a few attribute reads per call.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

__all__ = ["KNOWN_INSTRUMENTORS", "PUBLIC_METHODS", "Coverage", "foreign_wrapper"]

_TTL = 1.0
_OWN = "llm_governor"

#: SDK module → ``(module, class)`` of the BaseInstrumentor subclasses that cover it
KNOWN_INSTRUMENTORS: dict[str, tuple[tuple[str, str], ...]] = {
    "openai": (("opentelemetry.instrumentation.openai_v2", "OpenAIInstrumentor"),
               ("opentelemetry.instrumentation.openai", "OpenAIInstrumentor"),  # OpenLLMetry
               ("openlit.instrumentation.openai", "OpenAIInstrumentor")),
    "anthropic": (("opentelemetry.instrumentation.anthropic", "AnthropicInstrumentor"),
                  ("openlit.instrumentation.anthropic", "AnthropicInstrumentor")),
    "google.genai": (("opentelemetry.instrumentation.google_genai",
                      "GoogleGenAiSdkInstrumentor"),
                     ("opentelemetry.instrumentation.google_generativeai",
                      "GoogleGenerativeAiInstrumentor"),
                     ("openlit.instrumentation.google_ai_studio",
                      "GoogleAIStudioInstrumentor")),
}


def _both(module: str, cls: str, *methods: str) -> tuple[tuple[str, str, str], ...]:
    return tuple((module, owner, m) for owner in (cls, f"Async{cls}") for m in methods)


#: (SDK module, llm-governor operation) → the public methods that make such calls
PUBLIC_METHODS: dict[tuple[str, str], tuple[tuple[str, str, str], ...]] = {
    ("openai", "chat"): _both("openai.resources.chat.completions", "Completions", "create",
                              "parse", "stream"),
    ("openai", "responses"): _both("openai.resources.responses", "Responses", "create",
                                   "parse", "stream"),
    ("openai", "embeddings"): _both("openai.resources.embeddings", "Embeddings", "create"),
    ("openai", "text_completion"): _both("openai.resources.completions", "Completions",
                                         "create"),
    ("openai", "images"): _both("openai.resources.images", "Images", "generate", "edit",
                                "create_variation"),
    ("anthropic", "chat"): _both("anthropic.resources.messages", "Messages", "create",
                                 "stream", "parse"),
    ("anthropic", "text_completion"): _both("anthropic.resources.completions", "Completions",
                                            "create"),
    ("google.genai", "generate_content"): _both("google.genai.models", "Models",
                                                "generate_content", "generate_content_stream"),
    ("google.genai", "embeddings"): _both("google.genai.models", "Models", "embed_content"),
}


def foreign_wrapper(obj: Any) -> str | None:
    """The module of a wrapt wrapper around ``obj`` that is not llm-governor's, if any."""
    for _ in range(8):
        wrapper = getattr(obj, "_self_wrapper", None)
        if wrapper is None:
            return None
        module = getattr(wrapper, "__module__", None) or type(wrapper).__module__ or ""
        if module != _OWN and not module.startswith(_OWN + "."):
            return module
        obj = getattr(obj, "__wrapped__", None)
    return None


def _method(module: str, owner: str, name: str) -> Any:
    mod = sys.modules.get(module)
    cls = getattr(mod, owner, None) if mod is not None else None
    return None if cls is None else vars(cls).get(name)


def _active(sdk: str) -> str | None:
    """The first known instrumentor of ``sdk`` that is instrumenting now, by module."""
    for module, name in KNOWN_INSTRUMENTORS.get(sdk, ()):
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        instance = getattr(cls, "_instance", None)
        if instance is not None and getattr(instance, "_is_instrumented_by_opentelemetry", False):
            return module
    return None


class Coverage:
    """``covered(sdk, operation)``: the instrumentation already reporting those calls."""

    def __init__(self, ttl: float = _TTL) -> None:
        self._ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def covered(self, sdk: str, operation: str) -> str | None:
        """The module of the instrumentation covering ``sdk``'s ``operation``, or ``None``."""
        key = (sdk, operation)
        now = time.monotonic()
        found = self._cache.get(key)
        if found is not None and found[0] > now:
            return found[1]
        who = self._look(sdk, operation)
        with self._lock:
            self._cache[key] = (now + self._ttl, who)
        return who

    @staticmethod
    def _look(sdk: str, operation: str) -> str | None:
        methods = PUBLIC_METHODS.get((sdk, operation))
        if methods is None:
            return _active(sdk)
        for module, owner, name in methods:
            who = foreign_wrapper(_method(module, owner, name))
            if who is not None:
                return who
        return None
