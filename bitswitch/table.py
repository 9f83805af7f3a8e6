"""Text tables: the one way bitswitch prints rows of results (CLI output, training logs).

:func:`print_table` draws a ``rich`` table on a terminal and writes plain text everywhere else
(pipes, files, logs, captured output), so what a script parses does not depend on colours or
box-drawing characters. :func:`format_table` returns that plain text. Columns whose cells are all
numbers are right-aligned; floats get two decimals (scientific notation below 0.01).
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

Row = Sequence[Any] | Mapping[str, Any]

# no borders, an ASCII rule under the header and before a footer
_PLAIN = box.Box("    \n    \n -- \n    \n -- \n    \n    \n    \n", ascii=True)
_NUMBER = re.compile(r"[-+]?(\d[\d,]*)?\.?\d+(e[-+]?\d+)?%?|nan|[-+]?inf")


def cell(v: Any) -> str:
    """How one value is written in a table."""
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 or v != v else f"{v:.2e}"
    return str(v)


def _build(columns: Sequence[str], rows: Sequence[Row], footer: Row | None, rich_box: box.Box) -> Table:
    body = [[cell(v) for v in _values(r, columns)] for r in rows]
    foot = None if footer is None else [cell(v) for v in _values(footer, columns)]
    table = Table(box=rich_box, show_edge=False, pad_edge=False, header_style="bold" if rich_box is not _PLAIN else "")
    for i, name in enumerate(columns):
        numeric = all(_NUMBER.fullmatch(r[i]) for r in body + ([foot] if foot else []) if r[i])
        table.add_column(name, justify="right" if numeric else "left")
    for j, r in enumerate(body):
        table.add_row(*r, end_section=foot is not None and j == len(body) - 1)
    if foot is not None:
        table.add_row(*foot)
    return table


def _values(row: Row, columns: Sequence[str]) -> list[Any]:
    return [row.get(c, "") for c in columns] if isinstance(row, Mapping) else list(row)


def format_table(columns: Sequence[str], rows: Sequence[Row], *, footer: Row | None = None) -> str:
    """Plain text: the header, a rule, one line per row (a mapping keyed by column, or a sequence),
    and an optional ``footer`` row (totals) after another rule."""
    buf = io.StringIO()
    Console(file=buf, width=10_000, color_system=None, force_terminal=False, soft_wrap=False).print(
        _build(columns, rows, footer, _PLAIN))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def print_table(columns: Sequence[str], rows: Sequence[Row], *, footer: Row | None = None, file: TextIO | None = None) -> None:
    """Print a table: drawn by ``rich`` on a terminal, :func:`format_table`'s plain text otherwise."""
    file = file or sys.stdout
    if file.isatty():
        Console(file=file, soft_wrap=False).print(_build(columns, rows, footer, box.SIMPLE_HEAD))
    else:
        print(format_table(columns, rows, footer=footer), file=file)


__all__ = ["cell", "format_table", "print_table"]
