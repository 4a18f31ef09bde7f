"""Limit scope = provider account: which limits, blocks, learned state and breaker a call uses.

A provider's rate limits belong to an account (an organisation's API key) at
an endpoint. Two keys, or two hosts that speak the same API (Groq, vLLM and
api.openai.com all speak OpenAI's), must never block each other, so every
governed SDK call carries a scope key ``service/fingerprint``: the fingerprint
is a truncated SHA-256 of the endpoint's host and the credential, which names
the account without revealing the key. Budgets stay per service and global.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

__all__ = ["fingerprint", "host_of", "scope_key", "scopes", "service_of"]

SEPARATOR = "/"


def host_of(url: str) -> str:
    """``host[:port]`` of an endpoint URL (lower-cased), or the text itself if it has none."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return (parts.netloc or url).lower().rsplit("@", 1)[-1]


def fingerprint(host: str, credential: str | None) -> str:
    """Ten hex digits naming (host, credential): the same account, the same digits."""
    digest = hashlib.sha256(f"{host}\0{credential or ''}".encode())
    return digest.hexdigest()[:10]


def scope_key(service: str, host: str, credential: str | None) -> str:
    """The scope key of a service's calls to ``host`` with ``credential``."""
    return f"{service}{SEPARATOR}{fingerprint(host, credential)}"


def service_of(key: str) -> str:
    """The service a scope key (or a plain service name) belongs to."""
    return key.split(SEPARATOR, 1)[0]


def scopes(names: set[str]) -> list[str]:
    """The limit scopes among service names and scope keys: a service called through
    accounts is represented by those, not by its plain name."""
    scoped = {service_of(n) for n in names if SEPARATOR in n}
    return sorted(n for n in names if SEPARATOR in n or n not in scoped)
