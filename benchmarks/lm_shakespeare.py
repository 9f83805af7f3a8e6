"""Bit-switchable character language model on Shakespeare: every method on the same model, data and compute.

The model is the zoo's ``char_llama`` (Hugging Face ``LlamaForCausalLM``, 4 layers, width 128,
context 64, ~0.79 M parameters); the data the README's fixed split of ``shakespeare/plays``. Only
the public API is used: ``bitswitch.quantize``/``calibrate``, ``bitswitch.train.alrs_param_groups``
+ ``joint_step``, ``bitswitch.lm.lm_loss``, ``bitswitch.save``/``load`` with ``lm_metadata``.

Methods (each a stage with its own folder ``<runs>/<method>/``: the checkpoint and ``result.json``;
a finished stage is read back, so an interrupted run resumes and reruns only what is missing):

* ``fp32``: the float model, nanoGPT's CPU budget (``--fp32-steps`` of ``--batch`` x context);
* ``rtn_*``: round-to-nearest post-training quantization, one model per bit-width (quantize for that
  bit alone, calibrate, no training);
* ``slice_*``: the untrained int8 grid switched down by Double Rounding (quantize for the bit list,
  weight scales calibrated for int8 alone, so the 8-bit row is the RTN int8 model: one file);
* ``separate_*``: one model per bit-width, quantization-aware trained ``--steps`` steps from FP32;
* ``joint_*``: joint training of the bit list for ``--steps`` steps from FP32 (a joint step runs one
  forward/backward pass per bit-width, so it costs what the separate models cost together), with
  ALRS off (``joint_noalrs``), on (``joint_alrs``), on + in-place distillation (``joint_alrs_kd``).

``*_w`` stages quantize weights only (activations in float), ``*_wa`` weights and activations (the
paper's setting; embeddings, head, RMSNorm, the SiLU input and the attention products stay float).
Bit-widths in ``--untrained`` are evaluated without being trained, by adding them to a reloaded
weight-only checkpoint (:func:`bitswitch.nn.convert.add_bit_width`): interpolation.

    PYTHONPATH=. nice -n 5 python benchmarks/lm_shakespeare.py            # everything (hours on a shared CPU)
    PYTHONPATH=. python benchmarks/lm_shakespeare.py --smoke --runs /tmp/lm_smoke --out /tmp/lm_smoke
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, publish  # noqa: E402

import bitswitch  # noqa: E402
import bitswitch.models  # noqa: E402
from bitswitch.data.text import TextSplits, load_shakespeare, random_windows  # noqa: E402
from bitswitch.export.checkpoint import atomic_write_bytes  # noqa: E402
from bitswitch.lm import lm_loss, lm_metadata, perplexity  # noqa: E402
from bitswitch.nn.convert import add_bit_width  # noqa: E402
from bitswitch.train import alrs_param_groups, joint_step  # noqa: E402

WEIGHT_ONLY = ["model.layers.*"]


def lm_batch_loss(out: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(out.logits.flatten(0, 1), batch[1].flatten())


def schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int, floor: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine down to ``floor`` times the rate (nanoGPT's schedule)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(step - warmup, total - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Bench:
    """The data, the budget and the stage cache of one benchmark run."""

    def __init__(self, args: argparse.Namespace, data: TextSplits):
        self.args, self.data = args, data
        self.runs = Path(args.runs)
        self.context = args.context
        self.meta = lm_metadata(data.vocab, args.context)

    # -- evaluation -------------------------------------------------------------------------
    def loss(self, model: nn.Module, split: str, limit: int) -> float:
        return lm_loss(model, self.data.split(split), self.context, limit=limit)

    def table_losses(self, model: nn.Module, bits: Sequence[int] | None) -> dict[str, dict[str, float]]:
        """{"w8": {"val": .., "test": ..}} (or {"fp32": ..}) on the table's fixed slices of both splits."""
        out = {}
        for b in [None] if bits is None else bits:
            if b is not None:
                bitswitch.set_precision(model, b)
            out["fp32" if b is None else f"w{b}"] = {s: self.loss(model, s, self.args.eval_chars) for s in ("val", "test")}
        return out

    # -- the stage cache --------------------------------------------------------------------
    def stage(self, name: str, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        folder = self.runs / name
        done = folder / "result.json"
        if done.is_file():
            result = json.loads(done.read_text())
            if result.get("eval_chars", 65536) != self.args.eval_chars:
                result = self.reevaluate(result)
                self.write(done, result)
            return result
        folder.mkdir(parents=True, exist_ok=True)
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        result = run(folder)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        result["eval_chars"] = self.args.eval_chars
        self.write(done, result)
        print(f"== {name} done in {result['wall_s']:.0f} s: {json.dumps(result['losses'])}", flush=True)
        return result

    @staticmethod
    def write(path: Path, result: dict[str, Any]) -> None:
        text = json.dumps(result, indent=2) + "\n"
        atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))

    def reevaluate(self, result: dict[str, Any]) -> dict[str, Any]:
        """The table losses of a finished stage's checkpoint at this run's ``--eval-chars``."""
        if "checkpoint" not in result:
            raise SystemExit(f"a stage was evaluated on {result.get('eval_chars', 65536)} characters and has no single checkpoint "
                             f"to re-evaluate on {self.args.eval_chars}: delete its folder to rerun it")
        model = bitswitch.load(result["checkpoint"])
        if result.get("untrained_bits"):
            add_bit_width(model, result["untrained_bits"])
        bits = sorted({*result.get("trained_bits", []), *result.get("untrained_bits", [])}, reverse=True) or None
        return {**result, "losses": self.table_losses(model, bits), "eval_chars": self.args.eval_chars}

    def batches(self, seed: int):
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield random_windows(self.data.train, self.args.batch, self.context, gen)

    # -- FP32 -------------------------------------------------------------------------------
    def fit_fp32(self, model: nn.Module, folder: Path, *, steps: int, lr: float, warmup: int, seed: int, tag: str) -> list[dict[str, Any]]:
        """Plain AdamW training; every ``--eval-every`` steps the best model on ``--select-chars`` val characters is saved."""
        a = self.args
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.99))
        sched = schedule(opt, steps, warmup)
        best, curve = math.inf, []
        data = self.batches(seed)
        model.train()
        for step in range(1, steps + 1):
            batch = next(data)
            loss = lm_batch_loss(model(batch[0]), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % a.eval_every == 0 or step == steps:
                val = self.loss(model, "val", a.select_chars)
                curve.append({"step": step, "train": round(loss.item(), 4), "val": round(val, 4)})
                print(f"{tag} step {step}: train {loss.item():.3f} val[{a.select_chars}] {val:.4f}", flush=True)
                if val < best:
                    best = val
                    bitswitch.save(model, folder / "best.safetensors", extra=self.meta)
        return curve

    def fp32(self, folder: Path) -> dict[str, Any]:
        """nanoGPT's CPU reference budget; the whole validation and test splits are evaluated once."""
        a = self.args
        torch.manual_seed(a.seed)
        model = bitswitch.models.build("char_llama", vocab_size=len(self.data.vocab), context=self.context, **a.model)
        curve = self.fit_fp32(model, folder, steps=a.fp32_steps, lr=a.fp32_lr, warmup=a.warmup, seed=a.seed, tag="fp32")
        model = bitswitch.load(folder / "best.safetensors")
        full = {s: lm_loss(model, self.data.split(s), self.context, limit=a.select_chars if a.smoke else 0) for s in ("val", "test")}
        print(f"fp32 full splits: {full}", flush=True)
        params = sum(p.numel() for p in model.parameters())
        return {"losses": self.table_losses(model, None), "full_splits": full, "curve": curve, "params": params,
                "tokens": a.fp32_steps * a.batch * self.context, "checkpoint": str(folder / "best.safetensors")}

    def fp32_more(self, folder: Path) -> dict[str, Any]:
        """The FP32 model trained ``--steps`` more steps on the joint runs' batches: what the extra data alone gives."""
        a = self.args
        curve = self.fit_fp32(self.fp32_model(), folder, steps=a.steps, lr=a.lr, warmup=max(1, a.steps // 20), seed=a.seed + 2, tag="fp32_more")
        model = bitswitch.load(folder / "best.safetensors")
        return {"losses": self.table_losses(model, None), "curve": curve, "passes": a.steps, "checkpoint": str(folder / "best.safetensors")}

    def fp32_model(self) -> nn.Module:
        model = bitswitch.load(self.runs / "fp32" / "best.safetensors")
        model.train()
        return model

    # -- quantized ----------------------------------------------------------------------------
    def quantized(self, bits: Sequence[int], weight_only: bool, weight_init: str = "mse") -> nn.Module:
        """The FP32 model quantized for ``bits`` and calibrated on a few training batches."""
        qmodel = bitswitch.quantize(self.fp32_model(), tuple(bits), weight_only=WEIGHT_ONLY if weight_only else ())
        data = self.batches(self.args.seed + 1)
        bitswitch.calibrate(qmodel, (next(data) for _ in range(self.args.calib_batches)), weight_init=weight_init)
        return qmodel

    def evaluate_file(self, qmodel: nn.Module, folder: Path, bits: Sequence[int], untrained: Sequence[int]) -> dict[str, Any]:
        """Save, reload and evaluate the file at every bit-width (and at the untrained ones, weight-only)."""
        path = bitswitch.save(qmodel, folder / "model.safetensors", extra=self.meta)
        model = bitswitch.load(path)
        if untrained:
            add_bit_width(model, untrained)
        every = sorted({*bits, *untrained}, reverse=True)
        return {"losses": self.table_losses(model, every), "trained_bits": list(bits), "untrained_bits": list(untrained),
                "checkpoint": str(path)}

    def rtn(self, bits: Sequence[int], weight_only: bool, untrained: Sequence[int]) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            losses = {}
            for b in sorted({*bits, *untrained}, reverse=True):
                model = self.quantized((b,), weight_only)
                bitswitch.set_precision(model, b)
                losses.update(self.table_losses(model, [b]))
            return {"losses": losses, "trained_bits": [], "untrained_bits": sorted({*bits, *untrained}, reverse=True)}
        return run

    def slice(self, bits: Sequence[int], weight_only: bool, untrained: Sequence[int]) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            model = self.quantized((max(bits),), weight_only)  # the RTN int8 grid, switched down by Double Rounding
            result = self.evaluate_file(model, folder, bits, [*(b for b in bits if b != max(bits)), *untrained])
            result["trained_bits"] = []
            return result
        return run

    def train(self, qmodel: nn.Module, bits: Sequence[int], *, alrs: bool, distill: bool, steps: int, seed: int, tag: str) -> list[dict[str, Any]]:
        a = self.args
        opt = torch.optim.AdamW(alrs_param_groups(qmodel, a.lr, weight_decay=0.0, alrs=alrs), lr=a.lr)
        sched = schedule(opt, steps, max(1, steps // 20))
        data = self.batches(seed)
        qmodel.train()
        log = []
        for step in range(1, steps + 1):
            losses = joint_step(qmodel, next(data), lm_batch_loss, opt, bits=list(bits), distill=distill)
            sched.step()
            if step % max(1, steps // 10) == 0 or step == steps:
                log.append({"step": step, **{f"w{b}": round(v, 4) for b, v in losses.items()}})
                print(f"{tag} step {step}/{steps}: " + ", ".join(f"W{b} {v:.3f}" for b, v in losses.items()), flush=True)
        return log

    def joint(self, bits: Sequence[int], weight_only: bool, untrained: Sequence[int], *, alrs: bool, distill: bool) -> Callable[[Path], dict[str, Any]]:
        def run(folder: Path) -> dict[str, Any]:
            qmodel = self.quantized(bits, weight_only)
            log = self.train(qmodel, bits, alrs=alrs, distill=distill, steps=self.args.steps, seed=self.args.seed + 2, tag=folder.name)
            result = self.evaluate_file(qmodel, folder, bits, untrained)
            return {**result, "train_log": log, "steps": self.args.steps, "passes": self.args.steps * len(bits)}
        return run

    def separate(self, bits: Sequence[int], weight_only: bool) -> Callable[[Path], dict[str, Any]]:
        """One model per bit-width, ``--steps`` single-bit steps each: the joint run's forward/backward passes."""
        def run(folder: Path) -> dict[str, Any]:
            losses, logs = {}, {}
            for b in bits:
                qmodel = self.quantized((b,), weight_only)
                logs[f"w{b}"] = self.train(qmodel, (b,), alrs=True, distill=False, steps=self.args.steps, seed=self.args.seed + 2, tag=f"{folder.name} W{b}")
                sub = folder / f"w{b}"
                sub.mkdir(exist_ok=True)
                losses.update(self.evaluate_file(qmodel, sub, (b,), ())["losses"])
            return {"losses": losses, "trained_bits": list(bits), "untrained_bits": [], "train_log": logs,
                    "steps": self.args.steps, "passes": self.args.steps * len(bits)}
        return run


def plan(bench: Bench, args: argparse.Namespace) -> list[tuple[str, Callable[[Path], dict[str, Any]]]]:
    """Every stage, in priority order: (name, run)."""
    b4, b3 = tuple(args.bits), tuple(args.bits_b)
    u = tuple(args.untrained)
    return [
        ("fp32", bench.fp32),
        ("fp32_more", bench.fp32_more),
        ("rtn_w", bench.rtn(b4, True, u)),
        ("slice_w", bench.slice(b4, True, u)),
        ("joint_alrs_w", bench.joint(b4, True, u, alrs=True, distill=False)),
        ("separate_w", bench.separate(b4, True)),
        ("joint_noalrs_w", bench.joint(b4, True, u, alrs=False, distill=False)),
        ("joint_alrs_kd_w", bench.joint(b4, True, u, alrs=True, distill=True)),
        ("rtn_wa", bench.rtn(b4, False, ())),
        ("joint_alrs_wa", bench.joint(b4, False, (), alrs=True, distill=False)),
        ("joint_alrs_w_8432", bench.joint(b3, True, (), alrs=True, distill=False)),
        ("separate_wa", bench.separate(b4, False)),
        ("joint_noalrs_wa", bench.joint(b4, False, (), alrs=False, distill=False)),
        ("joint_alrs_kd_wa", bench.joint(b4, False, (), alrs=True, distill=True)),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/shakespeare")
    p.add_argument("--runs", default="/work/runs/lm", help="stage folders (checkpoint + result.json); finished stages are reused")
    p.add_argument("--only", default="", help="comma-separated stages to run now (default: all, in priority order)")
    p.add_argument("--bits", default="8,6,4,2")
    p.add_argument("--bits-b", default="8,4,3,2", help="the second bit list (weight-only joint ALRS)")
    p.add_argument("--untrained", default="5,3", help="weight bit-widths evaluated but never trained (interpolation)")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--fp32-steps", type=int, default=2000)
    p.add_argument("--fp32-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=60, help="fine-tuning steps of every quantized training (a joint step = one pass per bit-width)")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (warmup 5 %%, cosine)")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=250, help="FP32 steps between validations (checkpoint selection)")
    p.add_argument("--select-chars", type=int, default=32768, help="validation characters for FP32 checkpoint selection")
    p.add_argument("--eval-chars", type=int, default=32768, help="characters of val and of test in the table (0 = whole splits)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny model, few steps, few characters: checks the pipeline in seconds")
    p.add_argument("--note", default="", help="a paragraph put under the title of the results")
    p.add_argument("--name", default="lm_shakespeare")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    for key in ("bits", "bits_b", "untrained"):
        setattr(args, key, [int(b) for b in getattr(args, key).split(",") if b])
    args.model = {}
    if args.smoke:
        args.model = {"dim": 16, "layers": 1, "heads": 2, "hidden": 32}
        args.context, args.batch, args.fp32_steps, args.warmup, args.steps = 16, 4, 4, 2, 2
        args.eval_every, args.select_chars, args.eval_chars, args.calib_batches = 2, 256, 256, 1
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; valid: {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    data = load_shakespeare(args.data)
    bench = Bench(args, data)
    stages = plan(bench, args)
    results = {}
    for name, run in stages:
        if only and name not in only:
            done = bench.runs / name / "result.json"
            if done.is_file():
                results[name] = json.loads(done.read_text())
            continue
        results[name] = bench.stage(name, run)
    return report(args, results)


METHODS = {  # stage -> (mode, label), table order
    "fp32": ("FP32", "FP32"),
    "fp32_more": ("FP32", "FP32 + the fine-tuning steps (float)"),
    "rtn_w": ("weight-only", "round-to-nearest PTQ, one model per bit"),
    "slice_w": ("weight-only", "slice of the RTN int8 model (one file)"),
    "separate_w": ("weight-only", "separate QAT per bit"),
    "joint_noalrs_w": ("weight-only", "joint, no ALRS"),
    "joint_alrs_w": ("weight-only", "joint + ALRS"),
    "joint_alrs_kd_w": ("weight-only", "joint + ALRS + distillation"),
    "joint_alrs_w_8432": ("weight-only {8,4,3,2}", "joint + ALRS"),
    "rtn_wa": ("W+A", "round-to-nearest PTQ, one model per bit"),
    "separate_wa": ("W+A", "separate QAT per bit"),
    "joint_noalrs_wa": ("W+A", "joint, no ALRS"),
    "joint_alrs_wa": ("W+A", "joint + ALRS"),
    "joint_alrs_kd_wa": ("W+A", "joint + ALRS + distillation"),
}


def table(args: argparse.Namespace, results: dict[str, Any], split: str, bits: list[int], ppl: bool) -> str:
    rows = []
    for name, (mode, label) in METHODS.items():
        if name not in results:
            continue
        r = results[name]
        row: dict[str, Any] = {"mode": mode, "method": label}
        row["float"] = f"{r['losses']['fp32'][split]:.4f}" if "fp32" in r["losses"] else ""
        for b in bits:
            v = r["losses"].get(f"w{b}", {}).get(split)
            untrained = b in r.get("untrained_bits", []) and r.get("trained_bits")
            cell = "" if v is None else f"{v:.4f}" + (f" ({perplexity(v):.2f})" if ppl else "") + ("*" if untrained else "")
            row[f"W{b}"] = cell
        row["train passes"] = r.get("passes", args.fp32_steps if name == "fp32" else 0)
        row["wall s"] = r["wall_s"]
        rows.append(row)
    return md_table(rows)


def goals(results: dict[str, Any], split: str = "val") -> list[str]:
    """The issue's goals, checked on ``split`` (paired: every method on the same characters)."""
    def v(name: str, key: str) -> float | None:
        return results.get(name, {}).get("losses", {}).get(key, {}).get(split)

    fp32, more, lines = v("fp32", "fp32"), v("fp32_more", "fp32"), []
    for name in ("joint_alrs_w", "joint_alrs_kd_w", "joint_noalrs_w", "joint_alrs_wa"):
        if name in results:
            gaps = {b: v(name, f"w{b}") - fp32 for b in (8, 6, 4) if v(name, f"w{b}") is not None}
            worst = max(gaps.values())
            lines.append(f"{METHODS[name][0]} {METHODS[name][1]}: 8/6/4-bit minus FP32 = "
                         + ", ".join(f"{g:+.4f}" for g in gaps.values())
                         + (" (goal <= 0.01: met)" if worst <= 0.01 else f" (goal <= 0.01: missed by {worst - 0.01:.4f})")
                         + ("; minus FP32 + the fine-tuning steps: " + ", ".join(f"{g + fp32 - more:+.4f}" for g in gaps.values()) if more else ""))
    for mode in ("w", "wa"):
        j2 = v(f"joint_alrs_{mode}", "w2")
        for name in (f"separate_{mode}", f"rtn_{mode}", f"slice_{mode}"):
            other = v(name, "w2")
            if j2 is not None and other is not None:
                lines.append(f"{METHODS[name][0]} 2-bit, joint + ALRS {j2:.4f} vs {METHODS[name][1]} {other:.4f}: joint {'better' if j2 < other else 'worse'} by {abs(other - j2):.4f}")
    for mode in ("w", "wa"):
        for a, b, what in (("joint_alrs", "joint_noalrs", "ALRS (on minus off)"), ("joint_alrs_kd", "joint_alrs", "distillation (on minus off)")):
            a, b = f"{a}_{mode}", f"{b}_{mode}"
            if a in results and b in results:
                keys = [k for k in results[a]["losses"] if k in results[b]["losses"]]
                lines.append(f"{METHODS[a][0]} {what}: " + ", ".join(f"{k.upper()} {v(a, k) - v(b, k):+.4f}" for k in keys))
    return lines


def plot(results: dict[str, Any], path: Path, bits: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp32 = results["fp32"]["losses"]["fp32"]["val"]
    modes = [m for m in ("weight-only", "W+A") if any(METHODS[n][0].startswith(m) for n in results)]
    if not modes:
        return
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for name, r in results.items():
            if METHODS[name][0] == "FP32" or not METHODS[name][0].startswith(mode):
                continue
            xs = sorted((int(k[1:]) for k in r["losses"]), reverse=True)
            label = METHODS[name][1] + (" {8,4,3,2}" if name.endswith("8432") else "")
            ys = [r["losses"][f"w{b}"]["val"] for b in xs]
            line, = ax.plot(xs, ys, marker="o", label=label)
            if r.get("trained_bits"):  # hollow markers: bit-widths the model was not trained for
                hollow = [(x, y) for x, y in zip(xs, ys) if x in r.get("untrained_bits", [])]
                if hollow:
                    ax.plot(*zip(*hollow), "o", markerfacecolor="white", markeredgecolor=line.get_color(), zorder=3)
        ax.axhline(fp32, color="black", linestyle="--", linewidth=1, label=f"FP32 ({fp32:.3f})")
        if "fp32_more" in results:
            more = results["fp32_more"]["losses"]["fp32"]["val"]
            ax.axhline(more, color="grey", linestyle=":", linewidth=1, label=f"FP32 + fine-tuning steps ({more:.3f})")
        ax.set_yscale("log")
        ax.set_xticks(bits)
        ax.set_xlabel("weight bits" + (" (= activation bits)" if mode == "W+A" else ", activations float"))
        ax.set_ylabel("validation loss (nats/char, log scale)")
        ax.set_title(f"char_llama on Shakespeare, {mode} (hollow: untrained bit-width)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace, results: dict[str, Any]) -> int:
    if "fp32" not in results:
        raise SystemExit("no FP32 result yet: run the fp32 stage first")
    bits = sorted({int(k[1:]) for r in results.values() for k in r["losses"] if k != "fp32"}, reverse=True)
    f = results["fp32"]
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{args.name}.png"
    plot(results, png, bits)
    shape = ", ".join(f"{k} {v}" for k, v in (args.model or {"layers": 4, "dim": 128, "heads": 4, "hidden": 336}).items())
    chars = f"the first {args.eval_chars:,} characters" if args.eval_chars else "all characters"
    md = ("# Bit-switchable char_llama on Shakespeare: every method on the same model, data and compute\n\n"
          + (f"{args.note}\n\n" if args.note else "") +
          f"Model: `char_llama` ({f['params']:,} parameters, {shape}, context {args.context}); data: the fixed "
          f"per-play split of `shakespeare/plays` (82 characters). Loss in nats per character on {chars} of each split "
          f"(perplexity in brackets); `*`: a bit-width the model was not trained for (interpolation: Double Rounding of the "
          f"same int8 codes). Quantized models are evaluated from their reloaded integer checkpoint.\n\n"
          f"**FP32** (nanoGPT's CPU reference budget: {args.fp32_steps:,} steps of {args.batch} x {args.context} characters = "
          f"{f['tokens']:,} tokens, AdamW {args.fp32_lr:g}, warmup {args.warmup} + cosine, best of the validations every "
          f"{args.eval_every} steps on {args.select_chars:,} val characters): whole validation split "
          f"{f['full_splits']['val']:.4f}, whole test split {f['full_splits']['test']:.4f} (reference: 1.88 val on tiny Shakespeare).\n\n"
          f"**Quantized training** starts from the FP32 checkpoint: {args.steps} steps of {args.batch} x {args.context} "
          f"(AdamW {args.lr:g}, warmup 5 % + cosine), calibrated on {args.calib_batches} training batches. A joint step runs one "
          f"forward/backward pass per bit-width; each separate model gets {args.steps} single-bit steps, so all "
          f"trainings of one bit list cost the same passes. `wall s`: the stage's wall time on a CPU shared with other jobs "
          f"({args.threads} torch thread(s)), evaluation included.\n\n"
          f"## Validation loss (perplexity)\n\n" + table(args, results, "val", bits, True)
          + "\n\n## Test loss\n\n" + table(args, results, "test", bits, False)
          + "\n\n## Goals (validation; negative = lower loss)\n\n" + "\n".join(f"- {line}" for line in goals(results))
          + f"\n\n![loss per bit]({png.name})")
    data = {"args": {k: v for k, v in vars(args).items() if k not in ("out",)}, "results": results}
    return publish(args, data, md)


if __name__ == "__main__":
    raise SystemExit(main())
