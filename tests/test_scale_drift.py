"""``benchmarks/scale_drift.py`` on digits: ALRS on every scale freezes the 2-bit activation scales
that ``alrs_scope: shared`` lets learn, and an FP32 run (no scales) is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitswitch.train import TrainConfig, train

TINY = {"dataset": "digits", "model": "digits_cnn", "train_subset": 600, "batch_size": 64, "epochs": 1, "num_threads": 1,
        "calib_batches": 2, "optimizer": "adam", "lr": 1e-2, "bits": [8, 6, 4, 2], "progress": False}


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("scale_drift")


def test_alrs_scope_decides_whether_the_2_bit_activation_scales_move(bench, tmp_path: Path) -> None:
    for scope in ("all", "shared"):
        train(TrainConfig(**TINY, alrs_scope=scope, out_dir=str(tmp_path / scope)))
    assert bench.main([str(tmp_path / "all"), str(tmp_path / "shared"), "--out", str(tmp_path), "--name", "drift"]) == 0
    rows = {(r["run"], r["scales"]): r for r in json.loads((tmp_path / "drift.json").read_text())["rows"]}
    assert [s for run, s in rows if run == "all"] == ["activation, 8-bit", "activation, 6-bit", "activation, 4-bit",
                                                      "activation, 2-bit", "weight, per channel"]
    # eta_2 = 1e-3: nine Adam steps of 1e-5 leave the 2-bit scales within 0.1 % of the calibrated start ...
    assert rows["all", "activation, 2-bit"]["max change, %"] < 0.1
    # ... and at the full rate they move by percents; the top bit-width learns at the full rate under both
    assert rows["shared", "activation, 2-bit"]["median change, %"] > 1.0
    assert rows["all", "activation, 8-bit"]["median change, %"] > 1.0 and rows["shared", "activation, 8-bit"]["median change, %"] > 1.0


def test_an_fp32_run_is_refused(bench, tmp_path: Path) -> None:
    train(TrainConfig(**{**TINY, "mode": "fp32"}, out_dir=str(tmp_path / "fp32")))
    with pytest.raises(SystemExit, match="no quantization scales"):
        bench.main([str(tmp_path / "fp32"), "--out", str(tmp_path)])
