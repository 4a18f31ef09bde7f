"""``llm-governor demo``: every promise of llm-governor, shown offline in about 20 seconds.

Six short acts, each through the unmodified openai and anthropic SDKs against
a loopback :class:`~llm_governor.testing.FakeProvider` (a real HTTP server
with its own limits, faults and bill), each governor on one SQLite file:

1. rate limits: the same workload bare and governed (requests the provider
   received, 429s, failures in user code, the bill);
2. a hard budget reached: refusals named as such, spend against the budget;
3. retries absorbed after provider errors;
4. the circuit breaker opening and recovering during an outage;
5. a HIGH-priority call overtaking LOW ones;
6. emergency mode switched by ``llm-governor emergency --enable`` run as
   another process while calls are running.

It ends with the ``llm-governor status`` command that shows the state it left.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ..api import instrument, set_governor, uninstrument
from ..context import Priority, priority
from ..errors import (
    BudgetExceededError,
    CircuitBreakerOpenError,
    EmergencyModeError,
    GovernorError,
)
from ..governor import Governor
from ..instrumentation import GovernorInstrumentor
from ..redaction import redact_url
from ..testing import FakeProvider
from .argtypes import seconds, whole
from .errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE

__all__ = ["ACTS", "Act", "Row", "main", "run_demo"]

logger = logging.getLogger("llm_governor")
ACTS = ("rates", "budget", "retries", "breaker", "priority", "emergency")
NAMESPACE = "demo"
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-latest"
PROMPT = [{"role": "user", "content": "Summarise why rate limits matter, briefly."}]


@dataclass
class Row:
    """One line of an act's table, with what it means under it."""

    label: str
    values: list[str]
    note: str = ""


@dataclass
class Act:
    """One act: what was done, and a table of what happened."""

    title: str
    setup: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)

    def render(self, number: int) -> str:
        width = max(len(r.label) for r in self.rows)
        cols = [max(len(c), *(len(r.values[i]) for r in self.rows))
                for i, c in enumerate(self.columns)]
        lines = [f"{number}. {self.title}", f"   {self.setup}", "",
                 "   " + " " * width + "".join(f"  {c:>{w}}"
                                              for c, w in zip(self.columns, cols, strict=True))]
        for r in self.rows:
            lines.append(f"   {r.label:<{width}}" + "".join(
                f"  {v:>{w}}" for v, w in zip(r.values, cols, strict=True)))
            if r.note:
                lines.append(f"     {r.note}")
        return "\n".join(lines)


class Stopped(Exception):
    """Ctrl-C: the acts stop taking new calls."""


def _usd(amount: Decimal) -> str:
    return f"${amount:.6f}"


def _secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _relative(at: float | None, mark: float, what: str) -> str:
    if at is None:
        return "-"
    return f"{abs(at - mark):.2f} s {'after' if at >= mark else 'before'} {what}"


# ------------------------------------------------------------------ calls
def _clients(fake: FakeProvider) -> dict[str, Any]:
    import anthropic
    import openai

    return {"openai": openai.OpenAI(api_key="sk-demo", base_url=fake.openai_base_url),
            "anthropic": anthropic.Anthropic(api_key="sk-ant-demo",
                                             base_url=fake.anthropic_base_url)}


def _close(clients: dict[str, Any]) -> None:
    for client in clients.values():
        with contextlib.suppress(Exception):
            client.close()


def _call(clients: dict[str, Any], i: int, *, stream_every: int = 3,
          model: str | None = None, provider: str | None = None) -> None:
    """One chat call: openai on even ``i``, anthropic on odd, every third streaming."""
    stream = stream_every > 0 and i % stream_every == 0
    if (provider or ("openai" if i % 2 == 0 else "anthropic")) == "openai":
        chat = clients["openai"].chat.completions
        name = model or OPENAI_MODEL
        if stream:
            with chat.create(model=name, messages=PROMPT, max_tokens=16, stream=True) as s:
                for _ in s:
                    pass
        else:
            chat.create(model=name, messages=PROMPT, max_tokens=16)
    else:
        messages = clients["anthropic"].messages
        if stream:
            with messages.stream(model=model or ANTHROPIC_MODEL, messages=PROMPT,
                                 max_tokens=16) as s:
                s.get_final_message()
        else:
            messages.create(model=model or ANTHROPIC_MODEL, messages=PROMPT, max_tokens=16)


