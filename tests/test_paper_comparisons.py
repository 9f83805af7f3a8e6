"""``benchmarks/paper_comparisons.py`` on digits: every stage trains, the report pairs the models on the
same test images, and a second call keeps the finished stages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

TINY = {"dataset": "digits", "model": "digits_cnn", "train_subset": 600, "batch_size": 64, "epochs": 1, "num_threads": 1, "calib_batches": 2}


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("paper_comparisons")


def test_every_stage_runs_and_the_report_pairs_them(bench, tmp_path: Path, capsys) -> None:
    (tmp_path / "fp32.yaml").write_text(yaml.safe_dump({**TINY, "mode": "fp32", "epochs": 2, "lr": 3e-3}))
    (tmp_path / "qat.yaml").write_text(yaml.safe_dump({**TINY, "optimizer": "adam", "lr": 1e-3}))
    argv = ["--fp32-config", str(tmp_path / "fp32.yaml"), "--qat-config", str(tmp_path / "qat.yaml"), "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path), "--name", "cmp"]
    assert bench.main(argv) == 0
    doc = json.loads((tmp_path / "cmp.json").read_text())
    assert set(doc["test_acc"]) == set(bench.STAGES)
    acc = doc["test_acc"]
    assert "joint - FP32 tuned" in doc["rows"][0] and set(acc["fp32_tuned"]) == {"fp32"}
    assert {"joint_distill - FP32", "joint_distill - separate"} <= set(doc["rows"][0])  # reported, not judged
    assert not any(g["goal"].startswith("joint_distill") for g in doc["goals"])
    assert set(acc["joint_432"]) == {"w4a4", "w3a3", "w2a2"} and set(acc["fixed_w6"]) == {"w6a6"}
    for row in doc["rows"]:  # every paired difference is the difference of the two accuracies on the same images
        lab = row["precision"].lower()
        diff = float(row["joint - separate"].split(" ± ")[0])
        assert diff == pytest.approx(acc["joint"][lab] - acc[f"fixed_w{lab[1]}"][lab], abs=0.006)
        assert float(row["joint - separate"].split(" ± ")[1]) > 0
        sep = float(row["separate - FP32"].split(" ± ")[0])
        assert sep == pytest.approx(acc[f"fixed_w{lab[1]}"][lab] - acc["fp32"]["fp32"], abs=0.006)
        effect = float(row["neighbour distillation effect"].split(" ± ")[0])  # 8->6->4->2 teachers against none, paired
        assert effect == pytest.approx(acc["joint_distill_neighbour"][lab] - acc["joint"][lab], abs=0.006)
        rates = float(row["per-bit rates effect"].split(" ± ")[0])  # bit_lr_mult against the same recipe without it
        assert rates == pytest.approx(acc["joint_neighbour_bitlr"][lab] - acc["joint_distill_neighbour"][lab], abs=0.006)
        state = float(row["per-bit optimizer state effect"].split(" ± ")[0])  # optimizer_state per_bit against shared
        assert state == pytest.approx(acc["joint_neighbour_bitstate"][lab] - acc["joint_distill_neighbour"][lab], abs=0.006)
        scope = float(row["ALRS on shared scales only - ALRS"].split(" ± ")[0])
        assert scope == pytest.approx(acc["joint_alrs_shared"][lab] - acc["joint"][lab], abs=0.006)
    assert doc["configs"]["joint_alrs_shared"]["alrs_scope"] == "shared" and doc["configs"]["joint"]["alrs_scope"] == "all"
    assert doc["configs"]["joint_summed"]["loss_mode"] == "summed" and "joint_summed - separate" in doc["rows"][0]
    assert doc["configs"]["joint_distill_neighbour"]["distill"] == "neighbour" and "joint_distill_neighbour - separate" in doc["rows"][0]
    assert doc["configs"]["joint_neighbour_bitlr"]["bit_lr_mult"] == [0.25, 0.25, 0.5, 1.0]
    assert doc["configs"]["joint_neighbour_bitstate"]["optimizer_state"] == "per_bit" and doc["configs"]["joint"]["optimizer_state"] == "shared"
    assert "alrs_scope" not in (tmp_path / "cmp.md").read_text()
    goals = {g["goal"] for g in doc["goals"]}
    assert "joint W2A2 within 1.5 points of FP32" in goals and "joint W8A8 >= separate" in goals
    sizes = {r["run"]: r["checkpoint bytes"] for r in doc["runs"]}
    assert sizes["unshared"] > sizes["joint"]  # the storage baseline keeps FP32 weights
    assert (tmp_path / "cmp.png").stat().st_size > 0
    # a second call trains nothing: every stage has finished
    capsys.readouterr()
    assert bench.main(argv) == 0
    assert capsys.readouterr().out.count("finished, kept") == len(bench.STAGES)
    assert all(r["wall time this call, s"] == 0 for r in json.loads((tmp_path / "cmp.json").read_text())["runs"])
    # the same models with each precision's BatchNorm statistics re-estimated: other predictions, a report that says so
    assert bench.main([*argv, "--report-only", "--recalibrate-bn", "128", "--name", "recal"]) == 0
    recal = json.loads((tmp_path / "recal.json").read_text())["test_acc"]
    assert recal.keys() == acc.keys() and recal != acc
    assert "re-estimated on the same 128 training images" in (tmp_path / "recal.md").read_text()
    # without a plain joint run the goals are judged on the distilled one, and its columns say so
    only = tmp_path / "only_distill"
    only.mkdir()
    for k in ("joint_distill", "fixed_w2"):
        (only / k).symlink_to(tmp_path / "runs" / k)
    assert bench.main(["--fp32", str(tmp_path / "runs" / "fp32"), "--qat-config", str(tmp_path / "qat.yaml"), "--runs", str(only),
                       "--out", str(tmp_path), "--name", "distill", "--report-only"]) == 0
    doc = json.loads((tmp_path / "distill.json").read_text())
    assert [g["goal"] for g in doc["goals"]][-2:] == ["joint_distill W2A2 within 1.5 points of FP32", "joint_distill W2A2 >= separate"]
    assert len(doc["goals"]) == 5 and "joint - FP32" not in doc["rows"][0]
    diff = float(doc["rows"][-1]["joint_distill - separate"].split(" ± ")[0])
    assert diff == pytest.approx(acc["joint_distill"]["w2a2"] - acc["fixed_w2"]["w2a2"], abs=0.006)
    # --vs pairs each stage with its namesake in another folder: here "joint" there is the distilled model
    other = tmp_path / "other"
    other.mkdir()
    (other / "joint").symlink_to(tmp_path / "runs" / "joint_distill")
    assert bench.main([*argv, "--report-only", "--name", "vs", "--vs", str(other)]) == 0
    doc = json.loads((tmp_path / "vs.json").read_text())
    assert set(doc["vs"]["test_acc"]) == {"joint"}
    for row in doc["rows"]:
        lab = row["precision"].lower()
        assert float(row["joint - other"].split(" ± ")[0]) == pytest.approx(acc["joint"][lab] - acc["joint_distill"][lab], abs=0.006)
        assert "joint_distill - other" not in row  # no namesake there
    with pytest.raises(SystemExit):
        bench.main([*argv, "--report-only", "--vs", str(tmp_path / "missing")])
    # a namesake trained on other data is refused, not paired image by image
    ns = argparse.Namespace(runs=str(tmp_path / "runs"), fp32=None, qat_config=str(tmp_path / "qat.yaml"), qat_set=[], test_subset=0, recalibrate_bn=0)
    mine = bench.stage_config("joint", ns)
    mine.dataset = "fashion_mnist"
    with pytest.raises(SystemExit, match="its joint was trained on digits, this report's on fashion_mnist"):
        bench.paired_stages(other, {"joint": mine}, mine.data_root, ns)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="none of this report's stages"):
        bench.main([*argv, "--report-only", "--vs", str(tmp_path / "empty")])


def test_unknown_stage_is_refused(bench, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--qat-config", "q.yaml", "--runs", str(tmp_path), "--stages", "joint,bogus"])


def test_a_finished_stage_of_another_config_is_refused(bench, tmp_path: Path) -> None:
    (tmp_path / "fp32.yaml").write_text(yaml.safe_dump({**TINY, "mode": "fp32"}))
    (tmp_path / "qat.yaml").write_text(yaml.safe_dump(TINY))
    argv = ["--fp32-config", str(tmp_path / "fp32.yaml"), "--qat-config", str(tmp_path / "qat.yaml"), "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path), "--stages", "fp32"]
    assert bench.main(argv) == 0
    (tmp_path / "fp32.yaml").write_text(yaml.safe_dump({**TINY, "mode": "fp32", "lr": 0.5}))
    with pytest.raises(SystemExit, match="trained with another config.*lr"):
        bench.main(argv)


def test_a_column_only_later_rows_have_is_in_the_table(bench) -> None:
    # a report with separate models at 4 and 2 bits only: W8A8, the first row, has no "separate"
    table = bench.md_table([{"precision": "W8A8", "joint": 86.97}, {"precision": "W2A2", "joint": 80.34, "separate": 81.7}])
    assert table.splitlines()[0] == "| precision | joint | separate |"
    assert table.splitlines()[-1] == "| W2A2 | 80.34 | 81.7 |"
