"""Error bodies, in each provider's own shape."""

from __future__ import annotations

import math
import uuid

from llm_governor.testing._ledger import ProviderName

from ._base import _QUOTA_STATUS, JsonObj, Reply, _dumps, new_id
from .anthropic import _ANTHROPIC_TYPES
from .gemini import _GOOGLE_STATUS, _gemini_violation

_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


def quota_status(provider: ProviderName) -> int:
    """The status each provider uses for 'out of credit'."""
    return _QUOTA_STATUS[provider]


def error_reply(
    provider: ProviderName,
    status: int,
    *,
    reason: str | None = None,
    model: str = "",
    retry_after: float | None = None,
    message: str | None = None,
    limit: int | None = None,
) -> Reply:
    """A provider-shaped error; ``reason`` is requests/tokens/concurrency/quota or None.

    ``limit`` (the exceeded RPM/TPM) is reported in Gemini's QuotaFailure ``quotaValue``.
    """
    if message is None:
        message = _default_message(status, reason, model)
        if reason == "quota" and provider == "anthropic":
            message = "Your credit balance is too low to access the Anthropic API."
    body: JsonObj
    if provider == "openai":
        if reason == "quota":
            kind, code = "insufficient_quota", "insufficient_quota"
        elif status == 429:
            kind, code = ("tokens" if reason == "tokens" else "requests"), "rate_limit_exceeded"
        else:
            kind, code = ("server_error" if status >= 500 else "invalid_request_error"), None
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    elif provider == "anthropic":
        default = "api_error" if status >= 500 else "invalid_request_error"
        error = {"type": _ANTHROPIC_TYPES.get(status, default), "message": message}
        body = {"type": "error", "error": error, "request_id": new_id("req_")}
    elif provider == "gemini":
        google: JsonObj = {
            "code": status,
            "message": message,
            "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
        }
        if status == 429:
            details: list[JsonObj] = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [_gemini_violation(reason, model, limit)],
                }
            ]
            if retry_after is not None and reason != "quota":
                delay = f"{max(1, math.ceil(retry_after))}s"
                details.append(
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
                )
            google["details"] = details
        body = {"error": google}
    else:
        codes = {429: "TOO_MANY_REQUESTS", 402: "ASR_PAYMENT_REQUIRED", 400: "Bad Request"}
        default = "INTERNAL_SERVER_ERROR" if status >= 500 else "REQUEST_FAILED"
        body = {
            "err_code": codes.get(status, default),
            "err_msg": message,
            "request_id": str(uuid.uuid4()),
        }
    return Reply(status, _dumps(body))


def _default_message(status: int, reason: str | None, model: str) -> str:
    if reason == "quota":
        return _QUOTA_MESSAGE
    if reason == "concurrency":
        return "Too many concurrent requests. Please try again later."
    if status == 429:
        what = "tokens per min (TPM)" if reason == "tokens" else "requests per min (RPM)"
        return f"Rate limit reached for {model or 'this model'} on {what}. Please try again later."
    if status >= 500:
        return "The server had an error while processing your request. Sorry about that!"
    return f"Request failed with status {status}."
