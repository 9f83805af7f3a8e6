"""The training loop on digits: joint training learns every bit-width, resume is bit-exact,
checkpoints are chosen on the validation split, and damaged or foreign state is refused."""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import pytest
import torch

import bitswitch
from bitswitch.train import StateError, TrainConfig, ddp, train
from bitswitch.train.interrupt import TrainingInterrupted
from bitswitch.train import evaluate, load_data, make_loader
from bitswitch.train.loop import setup_run
from bitswitch.train.optim import build_optimizer
from bitswitch.train.state import read_state
from bitswitch.train.step import fp32_step

TINY = {"dataset": "digits", "model": "digits_cnn", "batch_size": 128, "train_subset": 800, "progress": False,
        "num_threads": 1, "calib_batches": 2}


def tiny(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path / name), **kw})


def test_joint_training_improves_every_bit(tmp_path):
    cfg = tiny(tmp_path, mode="joint", bits=[8, 6, 4, 2], epochs=3, lr=3e-3, train_subset=0, batch_size=64, act_init="lsq")
    data, model, _, _ = setup_run(cfg)
    before = evaluate(model, make_loader(data, "test", cfg, "cpu"), cfg.bits)
    result = train(cfg)
    for lab in ("w8a8", "w6a6", "w4a4", "w2a2"):
        assert result.test_acc[lab] > before[lab] + 30, (lab, before, result.test_acc)
    out = result.out_dir
    for f in ("config.yaml", "metrics.jsonl", "last.safetensors", "best.safetensors", "state.safetensors", "accuracy.png", "summary.json", "train.log"):
        assert (out / f).is_file(), f
    # the best checkpoint is an integer file that reloads at every bit with the reported accuracy
    reloaded = bitswitch.load(out / "best.safetensors")
    assert reloaded.conv2.weight_int.dtype == torch.int8
    assert evaluate(reloaded, make_loader(data, "test", cfg, "cpu"), cfg.bits) == result.test_acc
    assert TrainConfig.from_dict(reloaded.bitswitch_extra["train_config"]) == cfg


