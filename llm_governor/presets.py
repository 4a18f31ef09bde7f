"""Environment presets: the per-service limits each environment starts from.

Production and development keep their long-standing numbers. Testing, staging
and the emergency preset are chosen to fit these words:

=========== ============ =========== ============= ==========
environment token limits cost limits recovery time queue size
=========== ============ =========== ============= ==========
development generous     high        fast          large
testing     restrictive  very low    fast          small
staging     moderate     medium      balanced      medium
production  conservative strict      slow          controlled
emergency   minimum      minimum     slowest       tiny
=========== ============ =========== ============= ==========

``docs/configuration.md`` prints the full table; ``default`` is what a service
without a preset of its own gets. ``permissive`` is what a configuration that
chooses no environment at all gets: limits that never slow an app by
themselves (the provider's own headers and 429s then set the pace), with the
development preset's circuit breaker.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["ENVIRONMENTS", "PRESETS", "preset_for"]

ENVIRONMENTS: Final = ("development", "testing", "staging", "production")


def _svc(
    max_tokens: int, refill_rate: float, max_cost_per_minute: str, recovery_timeout: int
) -> dict[str, Any]:
    return {
        "max_tokens": max_tokens,
        "refill_rate": refill_rate,
        "max_cost_per_minute": max_cost_per_minute,
        "recovery_timeout": recovery_timeout,
    }


# Per environment: fields shared by every service, then each service's own.
PRESETS: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "development": {
        "_common": {"burst_capacity": 5, "max_queue_size": 200, "failure_threshold": 5},
        "deepgram": _svc(10, 2.0, "5.00", 30),
        "openai": _svc(5, 1.0, "3.00", 30),
        "anthropic": _svc(3, 0.5, "4.00", 30),
        "gemini": _svc(20, 5.0, "1.00", 20),
        "default": _svc(10, 1.0, "3.00", 30),
    },
    "testing": {
        "_common": {"burst_capacity": 0, "max_queue_size": 10, "failure_threshold": 3,
                    "request_timeout": 30, "success_threshold": 1},
        "deepgram": _svc(1, 0.5, "0.05", 5),
        "openai": _svc(1, 0.5, "0.05", 5),
        "anthropic": _svc(1, 0.5, "0.05", 5),
        "gemini": _svc(2, 1.0, "0.05", 5),
        "default": _svc(1, 0.5, "0.05", 5),
    },
    "staging": {
        "_common": {"burst_capacity": 2, "max_queue_size": 50, "failure_threshold": 5},
        "deepgram": _svc(5, 1.0, "3.00", 45),
        "openai": _svc(3, 0.5, "2.00", 45),
        "anthropic": _svc(2, 0.4, "2.50", 60),
        "gemini": _svc(15, 3.0, "0.75", 25),
        "default": _svc(3, 0.5, "2.00", 45),
    },
    "production": {
        "_common": {"burst_capacity": 0, "max_queue_size": 100, "failure_threshold": 5},
        "deepgram": _svc(2, 0.5, "1.50", 60),
        "openai": _svc(2, 0.33, "1.00", 60),
        "anthropic": _svc(1, 0.25, "1.25", 90),
        "gemini": _svc(10, 2.0, "0.50", 30),
        "default": _svc(2, 0.5, "1.00", 60),
    },
    # No environment chosen: stay out of the way, learn the limits from the provider.
    "permissive": {
        "_common": {"burst_capacity": 0, "max_queue_size": 10_000, "failure_threshold": 5,
                    "min_interval": 0.001},
        "default": _svc(1_000, 1_000.0, "10000", 30),
    },
    # The absolute minimums emergency mode drops every service to.
    "emergency": {
        "_common": {"burst_capacity": 0, "max_queue_size": 5, "failure_threshold": 2,
                    "max_concurrency": 1, "success_threshold": 3},
        "default": _svc(1, 0.1, "0.10", 120),
    },
}


def preset_for(environment: str, service: str) -> dict[str, Any]:
    """The preset fields of ``service`` in ``environment`` (``default`` when it has none)."""
    env = PRESETS[environment]
    return {**env["_common"], **env.get(service, env["default"])}
