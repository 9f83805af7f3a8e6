"""Training time: joint {8,6,4,2} iteration vs the four separate fixed-precision trainings, and each
per-bit-width pass (forward + backward + optimizer step) vs one FP32 step.

Times ``--iters`` training iterations after ``--warmup``, round-robin over the six trainers so that
drifting load on a shared machine affects them alike (median and min per iteration, wall clock,
through the same :func:`bitswitch.train.loop.train_step` the trainer uses), then scales to one
epoch of the full training set. On a shared CPU the spread is large: the median is the number to
read, the min the best case.

    python benchmarks/train_time.py --data ../shared/data/fashion_mnist
    python benchmarks/train_time.py --dataset cifar10 --data ../shared/data/cifar10 --model preact_resnet20 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, publish  # noqa: E402

from bitswitch.train import TrainConfig  # noqa: E402
from bitswitch.train.ddp import DistInfo  # noqa: E402
from bitswitch.train.loop import make_loader, setup_run, train_step  # noqa: E402


class Timed:
    """One prepared trainer (model, optimizer, data iterator) whose iterations can be timed one at a time."""

    def __init__(self, base: dict, **kw) -> None:
        self.cfg = TrainConfig.from_dict({**base, **kw})
        data, self.model, self.opt, _ = setup_run(self.cfg)
        self.loader = make_loader(data, "train", self.cfg, self.cfg.device, train=True)
        self.it = iter(self.loader)
        self.per_iter: list[float] = []
        self.per_bit: dict[str, list[float]] = {}

    def step(self, record: bool) -> None:
        try:
            x, y = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            x, y = next(self.it)
        timer: dict[str, float] = {}
        cuda = self.cfg.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(self.model, self.opt, x, y, self.cfg, 1.0, DistInfo(), timer)
        if cuda:
            torch.cuda.synchronize()
        if record:
            self.per_iter.append(time.perf_counter() - t0)
            for k, v in timer.items():
                self.per_bit.setdefault(k, []).append(v)

    def summary(self) -> dict:
        return {"median_s": statistics.median(self.per_iter), "min_s": min(self.per_iter), "n": len(self.per_iter),
                "per_bit_median_s": {k: statistics.median(v) for k, v in self.per_bit.items()},
                "steps_per_full_epoch": len(self.loader)}


def time_all(trainers: list[Timed], iters: int, warmup: int) -> None:
    """Round-robin: each round times one iteration of every trainer, so drifting load on a shared
    machine hits all of them alike and the ratios stay meaningful."""
    for i in range(warmup + iters):
        for t in trainers:
            t.step(record=i >= warmup)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data", default="../shared/data/fashion_mnist")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--bits", default="8,6,4,2")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile-kernels", action="store_true", help="torch.compile the activation-quantizer kernels")
    p.add_argument("--out", default=None)
    p.add_argument("--name", default="train_time")
    args = p.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    base = {"dataset": args.dataset, "data_root": args.data, "model": args.model, "batch_size": args.batch_size, "device": args.device,
            "progress": False, "out_dir": "/nonexistent-benchmark-run", "compile_kernels": args.compile_kernels, "calib_batches": 1}
    if args.compile_kernels:
        from bitswitch.quant.functional import use_compiled_kernels

        use_compiled_kernels(True)
    trainers = {"fp32": Timed(base, mode="fp32"), "joint": Timed(base, mode="joint", bits=bits),
                **{b: Timed(base, mode="fixed", bits=[b]) for b in bits}}
    time_all(list(trainers.values()), args.iters, args.warmup)
    fp32, joint = trainers["fp32"].summary(), trainers["joint"].summary()
    separate = {b: trainers[b].summary() for b in bits}
    steps = fp32["steps_per_full_epoch"]
    sep_sum = sum(s["median_s"] for s in separate.values())
    rows = [{"what": "FP32 step", "s / iteration (median)": fp32["median_s"], "min": fp32["min_s"], "x FP32 step": 1.0,
             "s / full epoch (est.)": fp32["median_s"] * steps}]
    for b in bits:
        t = joint["per_bit_median_s"][f"w{b}a{b}"]
        rows.append({"what": f"joint: W{b}A{b} pass (fwd+bwd+step)", "s / iteration (median)": t, "min": "", "x FP32 step": t / fp32["median_s"],
                     "s / full epoch (est.)": t * steps})
    rows.append({"what": f"joint {{{','.join(map(str, bits))}}} iteration", "s / iteration (median)": joint["median_s"], "min": joint["min_s"],
                 "x FP32 step": joint["median_s"] / fp32["median_s"], "s / full epoch (est.)": joint["median_s"] * steps})
    for b in bits:
        s = separate[b]
        rows.append({"what": f"separate W{b}A{b} step", "s / iteration (median)": s["median_s"], "min": s["min_s"],
                     "x FP32 step": s["median_s"] / fp32["median_s"], "s / full epoch (est.)": s["median_s"] * steps})
    rows.append({"what": f"sum of {len(bits)} separate trainings", "s / iteration (median)": sep_sum, "min": "",
                 "x FP32 step": sep_sum / fp32["median_s"], "s / full epoch (est.)": sep_sum * steps})
    budget = (f"{args.model} on {args.dataset}, batch {args.batch_size}, {args.iters} timed iterations each (round-robin over the 6 trainers) after {args.warmup} warm-up, "
              f"device {args.device}, compiled quantizer kernels: {args.compile_kernels}; full epoch = {steps} iterations (estimated)")
    data = {"budget": budget, "fp32": fp32, "joint": joint, "separate": {str(b): s for b, s in separate.items()}, "rows": rows,
            "joint_vs_separate_sum": joint["median_s"] / sep_sum}
    md = (f"# Training time: joint vs separate vs FP32\n\n{budget}. Shared 2-core CPU: other jobs ran at the same time, "
          f"so read medians, not single numbers.\n\n" + md_table(rows) +
          f"\n\nJoint iteration / sum of separate steps: {joint['median_s'] / sep_sum:.2f}.\n")
    return publish(args, data, md)


if __name__ == "__main__":
    sys.exit(main())
