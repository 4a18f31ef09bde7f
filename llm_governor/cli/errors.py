"""Exit codes and the one-line failure every command reports the same way."""

from __future__ import annotations

__all__ = ["EXIT_CRITICAL", "EXIT_DEGRADED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE",
           "STATUS_EXIT", "CLIError"]

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_CRITICAL = 2
EXIT_USAGE = 2
EXIT_RUNTIME = 3
STATUS_EXIT = {"healthy": EXIT_OK, "degraded": EXIT_DEGRADED, "critical": EXIT_CRITICAL}


class CLIError(Exception):
    """A failure the CLI reports in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.code = code
