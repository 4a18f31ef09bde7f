"""The ``llm-governor`` command line (also ``python -m llm_governor``).

Every command reads (or writes) the configured backend, so it sees and steers
every process that shares it: ``status``, ``monitor`` and ``export`` show the
shared limiter state, the live processes and the budgets and limits they
publish, and create nothing; ``emergency`` flips the flag every process reads
inside each admission; ``reset`` clears limiter state or, confirmed, spend.

Output: rich tables on a terminal, plain text when piped (or with ``--plain``,
or when rich is not installed), JSON with ``--json``. Backend URLs are always
shown redacted and error messages are scrubbed of passwords.

Exit codes (``status`` follows the Nagios plugin convention)::

    0  success; status: healthy
    1  status: degraded; reset: not confirmed
    2  status: critical; any command: usage error or invalid configuration
    3  runtime failure: state file missing, backend unusable, file not writable, demo
       missing or failed

The package's modules follow its seams: :mod:`.scrub` (passwords out of every
output), :mod:`.render` (tables as rich or plain text), :mod:`.views` (what
``status`` and ``monitor`` show), :mod:`.commands`, :mod:`.parser` and
:mod:`.demo`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from ..exporters.export import status_document
from .commands import COMMANDS, cmd_demo
from .errors import (
    EXIT_CRITICAL,
    EXIT_DEGRADED,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    CLIError,
)
from .parser import build_parser
from .render import Block, Output, Table, render_plain, render_rich
from .scrub import ScrubbingFormatter, scrub
from .views import alerts_view, scopes_view, status_view

__all__ = ["EXIT_CRITICAL", "EXIT_DEGRADED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "Block",
           "CLIError", "Output", "Table", "alerts_view", "build_parser", "main", "render_plain",
           "render_rich", "scopes_view", "scrub", "status_document", "status_view"]

logger = logging.getLogger("llm_governor")


def _setup_logging(verbose: int) -> Callable[[], None]:
    """Log llm_governor records to stderr (scrubbed); returns what restores the logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter("llm-governor: %(levelname)s %(message)s"))
    saved = (list(logger.handlers), logger.propagate, logger.level)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else
                    logging.WARNING)

    def restore() -> None:
        logger.handlers[:] = saved[0]
        logger.propagate = saved[1]
        logger.setLevel(saved[2])

    return restore


def _error(message: str) -> None:
    sys.stderr.write(f"llm-governor: error: {scrub(message)}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(args_list)
    except SystemExit as exc:  # usage error (2) or --help/--version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if extra and args.command != "demo":
        _error(f"unrecognized arguments: {' '.join(extra)} (see llm-governor "
               f"{args.command} --help)")
        return EXIT_USAGE
    restore_logging = _setup_logging(args.verbose)
    out = Output(plain=args.plain or getattr(args, "json", False))
    try:
        if args.command == "demo":
            return cmd_demo(args, out, extra)
        return COMMANDS[args.command](args, out)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except CLIError as exc:
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `llm-governor rules | head`: the reader left; that is not a failure.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        logger.debug("command failed", exc_info=True)
        _error(f"{args.command} failed: {type(exc).__name__}: {exc}")
        return EXIT_RUNTIME
    finally:
        restore_logging()
        if argv is None:  # the program ends here: skip collecting the SDKs' module graph at
            gc.freeze()   # exit (most of a second after the demo), Ctrl-C included
