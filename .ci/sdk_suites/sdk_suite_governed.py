"""pytest plugin loaded (``-p sdk_suite_governed``) only in the GOVERNED run of an SDK's suite.

Calls ``llm_governor.instrument(...)`` once per process (each xdist worker is
one) with limits that never throttle, on the memory backend, without budgets:
whatever the SDK's own tests then see differently from the bare run is a
difference in behaviour, not a limit.

``$SDK_SUITE_INSTRUMENT_AT`` chooses when:

* ``import`` (default): while pytest loads this plugin, before the suite's
  conftest imports the SDK, so the patch arrives through wrapt's post-import
  hook;
* ``configure``: in ``pytest_configure``, after the conftest imported the SDK,
  so the patch is applied at once to the already imported module.

It checks that the patch is really there (at the first test and at the end),
that the SDK was imported from site-packages (the module objects the patch
sits on) and not from the sdist, counts the calls that went through the
governor (per test, into the report's ``user_properties``, and per process),
and hands the totals to ``sdk_suite_outcomes`` for the result file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Generator, Mapping
from typing import Any

import pytest

import llm_governor
from llm_governor.instrumentation import GovernorInstrumentor

SDK = os.environ["SDK_SUITE_SDK"]
WHEN = os.environ.get("SDK_SUITE_INSTRUMENT_AT", "import")
SERVICES = ("openai", "anthropic", "azure_openai")
if WHEN not in ("import", "configure"):
    raise pytest.UsageError(f"SDK_SUITE_INSTRUMENT_AT={WHEN!r}: use 'import' or 'configure'")

#: never throttles, never sheds, never opens the breaker, never runs out of retry budget
CONFIG: dict[str, Any] = {
    "backend": "memory",
    "environment": "development",
    "services": {
        name: {
            "max_tokens": 100000,
            "refill_rate": 100000.0,
            "burst_capacity": 0,
            "min_interval": 0.00001,
            "max_cost_per_minute": "1000000",
            "max_queue_size": 100000,
            "request_timeout": 600,
            "failure_threshold": 1_000_000_000,
        }
        for name in SERVICES
    },
    # the suites mock the SDK's own retry waits to zero: keep the governor's back-off short too
    "retry": {"budget_ratio": 10, "budget_min_per_minute": 1_000_000_000, "max_wait": 0.001},
}

_state: dict[str, Any] = {
    "instrument_at": WHEN,
    "governor_file": llm_governor.__file__,
    "sdk_imported_before_instrument": None,
    "patched_at_first_test": None,
    "patched_at_end": None,
    "sdk_file": None,
    "tests_run": 0,
    "tests_with_governed_calls": 0,
}


def _instrument() -> None:
    _state["sdk_imported_before_instrument"] = SDK in sys.modules
    llm_governor.instrument(CONFIG, backend="memory")


def _patched() -> bool:
    return SDK in GovernorInstrumentor.patched_sdks()


def _governed_requests() -> int:
    """Calls the governor decided on (admitted or refused), all governed services."""
    requests = llm_governor.get_governor().backend.counters().get("requests", {})
    return sum(int(n) for svc in SERVICES for n in requests.get(svc, {}).values())


def _totals() -> dict[str, Any]:
    counters = llm_governor.get_governor().backend.counters()
    calls = counters.get("calls", {})
    return {
        "requests": {svc: {k: int(v) for k, v in counters.get("requests", {}).get(svc, {}).items()}
                     for svc in SERVICES if svc in counters.get("requests", {})},
        "settled_calls": sum(int(n) for svc in SERVICES for model in calls.get(svc, {}).values()
                             for n in model.values()),
        "retries": {svc: int(n) for svc, n in counters.get("retries", {}).items()},
    }


_START = pytest.StashKey[int]()


def _govern_every_post() -> None:
    """Experimental (``SDK_SUITE_GOVERN_ALL_POSTS=1``, never in CI): govern every POST the
    suites make, not only the inference endpoints, by widening the Stainless adapters' URL
    table. Most of the SDKs' retry tests post to made-up paths (``/foo``) that the governor
    passes through; this shows what its attempt loop would do to them. Internal API: if the
    adapters change shape, this refuses instead of guessing."""
    from llm_governor.instrumentation.anthropic import AnthropicAdapter
    from llm_governor.instrumentation.openai import OpenAIAdapter

    class _EveryPath(dict[str, str]):
        def get(self, key: Any, default: Any = None) -> Any:
            return super().get(key, "post")

    for cls in (OpenAIAdapter, AnthropicAdapter):
        table = getattr(cls, "operations", None)
        if not isinstance(table, Mapping):
            raise pytest.UsageError(f"SDK_SUITE_GOVERN_ALL_POSTS: {cls.__name__}.operations "
                                    "is gone; update sdk_suite_governed.py")
        cls.operations = _EveryPath(table)


GOVERN_ALL_POSTS = os.environ.get("SDK_SUITE_GOVERN_ALL_POSTS") == "1"
_state["govern_all_posts"] = GOVERN_ALL_POSTS
if GOVERN_ALL_POSTS:
    _govern_every_post()

if WHEN == "import":
    _instrument()


def pytest_configure(config: pytest.Config) -> None:
    if WHEN == "configure":
        _instrument()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    if call.when == "setup":
        if _state["patched_at_first_test"] is None:
            _state["patched_at_first_test"] = _patched()
            mod = sys.modules.get(SDK)
            _state["sdk_file"] = getattr(mod, "__file__", None)
        item.stash[_START] = _governed_requests()
    elif call.when == "teardown":
        governed = _governed_requests() - item.stash.get(_START, 0)
        item.user_properties.append(("governed_requests", governed))
        _state["tests_run"] += 1
        _state["tests_with_governed_calls"] += governed > 0
    yield


def _snapshot() -> dict[str, Any]:
    return {**_state, "patched_at_end": _patched(),
            "patched_sdks": GovernorInstrumentor.patched_sdks(), **_totals()}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workeroutput"):  # an xdist worker: hand the numbers to the controller
        config.workeroutput["sdk_suite_governor"] = json.dumps(_snapshot())
        return
    workers: list[dict[str, Any]] = getattr(config, "_sdk_suite_workers", [])
    if not workers:  # no xdist: the tests ran here
        workers = [_snapshot()]
    config._sdk_suite_governor = {"workers": workers}  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    out = getattr(node, "workeroutput", None) or {}
    if "sdk_suite_governor" in out:
        config = node.config
        workers = getattr(config, "_sdk_suite_workers", None)
        if workers is None:
            workers = config._sdk_suite_workers = []
        workers.append(json.loads(out["sdk_suite_governor"]))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    doc = getattr(config, "_sdk_suite_governor", None)
    if not doc:
        return
    workers = doc["workers"]
    admitted = sum(n for w in workers for d in w["requests"].values() for n in d.values())
    first = [w["patched_at_first_test"] for w in workers]
    end = [w["patched_at_end"] for w in workers]
    terminalreporter.write_line(
        f"llm-governor: {admitted} governed requests, {sum(w['settled_calls'] for w in workers)} "
        f"settled calls, {sum(w['tests_with_governed_calls'] for w in workers)} of "
        f"{sum(w['tests_run'] for w in workers)} tests went through the governor; "
        f"{SDK} patched at first test / at end (per worker): {first} / {end}"
    )
