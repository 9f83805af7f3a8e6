"""Training throughput on this CPU: what makes an FP32 step and a joint {8,6,4,2} step cheaper.

Every trainer is a fresh copy of the same model (the quantized ones calibrated on the same batch)
and trains on the same real, augmented batches of the dataset (drawn once by the training loader,
so the data cost is measured apart: the "loader" row). The timed steps run round-robin over the
trainers, so load from other jobs hits all of them alike; read the ratios against the first row
(the FP32 eager step in the default contiguous layout), measured side by side in this process.

* ``channels-last``: NHWC layout of weights and batches (``channels_last: true`` in a run config);
* ``bf16 autocast``: ``torch.autocast("cpu", torch.bfloat16)`` around the forward pass; its first
  loss is compared with FP32's from the same weights;
* ``compiled``: ``torch.compile`` of the whole model (``compile: true``; one graph per bit-width,
  compilation timed apart, in the "first steps" column);
* ``summed``: the joint step with one optimizer step on the summed loss (``loss_mode: summed``)
  instead of one per bit-width: the fused form of the step (one batch, one update).

    python benchmarks/train_throughput.py --model preact_resnet20 --dataset cifar10 --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, publish, round_robin  # noqa: E402

import bitswitch  # noqa: E402
from bitswitch.data import TensorLoader, dataset_stats, load_dataset  # noqa: E402
from bitswitch.models import build  # noqa: E402
from bitswitch.train import alrs_param_groups, joint_step  # noqa: E402

CL = torch.channels_last


def batches(dataset: str, root: str, batch_size: int, n: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], float]:
    """``n`` augmented, normalised training batches from the run's loader, and its images/s."""
    ds = load_dataset(dataset, root, "train")
    stats = dataset_stats(dataset)
    loader = TensorLoader(ds, batch_size, shuffle=True, augment=True, drop_last=True, seed=0, mean=stats["mean"], std=stats["std"],
                          flip=dataset == "cifar10")
    loader.set_epoch(0)
    it = iter(loader)
    t0 = time.perf_counter()
    out = [next(it) for _ in range(n)]
    return out, n * batch_size / (time.perf_counter() - t0)


def fp32_trainer(model: torch.nn.Module, data: list, *, layout=torch.contiguous_format, bf16: bool = False,
                 compiled: bool = False) -> Callable[[], float]:
    model = model.to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    run = torch.compile(model) if compiled else model
    state = {"i": 0}

    def step() -> float:
        x, y = data[state["i"] % len(data)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(run(x.contiguous(memory_format=layout)), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def joint_trainer(qmodel: torch.nn.Module, data: list, bits: list[int], *, layout=torch.contiguous_format, compiled: bool = False,
                  summed: bool = False) -> Callable[[], float]:
    qmodel = qmodel.to(memory_format=layout)
    opt = torch.optim.Adam(alrs_param_groups(qmodel, 5e-4))
    run = torch.compile(qmodel) if compiled else qmodel
    state = {"i": 0}
    loss_fn = lambda out, b: F.cross_entropy(out, b[1])  # noqa: E731

    def step() -> float:
        x, y = data[state["i"] % len(data)]
        state["i"] += 1
        losses = joint_step(run, (x.contiguous(memory_format=layout), y), loss_fn, opt, bits=bits, summed=summed)
        return losses[bits[-1]]

    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small_cnn", help="a zoo model name")
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist or cifar10")
    p.add_argument("--data", default="../shared/data/fashion_mnist", help="the dataset's folder")
    p.add_argument("--bits", default="8,6,4,2", help="bit-widths of the joint step, highest first")
    p.add_argument("--steps", type=int, default=8, help="timed steps per trainer (round-robin)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps per trainer (compilation)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="skip the compiled trainers (minutes of compilation)")
    p.add_argument("--name", default=None, help="results name (default: train_throughput_<model>)")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    args = p.parse_args(argv)
    args.name = args.name or f"train_throughput_{args.model}"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bits = [int(b) for b in args.bits.split(",")]
    data, loader_rate = batches(args.dataset, args.data, args.batch_size, args.steps + args.warmup)
    c = data[0][0].shape[1]
    fp32 = build(args.model, num_classes=10, in_channels=c)
    q = bitswitch.quantize(copy.deepcopy(fp32), bits)
    bitswitch.calibrate(q, [data[0][0]])
    fresh = lambda m: copy.deepcopy(m)  # noqa: E731

    trainers: dict[str, tuple[Callable[[], float], int]] = {
        "FP32 eager": (fp32_trainer(fresh(fp32), data), 1),
        "FP32 channels-last": (fp32_trainer(fresh(fp32), data, layout=CL), 1),
        "FP32 channels-last + bf16 autocast": (fp32_trainer(fresh(fp32), data, layout=CL, bf16=True), 1),
        f"joint {{{args.bits}}} eager": (joint_trainer(fresh(q), data, bits), len(bits)),
        f"joint {{{args.bits}}} channels-last": (joint_trainer(fresh(q), data, bits, layout=CL), len(bits)),
        f"joint {{{args.bits}}} channels-last, summed": (joint_trainer(fresh(q), data, bits, layout=CL, summed=True), len(bits)),
    }
    if not args.no_compile:
        trainers["FP32 channels-last + compiled"] = (fp32_trainer(fresh(fp32), data, layout=CL, compiled=True), 1)
        trainers[f"joint {{{args.bits}}} channels-last + compiled"] = (joint_trainer(fresh(q), data, bits, layout=CL, compiled=True), len(bits))

    first_s, first_loss = {}, {}
    for name, (step, _) in trainers.items():
        t0 = time.perf_counter()
        first_loss[name] = [step() for _ in range(args.warmup)][0]
        first_s[name] = time.perf_counter() - t0
        print(f"{name}: first {args.warmup} steps {first_s[name]:.1f} s (loss {first_loss[name]:.4f})", flush=True)
    times = round_robin({k: v[0] for k, v in trainers.items()}, args.steps)
    base = statistics.median(times["FP32 eager"])
    rows = []
    for name, t in times.items():
        med = statistics.median(t)
        rows.append({"trainer": name, "passes / step": trainers[name][1], "s / step (median)": med, "images / s": args.batch_size / med,
                     "x FP32 eager time": med / base, f"first {args.warmup} steps, s": first_s[name]})
    rows.append({"trainer": "loader (augment + normalise)", "passes / step": "", "s / step (median)": args.batch_size / loader_rate,
                 "images / s": loader_rate, "x FP32 eager time": args.batch_size / loader_rate / base, f"first {args.warmup} steps, s": ""})
    bf16_diff = abs(first_loss["FP32 channels-last + bf16 autocast"] - first_loss["FP32 eager"])
    md = (f"# Training throughput: {args.model} on {args.dataset}\n\n"
          f"Batch {args.batch_size} of real augmented training images, {args.threads} thread(s), {args.steps} timed steps per trainer "
          f"(round-robin) after {args.warmup} untimed ones. A joint step trains every bit-width of {{{args.bits}}} on the batch "
          "(per-bit optimizer steps unless 'summed'); its images/s counts each image once.\n\n" + md_table(rows)
          + f"\n\nFirst loss, bf16 autocast vs FP32 from the same weights: difference {bf16_diff:.2e}.")
    data_out = {"times_s": times, "first_steps_s": first_s, "first_loss": first_loss, "loader_images_per_s": loader_rate, "rows": rows}
    return publish(args, data_out, md)


if __name__ == "__main__":
    raise SystemExit(main())
