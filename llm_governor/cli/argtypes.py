"""argparse value types shared by the CLI and the demo: each error names the value and
the range allowed."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["seconds", "whole"]


def whole(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number in ``[minimum, maximum]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            allowed = f"at least {minimum}" if maximum is None else f"{minimum}-{maximum}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value
    return parse


def seconds(maximum: float | None = None) -> Callable[[str], float]:
    """A number of seconds above 0 (and at most ``maximum``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not value > 0 or (maximum is not None and value > maximum):
            allowed = "more than 0" + ("" if maximum is None else f" and at most {maximum:g}")
            raise argparse.ArgumentTypeError(f"must be {allowed} seconds, got {text}")
        return value
    return parse
