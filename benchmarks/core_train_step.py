"""Overhead of a quantized training step (W4A4, one bit-width) over the FP32 eager step.

    python benchmarks/core_train_step.py --model preact_resnet20 --batch 128

Forward + backward + SGD step on random CIFAR-shaped data. Variants, all timed interleaved in one
process (so machine load affects them alike) and reported as ratios to FP32 eager:

* ``fp32-eager``: the float model, eager (the baseline);
* ``w4a4-eager``: bitswitch quantized model, eager PyTorch ops;
* ``w4a4-fused``: the same with the fused (torch.compile) activation-quantizer kernels;
* ``w4a4-compiled``: the whole quantized model under ``torch.compile``;
* ``fp32-compiled``: the float model under ``torch.compile`` (for a fair view of compilation).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import bitswitch
from bitswitch.models import build
from bitswitch.quant.functional import use_compiled_kernels

from _common import md_table, round_robin, write_results


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="preact_resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--bits", type=int, default=4, help="uniform W/A bit-width of the quantized step")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (median reported)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))

    def quantized() -> nn.Module:
        q = bitswitch.quantize(build(args.model), bits=(8, 6, 4, 2))
        bitswitch.calibrate(q, [x[:32]])
        bitswitch.set_precision(q, args.bits)
        return q.train()

    variants: dict[str, object] = {"fp32-eager": make_step(build(args.model).train(), x, y)}
    variants[f"w{args.bits}a{args.bits}-eager"] = make_step(quantized(), x, y)
    compile_s: dict[str, float] = {}
    if not args.no_compile:
        use_compiled_kernels(True)
        fused = make_step(quantized(), x, y)
        t0 = time.perf_counter()
        fused()
        compile_s[f"w{args.bits}a{args.bits}-fused"] = time.perf_counter() - t0
        variants[f"w{args.bits}a{args.bits}-fused"] = fused
        use_compiled_kernels(False)
        for name, model in [(f"w{args.bits}a{args.bits}-compiled", quantized()), ("fp32-compiled", build(args.model).train())]:
            step = make_step(torch.compile(model), x, y)
            t0 = time.perf_counter()
            step()
            compile_s[name] = time.perf_counter() - t0
            variants[name] = step
    for fn in variants.values():  # warm-up
        fn(); fn()  # noqa: E702
    times = round_robin(variants, args.rounds)
    base = statistics.median(times["fp32-eager"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({
            "variant": name,
            "median_ms": med * 1e3,
            "min_ms": min(ts) * 1e3,
            "ratio_vs_fp32_eager": med / base,
            "first_call_s": compile_s.get(name, float("nan")),
        })
        print(rows[-1], flush=True)
    md = (
        f"### Training step, {args.model}, batch {args.batch}, W{args.bits}A{args.bits} (forward+backward+SGD)\n\n"
        + md_table(rows)
        + f"\n\n{args.rounds} interleaved rounds; ratio = median / median of fp32-eager. first_call_s includes compilation."
    )
    write_results("core_train_step", {"args": vars(args), "rows": rows}, md)


if __name__ == "__main__":
    main()
