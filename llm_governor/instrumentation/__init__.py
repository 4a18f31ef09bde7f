"""SDK instrumentation: govern every call the vendor SDKs make, without touching app code.

:class:`GovernorInstrumentor` is an OpenTelemetry ``BaseInstrumentor`` (entry
point ``llm_governor``, so ``opentelemetry-instrument python app.py`` enables
it too). Patching is lazy: a post-import hook per SDK applies its adapter's
patches when (or, if already imported, as soon as) the SDK is imported; we
never import an SDK ourselves. The patches sit on the SDKs' base classes, so
clients created before ``instrument()`` and every client variant are governed.
``uninstrument()`` puts every original function back.

Each adapter declares the SDK versions it governs (:attr:`Adapter.versions`):
an SDK outside that range is left ungoverned, with one warning, rather than
patched at choke points that may not exist or mean the same there.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import sys
import threading
from collections.abc import Collection
from types import ModuleType
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from ._base import Adapter, GovernorGetter, Patch
from .anthropic import AnthropicAdapter
from .deepgram import DeepgramAdapter
from .google_genai import GeminiAdapter
from .openai import OpenAIAdapter

__all__ = ["ADAPTERS", "GovernorInstrumentor", "sdk_version", "supported"]

logger = logging.getLogger("llm_governor")

#: one adapter class per supported SDK
ADAPTERS: tuple[type[Adapter], ...] = (OpenAIAdapter, AnthropicAdapter, GeminiAdapter,
                                        DeepgramAdapter)


def _release(text: str) -> tuple[int, ...]:
    """``"2.31.0"`` → ``(2, 31, 0)``; pre-release and local parts are ignored."""
    return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3]) \
        if re.match(r"\d", text) else ()


def sdk_version(adapter_cls: type[Adapter]) -> str | None:
    """The installed version of an adapter's SDK (``None`` when unknown)."""
    try:
        return importlib.metadata.version(adapter_cls.distribution)
    except importlib.metadata.PackageNotFoundError:
        found = getattr(sys.modules.get(adapter_cls.module), "__version__", None)
        return found if isinstance(found, str) else None


def supported(adapter_cls: type[Adapter], version: str | None) -> bool:
    """Whether ``version`` of the SDK is in the adapter's declared range (unknown: yes)."""
    if version is None or not _release(version):
        return True
    low, high = adapter_cls.versions
    return _release(low) <= _release(version) < _release(high)


class _Patcher:
    """Applies and removes the adapters' patches; post-import hooks are registered once."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._getter: GovernorGetter | None = None
        self._applied: dict[str, list[Patch]] = {}
        self._hooked: set[str] = set()
        self._refused: set[str] = set()  # SDKs outside their adapter's range (warned once)

    def enable(self, getter: GovernorGetter) -> None:
        with self._lock:
            self._getter = getter
            for adapter_cls in ADAPTERS:
                name = adapter_cls.module
                if name not in self._hooked:
                    self._hooked.add(name)
                    wrapt.register_post_import_hook(self._hook(adapter_cls), name)
                else:
                    self._apply(adapter_cls)

    def _hook(self, adapter_cls: type[Adapter]) -> Any:
        def on_import(module: ModuleType) -> None:
            self._apply(adapter_cls)
        return on_import

    def _apply(self, adapter_cls: type[Adapter]) -> None:
        """Patch one SDK if instrumentation is on and the SDK is imported."""
        with self._lock:
            name = adapter_cls.module
            if self._getter is None or name in self._applied or name not in sys.modules \
                    or name in self._refused:
                return
            version = sdk_version(adapter_cls)
            if not supported(adapter_cls, version):
                self._refused.add(name)
                low, high = adapter_cls.versions
                logger.warning(
                    "RATE_LIMIT %s %s is not governed: llm-governor governs %s>=%s,<%s; its "
                    "calls go through without limits, budgets or metrics",
                    adapter_cls.distribution, version, adapter_cls.distribution, low, high)
                return
            done: list[Patch] = []
            try:
                for p in adapter_cls().patches(self._getter):
                    wrapt.wrap_function_wrapper(p.owner, p.name, p.wrapper)
                    done.append(p)
            except Exception:  # a choke point missing: never fail the user's import
                for p in reversed(done):
                    unwrap(p.owner, p.name)
                self._refused.add(name)
                logger.warning("RATE_LIMIT %s %s is not governed: its choke points differ from "
                               "those llm-governor patches", adapter_cls.distribution, version,
                               exc_info=True)
                return
            self._applied[name] = done
            logger.debug("RATE_LIMIT governing the %s SDK", name)

    def disable(self) -> None:
        with self._lock:
            self._getter = None
            for patches in self._applied.values():
                for p in reversed(patches):
                    unwrap(p.owner, p.name)
            self._applied.clear()

    def applied(self) -> list[str]:
        with self._lock:
            return sorted(self._applied)


_patcher = _Patcher()


class GovernorInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Patches the installed vendor SDKs so every inference call is governed.

    ``instrument(governor_getter=...)`` chooses the governor per call (default:
    :func:`llm_governor.get_governor`, which builds one from the environment).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return []  # every SDK is optional: patch what is installed, never refuse

    def _instrument(self, **kwargs: Any) -> None:
        getter: GovernorGetter | None = kwargs.get("governor_getter")
        if getter is None:
            from ..api import get_governor

            getter = get_governor
        _patcher.enable(getter)

    def _uninstrument(self, **kwargs: Any) -> None:
        _patcher.disable()

    @staticmethod
    def patched_sdks() -> list[str]:
        """The SDKs currently patched (imported while instrumented)."""
        return _patcher.applied()
