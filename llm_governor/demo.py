"""The demo's old home: ``llm_governor.demo`` is :mod:`llm_governor.cli.demo`."""

from __future__ import annotations

import sys

from .cli import demo as _demo

sys.modules[__name__] = _demo
