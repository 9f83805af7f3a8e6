"""``benchmarks/lm_shakespeare.py --smoke``: every stage runs, the table is written, finished stages are reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("lm_shakespeare")


def test_smoke_run_writes_the_table_and_resumes(bench, shared_data: Path, tmp_path: Path) -> None:
    argv = ["--smoke", "--data", str(shared_data / "shakespeare"), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path),
            "--bits", "8,2", "--bits-b", "8,3", "--untrained", "4"]
    assert bench.main(argv) == 0
    doc = json.loads((tmp_path / "lm_shakespeare.json").read_text())
    results = doc["results"]
    assert set(results) == set(bench.METHODS)
    assert (tmp_path / "lm_shakespeare.png").stat().st_size > 0
    md = (tmp_path / "lm_shakespeare.md").read_text()
    assert "joint + ALRS + distillation" in md and "Command: `" in md
    # the slice's 8-bit row is the RTN int8 model, read back from its file: the same numbers
    assert results["slice_w"]["losses"]["w8"] == results["rtn_w"]["losses"]["w8"]
    # the untrained bit-width is evaluated (weight-only models only) and marked in the table
    assert "w4" in results["joint_alrs_w"]["losses"] and results["joint_alrs_w"]["untrained_bits"] == [4]
    assert "w4" not in results["joint_alrs_wa"]["losses"]
    assert "*" in md
    # equal compute: a joint step is one pass per bit-width, the separate models share those passes
    assert results["joint_alrs_w"]["passes"] == results["separate_w"]["passes"] == 2 * 2
    # a second run reuses every finished stage
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/result.json")}
    assert bench.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_unknown_stage_is_refused(bench, shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown stages \\['nope'\\]"):
        bench.main(["--smoke", "--data", str(shared_data / "shakespeare"), "--runs", str(tmp_path), "--only", "nope"])