@pytest.mark.parametrize("kw", [
    {"mode": "joint", "bits": [8, 4, 2], "optimizer": "adam", "distill": "inplace", "channels_last": True},
    {"mode": "joint", "bits": [4, 3, 2], "optimizer": "sgd", "lr": 0.05, "loss_mode": "summed", "distill": "neighbour", "variant": "unshared"},
    {"mode": "joint", "bits": [8, 4, 2], "optimizer": "adamw", "optimizer_state": "per_bit", "bit_lr_mult": [0.5, 1.0, 1.0]},
    {"mode": "fp32", "optimizer": "sgd", "lr": 0.05, "warmup_epochs": 0.5, "label_smoothing": 0.1},
])
def test_resume_equals_uninterrupted(tmp_path, kw):
    full = train(tiny(tmp_path, "full", epochs=2, **kw))
    cfg = tiny(tmp_path, "split", epochs=2, **kw)
    first = train(cfg, stop_after=1)
    assert len(first.history) == 1 and not first.test_acc
    resumed = train(cfg, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.test_acc == full.test_acc
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("train_time_s", "bit_time_s")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    lines = (resumed.out_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_channels_last_trains_in_nhwc_and_saves_what_it_evaluated(tmp_path):
    cfg = tiny(tmp_path, mode="joint", bits=[8, 2], epochs=1, channels_last=True)
    _, model, optimizer, _ = setup_run(cfg)
    conv = model.conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert optimizer.param_groups  # built after the layout change: its state follows the parameters
    result = train(cfg)
    assert result.model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    data = load_data(cfg)
    reloaded = bitswitch.load(result.out_dir / "best.safetensors")  # a plain contiguous model from the file
    assert evaluate(reloaded, make_loader(data, "test", cfg, "cpu"), cfg.bits) == result.test_acc


def test_bf16_autocast_runs_the_fp32_forward_in_bf16_and_still_learns(tmp_path):
    """``autocast: bf16``: the forward's convolutions in bfloat16 (the loss moves, but by far less than
    its size), the loss and the weights in FP32; the run learns the digits; quantized modes refuse it."""
    cfg = tiny(tmp_path, "bf16", mode="fp32", lr=3e-3, epochs=3, train_subset=0, batch_size=64, autocast="bf16")
    data, model, _, _ = setup_run(cfg)
    x, y = next(iter(make_loader(data, "train", cfg, "cpu")))
    losses = {}
    for mode in ("none", "bf16"):
        m, mode_cfg = copy.deepcopy(model), TrainConfig.from_dict({**cfg.to_dict(), "autocast": mode})
        losses[mode] = fp32_step(m, build_optimizer(m, mode_cfg), x, y, mode_cfg, 1.0, ddp.DistInfo(), {})["fp32"]
        assert all(p.dtype == torch.float32 for p in m.parameters())
    assert 0 < abs(losses["bf16"] - losses["none"]) < 1e-2 * losses["none"], losses
    result = train(cfg)
    assert result.test_acc["fp32"] > 80, result.test_acc
    with pytest.raises(ValueError, match="mode 'fp32' only"):
        tiny(tmp_path, mode="joint", bits=[8, 2], autocast="bf16")
    with pytest.raises(ValueError, match="autocast"):
        tiny(tmp_path, mode="fp32", autocast="fp16")


def test_best_checkpoint_is_chosen_on_validation(tmp_path):
    cfg = tiny(tmp_path, mode="joint", bits=[8, 2], epochs=3, lr=3e-3)
    result = train(cfg)
    history = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda h: h["val_metric"])  # first maximum wins (strict improvement)
    extra = bitswitch.load(result.out_dir / "best.safetensors").bitswitch_extra
    assert extra["epoch"] == best["epoch"] and extra["val_acc"] == best["val_acc"]
    assert result.summary["best_epoch"] == best["epoch"]
    # the validation split is carved from the training data and disjoint from the rest of it
    data = load_data(cfg)
    train_rows = {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(data.train.images, data.train.labels)}
    val_rows = [tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(data.val.images, data.val.labels)]
    assert len(data.val) == round(800 * cfg.val_fraction)
    assert sum(r in train_rows for r in val_rows) <= 2  # digits has a few exact duplicate images


def test_resume_refuses_other_config_corrupted_and_foreign_state(tmp_path):
    cfg = tiny(tmp_path, mode="joint", bits=[8, 4], epochs=2)
    train(cfg, stop_after=1)
    with pytest.raises(StateError, match=r"another config; differing keys: lr: .*To continue it as it was started: bitswitch train --resume "):
        train(cfg.apply_overrides(["lr=0.5"]), resume=True)
    with pytest.raises(ValueError, match="already holds a run .* continue it with `bitswitch train --resume "):
        train(cfg)
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(tiny(tmp_path, "nothing", mode="joint", bits=[8, 4], epochs=2), resume=True)
    state = cfg.out_dir + "/state.safetensors"
    raw = bytearray(Path(state).read_bytes())
    raw[-5] ^= 0xFF
    Path(state).write_bytes(bytes(raw))
    with pytest.raises(StateError, match="checksum mismatch"):
        train(cfg, resume=True)
    Path(state).write_bytes(bytes(raw[:100]))
    with pytest.raises(StateError, match="truncated|unreadable"):
        read_state(state)
    Path(state).write_bytes((Path(cfg.out_dir) / "last.safetensors").read_bytes())  # an integer checkpoint, not a state
    with pytest.raises(StateError, match="not a bitswitch training state"):
        train(cfg, resume=True)


def test_alrs_rates_are_the_ones_each_bit_step_uses(tmp_path, monkeypatch):
    """What Adam reads at the step of bit b: the shared weight scales and bit b's own scales at
    eta_b times the weights' rate (eta_b = 1, 5e-2, 1e-3 for 8, 5, 2 bits: deltas 0, 3 and 6)."""
    eta = {8: 1.0, 5: 0.05, 2: 0.001}
    steps: list[dict[str, tuple[float, bool]]] = []
    real = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        steps.append({g["name"]: (g["lr"], any(p.grad is not None for p in g["params"])) for g in self.param_groups})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    cfg = tiny(tmp_path, mode="joint", bits=[8, 5, 2], model="mlp", epochs=1, train_subset=300, optimizer="adam", warmup_epochs=0.5)
    train(cfg)
    assert len(steps) == 3 * (270 // 128)
    for i, groups in enumerate(steps):
        b = cfg.bits[i % 3]  # one step per bit-width, highest first
        assert [n for n, (_, has_grad) in groups.items() if n.startswith("scale_") and n != "scale_shared" and has_grad] == [f"scale_{b}"]
        weights_lr = groups["weights"][0]
        assert weights_lr > 0
        assert groups["scale_shared"][0] == pytest.approx(weights_lr * eta[b] * cfg.scale_lr_mult, rel=1e-12)
        assert groups[f"scale_{b}"][0] == pytest.approx(weights_lr * eta[b] * cfg.scale_lr_mult, rel=1e-12)


@pytest.mark.parametrize("kw", [
    {"mode": "joint", "bits": [8, 4, 2], "distill": "inplace", "augment": True},
    {"mode": "fp32", "optimizer": "sgd", "lr": 0.05, "warmup_epochs": 0.5},
])
def test_ctrl_c_mid_epoch_saves_that_step_and_resumes_bit_exactly(tmp_path, monkeypatch, press_ctrl_c, kw):
    """720 training images in batches of 128: 5 steps per epoch; Ctrl-C after step 7 is batch 2 of epoch 2."""
    full = train(tiny(tmp_path, "full", epochs=3, **kw))
    cfg = tiny(tmp_path, "split", epochs=3, **kw)
    press_ctrl_c(7)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(cfg)
    monkeypatch.undo()
    assert (stopped.value.step, stopped.value.epoch, stopped.value.batch) == (7, 1, 2)
    assert str(stopped.value) == (f"interrupted after step 7 (epoch 2, batch 2 of 5); saved the training state to "
                                  f"{cfg.out_dir}/state.safetensors; resume with: bitswitch train --resume {cfg.out_dir}")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is gone after the run
    info = read_state(Path(cfg.out_dir) / "state.safetensors")[1]["info"]
    assert (info["step"], info["epoch"], info["partial"]["batches"], len(info["history"])) == (7, 1, 2, 1)
    resumed = train(cfg, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.test_acc == full.test_acc
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("train_time_s", "bit_time_s")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_ctrl_c_during_the_last_step_of_an_epoch_stops_at_its_end(tmp_path, press_ctrl_c):
    cfg = tiny(tmp_path, mode="joint", bits=[8, 2], epochs=2)
    press_ctrl_c(5)
    with pytest.raises(TrainingInterrupted, match=r"after step 5 \(the end of epoch 1\)") as stopped:
        train(cfg)
    assert stopped.value.batch == 0 and (Path(cfg.out_dir) / "last.safetensors").is_file()
    assert "partial" not in read_state(Path(cfg.out_dir) / "state.safetensors")[1]["info"]
