"""SDK errors → attempt classification, and governor rejections → SDK errors.

Classification decides what the circuit breaker, the adaptive rate and the
charging rule make of a failed attempt: a 429 is ``throttled``, a 5xx /
timeout / connection error a ``failure``, anything else ``fatal``
(``insufficient_quota`` is a 429 no wait will fix). A transport error is
``lost`` when the request may have reached the provider (read timeout,
connection reset after sending): the provider may bill it.

Rejections go the other way: a :class:`GovernorError` raised from inside an
SDK call is re-raised as an instance of a class deriving from both the
governor error and the SDK's own ``RateLimitError``, so handlers written for
either keep working.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from ..errors import BudgetExceededError, GovernorError
from ..policies.adaptive import ProviderLimits
from ..policies.retry import AttemptFailure
from ._headers import retry_after

__all__ = ["classify_status", "out_of_credit", "retry_headers", "sdk_rejection",
           "transport_failure"]

_QUOTA_CODES = frozenset({"insufficient_quota"})
# Transport errors raised before the request could reach the provider.
_UNSENT = ("ConnectError", "ConnectTimeout", "PoolTimeout", "WriteError", "WriteTimeout",
           "UnsupportedProtocol", "LocalProtocolError", "ProxyError")
# aiohttp: only a failure to connect proves nothing was sent. ClientOSError is also what
# a connection reset while reading the answer raises: the request may have been billed.
_AIOHTTP_UNSENT = ("ClientConnectorError",)


def classify_status(
    status: int,
    headers: Mapping[str, str],
    code: str | None,
    limits: Callable[[Mapping[str, str]], ProviderLimits | None],
    max_retry_after: float | None = None,
) -> AttemptFailure:
    """Classify an HTTP error status (the provider answered: it bills nothing).

    A ``retry-after`` above ``max_retry_after`` (the SDK's own cap, beyond
    which it does not retry) is treated as the SDK treats it: ignored.
    """
    provider = limits(headers)
    wait = retry_after(headers)
    if wait is not None and max_retry_after is not None and wait > max_retry_after:
        wait = None
        if provider is not None:
            provider = replace(provider, retry_after=None)
    if status == 429:
        if code in _QUOTA_CODES:
            return AttemptFailure("fatal", provider=provider, reason="insufficient_quota")
        return AttemptFailure("throttled", wait, provider, "rate_limit")
    if status == 408:
        return AttemptFailure("failure", wait, provider, "timeout")
    if status >= 500:
        return AttemptFailure("failure", wait, provider, "server_error")
    return AttemptFailure("fatal", provider=provider, reason=f"http_{status}")


def out_of_credit(exc: GovernorError) -> bool:
    """A spent budget that will not reset within ``retry.max_wait``: the provider's
    "insufficient quota" situation, which waiting does not cure."""
    return isinstance(exc, BudgetExceededError) and not exc.should_retry


def retry_headers(exc: GovernorError) -> dict[str, str]:
    """The retry headers of a refusal's synthetic 429, as a provider sends them.

    A refusal that should not be retried (a spent budget, a policy's refusal)
    says so (``x-should-retry: false``) and gives no ``retry-after``: SDKs and
    frameworks that honour either (the openai/anthropic retry loops, the
    Agents SDK's retry policies) do not retry it, nor sleep until the budget
    window resets. Every other refusal keeps its ``retry-after``.
    """
    if not exc.should_retry:
        return {"x-should-retry": "false"}
    wait = exc.retry_after
    if wait is not None and math.isfinite(wait) and wait >= 0:
        return {"retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
    return {"retry-after": "60"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def transport_failure(exc: BaseException) -> AttemptFailure | None:
    """A timeout or connection failure of httpx2 / httpx / aiohttp anywhere in ``exc``'s
    cause chain, with whether the request may have reached the provider; else ``None``."""
    modules = [m for m in (sys.modules.get("httpx2"), sys.modules.get("httpx")) if m is not None]
    aiohttp = sys.modules.get("aiohttp")
    for e in _chain(exc):
        names = {cls.__name__ for cls in type(e).__mro__}
        for mod in modules:
            if isinstance(e, mod.TimeoutException):
                return AttemptFailure("failure", reason="timeout",
                                      lost=not names.intersection(_UNSENT))
            if isinstance(e, mod.TransportError):
                return AttemptFailure("failure", reason="connection",
                                      lost=not names.intersection(_UNSENT))
        if aiohttp is not None and isinstance(e, aiohttp.ClientError):
            return AttemptFailure("failure", reason="connection",
                                  lost=not names.intersection(_AIOHTTP_UNSENT))
        if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
            return AttemptFailure("failure", reason="timeout", lost=True)
    return None


_classes: dict[tuple[type[GovernorError], type[Exception]], type[Exception]] = {}
_classes_lock = threading.Lock()


def _rejection_class(gov_cls: type[GovernorError], sdk_cls: type[Exception],
                     prefix: str) -> type[Exception]:
    key = (gov_cls, sdk_cls)
    cls = _classes.get(key)
    if cls is None:
        with _classes_lock:
            cls = _classes.get(key)
            if cls is None:
                name = f"{prefix}{gov_cls.__name__}"
                cls = type(name, (gov_cls, sdk_cls), {
                    "__module__": __name__.rsplit(".", 1)[0], "__qualname__": name,
                    "__doc__": f"{gov_cls.__name__} raised from inside the {prefix} SDK: "
                               f"also a {sdk_cls.__module__}.{sdk_cls.__qualname__}."})
                _classes[key] = cls
    return cls


def sdk_rejection(exc: GovernorError, sdk_cls: type[Exception], prefix: str,
                  *args: Any, **kwargs: Any) -> Exception:
    """``exc`` as an instance of both its own class and ``sdk_cls``.

    ``sdk_cls.__init__(*args, **kwargs)`` builds the SDK side (message,
    synthetic response, body); the governor side keeps ``exc``'s attributes
    (``retry_after``, ``remaining``…).
    """
    cls = _rejection_class(type(exc), sdk_cls, prefix)
    err: Exception = cls.__new__(cls)
    sdk_cls.__init__(err, *args, **kwargs)
    err.__dict__.update(vars(exc))
    return err
