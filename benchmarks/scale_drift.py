"""How far training moved each quantization scale from its calibrated start, per bit-width.

ALRS (DESIGN.md section 4) runs bit ``b``'s scales at ``eta_b * lr``: with ``{8,6,4,2}`` the 2-bit
activation scales learn at ``1e-3 * lr``. Do they move at all? Each run is rebuilt at its calibrated
start from its own ``config.yaml`` (same FP32 weights, calibration batches and seed, so the start is
reproduced exactly), and the scales of its last checkpoint are compared with that start:
``|trained / start - 1|`` per scale, the median and the largest over the layers (activation scales,
one per layer and bit-width) or over every channel (weight scales).

    python benchmarks/scale_drift.py runs/paper_cifar10_89_15ep_cutout/joint runs/paper_cifar10_89_15ep_cutout/fixed_w2 \\
        --name scale_drift_cifar10_89_15ep
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, publish  # noqa: E402

from bitswitch.export.checkpoint import read_checkpoint  # noqa: E402
from bitswitch.train import TrainConfig  # noqa: E402
from bitswitch.train.data import load_data  # noqa: E402
from bitswitch.train.loop import build_run_model  # noqa: E402

#: ``<layer>.act_quant.scales.<b>`` (one bit-width's activation scale) and ``<layer>.weight_quant.scale`` (shared)
ACT_SCALE = re.compile(r".*\.act_quant\.scales\.(\d+)$")
SHARED_WEIGHT_SCALE = re.compile(r".*\.weight_quant\.scale$")


def run_config(run: Path, data_root: str | None = None) -> TrainConfig:
    """A run folder's config, its dataset folder replaced when it moved since the run."""
    cfg = TrainConfig.from_file(run / "config.yaml")
    return TrainConfig.from_dict({**cfg.to_dict(), "data_root": data_root}, where=str(run / "config.yaml")) if data_root else cfg


def calibrated_start(run: Path, data_root: str | None) -> dict[str, torch.Tensor]:
    """The run's model before its first step, rebuilt from its config (nothing is written)."""
    cfg = run_config(run, data_root)
    model = build_run_model(cfg, load_data(cfg), resume=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def drift(run: Path, data_root: str | None) -> list[dict[str, Any]]:
    """One row per kind of scale: how many, and the median and largest relative change in %."""
    start = calibrated_start(run, data_root)
    trained, _ = read_checkpoint(run / "last.safetensors")
    changes: dict[int, list[torch.Tensor]] = {}  # activation scales by bit-width; key 0: the shared weight scales
    for key, value in trained.items():
        act, shared = ACT_SCALE.match(key), SHARED_WEIGHT_SCALE.match(key)
        if (act or shared) and key in start:
            changes.setdefault(int(act.group(1)) if act else 0, []).append((value.float() / start[key].float() - 1.0).abs().flatten())
    if not changes:
        raise SystemExit(f"{run}: no quantization scales in last.safetensors (an FP32 run?)")
    rows = []
    for bits in sorted(changes, key=lambda b: -b if b else 0):  # activations highest bit first, then the weights
        c = torch.cat(changes[bits]) * 100.0
        kind = f"activation, {bits}-bit" if bits else "weight, per channel"
        rows.append({"run": run.name, "scales": kind, "count": c.numel(), "median change, %": float(c.median()), "max change, %": float(c.max())})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished quantized run folders (config.yaml + last.safetensors)")
    p.add_argument("--data-root", help="the dataset folder, if the runs' configs name one this machine does not have")
    p.add_argument("--name", default="scale_drift", help="results file name (benchmarks/results/<name>.md/.json)")
    p.add_argument("--out", help="results folder (default: benchmarks/results)")
    args = p.parse_args(argv)
    rows = [row for run in args.runs for row in drift(run, args.data_root)]
    md = ("# How far training moved the quantization scales from their calibrated start\n\n"
          "Each run rebuilt at its calibrated start from its own config; |last checkpoint / start - 1| per scale "
          "(activation: one per layer; weight: one per output channel).\n\n" + md_table(rows))
    return publish(args, {"rows": rows, "runs": [str(r) for r in args.runs]}, md)


if __name__ == "__main__":
    raise SystemExit(main())
