"""How much a call reserves when it sets no cap on its output.

Frameworks (LangChain, the Agents SDK, pydantic-ai) leave ``max_tokens``
unset, so a call's upper bound is the model's whole output cap: $0.16 for a
gpt-4o call that bills $0.0002. ``reservation = "worst_case"`` (the default)
reserves that bound, and the budget stays hard. ``reservation = "learned"``
reserves a high percentile of the model's recent settled outputs instead
(:class:`OutputLearner`), never below a floor, and the worst case until it
has seen enough calls; a call that outputs more than it reserved is charged
its real cost at settlement, the excess counted as an overrun, and the
budget refuses the next calls until it has room. So a budget can be
overshot by at most the excess of the calls in flight when it ran out: one
call, for an agent that calls one model at a time.

The learner is per process and per governor (each process learns from its
own calls); settling is O(1), the percentile is computed on admission over
at most ``window`` numbers.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

from .config import GovernorConfig, LearnedReservationConfig, RateLimitConfig

if TYPE_CHECKING:
    from .governor import Governor, Ticket
    from .pricing import Usage

__all__ = ["OutputLearner", "reservation_hint", "reservation_mode"]


def reservation_mode(config: GovernorConfig, cfg: RateLimitConfig,
                     labels: Mapping[str, str]) -> str:
    """``worst_case`` or ``learned`` for a call: its scope kinds' setting, else its
    service's, else the global one. Among several scope kinds, ``worst_case`` wins."""
    chosen: set[str] = set()
    for kind, value in labels.items():
        kind_cfg = config.scopes.get(kind)
        if kind_cfg is None:
            continue
        override = kind_cfg.overrides.get(value)
        mode = override.reservation if override is not None and override.reservation \
            else kind_cfg.reservation
        if mode is not None:
            chosen.add(mode)
    if chosen:
        return "worst_case" if "worst_case" in chosen else "learned"
    return cfg.reservation or config.reservation


class OutputLearner:
    """Recent output tokens per (service, model): of calls with no output cap, and of
    capped calls that stopped before their cap (so capped calls warm it up too)."""

    def __init__(self, cfg: LearnedReservationConfig) -> None:
        self.cfg = cfg
        self._seen: dict[tuple[str, str], deque[int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def teaches(t: Ticket, usage: Usage) -> bool:
        """Whether a settled call says how long the model's answers are: an uncapped one,
        or a capped one that stopped before its cap (a truncated one says nothing)."""
        if t.reservation in ("worst_case", "learned"):
            return True
        cap = t.spec.max_output_tokens
        return t.reservation == "capped" and not t.spec.embedding and cap is not None \
            and usage.output_tokens < cap

    def record(self, service: str, model: str | None, output_tokens: int) -> None:
        """A settled call of ``model`` output ``output_tokens`` (it set no cap)."""
        key = (service, model or "")
        seen = self._seen.get(key)
        if seen is None:
            with self._lock:
                seen = self._seen.setdefault(key, deque(maxlen=self.cfg.window))
        seen.append(max(0, int(output_tokens)))

    def seen(self, service: str, model: str | None) -> int:
        """How many outputs of ``model`` the learner holds."""
        seen = self._seen.get((service, model or ""))
        return 0 if seen is None else len(seen)

    def bound(self, service: str, model: str | None) -> int | None:
        """The output tokens to reserve for ``model``, or ``None`` while warming up."""
        seen = self._seen.get((service, model or ""))
        if seen is None or len(seen) < self.cfg.warmup:
            return None
        values = sorted(list(seen))
        rank = max(0, math.ceil(self.cfg.percentile * len(values)) - 1)
        return max(self.cfg.floor, values[rank])


def reservation_hint(gov: Governor, t: Ticket, remaining: Decimal | None) -> str:
    """The end of a budget refusal's message when the reservation's size, not the spend,
    refused the call: its input alone would fit, its unset output cap did not. Else ``""``."""
    if t.reservation not in ("worst_case", "learned") or remaining is None:
        return ""
    spec = t.spec
    try:
        floor, _ = gov.pricer.estimate(
            spec.service, spec.model, t.cfg, prompt_bytes=spec.prompt_bytes,
            media_tokens=spec.media_tokens, audio_tokens=spec.audio_tokens,
            media_unbounded=spec.media_unbounded, max_output_tokens=0,
            audio_bytes=spec.audio_bytes, audio_seconds=spec.audio_seconds)
    except Exception:  # never let the explanation break the refusal
        return ""
    if floor > remaining:
        return ""
    where = (f'reservation = "learned" (globally, in [services.{spec.service}] or '
             '[scopes.KIND])')
    if t.reservation == "learned":
        return ("; the call sets no max output tokens and reserves a learned bound of its "
                "model's recent outputs: set max_tokens on the call, or raise the budget")
    mode = reservation_mode(gov.config, t.cfg, t.labels)
    if mode == "learned":
        seen, warmup = gov.learner.seen(spec.service, spec.model), gov.config.learned.warmup
        return (f"; the call sets no max output tokens, so it reserves the model's whole output "
                f"cap while reservation = \"learned\" warms up ({seen} of {warmup} calls seen, "
                f"learned.warmup): set max_tokens on the call, or lower learned.warmup")
    return (f"; the call sets no max output tokens, so it reserves the model's whole output "
            f"cap (reservation = \"worst_case\"): set max_tokens on the call, or {where}")
