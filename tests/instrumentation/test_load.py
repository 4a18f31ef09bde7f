"""8 threads × 25 calls against a provider limit of 60 requests per (scaled) minute.

The provider's minute is scaled to 2 s, so its limit is 30 requests/s. The
governor is told the provider's limit (27.75 requests/s and a bucket of 2: at
most 57.5 per window, headroom for scheduling jitter on a loaded machine, and a
late wake-up does not cost a slot), and its adaptive floor is pinned there:
the adaptive policy clamps the rate to "remaining ÷ time to full reset", which
for the provider's sliding window is about half its real capacity at steady
load. No error reaches user code, the provider never answers 429, and goodput
is at least 90% of its limit.
"""

from __future__ import annotations

import threading

from llm_governor.testing import FakeProvider

from .conftest import Driver, Governed, calls

WINDOW = 2.0
RPM = 60
RATE = 27.75


def test_eight_threads_keep_under_the_provider_limit(governed: Governed) -> None:
    with FakeProvider(rpm=RPM, window=WINDOW) as fake:
        d = Driver(fake, False)
        gov = governed({"services": {"openai": {
            "refill_rate": RATE, "max_tokens": 2, "burst_capacity": 0,
            "min_interval": 0.01, "request_timeout": 120}}})
        errors: list[BaseException] = []

        def worker() -> None:
            for _ in range(25):
                try:
                    d.openai.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                        max_tokens=4)
                except BaseException as exc:  # anything at all reaching user code fails
                    errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert errors == []
        assert fake.ledger.count_by_status() == {200: 200}
        assert fake.max_in_window(WINDOW) <= RPM
        served = sorted(e.time for e in fake.ledger.entries)
        rate = (len(served) - 1) / (served[-1] - served[0])  # as the provider delivered them
        goodput = rate / (RPM / WINDOW)
        assert goodput >= 0.9, f"goodput {goodput:.1%} ({rate:.1f} requests/s)"
        assert calls(gov) == 200
