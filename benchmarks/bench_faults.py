"""Budget accuracy under faults: what the provider billed, what the governor recorded.

Each scenario drives the unmodified openai SDK against the fake provider's
hostile modes (``llm_governor.testing.FakeProvider``), once, with a hard daily
budget, then reads the provider's ledger and the governor's books after every
call has settled:

* client timeouts: the provider bills and hangs; 30 calls with ``timeout=0.15``
  and the SDK's own two retries, each lost attempt charged its reservation;
* reset after send, cut streams, no usage, malformed bodies: billed replies
  whose usage never arrives, charged their reservation; calls go on until the
  budget refuses one;
* overrun: the provider bills 100,000 input tokens more than the request could
  hold, the one case where the bill may pass the budget (by that call's overrun);
* vision: base64 PNGs whose reservation bounds the billed image tokens, a budget
  of one reservation plus 2.5 calls' cost lets exactly three through;
* fork: four forked children each drop an unconsumed stream and exit (SQLite);
* disk full: the SQLite file's disk fills mid-run (``RLIMIT_FSIZE`` in a forked
  child), calls go on degraded, the settlements are replayed on recovery.

Reported per scenario: billed (provider ledger), recorded (governor spend),
budget, overshoot (billed − budget, or 0). ``recorded ≥ billed`` everywhere
(equal where usage is known) and ``billed ≤ budget`` except for the overrun
are the targets. Run alone: ``python -m benchmarks.bench_faults``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks._common import Mode, Section, Target, table, usd

MODEL = "gpt-4o-mini"
VISION_MODEL = "gpt-4o"
MESSAGES: Any = [{"role": "user", "content": "Tell me about budgets"}]
LOOSE = {"max_tokens": 10**6, "refill_rate": 1e6, "burst_capacity": 0, "min_interval": 1e-6,
         "max_cost_per_minute": "1000000", "max_queue_size": 10_000,
         "failure_threshold": 10**6}
RETRY = {"max_wait": 0.05, "budget_ratio": 10, "budget_min_per_minute": 10_000}
FORK = multiprocessing.get_context("fork")


# ------------------------------------------------------------------ plumbing
def _instrument(budget: Decimal, backend: str = "memory", **top: Any) -> Any:
    import llm_governor

    return llm_governor.instrument({
        "backend": backend, "environment": "production", "budget": {"per_day": str(budget)},
        "retry": RETRY, "services": {"openai": LOOSE}, **top})


def _spent(gov: Any) -> Decimal:
    costs = gov.backend.counters().get("cost", {})
    return sum((c for models in costs.values() for c in models.values()), Decimal(0))


def _settled(gov: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, reserved, leases = gov.backend.budget_status()
        if reserved == 0 and leases == 0:
            return True
        time.sleep(0.01)
    return False


def _client(fake: Any, **kw: Any) -> Any:
    return _client_for(fake.openai_base_url, **kw)


def _client_for(base_url: str, **kw: Any) -> Any:
    import openai

    kw.setdefault("max_retries", 0)
    return openai.OpenAI(api_key="sk-bench-faults", base_url=base_url, **kw)


def _until_refused(call: Callable[[], Any], limit: int = 200) -> int:
    """Call until the governor refuses for the budget; returns the calls made."""
    import llm_governor

    for n in range(1, limit + 1):
        try:
            call()
        except llm_governor.BudgetExceededError:
            return n
        except Exception:  # the fault's own error (cut stream, malformed body...)
            continue
    return limit


def _row(name: str, billed: Decimal, recorded: Decimal, budget: Decimal, calls: int,
         requests: int, clean: bool, note: str = "", overrun: Decimal = Decimal(0)
         ) -> dict[str, Any]:
    return {"scenario": name, "calls": calls, "requests": requests, "billed": billed,
            "recorded": recorded, "budget": budget,
            "overshoot": max(Decimal(0), billed - budget), "overrun": overrun,
            "settled": clean, "note": note}


def _overrun(gov: Any) -> Decimal:
    found = gov.backend.counters().get("overrun", {})
    return sum((c for models in found.values() for c in models.values()), Decimal(0))


def _governed(name: str, budget: Decimal, body: Callable[[Any, Any], int],
              note: str = "", **top: Any) -> dict[str, Any]:
    """Run ``body(fake, gov) -> calls`` under a fresh governor and fake; the row of its books."""
    import llm_governor
    from llm_governor.testing import FakeProvider

    with FakeProvider() as fake:
        gov = _instrument(budget, **top)
        try:
            calls = body(fake, gov)
            clean = _settled(gov)
            return _row(name, fake.ledger.total_billed(), _spent(gov), budget, calls,
                        len(fake.ledger), clean, note, _overrun(gov))
        finally:
            llm_governor.uninstrument()
            gov.close()


# ------------------------------------------------------------------ scenarios
def timeouts() -> dict[str, Any]:
    def body(fake: Any, gov: Any) -> int:
        fake.set_fault("hang")
        client = _client(fake, timeout=0.15, max_retries=2)

        def one(_: int) -> None:
            with contextlib.suppress(Exception):  # the SDK's timeout, or a budget veto
                client.chat.completions.create(model=MODEL, messages=MESSAGES)

        with ThreadPoolExecutor(30) as pool:
            list(pool.map(one, range(30)))
        return 30

    return _governed("client timeouts (hang, 30 calls, SDK retries)", Decimal("0.50"), body,
                     "each attempt charged its reservation")


def _faulty(name: str, kind: str, stream: bool, note: str) -> dict[str, Any]:
    def body(fake: Any, gov: Any) -> int:
        fake.set_fault(kind)
        client = _client(fake, max_retries=0)

        def call() -> None:
            result = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                    max_tokens=2000, stream=stream)
            if stream:
                list(result)

        return _until_refused(call)

    return _governed(name, Decimal("0.02"), body, note)


def reset_after_send() -> dict[str, Any]:
    def body(fake: Any, gov: Any) -> int:
        fake.fail_next(6, kind="reset_after_send")
        client = _client(fake, max_retries=2)

        def one(_: int) -> None:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30)

        with ThreadPoolExecutor(10) as pool:
            list(pool.map(one, range(10)))
        return 10

    return _governed("reset after send (6 of 16 attempts)", Decimal("0.10"), body,
                     "lost attempts charged, then retried")


def overrun() -> dict[str, Any]:
    def body(fake: Any, gov: Any) -> int:
        client = _client(fake)
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
        fake.fail_next(kind="inflate_usage", extra_input_tokens=100_000)
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
        return 2 + _until_refused(
            lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                   max_tokens=20), limit=3)

    return _governed("overrun (provider bills 100k extra input tokens)", Decimal("0.01"), body,
                     "the documented case: overshoot ≤ that call's overrun")


def vision() -> dict[str, Any]:
    import llm_governor
    from llm_governor.testing import FakeProvider

    url = "data:image/png;base64," + _b64(_png(1024, 768))
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is in here?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "high"}}]}]

    def call(client: Any) -> Any:
        return client.chat.completions.create(model=VISION_MODEL, messages=messages,
                                              max_tokens=30)

    with FakeProvider() as fake:  # one call: its reservation and its bill
        gov = _instrument(Decimal("100"))
        reserved: list[Decimal] = []
        admit = gov.backend.admit

        def spy(req: Any, lease: Any, ttl: float) -> Any:
            decision = admit(req, lease, ttl)
            if decision.admitted and lease is not None:
                reserved.append(req.cost)
            return decision

        gov.backend.admit = spy
        try:
            call(_client(fake))
        finally:
            llm_governor.uninstrument()
            gov.close()
        reservation, cost = reserved[0], fake.ledger.total_billed()
    budget = reservation + cost * Decimal("2.5")

    def body(fake: Any, gov: Any) -> int:
        client = _client(fake)
        return _until_refused(lambda: call(client), limit=10)

    row = _governed("vision (1024×768 PNG, high detail)", budget, body,
                    f"reserved {usd(reservation)} for a {usd(cost)} call; 3 fit")
    return row


def _child_drops_a_stream(base_url: str) -> None:
    client = _client_for(base_url)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12,
                                            stream=True)
    next(iter(stream))
    del stream
    gc.collect()


def fork() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmg-bench-fork-") as tmp:
        def body(fake: Any, gov: Any) -> int:
            children = [FORK.Process(target=_child_drops_a_stream, args=(fake.openai_base_url,))
                        for _ in range(4)]
            for child in children:
                child.start()
            for child in children:
                child.join(30)
            return 4

        return _governed("fork (4 children drop a stream, SQLite)", Decimal("0.50"), body,
                         "each child's call settled once, at its reservation",
                         backend=f"sqlite:///{Path(tmp) / 'governor.db'}")


def _fill_the_disk(cfg: dict[str, Any], state: str, base_url: str, conn: Any) -> None:
    """In a forked child: calls before, during and after a full disk (RLIMIT_FSIZE)."""
    import resource
    import signal

    import llm_governor

    logging.getLogger("llm_governor").propagate = False
    gov = llm_governor.instrument(cfg)
    client = _client_for(base_url)
    errors = 0

    def calls(n: int) -> None:
        nonlocal errors
        for _ in range(n):
            try:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
            except Exception:
                errors += 1

    calls(3)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    files = [Path(state), Path(state + "-wal")]
    size = max(f.stat().st_size for f in files if f.exists())
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 512, hard))
    calls(6)
    degraded = gov.backend.degraded
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    deadline = time.monotonic() + 5
    while gov.backend.degraded and time.monotonic() < deadline:
        time.sleep(0.05)
    calls(3)
    conn.send({"errors": errors, "degraded": degraded, "recovered": not gov.backend.degraded})
    llm_governor.uninstrument()
    gov.close()


def disk_full() -> dict[str, Any]:
    try:
        import resource
    except ImportError:
        resource = None  # type: ignore[assignment]
    budget = Decimal("1.00")
    if resource is None or not hasattr(resource, "RLIMIT_FSIZE"):
        return _row("disk full (SQLite)", Decimal(0), Decimal(0), budget, 0, 0, True,
                    "skipped: no RLIMIT_FSIZE on this platform")
    from llm_governor.backends.sqlite import SQLiteStore
    from llm_governor.testing import FakeProvider

    with tempfile.TemporaryDirectory(prefix="llmg-bench-disk-") as tmp, \
            FakeProvider() as fake:
        state = str(Path(tmp) / "governor.db")
        cfg = {"backend": f"sqlite:///{state}", "environment": "production",
               "budget": {"per_day": str(budget)}, "retry": RETRY,
               "services": {"openai": LOOSE}, "on_backend_error": "local"}
        ours, theirs = FORK.Pipe(duplex=False)
        child = FORK.Process(target=_fill_the_disk, args=(cfg, state, fake.openai_base_url,
                                                          theirs))
        child.start()
        out = ours.recv() if ours.poll(60) else {"errors": -1}
        child.join(10)
        store = SQLiteStore(state, {"day": budget})
        try:
            spends, reserved, leases = store.budget_status()
        finally:
            store.close()
        recorded = spends["day"].spent if "day" in spends else Decimal(0)
        note = (f"{out.get('errors')} errors reached the caller; degraded "
                f"{'yes' if out.get('degraded') else 'NO'}, recovered "
                f"{'yes' if out.get('recovered') else 'NO'}; spend replayed into the file")
        return _row("disk full (SQLite, RLIMIT_FSIZE)", fake.ledger.total_billed(), recorded,
                    budget, 12, len(fake.ledger), reserved == 0 and leases == 0, note)


def _png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + \
            struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = (b"\x00" + b"\x00\x00\x00" * width) * height
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + \
        chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b"")


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


SCENARIOS: tuple[Callable[[], dict[str, Any]], ...] = (
    timeouts,
    reset_after_send,
    lambda: _faulty("cut stream (every stream cut after 2 frames)", "cut_stream", True,
                    "charged its reservation"),
    lambda: _faulty("no usage (replies without usage)", "no_usage", False,
                    "charged its reservation"),
    lambda: _faulty("no usage (streams without usage)", "no_usage", True,
                    "charged its reservation"),
    lambda: _faulty("malformed (JSON that does not parse)", "malformed", False,
                    "charged its reservation"),
    overrun,
    vision,
    fork,
    disk_full,
)


def run_all() -> list[dict[str, Any]]:
    rows = []
    for scenario in SCENARIOS:
        rows.append(scenario())
    return rows


# ------------------------------------------------------------------ report
def markdown(rows: list[dict[str, Any]]) -> str:
    body = [[r["scenario"], str(r["requests"]), usd(r["billed"]), usd(r["recorded"]),
             usd(r["budget"], 4), usd(r["overshoot"]), r["note"]] for r in rows]
    return table(["scenario", "provider requests", "billed (provider ledger)",
                  "recorded (governor)", "budget", "overshoot", ""],
                 body, ["l", "r", "r", "r", "r", "r", "l"])


def run(mode: Mode) -> Section:
    t0 = time.perf_counter()
    rows = run_all()
    below = [r for r in rows if r["recorded"] < r["billed"]]
    over = [r for r in rows if r["overshoot"] > r["overrun"]]
    unsettled = [r for r in rows if not r["settled"]]
    targets = [
        Target("under faults, the governor records at least what the provider billed",
               not below, "every scenario" if not below else
               "below the bill: " + ", ".join(r["scenario"] for r in below)),
        Target("under faults, the bill passes the budget by no more than the usage the "
               "provider reported above a reservation (the overrun)", not over,
               "overshoot ≤ overrun in every scenario" if not over else
               "overshot: " + ", ".join(r["scenario"] for r in over)),
        Target("under faults, no lease or reservation is left behind", not unsettled,
               "all settled" if not unsettled else
               "left: " + ", ".join(r["scenario"] for r in unsettled)),
    ]
    md = "\n".join([
        "### Faults",
        "",
        "The same hard budget against the fake provider's hostile modes (one run each, "
        "`benchmarks/bench_faults.py`): where the provider billed a request whose usage never "
        "reached the governor, the governor charged the request's reservation (its upper "
        "bound), so what it recorded is at least the bill; where usage is known, the two are "
        "equal. The bill passes the budget only when the provider reports usage above the "
        "reservation (the overrun row), and then by at most that one call.",
        "",
        markdown(rows),
    ])
    headline = (f"Faults: in {len(rows)} hostile scenarios the governor recorded at least "
                "what the provider billed, and the bill passed the budget only in the "
                "documented overrun case (by "
                f"{usd(max((r['overshoot'] for r in rows), default=Decimal(0)))}).")
    data = {"rows": [{k: (str(v) if isinstance(v, Decimal) else v) for k, v in r.items()}
                     for r in rows]}
    return Section("faults", "Budget accuracy under faults", md, data, targets,
                   time.perf_counter() - t0, [headline])


def main() -> None:
    logging.getLogger("llm_governor").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    rows = run_all()
    print(markdown(rows))
    print(f"\n{len(rows)} scenarios in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

