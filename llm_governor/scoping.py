"""A call's scope labels → the limits of its scope values, from the ``[scopes]`` config.

``scope(tenant="acme", user="u42")`` labels a call; the configured kinds
(``[scopes.tenant]``, ``[scopes.user]``) turn those labels into one
:class:`~llm_governor.policies.scopes.ScopeRequest` per value that has a
limit, checked by the backend in the call's admission step, and into the
windows its cost is charged to at settlement. Kinds are compiled once from
the config (overrides included), so a call pays a dict lookup per label.

Labels of kinds not configured only label (job attribution, spans); each
such kind is logged once at debug level.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .config import GovernorConfig, ScopeLimits
from .policies import budget
from .policies.scopes import ScopeRequest, ScopeState

__all__ = ["CallScopes", "ScopeKinds", "scope_rows"]

logger = logging.getLogger("llm_governor")
_TRACKED = ("day",)  # windows a kind without budgets still keeps spend in, for status


@dataclass(frozen=True, slots=True)
class _Limits:
    """One value's limits, compiled."""

    budgets: dict[str, Decimal]
    requests_per_minute: float
    tokens_per_minute: float
    observe: bool

    @property
    def limited(self) -> bool:
        return bool(self.budgets or self.requests_per_minute or self.tokens_per_minute)

    @property
    def windows(self) -> tuple[str, ...]:
        return tuple(self.budgets) or _TRACKED


@dataclass(frozen=True, slots=True)
class _Kind:
    default: _Limits
    overrides: dict[str, _Limits]
    metric_label: bool


@dataclass(frozen=True, slots=True)
class CallScopes:
    """What a call's labels mean for it."""

    requests: tuple[ScopeRequest, ...] = ()  # checked at admission (values with a limit)
    charges: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (kind=value, windows) at settle
    metric_attributes: dict[str, str] = field(default_factory=dict)  # metric_label kinds


_NONE = CallScopes()


def _compile(limits: ScopeLimits, mode: str) -> _Limits:
    return _Limits(limits.windows(), float(limits.requests_per_minute or 0.0),
                   float(limits.llm_tokens_per_minute or 0), (limits.mode or mode) == "observe")


class ScopeKinds:
    """The configured scope kinds, ready for the hot path."""

    def __init__(self, config: GovernorConfig) -> None:
        self._kinds: dict[str, _Kind] = {}
        for kind, cfg in config.scopes.items():
            overrides = {value: _compile(cfg.for_value(value), config.mode)
                         for value in cfg.overrides}
            self._kinds[kind] = _Kind(_compile(cfg.for_value(""), config.mode), overrides,
                                      cfg.metric_label)
        self._unknown: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._kinds)

    def kinds(self) -> list[str]:
        return list(self._kinds)

    def _limits(self, kind: str, value: str) -> _Limits | None:
        k = self._kinds.get(kind)
        if k is None:
            return None
        return k.overrides.get(value, k.default)

    def budgets(self, key: str) -> dict[str, Decimal]:
        """The budgets of the scope value ``kind=value`` (empty: none, or not configured)."""
        kind, _, value = key.partition("=")
        found = self._limits(kind, value)
        return found.budgets if found is not None else {}

    def observed(self, key: str) -> bool:
        kind, _, value = key.partition("=")
        found = self._limits(kind, value)
        return found is not None and found.observe

    def of(self, labels: Mapping[str, str]) -> CallScopes:
        """The scope requests, charges and metric attributes of a call labelled ``labels``."""
        if not labels or not self._kinds:
            return _NONE
        requests: list[ScopeRequest] = []
        charges: list[tuple[str, tuple[str, ...]]] = []
        attributes: dict[str, str] = {}
        for kind, value in labels.items():
            k = self._kinds.get(kind)
            if k is None:
                if kind not in self._unknown and len(self._unknown) < 1000:
                    self._unknown.add(kind)
                    logger.debug("scope kind %r is not configured ([scopes.%s]): its calls are "
                                 "labelled, not limited", kind, kind)
                continue
            limits = k.overrides.get(value, k.default)
            key = f"{kind}={value}"
            if limits.limited:
                requests.append(ScopeRequest(key, limits.budgets, limits.requests_per_minute,
                                             limits.tokens_per_minute, limits.observe))
            charges.append((key, limits.windows))
            if k.metric_label:
                attributes[f"scope_{kind}"] = value
        return CallScopes(tuple(requests), tuple(charges), attributes)


def scope_rows(found: Mapping[str, tuple[ScopeState, Decimal]], kinds: ScopeKinds, now: float,
               top: int | None = None) -> dict[str, dict[str, Any]]:
    """Per scope value (``kind=value``) of ``found`` (stored state, what leases hold), most
    spent first, the first ``top``: mode and, per window, limit (``None`` when the window
    only tracks spend), spent, reserved and remaining."""
    rows: list[tuple[Decimal, str, dict[str, Any]]] = []
    for key, (state, held) in found.items():
        limits = kinds.budgets(key)
        windows: dict[str, dict[str, Any]] = {}
        for window in dict.fromkeys([*limits, *state.spends]):
            spent = budget.roll(state.spends.get(window, budget.WindowSpend()), window,
                                now).spent
            limit = limits.get(window)
            windows[window] = {"limit": limit, "spent": spent, "reserved": held,
                               "remaining": None if limit is None else limit - spent - held}
        most = max((w["spent"] for w in windows.values()), default=Decimal(0))
        mode = "observe" if kinds.observed(key) else "enforce"
        rows.append((most, key, {"mode": mode, "windows": windows}))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return {key: row for _, key, row in rows[:top]}
