"""Language models in the built-in trainer: ``bitswitch train`` on Shakespeare (FP32, then joint from it),
loss per bit-width in nats/char chosen lower-is-better, checkpoints that reload to the same losses,
bit-exact resume, weight-only runs, ``bitswitch eval`` of an LM checkpoint, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bitswitch
from bitswitch.cli import main
from bitswitch.data import DataError
from bitswitch.lm import lm_loss, perplexity, read_lm_info
from bitswitch.train import TrainConfig, train
from bitswitch.train.data import load_data
from bitswitch.train.task import task_of

TINY_MODEL = {"dim": 32, "layers": 1, "heads": 2, "hidden": 64}
TINY = {"dataset": "shakespeare", "model": "char_llama", "model_kwargs": TINY_MODEL, "context": 16, "steps_per_epoch": 4,
        "batch_size": 8, "eval_batch_size": 128, "full_precision": ["auto"], "calib_batches": 2, "progress": False, "num_threads": 1,
        "optimizer": "adamw", "lr": 3e-3}


@pytest.fixture(scope="module")
def plays(shared_data: Path, tmp_path_factory) -> Path:
    """A small Shakespeare folder (the first 12,000 characters of three plays): fast runs on real text."""
    src = shared_data / "shakespeare" / "plays"
    if not src.is_dir():
        pytest.skip(f"no Shakespeare plays at {src}")
    root = tmp_path_factory.mktemp("text")
    (root / "plays").mkdir()
    for f in sorted(src.glob("*.txt"))[:3]:
        (root / "plays" / f.name).write_text(f.read_text(encoding="utf-8")[:12000], encoding="utf-8")
    return root


def tiny(tmp_path: Path, root: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "data_root": str(root), "out_dir": str(tmp_path / name), **kw})


@pytest.mark.slow
def test_fp32_then_joint_on_shakespeare_through_the_cli(shared_data, tmp_path, capsys):
    """The whole Shakespeare text: an FP32 run, a joint {8,4} run from it (ALRS, distillation), both
    lower the loss; the test losses are those of best.safetensors reloaded from its file, and
    ``bitswitch eval`` prints the same numbers."""
    root = shared_data / "shakespeare"
    cfg = tmp_path / "lm.yaml"
    cfg.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in {**TINY, "data_root": str(root), "val_chars": 4096, "epochs": 2, "steps_per_epoch": 15}.items()))
    fp32, joint = tmp_path / "fp32", tmp_path / "joint"
    assert main(["train", str(cfg), "mode=fp32", "--out", str(fp32)]) == 0
    assert main(["train", str(cfg), "mode=joint", "bits=8,4", "distill=inplace", "lr=0.001", f"init_from={fp32}", "--out", str(joint)]) == 0
    out = capsys.readouterr().out
    assert "test loss (nats/char): W8A8" in out and "W4A4" in out
    for run, labels in ((fp32, ["fp32"]), (joint, ["w8a8", "w4a4"])):
        summary = json.loads((run / "summary.json").read_text())
        assert list(summary["test_loss"]) == labels and (run / "loss.png").is_file()
        assert all(v < 3.6 for v in summary["test_loss"].values()), summary  # ln(82) = 4.41 untrained
        assert summary["test_perplexity"] == {k: perplexity(v) for k, v in summary["test_loss"].items()}
        assert summary["val_characters"] == 249984 and summary["test_characters"] == 250006
    model = bitswitch.load(joint / "best.safetensors")
    info = read_lm_info(joint / "best.safetensors")
    assert info.context == 16 and len(info.vocab) == 82
    text = load_data(TrainConfig.from_dict({**TINY, "data_root": str(root)}))
    summary = json.loads((joint / "summary.json").read_text())
    for b in (8, 4):
        bitswitch.set_precision(model, b)
        assert lm_loss(model, text.test, 16, batch_size=128) == summary["test_loss"][f"w{b}a{b}"]
    rows = tmp_path / "rows.json"
    assert main(["eval", str(joint / "best.safetensors"), "--data", str(root), "--batch-size", "128", "--json", str(rows)]) == 0
    assert [r["loss nats/char"] for r in json.loads(rows.read_text())] == [summary["test_loss"]["w8a8"], summary["test_loss"]["w4a4"]]
    assert "W8A8" in capsys.readouterr().out


def test_checkpoints_reload_to_the_in_memory_losses_and_best_is_the_lowest(plays, tmp_path):
    cfg = tiny(tmp_path, plays, mode="joint", bits=[8, 4, 2], epochs=3)
    result = train(cfg)
    data, task = load_data(cfg), task_of(cfg)
    in_memory = task.evaluate(result.model, data, "test", cfg, "cpu")
    assert task.evaluate(bitswitch.load(result.out_dir / "last.safetensors"), data, "test", cfg, "cpu") == in_memory  # exact
    assert result.test_loss == task.evaluate(bitswitch.load(result.out_dir / "best.safetensors"), data, "test", cfg, "cpu")
    assert result.test_acc == {}
    # best = the epoch of the lowest mean validation loss (lower is better), and its losses are the best_val
    means = [sum(h["val_loss"].values()) / 3 for h in result.history]
    best = min(range(3), key=means.__getitem__) + 1
    assert result.summary["best_epoch"] == best and result.best_val == result.history[best - 1]["val_loss"]
    assert [h["best"] for h in result.history] == [m == min(means[: i + 1]) and m < min(means[:i], default=float("inf")) for i, m in enumerate(means)]
    assert bitswitch.load(result.out_dir / "best.safetensors").bitswitch_extra["epoch"] == best
    # worst-bit selection picks on the highest loss of an epoch
    assert task.metric.select({"w8a8": 1.0, "w2a2": 3.0}, "min") == 3.0


@pytest.mark.parametrize("kw", [
    {"mode": "joint", "bits": [8, 4, 2], "distill": "inplace"},
    {"mode": "joint", "bits": [4, 2], "loss_mode": "summed", "weight_only": True, "alrs": False, "optimizer": "sgd", "lr": 0.05},
    {"mode": "fp32", "warmup_epochs": 0.5, "grad_clip": 1.0},
])
def test_resumed_lm_run_equals_uninterrupted(plays, tmp_path, kw):
    full = train(tiny(tmp_path, plays, "full", epochs=2, **kw))
    cfg = tiny(tmp_path, plays, "split", epochs=2, **kw)
    assert not train(cfg, stop_after=1).test_loss
    resumed = train(cfg, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.test_loss == full.test_loss and resumed.test_loss
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("train_time_s", "bit_time_s")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_weight_only_run_keeps_activations_float(plays, tmp_path):
    result = train(tiny(tmp_path, plays, mode="joint", bits=[8, 2], weight_only=True, epochs=1))
    layers = bitswitch.nn.convert.quantized_layers(result.model)
    assert len(layers) == 7 and all(m.weight_only for m in layers.values())  # q/k/v/o/gate/up/down of the one block
    assert "lm_head" not in layers and "model.embed_tokens" not in layers
    assert list(result.test_loss) == ["w8", "w2"] and set(result.history[0]["bit_time_s"]) == {"w8", "w2"}
    reloaded = bitswitch.load(result.out_dir / "best.safetensors")
    assert all(m.weight_only for m in bitswitch.nn.convert.quantized_layers(reloaded).values())


def test_eval_cli_of_an_lm_checkpoint(plays, tmp_path, capsys):
    run = train(tiny(tmp_path, plays, mode="joint", bits=[8, 4], epochs=1)).out_dir
    ckpt = str(run / "best.safetensors")
    rows = tmp_path / "rows.json"
    assert main(["eval", ckpt, "--data", str(plays), "--split", "val", "--bits", "4", "--json", str(rows)]) == 0
    (row,) = json.loads(rows.read_text())
    model = bitswitch.load(ckpt)
    bitswitch.set_precision(model, 4)
    assert row["precision"] == "W4A4" and row["loss nats/char"] == lm_loss(model, load_data(tiny(tmp_path, plays)).val, 16, batch_size=1000)  # the CLI default
    assert row["perplexity"] == perplexity(row["loss nats/char"])
    capsys.readouterr()
    assert main(["eval", ckpt, "--data", str(plays), "--bits", "6"]) == 2
    assert "bit-width 6 is not one this checkpoint supports" in capsys.readouterr().err
    assert main(["eval", ckpt, "--data", str(tmp_path / "nowhere")]) == 2
    assert "shakespeare: no plays/ folder" in capsys.readouterr().err


def test_bad_inputs_are_clear_errors(plays, tmp_path):
    with pytest.raises(ValueError, match="augment applies to image datasets"):
        tiny(tmp_path, plays, augment=True)
    with pytest.raises(ValueError, match="val_fraction, train_subset apply to image datasets"):
        tiny(tmp_path, plays, val_fraction=0.2, train_subset=100)
    with pytest.raises(ValueError, match="steps_per_epoch applies to language models"):
        TrainConfig(dataset="digits", steps_per_epoch=10)
    with pytest.raises(ValueError, match="set context >= 1 and steps_per_epoch >= 1"):
        tiny(tmp_path, plays, steps_per_epoch=0)
    with pytest.raises(ValueError, match=r"full_precision=\[auto\]"):
        tiny(tmp_path, plays, full_precision=["first_last"])
    with pytest.raises(ValueError, match="set the top-level key context"):
        tiny(tmp_path, plays, model_kwargs={**TINY_MODEL, "context": 32})
    with pytest.raises(DataError, match="no plays/ folder"):
        train(tiny(tmp_path, tmp_path / "missing", "m1"))
    with pytest.raises(ValueError, match="cannot run on token ids of shape"):
        train(tiny(tmp_path, plays, "m2", model="digits_cnn", model_kwargs={}))
    with pytest.raises(DataError, match="no window of context 40000"):
        train(tiny(tmp_path, plays, "m3", context=40000))


def test_the_shipped_lm_configs_run_in_order(plays, tmp_path):
    """configs/lm_fp32.yaml, then lm_joint_wonly.yaml and lm_joint_wa.yaml from its run, as docs/training.md
    shows them, on a tiny budget (only the size and length overridden)."""
    repo = Path(__file__).resolve().parents[1]
    shrink = [f"data_root={plays}", "model_kwargs=" + json.dumps(TINY_MODEL), "context=16", "steps_per_epoch=2", "epochs=1",
              "val_chars=512", "eval_batch_size=128", "calib_batches=1", "num_threads=1", "progress=false"]
    fp32 = tmp_path / "lm_fp32"
    assert main(["train", str(repo / "configs" / "lm_fp32.yaml"), *shrink, "--out", str(fp32)]) == 0
    for name, label in (("lm_joint_wonly", "w2"), ("lm_joint_wa", "w2a2")):
        run = tmp_path / name
        assert main(["train", str(repo / "configs" / f"{name}.yaml"), *shrink, f"init_from={fp32}", "--out", str(run)]) == 0
        assert label in json.loads((run / "summary.json").read_text())["test_loss"]
