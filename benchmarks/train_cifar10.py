"""CIFAR-10, pre-activation ResNet-20: FP32, joint {8,6,4,2} with and without ALRS, joint {4,3,2}.

The paper's protocol (its Table "ALRS ablation") is 200 epochs per run from an FP32 model; the
reference numbers are FP32 92.30; {8,6,4,2} without ALRS 92.17/92.20/92.17/89.67, with ALRS
92.25/92.32/92.09/90.19; {4,3,2} with ALRS 91.79/91.83/88.88. The defaults here are a **reduced CPU
budget** (a training subset, a few FP32 epochs, then a short joint fine-tuning from our own FP32 model)
that shows the pipeline and the relative behaviour, not the paper's accuracy. The GPU version:

    python benchmarks/train_cifar10.py --device cuda --subset 0 --test-subset 0 --fp32-epochs 200 --qat-epochs 200 \\
        --batch-size 128 --name train_cifar10_gpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, publish  # noqa: E402

from bitswitch.train import TrainConfig, train  # noqa: E402

PAPER = {
    "fp32": {"fp32": 92.30},
    "joint_8642_no_alrs": {"w8a8": 92.17, "w6a6": 92.20, "w4a4": 92.17, "w2a2": 89.67},
    "joint_8642_alrs": {"w8a8": 92.25, "w6a6": 92.32, "w4a4": 92.09, "w2a2": 90.19},
    "joint_432_alrs": {"w4a4": 91.79, "w3a3": 91.83, "w2a2": 88.88},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--model", default="preact_resnet20")
    p.add_argument("--subset", type=int, default=2500, help="training images used (0 = all 50000); 10%% of them are the validation split")
    p.add_argument("--test-subset", type=int, default=2000, help="test images evaluated (0 = all 10000)")
    p.add_argument("--fp32-epochs", type=int, default=4)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--fp32-optimizer", default="sgd", choices=("sgd", "adam"), help="optimizer of the FP32 run (paper recipe: SGD 0.1)")
    p.add_argument("--fp32-lr", type=float, default=0.1, help="learning rate of the FP32 run")
    p.add_argument("--qat-lr", type=float, default=5e-4, help="Adam learning rate of the joint runs (paper: 5e-4)")
    p.add_argument("--epochs", type=int, default=None, help="shortcut: set both --fp32-epochs and --qat-epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile-kernels", action="store_true")
    p.add_argument("--runs", default="runs/bench_cifar10")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    p.add_argument("--name", default="train_cifar10")
    args = p.parse_args(argv)
    if args.epochs:
        args.fp32_epochs = args.qat_epochs = args.epochs
    runs = Path(args.runs)
    base = {"dataset": "cifar10", "data_root": args.data, "model": args.model, "train_subset": args.subset, "test_subset": args.test_subset,
            "batch_size": args.batch_size, "device": args.device, "augment": True, "progress": False, "seed": 0,
            "compile_kernels": args.compile_kernels}
    for d in ("fp32", "joint_8642_alrs", "joint_8642_no_alrs", "joint_432_alrs"):
        (runs / d / "state.safetensors").unlink(missing_ok=True)  # a benchmark always starts fresh

    results, times = {}, {}

    def run(name: str, **kw) -> None:
        t0 = time.perf_counter()
        results[name] = train(TrainConfig.from_dict({**base, **kw, "out_dir": str(runs / name)})).summary
        times[name] = time.perf_counter() - t0

    run("fp32", mode="fp32", epochs=args.fp32_epochs, optimizer=args.fp32_optimizer, lr=args.fp32_lr,
        weight_decay=5e-4 if args.fp32_optimizer == "sgd" else 5e-5, warmup_epochs=min(1.0, args.fp32_epochs / 4))
    qat = {"mode": "joint", "epochs": args.qat_epochs, "optimizer": "adam", "lr": args.qat_lr, "weight_decay": 5e-5, "init_from": str(runs / "fp32")}
    run("joint_8642_alrs", bits=[8, 6, 4, 2], alrs=True, **qat)
    run("joint_8642_no_alrs", bits=[8, 6, 4, 2], alrs=False, **qat)
    run("joint_432_alrs", bits=[4, 3, 2], alrs=True, **qat)

    labels = ["fp32", "w8a8", "w6a6", "w4a4", "w3a3", "w2a2"]
    rows = []
    for name, s in results.items():
        row = {"run": name}
        for lab in labels:
            if lab in s["test_acc"]:
                row[lab.upper()] = s["test_acc"][lab]
                ref = PAPER[name].get(lab)
                row[lab.upper() + " paper"] = ref if ref is not None else ""
        row["wall s"] = times[name]
        rows.append(row)
    cols = ["run"] + [c for lab in labels for c in (lab.upper(), lab.upper() + " paper") if any(c in r for r in rows)] + ["wall s"]
    n_train = args.subset or 50000
    budget = (f"{'REDUCED CPU BUDGET: ' if args.device == 'cpu' else ''}{args.model}, {n_train} training images "
              f"({int(round(n_train * 0.9))} train / {int(round(n_train * 0.1))} validation), {args.test_subset or 10000} test images; "
              f"FP32 {args.fp32_epochs} epochs ({args.fp32_optimizer} lr {args.fp32_lr}, crop+flip), then each joint run {args.qat_epochs} epoch(s) "
              f"fine-tuning from that FP32 model (Adam lr {args.qat_lr}, wd 5e-5, cosine, per-bit step, no KD), batch {args.batch_size}; "
              f"device {args.device}. The paper columns are 200-epoch runs on the full data and are NOT comparable in absolute terms.")
    data = {"budget": budget, "results": results, "wall_time_s": times, "paper": PAPER, "rows": rows}
    md = (f"# CIFAR-10 pre-activation ResNet-20: FP32, joint {{8,6,4,2}} with/without ALRS, {{4,3,2}}\n\n"
          f"Test top-1 (%), checkpoints chosen on the validation split. {budget}\n\n" + md_table(rows, cols) + "\n")
    return publish(args, data, md)


if __name__ == "__main__":
    sys.exit(main())
