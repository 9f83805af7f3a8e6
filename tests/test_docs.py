"""The documentation's result tables agree with ``benchmarks/results/``, and its links resolve.

A results table is preceded by ``<!-- source: FILE [FILE ...] -->`` (paths from the repository
root). Every number in its value cells (all columns but the first, which names the row) must occur
in one of those files, exactly or rounded to the digits the table shows: so a table cannot drift
from the measurements it reports, and a re-run that changes a results file shows up here.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SOURCE = re.compile(r"<!-- source: (.+?) -->")
NUMBER = re.compile(r"\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")  # 1,094,784 / 0.3361 / 80; signs and units are not part of it
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def numbers(text: str) -> list[Decimal]:
    return [Decimal(m.replace(",", "")) for m in NUMBER.findall(text)]


def decimals(x: Decimal) -> int:
    return max(0, -x.as_tuple().exponent)  # type: ignore[operator]


def found(value: Decimal, source: set[Decimal]) -> bool:
    """``value`` is in ``source`` exactly (83.30 == 83.3), or is a source number with more digits
    rounded to the ones shown (0.89 for 0.8912). Integers must match exactly."""
    if value in source:
        return True
    d = decimals(value)
    half = Decimal(5) / Decimal(10) ** (d + 1)
    return d > 0 and any(decimals(s) > d and abs(s - value) <= half for s in source)


def tagged_tables(path: Path) -> list[tuple[int, list[Path], list[list[str]]]]:
    """``(line number, source files, value rows)`` of every table with a source line right above it."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = SOURCE.fullmatch(line.strip())
        if not m:
            continue
        table = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            table.append([c.strip() for c in row.strip().strip("|").split("|")])
        assert len(table) > 2, f"{path.name}:{i + 1}: a source line must sit directly above a table"
        out.append((i + 1, [REPO / f for f in m.group(1).split()], table[2:]))  # header and --- row skipped
    return out


def table_starts(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    return [i for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]


TABLES = [(doc, *t) for doc in DOCS for t in tagged_tables(doc)]


def test_results_doc_tables_all_name_their_source():
    lines = (REPO / "docs" / "results.md").read_text().splitlines()
    untagged = [i + 1 for i in table_starts(REPO / "docs" / "results.md") if not SOURCE.fullmatch(lines[i - 1].strip())]
    assert not untagged, f"docs/results.md tables without a <!-- source: ... --> line above them, at lines {untagged}"
    assert len(tagged_tables(REPO / "docs" / "results.md")) >= 8


@pytest.mark.parametrize(("doc", "line", "sources", "rows"), TABLES, ids=[f"{d.name}:{n}" for d, n, _, _ in TABLES])
def test_every_number_in_a_results_table_is_in_its_source(doc, line, sources, rows):
    missing = [str(s.relative_to(REPO)) for s in sources if not s.is_file()]
    assert not missing, f"{doc.name}:{line} names results files that do not exist: {missing}"
    source = set(numbers(" ".join(s.read_text() for s in sources)))
    checked, wrong = 0, []
    for row in rows:
        for cell in row[1:]:
            for value in numbers(cell):
                checked += 1
                if not found(value, source):
                    wrong.append(f"{row[0]!r}: {value}")
    assert checked > 0, f"{doc.name}:{line}: a tagged table with no numbers"
    assert not wrong, f"{doc.name}:{line}: numbers not in {[s.name for s in sources]}: {wrong}"


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces -> '-'."""
    heads = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_relative_links_point_to_existing_files_and_headings(doc):
    targets = [t for t in LINK.findall(doc.read_text()) if not t.startswith(("http://", "https://", "#", "mailto:"))]
    broken = [t for t in targets if not (doc.parent / t.split("#")[0]).exists()]
    assert not broken, f"{doc.name}: links to missing files {broken}"
    bad_anchor = [t for t in targets if "#" in t and t.split("#")[1] not in anchors(doc.parent / t.split("#")[0])]
    assert not bad_anchor, f"{doc.name}: links to missing headings {bad_anchor}"


def test_the_checker_rejects_a_number_its_source_does_not_hold():
    source = set(numbers("| w8a8 | 0.8912 | 1,099,436 | 83.3 |"))
    assert found(Decimal("0.89"), source) and found(Decimal("83.30"), source) and found(Decimal("1099436"), source)
    assert not found(Decimal("0.88"), source)
    assert not found(Decimal("0.8913"), source)
    assert not found(Decimal("1"), source)  # integers are not rounded
