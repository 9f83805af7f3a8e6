"""Bring your own model: which stage works on which model, as a table (the cells of tests/test_byom_matrix.py).

    PYTHONPATH=tests/stubs python benchmarks/byom_matrix.py

Runs every model x stage cell of ``tests/byom`` (the same factories and stage functions the tests
assert) and writes ``benchmarks/results/byom_matrix.{md,json}``: ok / fail per cell, the error line
of every failure, the integer checkpoint's size over the FP32 state (each tied tensor counted once)
and W8A8's top-1 / next-token agreement with FP32 on the held-out example batch. The table in
``docs/byom.md`` (the lines under its ``<!-- source: ... -->`` tag) is rewritten from the results.
``tests/stubs`` is timm's torchvision import stand-in (no CPU torchvision here).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's bitswitch, and the matrix in tests/byom

import torch  # noqa: E402
from byom.models import CASES  # noqa: E402
from byom.stages import STAGES  # noqa: E402

from _common import md_table, write_results  # noqa: E402

DOC = REPO / "docs" / "byom.md"
SOURCE_TAG = "<!-- source: benchmarks/results/byom_matrix.json -->"


def error_line(e: BaseException) -> str:
    """``Type: first line of the message``, and where in bitswitch (or the test) it was raised."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/bitswitch/" in f.filename or "/byom/" in f.filename]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    first = re.sub(r"\S*/tmp\w*/", "", first.replace(str(REPO) + "/", ""))  # paths that change from run to run
    return f"{type(e).__name__}: {first[:300]}{where}"


def run_cell(case: Any, stage: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        measured = STAGES[stage](case)
        out = {"ok": True, "measured": measured}
    except Exception as e:  # a cell that fails is a result, not a crash
        out = {"ok": False, "error": error_line(e)}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    shown = []
    for r in rows:
        cells = r["cells"]
        line = {"model": r["model"], **{s: "ok" if cells[s]["ok"] else "fail" for s in STAGES}}
        save, switch = cells["saveload"], cells["switch"]
        line["file / FP32"] = f"{save['measured']['size_ratio']:.2f}" if save["ok"] else "-"
        line["W8 agreement"] = f"{switch['measured']['w8_agreement']:.3f}" if switch["ok"] else "-"
        shown.append(line)
    return md_table(shown)


def failures(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"- `{r['model']}-{s}`: {c['error']}" for r in rows for s, c in r["cells"].items() if not c["ok"])


def update_doc(markdown_table: str) -> None:
    """Replace the table under the source tag in ``docs/byom.md`` (prose around it is hand-written)."""
    lines = DOC.read_text().splitlines()
    start = lines.index(SOURCE_TAG) + 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    DOC.write_text("\n".join([*lines[:start], *markdown_table.splitlines(), *lines[end:]]) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="byom_matrix")
    ap.add_argument("--only", nargs="*", default=None, help="model ids (e.g. timm-resnet18) to run; default all")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the table in docs/byom.md")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the tests: tiny models, deterministic, no thread spinning on shared cores
    t0 = time.perf_counter()
    rows = []
    for case in CASES:
        if args.only and case.id not in args.only:
            continue
        cells = {}
        for stage in STAGES:
            cells[stage] = run_cell(case, stage)
            print(f"{case.id}-{stage}: {'ok' if cells[stage]['ok'] else cells[stage]['error']} ({cells[stage]['seconds']} s)", flush=True)
        rows.append({"model": case.id, "what": case.what, "task": case.task, "cells": cells})
    total = time.perf_counter() - t0
    working = sum(c["ok"] for r in rows for c in r["cells"].values())
    n = sum(len(r["cells"]) for r in rows)
    md_tab = table(rows)
    markdown = (f"### Bring your own model: {working} of {n} model x stage cells work ({total:.0f} s in all)\n\n{md_tab}\n\n"
                f"Failures:\n\n{failures(rows) or '- none'}")
    write_results(args.name, {"working": working, "cells": n, "seconds": round(total, 1), "stages": list(STAGES), "models": rows}, markdown)
    if not args.no_doc and args.only is None:
        update_doc(md_tab)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