def _kind(exc: BaseException) -> str:
    """What a failed call was, as the application sees it."""
    if isinstance(exc, BudgetExceededError):
        return "budget"
    if isinstance(exc, CircuitBreakerOpenError):
        return "breaker"
    if isinstance(exc, EmergencyModeError):
        return "emergency"
    if isinstance(exc, GovernorError):
        return "governor"
    status = getattr(exc, "status_code", None)
    if status == 429:
        return "429"
    if isinstance(status, int) and status >= 500:
        return "5xx"
    return type(exc).__name__


@dataclass
class Outcome:
    index: int
    start: float
    end: float
    error: str | None  # None: success, else _kind(exc)


class Workload:
    """Calls on daemon threads, stoppable at once by Ctrl-C (``stop``)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def one(self, i: int, fn: Callable[[int], None]) -> Outcome:
        start = time.monotonic()
        error = None
        try:
            fn(i)
        except Exception as exc:  # what the application would have to handle
            error = _kind(exc)
        out = Outcome(i, start, time.monotonic(), error)
        with self._lock:
            self.outcomes.append(out)
        return out

    def run(self, calls: int, workers: int, fn: Callable[[int], None]) -> float:
        """``calls`` calls of ``fn(i)`` on ``workers`` threads; returns the seconds taken."""
        jobs: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(calls):
            jobs.put(i)

        def worker() -> None:
            while not self.stop.is_set():
                try:
                    i = jobs.get_nowait()
                except queue.Empty:
                    return
                self.one(i, fn)

        start = time.monotonic()
        self.join([self.spawn(worker) for _ in range(workers)])
        return time.monotonic() - start

    def loop(self, workers: int, fn: Callable[[int], None], pause: float,
             until: threading.Event) -> list[threading.Thread]:
        """Threads calling ``fn`` every ``pause`` seconds until ``until`` is set."""
        counter = iter(range(1 << 30))
        lock = threading.Lock()

        def worker() -> None:
            while not (until.is_set() or self.stop.is_set()):
                with lock:
                    i = next(counter)
                self.one(i, fn)
                until.wait(pause)

        return [self.spawn(worker) for _ in range(workers)]

    def spawn(self, target: Callable[[], None]) -> threading.Thread:
        t = threading.Thread(target=target, daemon=True, name="llm-governor-demo")
        t.start()
        return t

    def join(self, threads: Sequence[threading.Thread]) -> None:
        for t in threads:
            while t.is_alive():  # short joins: Ctrl-C reaches the main thread at once
                t.join(0.1)
        if self.stop.is_set():
            raise Stopped

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped

    def errors(self, kind: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None and
                (kind is None or o.error == kind)]


def _service(**overrides: Any) -> dict[str, Any]:
    """Generous limits, so each act shows the one it is about."""
    return {"max_tokens": 1000, "burst_capacity": 0, "refill_rate": 1000.0,
            "min_interval": 0.001, "max_cost_per_minute": "1000", "request_timeout": 60,
            "max_queue_size": 10_000, **overrides}


# ------------------------------------------------------------------ the demo
@dataclass
class Options:
    calls: int = 120
    workers: int = 12
    rpm: int = 40
    window: float = 1.0
    budget: Decimal = Decimal("0.0020")
    acts: tuple[str, ...] = ACTS


class Demo:
    """Runs the acts; each governs the SDKs with its own configuration on one backend."""

    def __init__(self, backend: str, options: Options, stop: threading.Event,
                 say: Callable[[str], None]) -> None:
        self.backend = backend
        self.o = options
        self.stop = stop
        self.say = say

    @contextlib.contextmanager
    def governed(self, config: dict[str, Any]) -> Iterator[Governor]:
        previous = set_governor(None)
        gov = instrument({**config, "namespace": NAMESPACE}, backend=self.backend)
        try:
            yield gov
        finally:
            uninstrument()
            set_governor(previous)
            gov.close()

    def run(self) -> list[Act]:
        acts = []
        for number, name in enumerate(ACTS, 1):
            if name in self.o.acts:
                act: Act = getattr(self, f"act_{name}")()
                acts.append(act)
                self.say(act.render(number) + "\n")
        return acts

    # -------------------------------------------------------------- 1. rates
    def act_rates(self) -> Act:
        o = self.o
        rate = o.rpm / o.window * 0.92  # the provider's limit, with a little headroom
        limits = _service(refill_rate=rate, max_tokens=1, min_interval=0.01)
        runs = []
        for label in ("bare SDKs", "llm-governor"):
            with FakeProvider(rpm=o.rpm, window=o.window, latency=0.02) as fake:
                clients = _clients(fake)
                w = Workload(self.stop)
                work = functools.partial(_call, clients)
                try:
                    if label == "bare SDKs":
                        seconds = w.run(o.calls, o.workers, work)
                    else:
                        with self.governed({"services": {"openai": limits,
                                                         "anthropic": limits}}):
                            seconds = w.run(o.calls, o.workers, work)
                finally:
                    _close(clients)
                runs.append((len(fake.ledger), fake.ledger.count_by_status().get(429, 0),
                             len(w.errors()), len(w.outcomes) - len(w.errors()),
                             fake.ledger.total_billed(), seconds))
        (b_sent, b_429, b_fail, b_ok, b_bill, b_s), (g_sent, g_429, g_fail, g_ok, g_bill,
                                                      g_s) = runs
        return Act(
            "Rate limits: the same calls, bare and governed",
            f"{o.calls} calls (openai and anthropic, every third streaming) on {o.workers} "
            f"threads; the provider allows {o.rpm} requests per {o.window:g} s per API.",
            ["bare SDKs", "llm-governor"], [
                Row("requests the provider received", [str(b_sent), str(g_sent)],
                    "every attempt, the SDKs' own retries included"),
                Row("429 Too Many Requests", [str(b_429), str(g_429)],
                    "governed calls wait in a queue for the provider's limit instead of being "
                    "sent too early"),
                Row("calls that failed in your code", [str(b_fail), str(g_fail)],
                    "errors the application had to handle: the bare SDK gives up after "
                    "max_retries 429s"),
                Row("calls that succeeded", [str(b_ok), str(g_ok)]),
                Row("provider's bill", [_usd(b_bill), _usd(g_bill)],
                    "a 429 is free, a success is paid: more successes, a larger bill for the "
                    "same work done"),
                Row("time taken", [_secs(b_s), _secs(g_s)],
                    "the bare SDKs sleep between retries; governed calls wait their turn"),
            ])

    # -------------------------------------------------------------- 2. budget
    def act_budget(self) -> Act:
        calls, model = 30, "gpt-4o"
        with FakeProvider(latency=0.01) as fake, \
                self.governed({"budget": {"per_day": str(self.o.budget)},
                               "services": {"openai": _service()}}) as gov:
            gov.backend.reset_budget()  # a rerun on the same backend starts afresh
            clients = _clients(fake)
            w = Workload(self.stop)
            try:
                w.run(calls, 3, lambda i: _call(clients, i, stream_every=0, model=model,
                                                provider="openai"))
            finally:
                _close(clients)
            spent = gov.budget_report()["day"]["spent"]
            refused = len(w.errors("budget"))
            ok = len(w.outcomes) - len(w.errors())
            sent, bill = len(fake.ledger), fake.ledger.total_billed()
        return Act(
            "A hard budget: refused before it is passed",
            f"{calls} {model} calls on 3 threads against a daily budget of "
            f"{_usd(self.o.budget)} (budget.per_day).", ["llm-governor"], [
                Row("calls that succeeded", [str(ok)],
                    "each reserved an upper bound of its cost before it was sent, and was "
                    "charged its real cost after"),
                Row("refused: BudgetExceededError", [str(refused)],
                    "raised before sending; it is also an openai.RateLimitError, so existing "
                    "handlers keep working"),
                Row("requests the provider received", [str(sent)],
                    "no refused call reached the provider"),
                Row("spent of the budget", [f"{_usd(spent)} of {_usd(self.o.budget)}"],
                    "never more, across threads and processes; it persists across restarts "
                    "until the day ends (llm-governor reset --budgets starts it afresh)"),
                Row("provider's bill", [_usd(bill)], "what the provider charged: the same"),
            ])

    # -------------------------------------------------------------- 3. retries
    def act_retries(self) -> Act:
        calls, errors = 24, 6
        with FakeProvider(latency=0.01) as fake, \
                self.governed({"services": {"openai": _service(),
                                            "anthropic": _service()}}):
            fake.fail_next(errors, 500)
            clients = _clients(fake)
            w = Workload(self.stop)
            try:
                w.run(calls, errors, lambda i: _call(clients, i))
            finally:
                _close(clients)
            by_status = fake.ledger.count_by_status()
            sent = len(fake.ledger)
        return Act(
            "Retries absorbed after provider errors",
            f"{calls} calls on {errors} threads; the provider answers its first {errors} "
            "requests with 500 Internal Server Error.", ["llm-governor"], [
                Row("500s from the provider", [str(by_status.get(500, 0))]),
                Row("requests the provider received", [str(sent)],
                    f"{sent - calls} retries: the SDK decided to retry, as it does bare; the "
                    "governor paced each retry and re-admitted it through the rate limits"),
                Row("calls that failed in your code", [str(len(w.errors()))],
                    "the errors were absorbed; a retry budget stops retry storms"),
            ])

    # -------------------------------------------------------------- 4. breaker
    def act_breaker(self) -> Act:
        recovery, outage = 0.5, 1.5
        limits = _service(failure_threshold=3, recovery_timeout=recovery, success_threshold=1,
                          max_retries=0)
        with FakeProvider(latency=0.01) as fake, \
                self.governed({"services": {"openai": limits}}):
            clients = _clients(fake)
            w = Workload(self.stop)
            done = threading.Event()
            try:
                threads = w.loop(4, lambda i: _call(clients, i, stream_every=0,
                                                    provider="openai"), 0.03, done)
                w.sleep(0.3)
                fake.set_fault("error", 503)
                down = time.monotonic()
                w.sleep(outage)
                fake.set_fault(None)
                up = time.monotonic()
                w.sleep(0.8)
                done.set()
                w.join(threads)
            finally:
                done.set()
                _close(clients)
            during = [o for o in w.outcomes if down <= o.start < up]
            fast = [o for o in during if o.error == "breaker"]
            probes = sum(1 for e in fake.ledger.entries if e.status == 503)
            opened = min((o.start for o in fast), default=None)
            back = min((o.end for o in w.outcomes if o.start >= up and o.error is None),
                       default=None)
        return Act(
            "The circuit breaker during an outage",
            f"4 threads call openai without pause; the provider answers 503 for {outage:g} s "
            "(failure_threshold 3, recovery_timeout "
            f"{recovery:g} s, SDK retries off for clarity).", ["llm-governor"], [
                Row("calls made during the outage", [str(len(during))]),
                Row("requests that reached the failing provider", [str(probes)],
                    "3 failures opened the circuit; after that, one probe per recovery_timeout"),
                Row("calls refused at once by the open circuit", [str(len(fast))],
                    "CircuitBreakerOpenError without waiting for a dead provider (fallbacks "
                    "run at once with graceful_api_call)"),
                Row("circuit opened", [
                    "-" if opened is None else f"{opened - down:.2f} s into the outage"]),
                Row("calls succeed again", [
                    "-" if back is None else f"{back - up:.2f} s after it ended"],
                    "a half-open probe succeeded and closed the circuit"),
            ])

    # -------------------------------------------------------------- 5. priority
    def act_priority(self) -> Act:
        lows, rate = 12, 8.0
        limits = _service(max_tokens=1, refill_rate=rate, min_interval=0.01)
        with FakeProvider(latency=0.01) as fake, \
                self.governed({"services": {"openai": limits}}) as gov:
            clients = _clients(fake)
            w = Workload(self.stop)
            high: list[Outcome] = []

            def call(i: int) -> None:
                _call(clients, i, stream_every=0, provider="openai")

            def low() -> None:
                with priority(Priority.LOW):
                    w.one(0, call)

            def urgent() -> None:
                with priority(Priority.HIGH):
                    high.append(w.one(1, call))

            try:
                threads = [w.spawn(low) for _ in range(lows)]
                w.sleep(0.3)
                waiting = sum(gov.local_status()["queues"].values())
                threads.append(w.spawn(urgent))
                w.join(threads)
            finally:
                _close(clients)
        if not high:
            raise Stopped
        h = high[0]
        overtaken = sum(1 for o in w.outcomes if o.index == 0 and o.end > h.end)
        low_wait = max(o.end - o.start for o in w.outcomes if o.index == 0)
        return Act(
            "Priorities: a HIGH call overtakes LOW ones",
            f"{lows} LOW calls start at once against a limit of {rate:g} requests/s; a HIGH "
            "call arrives 0.3 s later.", ["llm-governor"], [
                Row("LOW calls waiting when it arrived", [str(waiting)]),
                Row("LOW calls it overtook", [str(overtaken)],
                    "inside a process the queue is ordered by priority; across processes, "
                    "lower priorities leave headroom for higher ones"),
                Row("HIGH call took", [_secs(h.end - h.start)]),
                Row("longest LOW call took", [_secs(low_wait)]),
            ])

    # -------------------------------------------------------------- 6. emergency
    def act_emergency(self) -> Act:
        with FakeProvider(latency=0.01) as fake, \
                self.governed({"emergency_action": "refuse",
                               "services": {"openai": _service()}}) as gov:
            clients = _clients(fake)
            w = Workload(self.stop)
            done = threading.Event()
            try:
                threads = w.loop(3, lambda i: _call(clients, i, stream_every=0,
                                                    provider="openai"), 0.02, done)
                w.sleep(0.3)
                enabled_at, took_on = self._switch("--enable")
                w.sleep(0.5)
                disabled_at, _ = self._switch("--disable")
                w.sleep(0.3)
                done.set()
                w.join(threads)
            finally:
                done.set()
                _close(clients)
                if gov.emergency():  # interrupted between the two commands
                    gov.set_emergency(False)
        before = [o for o in w.outcomes if o.end < enabled_at - took_on]
        refused = w.errors("emergency")
        first_refusal = min((o.end for o in refused), default=None)
        again = min((o.end for o in w.outcomes if o.start > disabled_at and o.error is None),
                    default=None)
        return Act(
            "Emergency mode, switched from the command line",
            "3 threads call openai; another process runs llm-governor emergency --enable, "
            "then --disable (emergency_action = \"refuse\").", ["llm-governor"], [
                Row("calls admitted before the switch", [str(len(before))]),
                Row("llm-governor emergency --enable", [f"returned after {_secs(took_on)}"],
                    "most of it is the command's start-up; the flag lives in the shared backend "
                    "and every process reads it inside each admission"),
                Row("first call refused", [_relative(first_refusal, enabled_at, "it returned")],
                    "EmergencyModeError, in every process sharing the backend"),
                Row("calls refused while it was on", [str(len(refused))]),
                Row("calls admitted again", [_relative(again, disabled_at, "--disable returned")],
                    "llm-governor emergency --disable, also from another process"),
            ])

    def _switch(self, flag: str) -> tuple[float, float]:
        """Run ``llm-governor emergency FLAG`` as another process; (returned at, took)."""
        env = {k: v for k, v in os.environ.items() if k != "LLM_GOVERNOR_CONFIG"}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "llm_governor", "emergency", flag,
                               "--backend", self.backend, "--namespace", NAMESPACE],
                              env=env, capture_output=True, text=True, timeout=60)
        end = time.monotonic()
        if proc.returncode != 0:
            raise RuntimeError(f"llm-governor emergency {flag} failed: {proc.stderr.strip()}")
        if self.stop.is_set():
            raise Stopped
        return end, end - start


# ------------------------------------------------------------------ entry points
def run_demo(options: Options | None = None, *, backend: str | None = None,
             say: Callable[[str], None] = print,
             stop: threading.Event | None = None) -> list[Act]:
    """Run the acts in a process that is not instrumented yet; returns them."""
    if GovernorInstrumentor.patched_sdks():
        raise RuntimeError("run the demo in a process that is not instrumented yet")
    if backend is None:
        backend = f"sqlite:///{tempfile.mkdtemp(prefix='llm-governor-demo-')}/governor.db"
    return Demo(backend, options or Options(), stop or threading.Event(), say).run()


def _usd_amount(text: str) -> Decimal:
    try:
        value = Decimal(text.strip().removeprefix("$"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an amount in USD such as 0.002") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-governor demo",
        description="Every promise of llm-governor in six short acts, offline, through the "
                    "real openai and anthropic SDKs against a local fake provider: rate "
                    "limits (bare SDKs vs governed), a hard budget, retries after provider "
                    "errors, the circuit breaker during an outage, priorities, and emergency "
                    "mode switched from the command line. Takes about 20 seconds.",
        epilog="exit codes: 0 done, 2 bad option, 3 the SDKs are missing or an act failed, "
               "130 interrupted (Ctrl-C)")
    parser.add_argument("--calls", type=whole(1), default=120, metavar="N",
                        help="calls in the rate-limit act (default 120)")
    parser.add_argument("--workers", type=whole(1), default=12, metavar="N",
                        help="threads making them (default 12)")
    parser.add_argument("--rpm", type=whole(1), default=40, metavar="N",
                        help="the fake provider's limit: requests per window per API "
                             "(default 40)")
    parser.add_argument("--window", type=seconds(60), default=1.0, metavar="S",
                        help="seconds the provider's window lasts, a minute scaled down "
                             "(default 1)")
    parser.add_argument("--budget", type=_usd_amount, default=Decimal("0.0020"),
                        metavar="USD", help="the daily budget of the budget act "
                                            "(default 0.0020)")
    parser.add_argument("--act", choices=ACTS, action="append", dest="acts",
                        help="run only this act (repeatable; default: all six)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llm-governor demo``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2), named by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        import anthropic  # noqa: F401
        import openai  # noqa: F401
    except ImportError as exc:
        sys.stderr.write(f"llm-governor demo: error: it needs both SDKs ({exc}): "
                         "pip install 'llm-governor[openai,anthropic]'\n")
        return EXIT_RUNTIME
    options = Options(args.calls, args.workers, args.rpm, args.window, args.budget,
                      tuple(args.acts or ACTS))
    given = os.environ.get("LLM_GOVERNOR_BACKEND")
    backend = given or \
        f"sqlite:///{tempfile.mkdtemp(prefix='llm-governor-demo-')}/governor.db"
    stop = threading.Event()
    started = time.monotonic()

    def say(text: str) -> None:
        print(text, flush=True)

    def interrupted(signum: int, frame: Any) -> None:
        stop.set()  # the acts stop taking calls; the workers are daemon threads
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while cleaning up
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupted) if in_main else None
    # the tables say what happened; the governor's own warnings would interleave with them
    log_level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        say(f"llm-governor demo: {len(options.acts)} act(s), state in {redact_url(backend)} "
            f"(namespace {NAMESPACE})\n")
        run_demo(options, backend=backend, say=say, stop=stop)
    except (KeyboardInterrupt, Stopped):
        sys.stderr.write("\nllm-governor demo: interrupted\n")
        return 130
    except Exception as exc:
        sys.stderr.write(f"llm-governor demo: error: the demo failed: "
                         f"{type(exc).__name__}: {exc}\n")
        return EXIT_RUNTIME
    finally:
        logger.setLevel(log_level)
        if in_main and not stop.is_set():  # after a Ctrl-C, the next ones stay ignored
            signal.signal(signal.SIGINT, previous)
    where = "<your backend URL>" if given and "@" in given else backend
    say(f"Done in {time.monotonic() - started:.1f} s. The state it used (spend, counters, "
        "circuits) is still there:\n"
        f"  llm-governor status --backend {where} --namespace {NAMESPACE}")
    return EXIT_OK
