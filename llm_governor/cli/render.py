"""The CLI's render toolkit: titled tables and lines, as rich on a terminal or plain text.

A view is a list of :data:`Block` (a line, a styled line or a :class:`Table`);
:class:`Output` prints it with rich when stdout is a terminal and rich is
installed, else as aligned plain text (what a pipe, a log file or ``grep``
gets).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TextIO

__all__ = ["Block", "Cell", "Output", "Table", "counts", "money", "render_plain",
           "render_rich"]

Cell = str | tuple[str, str]  # text, or (text, rich style)


@dataclass
class Table:
    """A titled table rendered as rich or plain text."""

    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    empty: str = "(none)"


Block = str | tuple[str, str] | Table


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _text(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell[0]


def render_plain(blocks: Sequence[Block]) -> str:
    """Aligned plain text: what a pipe, a log file or ``grep`` gets."""
    lines: list[str] = []
    for block in blocks:
        if not isinstance(block, Table):
            lines.append(_text(block))
            continue
        lines.append("")
        lines.append(block.title)
        if not block.rows:
            lines.append(f"  {block.empty}")
            continue
        cells = [block.columns] + [[_text(c) for c in row] for row in block.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(block.columns))]
        for r in cells:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
                         .rstrip())
    return "\n".join(lines) + "\n"


def render_rich(blocks: Sequence[Block]) -> Any:
    """A rich renderable of ``blocks`` (a Group of texts and tables)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    parts: list[Any] = []
    for block in blocks:
        if isinstance(block, str):
            parts.append(Text(block))
        elif isinstance(block, tuple):
            parts.append(Text(block[0], style=block[1]))
        else:
            parts.append(Text(""))
            if not block.rows:
                parts.append(Text(f"{block.title}: {block.empty}", style="dim"))
                continue
            parts.append(Text(block.title, style="bold"))
            t = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            for col in block.columns:
                t.add_column(col)
            for row in block.rows:
                t.add_row(*(Text(c) if isinstance(c, str) else Text(c[0], style=c[1])
                            for c in row))
            parts.append(t)
    return Group(*parts)


class Output:
    """Where and how a command prints: rich on a terminal, plain otherwise."""

    def __init__(self, plain: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.rich = not plain and self.stream.isatty() and _rich_available()
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream)
        return self._console

    def show(self, blocks: Sequence[Block]) -> None:
        if self.rich:
            self.console.print(render_rich(blocks))
        else:
            self.stream.write(render_plain(blocks))
        self.stream.flush()

    def text(self, text: str) -> None:
        self.stream.write(text if text.endswith("\n") else text + "\n")
        self.stream.flush()


def money(value: Any) -> str:
    """``$1.2345`` (four places; thousands grouped above $1000)."""
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    return f"${d:.4f}" if abs(d) < 1000 else f"${d:,.2f}"


def counts(mapping: Any) -> str:
    """``a=1, b=2`` of the non-zero entries, ``-`` when none."""
    if not isinstance(mapping, dict):
        return "-"
    items = [f"{k}={v}" for k, v in sorted(mapping.items()) if v]
    return ", ".join(items) or "-"
