"""Training cost on the character Llama: a joint {8,6,4,2} step vs the separate per-bit steps, and a
4-bit quantized step vs the FP32 step, eager and compiled.

    PYTHONPATH=. nice -n 5 python benchmarks/lm_train_cost.py

``char_llama`` (4 blocks, width 128, context 64, ~0.79 M parameters) on Shakespeare training windows
(batch 12 x 64, nanoGPT's CPU reference), AdamW (ALRS groups for quantized models), forward +
backward + optimizer step. Every trainer starts from the same FP32 weights:

* ``fp32``: the float model;
* ``joint {8,6,4,2}``: one :func:`bitswitch.train.joint_step` over the four bit-widths of a joint model;
* ``separate b-bit``: the step of a model quantized for ``b`` alone (what training it separately costs
  per step); their sum is what the four separate trainings cost per step of each;
* both in weight-only mode (the q/k/v/o/gate/up/down weights quantized, activations float) and W+A
  (the issue's setting: their inputs quantized too; the SiLU input, RMSNorm, attention products,
  embeddings and head stay float).

All eager steps run round-robin in one process (load from other jobs hits them alike); medians of
``--rounds`` rounds. Compiled: ``torch.compile`` of the whole model (inductor) for the FP32 and the
4-bit steps; the first call (compilation) is timed separately, and the compiled steps join the same
round-robin. Where the eager 4-bit step is far above 1.2x FP32, ``torch.profiler`` lists the top ops.
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
import bitswitch.models  # noqa: E402
from bitswitch.data.text import load_shakespeare, random_windows  # noqa: E402
from bitswitch.train import alrs_param_groups, joint_step  # noqa: E402

BITS = (8, 6, 4, 2)
MODES = {"wo": "weight-only", "wa": "W+A"}


def loss_fn(out, batch) -> torch.Tensor:
    return F.cross_entropy(out.logits.flatten(0, 1), batch[1].flatten())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"))
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled per trainer (0: no profile)")
    p.add_argument("--name", default="lm_train_cost")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    splits = load_shakespeare(args.data_root)
    ctx = 64
    gen = torch.Generator().manual_seed(0)
    batch = random_windows(splits.train, args.batch_size, ctx, gen)
    calib = [random_windows(splits.train, 32, ctx, gen) for _ in range(2)]
    fp32 = bitswitch.models.build("char_llama", vocab_size=len(splits.vocab), context=ctx).train()

    def quantized(bits: tuple[int, ...], mode: str) -> torch.nn.Module:
        q = bitswitch.quantize(copy.deepcopy(fp32), bits, weight_only=["model.layers.*"] if mode == "wo" else ())
        bitswitch.calibrate(q, calib)
        return q.train()

    def trainer(model: torch.nn.Module, bits: tuple[int, ...] | None):
        if bits is None:
            opt = torch.optim.AdamW(model.parameters(), 1e-3)

            def fp_step() -> None:
                opt.zero_grad(set_to_none=True)
                loss_fn(model(batch[0]), batch).backward()
                opt.step()

            return fp_step
        opt = torch.optim.AdamW(alrs_param_groups(bitswitch.train.step.unwrap(model), 1e-3))
        return lambda: joint_step(model, batch, loss_fn, opt, bits=list(bits))

    steps = {"fp32": trainer(copy.deepcopy(fp32), None)}
    models: dict[str, torch.nn.Module] = {}
    for mode in MODES:
        models[f"{mode} joint"] = quantized(BITS, mode)
        steps[f"{mode} joint"] = trainer(models[f"{mode} joint"], BITS)
        for b in BITS:
            models[f"{mode} {b}"] = quantized((b,), mode)
            steps[f"{mode} {b}"] = trainer(models[f"{mode} {b}"], (b,))
    compile_s: dict[str, float] = {}
    if not args.no_compile:
        for name, make in [("fp32 compiled", lambda: (torch.compile(copy.deepcopy(fp32)), None)),
                           ("wo 4 compiled", lambda: (torch.compile(quantized((4,), "wo")), (4,))),
                           ("wa 4 compiled", lambda: (torch.compile(quantized((4,), "wa")), (4,)))]:
            step = trainer(*make())
            t0 = time.perf_counter()
            step()
            compile_s[name] = time.perf_counter() - t0
            steps[name] = step
            print(f"{name}: first step (compilation) {compile_s[name]:.1f} s", flush=True)
    for fn in steps.values():  # warm-up
        fn()
        fn()
    times = round_robin(steps, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print({k: round(v * 1e3, 1) for k, v in med.items()}, flush=True)

    rows = []
    for mode, label in MODES.items():
        sep = sum(med[f"{mode} {b}"] for b in BITS)
        rows.append({"step": f"{label} joint {{8,6,4,2}}", "ms (median)": med[f"{mode} joint"] * 1e3,
                     "x FP32 step": med[f"{mode} joint"] / med["fp32"], "note": f"x sum of separate steps: {med[f'{mode} joint'] / sep:.3f}"})
        rows.append({"step": f"{label} separate 8+6+4+2 (sum)", "ms (median)": sep * 1e3, "x FP32 step": sep / med["fp32"], "note": ""})
        for b in BITS:
            rows.append({"step": f"{label} separate {b}-bit", "ms (median)": med[f"{mode} {b}"] * 1e3,
                         "x FP32 step": med[f"{mode} {b}"] / med["fp32"], "note": ""})
    rows.append({"step": "FP32", "ms (median)": med["fp32"] * 1e3, "x FP32 step": 1.0, "note": ""})
    for name in compile_s:
        vs = "" if name == "fp32 compiled" else f"; x compiled FP32 step {med[name] / med['fp32 compiled']:.3f}"
        rows.append({"step": name, "ms (median)": med[name] * 1e3, "x FP32 step": med[name] / med["fp32"],
                     "note": f"compilation (first step) {compile_s[name]:.0f} s{vs}"})

    profile = {}
    if args.profile_steps:
        for name in ("fp32", "wo 4", "wa 4"):
            profile[name] = _profile(steps[name], args.profile_steps)
    md = "\n".join([
        "# Training cost on the character Llama (char_llama, 0.79 M parameters)",
        "",
        f"Batch {args.batch_size} x {ctx} characters, AdamW, forward + backward + optimizer step; {args.rounds} round-robin rounds "
        f"in one process, medians; {torch.get_num_threads()} torch thread(s). Weight-only: q/k/v/o/gate/up/down weights quantized; "
        "W+A: their inputs too (SiLU input, RMSNorm, attention products, embeddings and the tied head float). "
        "Goal: a 4-bit step <= 1.2x the FP32 step in eager mode.",
        "",
        md_table(rows, ["step", "ms (median)", "x FP32 step", "note"]),
        "",
        *([f"## Where the time goes (torch.profiler, {args.profile_steps} eager steps, self CPU time)", ""] if profile else []),
        *[f"**{name}** ({sum(r['self_ms'] for r in ops):.0f} ms in the top {len(ops)} ops):\n\n"
          + md_table(ops, ["op", "self_ms", "calls"]) + "\n" for name, ops in profile.items()],
    ])
    data = {"args": vars(args), "median_s": med, "times_s": times, "compile_s": compile_s, "rows": rows, "profile": profile}
    return publish(args, data, md)


def _profile(step, n: int, top: int = 10) -> list[dict[str, object]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3 / n, "calls": e.count // n} for e in events]


if __name__ == "__main__":
    raise SystemExit(main())
