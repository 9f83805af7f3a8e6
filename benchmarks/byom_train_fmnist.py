"""Bring your own model: a hand-written CNN trained on Fashion-MNIST in a plain PyTorch loop.

Only the public API is used, as a user would: ``bitswitch.quantize``/``calibrate``, then
``bitswitch.train.alrs_param_groups`` for the optimizer and ``bitswitch.train.joint_step`` for every
iteration (the bit-widths highest first, in-place distillation from the top one), with a plain
``torch.optim.lr_scheduler`` cosine schedule. No TrainConfig, no run folder.

1. the CNN (conv-BN-ReLU-MaxPool blocks) is trained in FP32 (``--fp32-epochs``);
2. it is quantized for ``--bits``, calibrated on a few training batches and trained jointly
   (``--joint-epochs``) from the FP32 weights;
3. the FP32 model and every bit-width of the joint model are evaluated once on the test split;
4. every bit-width is exported to ONNX (``export_onnx``, ``snap_bias``), verified in onnxruntime
   against the model (default tolerance: 2 output steps, 99.5 % top-1 agreement) on 1,000 test
   images, and the file's own top-1 measured on the whole test split.

    PYTHONPATH=. nice -n 10 python benchmarks/byom_train_fmnist.py --data ../shared/data/fashion_mnist
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, publish  # noqa: E402

import bitswitch  # noqa: E402
from bitswitch.data import load_dataset  # noqa: E402
from bitswitch.export.onnx import export_onnx, run_onnx, verify_onnx  # noqa: E402
from bitswitch.train import alrs_param_groups, joint_step  # noqa: E402


class VGGish(nn.Module):
    """The user's model: nothing bitswitch-specific in it."""

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + [nn.MaxPool2d(2)] if pool else layers

        self.features = nn.Sequential(*block(1, 32, True), *block(32, 64, True), *block(64, 64, False))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for i in range(0, len(x) - (batch_size - 1 if generator is not None else 0), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, 1000))
    model.train()
    return 100.0 * correct / len(x)


def cosine(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/fashion_mnist")
    p.add_argument("--train-subset", type=int, default=10000, help="training images used (0 = all 60,000)")
    p.add_argument("--fp32-epochs", type=int, default=3)
    p.add_argument("--joint-epochs", type=int, default=1)
    p.add_argument("--bits", default="8,6,4,2")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="byom_train_fmnist")
    p.add_argument("--onnx-dir", default="runs/byom_train_fmnist", help="where the exported ONNX files go")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bits = tuple(int(b) for b in args.bits.split(","))

    def tensors(split: str, n: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        ds = load_dataset("fashion_mnist", args.data, split)
        x, y = ds.images.float().div(255).sub(0.286).div(0.353), ds.labels
        if n and n < len(x):
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
            x, y = x[keep], y[keep]
        return x, y

    xtr, ytr = tensors("train", args.train_subset)
    xte, yte = tensors("test")
    gen = torch.Generator().manual_seed(0)

    # 1. FP32, the user's own loop
    t0 = time.perf_counter()
    model = VGGish()
    steps = args.fp32_epochs * (len(xtr) // args.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = cosine(opt, steps)
    for _ in range(args.fp32_epochs):
        for xb, yb in batches(xtr, ytr, args.batch_size, gen):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    fp32_time = time.perf_counter() - t0
    fp32_acc = accuracy(model, xte, yte)
    print(f"FP32: {fp32_acc:.2f} % in {fp32_time:.0f} s", flush=True)

    # 2. joint multi-precision through the public API
    t0 = time.perf_counter()
    qmodel = bitswitch.quantize(model, bits)
    bitswitch.calibrate(qmodel, batches(xtr, ytr, args.batch_size), num_batches=4)
    steps = args.joint_epochs * (len(xtr) // args.batch_size)
    opt = torch.optim.Adam(alrs_param_groups(qmodel, 5e-4))
    sched = cosine(opt, steps)
    loss_fn = lambda out, batch: F.cross_entropy(out, batch[1])  # noqa: E731
    for epoch in range(args.joint_epochs):
        for i, batch in enumerate(batches(xtr, ytr, args.batch_size, gen)):
            losses = joint_step(qmodel, batch, loss_fn, opt, distill=True)
            sched.step()
            if i % 20 == 0:
                print(f"joint epoch {epoch + 1} step {i}: " + ", ".join(f"W{b} {v:.3f}" for b, v in losses.items()), flush=True)
    joint_time = time.perf_counter() - t0
    rows, joint_acc, onnx_acc = [], {}, {}
    out_dir = Path(args.onnx_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for b in bits:
        bitswitch.set_precision(qmodel, b)
        joint_acc[b] = accuracy(qmodel, xte, yte)
        qmodel.eval()  # accuracy() hands the model back in train mode
        path = out_dir / f"vggish_w{b}.onnx"
        export_onnx(qmodel, path, example_inputs=xte[:1], snap_bias=True)
        agree = verify_onnx(qmodel, path, [xte[i:i + 250] for i in range(0, 1000, 250)], raise_on_failure=False)
        onnx_acc[b] = 100.0 * float((torch.from_numpy(run_onnx(path, xte)).argmax(1) == yte).float().mean())
        rows.append({"precision": f"W{b}A{b}", "FP32": round(fp32_acc, 2), "joint": round(joint_acc[b], 2), "joint - FP32": round(joint_acc[b] - fp32_acc, 2),
                     "ONNX file": round(onnx_acc[b], 2), "verified": "yes" if agree.passed else "NO",
                     "max steps": round(agree.max_diff_steps, 2), "top-1 agreement": round(agree.top1_agreement, 4)})
    total = fp32_time + joint_time

    md = (f"# Bring your own model: hand-written CNN on Fashion-MNIST, joint {{{','.join(map(str, bits))}}} in a plain loop\n\n"
          f"Test top-1 (%) on the full {len(xte):,}-image test split, final weights (no checkpoint selection). "
          f"**Budget**: {len(xtr):,} training images, FP32 {args.fp32_epochs} epochs (Adam 3e-3, cosine), then joint "
          f"{args.joint_epochs} epoch(s) from the FP32 weights through `alrs_param_groups` + `joint_step` (Adam 5e-4, cosine, "
          f"in-place distillation, per-bit steps), batch {args.batch_size}, {args.threads} thread(s).\n\n"
          + md_table(rows) + f"\n\nWall time: FP32 {fp32_time:.0f} s, joint {joint_time:.0f} s, total {total:.0f} s.")
    data = {"bits": list(bits), "train_images": len(xtr), "fp32_epochs": args.fp32_epochs, "joint_epochs": args.joint_epochs,
            "fp32_acc": fp32_acc, "joint_acc": {str(b): a for b, a in joint_acc.items()}, "onnx_acc": {str(b): a for b, a in onnx_acc.items()}, "fp32_time_s": fp32_time, "joint_time_s": joint_time}
    return publish(args, data, md)


if __name__ == "__main__":
    raise SystemExit(main())
