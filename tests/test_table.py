"""bitswitch.table: one helper for every text table."""

from __future__ import annotations

import io

from bitswitch.table import cell, format_table, print_table


def test_plain_table_aligns_numbers_right_and_text_left():
    text = format_table(["layer", "params", "acc"], [("conv1", "1,234", 91.5), {"layer": "fc", "params": "10", "acc": 0.001}],
                        footer=("total", "1,244", ""))
    assert text.splitlines() == [
        "layer   params        acc",
        "-------------------------",
        "conv1    1,234      91.50",
        "fc          10   1.00e-03",
        "-------------------------",
        "total    1,244",
    ]


def test_cells():
    assert [cell(v) for v in (1.0, 0.0, 0.004, float("nan"), 12, "W8A8")] == ["1.00", "0.00", "4.00e-03", "nan", "12", "W8A8"]


def test_print_table_is_plain_text_off_a_terminal_and_rich_on_one():
    buf = io.StringIO()
    print_table(["precision", "test"], [["W8A8", 97.5]], file=buf)
    assert buf.getvalue() == format_table(["precision", "test"], [["W8A8", 97.5]]) + "\n"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    print_table(["precision", "test"], [["W8A8", 97.5]], file=term)
    assert "─" in term.getvalue() and "97.50" in term.getvalue() and "---" not in term.getvalue()
