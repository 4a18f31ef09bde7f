"""Health, alerts and emergency mode.

A failing service opens its circuit; the monitor raises its alerts
through a callback; emergency mode drops every limit to the minimums.

Run: python examples/monitoring.py
"""

from __future__ import annotations

import time

import llm_governor
from llm_governor import RateLimitAlert

llm_governor.instrument({
    "backend": "memory",
    "services": {"flaky": {"failure_threshold": 3, "recovery_timeout": 30}},
})
alerts: list[RateLimitAlert] = []


def on_alert(alert: RateLimitAlert) -> None:
    alerts.append(alert)
    llm_governor.log_alert_handler(alert)  # the ready-made handler: one RATE_LIMIT log line


@llm_governor.rate_limited("flaky")
def call_flaky_service() -> None:
    raise ConnectionError("provider unreachable")


llm_governor.start_rate_limit_monitoring(alert_callback=on_alert, interval=0.2)
for _ in range(4):
    try:
        call_flaky_service()
    except ConnectionError:
        pass
    except llm_governor.CircuitBreakerOpenError as exc:
        print(f"failing fast: {exc} (retry after {exc.retry_after:.0f}s)")
time.sleep(0.5)
llm_governor.stop_rate_limit_monitoring()

health = llm_governor.get_rate_limit_health()
print(f"health: {health['overall_status']} ({health['health_score']})")
print("alerts:", sorted({a.alert_type for a in alerts}))
if health["overall_status"] in ("critical", "degraded"):
    llm_governor.enable_emergency_mode()
print("emergency mode:", llm_governor.is_emergency_mode())
llm_governor.disable_emergency_mode()
