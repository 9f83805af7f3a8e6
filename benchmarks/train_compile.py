"""Whole-model ``torch.compile`` (inductor) against eager: training-step time of a quantized model.

small_cnn on Fashion-MNIST-shaped random batches (1x28x28, batch 128). Three trainers, each a fresh
copy of the same calibrated model: the FP32 eager step, a W4A4 step (``joint_step`` with
``bits=[4]``) eager, and the same W4A4 step through ``torch.compile(model)``, which is what
``compile: true`` in a run config does. Compilation (the first steps) is timed separately; the
timed steps run round-robin over the trainers so load from other jobs hits all of them alike.
The compiled step is also checked against eager: losses of the first steps from the same weights.

    PYTHONPATH=. nice -n 10 python benchmarks/train_compile.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, publish, round_robin  # noqa: E402

import bitswitch  # noqa: E402
from bitswitch.models import build  # noqa: E402
from bitswitch.train import alrs_param_groups, joint_step  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per trainer")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="train_compile")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch_size,))
    batch = (x, y)
    loss_fn = lambda out, b: F.cross_entropy(out, b[1])  # noqa: E731

    fp32 = build("small_cnn", num_classes=10, in_channels=1)
    q = bitswitch.quantize(copy.deepcopy(fp32), (4,))
    bitswitch.calibrate(q, [x])
    q_compiled = copy.deepcopy(q)
    compiled = torch.compile(q_compiled)
    opt_fp32 = torch.optim.Adam(fp32.parameters(), lr=1e-3)

    def fp32_step() -> float:
        opt_fp32.zero_grad(set_to_none=True)
        loss = loss_fn(fp32(x), batch)
        loss.backward()
        opt_fp32.step()
        return float(loss.detach())

    trainers = {
        "FP32 eager": fp32_step,
        "W4A4 eager": (lambda o: lambda: joint_step(q, batch, loss_fn, o)[4])(torch.optim.Adam(alrs_param_groups(q, 1e-3))),
        "W4A4 compiled": (lambda o: lambda: joint_step(compiled, batch, loss_fn, o)[4])(torch.optim.Adam(alrs_param_groups(q_compiled, 1e-3))),
    }
    # first steps: compilation, and the compiled losses against eager from the same weights
    first: dict[str, list[float]] = {}
    compile_s = {}
    for name, step in trainers.items():
        t0 = time.perf_counter()
        first[name] = [step() for _ in range(3)]
        compile_s[name] = time.perf_counter() - t0
        print(f"{name}: first 3 steps {compile_s[name]:.1f} s, losses {first[name]}", flush=True)
    diff = max(abs(a - b) for a, b in zip(first["W4A4 eager"], first["W4A4 compiled"]))
    times = round_robin(trainers, args.steps)
    base = statistics.median(times["FP32 eager"])
    rows = [{"step": n, "s / step (median)": statistics.median(t), "min": min(t), "x FP32 eager step": statistics.median(t) / base,
             "first 3 steps, s": compile_s[n]} for n, t in times.items()]
    ratio = statistics.median(times["W4A4 compiled"]) / statistics.median(times["W4A4 eager"])
    md = ("# Whole-model torch.compile: W4A4 training step, compiled vs eager\n\n"
          f"small_cnn, batch {args.batch_size} of 1x28x28, Adam, {args.steps} timed steps per trainer (round-robin) after 3 untimed "
          f"ones (compilation), {args.threads} thread(s), inductor backend.\n\n" + md_table(rows)
          + f"\n\nCompiled / eager W4A4 step: **{ratio:.2f}**. Largest loss difference, compiled vs eager, over the first 3 steps "
          f"from the same weights: {diff:.2e} (float summation order).")
    data = {"times_s": times, "first_steps_s": compile_s, "first_losses": first, "compiled_over_eager": ratio, "max_loss_diff": diff}
    return publish(args, data, md)


if __name__ == "__main__":
    raise SystemExit(main())
