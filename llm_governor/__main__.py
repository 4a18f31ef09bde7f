"""``python -m llm_governor …``: the same as the ``llm-governor`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
