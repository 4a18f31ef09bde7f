"""pytest plugin loaded (``-p sdk_suite_outcomes``) in BOTH runs of an SDK's own suite.

* Records every test's outcome (passed / failed / error / skipped / xfailed /
  xpassed) with the first line of its failure or skip reason, keyed by pytest's
  node id, and writes them as JSON to ``$SDK_SUITE_OUT`` at session end (in the
  xdist controller, which sees every worker's reports).
* Refuses every connection and name lookup that is not loopback, the same way
  in both runs, and logs each attempt to ``$SDK_SUITE_OUT.network`` so the
  comparison can show that no test reached out.
* Records which file the SDK under test was imported from (it must be the
  installed one, never the sdist's ``src/``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from typing import Any

import pytest

SDK = os.environ.get("SDK_SUITE_SDK", "")
OUT = os.environ.get("SDK_SUITE_OUT", "")

# ------------------------------------------------------------------ network guard
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_local(host: Any) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the wildcard / loopback address
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]")
    if host.lower() in _LOCAL_NAMES or host.lower().endswith(".localhost") or host == "":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a name other than localhost: would need DNS
    return addr.is_loopback or addr.is_unspecified


def _blocked(what: str, target: Any) -> OSError:
    line = f"{os.environ.get('PYTEST_CURRENT_TEST', '<outside a test>')}\t{what}\t{target!r}\n"
    if OUT:
        try:
            with open(OUT + ".network", "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError:
            pass
    return ConnectionRefusedError(f"sdk_suite_outcomes: no network in the SDK suites ({what} "
                                  f"{target!r})")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _target_host(sock: socket.socket, address: Any) -> Any:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        return address[0]
    return None  # AF_UNIX and friends stay on this machine


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _is_local(_target_host(self, address)):
        raise _blocked("connect", address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _is_local(_target_host(self, address)):
        raise _blocked("connect", address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_local(host):
        _blocked("getaddrinfo", host)
        raise socket.gaierror(socket.EAI_NONAME, "sdk_suite_outcomes: no DNS in the SDK suites")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo

# ------------------------------------------------------------------ outcomes
_outcomes: dict[str, dict[str, str]] = {}


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _message(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, reason)
        return _first_line(str(longrepr[2]))
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        message = _first_line(crash.message)
        if "Timeout" in message:  # where it hung says more than that it did
            message += _deepest_governor_frame(longrepr)
        return message
    text = str(longrepr)
    # short tracebacks end with "E   SomeError: ..." lines: prefer the first of those
    for line in text.splitlines():
        if line.startswith("E "):
            return _first_line(line[1:])
    return _first_line(text.splitlines()[-1] if text.splitlines() else text)


def _deepest_governor_frame(longrepr: Any) -> str:
    entries = getattr(getattr(longrepr, "reprtraceback", None), "reprentries", None) or []
    where = ""
    for entry in entries:
        loc = getattr(entry, "reprfileloc", None)
        if loc is not None and "llm_governor" in str(loc.path):
            path = str(loc.path)
            where = f" (hung at {path[path.rindex('llm_governor'):]}:{loc.lineno})"
    return where


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "message": "",
                                                 "duration": 0.0})
    entry["duration"] = round(entry["duration"] + report.duration, 3)
    xfail = hasattr(report, "wasxfail")
    if report.failed:
        if report.when == "call":
            entry["outcome"] = "failed" if not xfail else "xpassed-strict"
        elif entry["outcome"] == "failed":  # failed, then its teardown failed too
            entry["message"] += f" [+ error at {report.when}: {_message(report)}]"
        else:
            entry["outcome"] = f"error-{report.when}"
        if not entry["message"]:
            entry["message"] = _message(report)
    elif report.skipped:
        if entry["outcome"] == "passed":
            entry["outcome"] = "xfailed" if xfail else "skipped"
            entry["message"] = _first_line(str(report.wasxfail)) if xfail else _message(report)
    elif report.when == "call" and xfail:
        entry["outcome"] = "xpassed"
    for key, value in report.user_properties:
        if key == "governed_requests":  # set by sdk_suite_governed
            entry["governed_requests"] = value


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _outcomes[report.nodeid or "<collection>"] = {"outcome": "collection-error",
                                                     "message": _message(report)}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not OUT or not _is_controller(config):
        return
    mod = sys.modules.get(SDK)
    doc = {
        "sdk": SDK,
        "mode": os.environ.get("SDK_SUITE_MODE", ""),
        "exitstatus": int(exitstatus),
        "sdk_file": getattr(mod, "__file__", None),
        "sdk_version": getattr(mod, "__version__", None) or getattr(
            sys.modules.get(f"{SDK}._version"), "__version__", None),
        "rootdir": str(config.rootpath),
        "tests": _outcomes,
    }
    governor = getattr(config, "_sdk_suite_governor", None)
    if governor is not None:
        doc["governor"] = governor
    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
