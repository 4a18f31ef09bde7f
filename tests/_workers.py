"""Process entry points for multi-process tests (importable under ``spawn``)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any


def governed_loop(config: dict[str, Any], service: str, seconds: float, cost: str,
                  start_at: float) -> dict[str, Any]:
    """Call a governed no-op until ``seconds`` pass; report admission times and refusals."""
    import llm_governor
    from llm_governor.api import set_governor
    from llm_governor.governor import Governor

    gov = Governor(llm_governor.load_config(config))
    set_governor(gov)

    @llm_governor.rate_limited(service, llm_governor.Priority.NORMAL, Decimal(cost))
    def work() -> float:
        return time.time()

    while time.time() < start_at:
        time.sleep(0.001)
    admitted: list[float] = []
    refusals: dict[str, int] = {}
    end = time.time() + seconds
    while time.time() < end:
        try:
            admitted.append(work())
        except llm_governor.GovernorError as exc:
            refusals[type(exc).__name__] = refusals.get(type(exc).__name__, 0) + 1
            if isinstance(exc, llm_governor.BudgetExceededError):
                time.sleep(0.01)
    gov.close()
    return {"admitted": admitted, "refusals": refusals}
