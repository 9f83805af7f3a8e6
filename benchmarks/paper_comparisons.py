"""The paper's comparisons on a converged FP32 model, every number on the whole test split with a paired SE.

Stages (each a ``bitswitch train`` run in ``--runs/<stage>``; a finished stage is kept, an
interrupted one resumes where it stopped, so the script can be re-run or split over processes with
``--stages``):

* ``fp32``: the FP32 model, from ``--fp32-config`` (or an existing finished run folder: ``--fp32``);
* ``fp32_tuned``: the FP32 model fine-tuned as the quantized runs are (same recipe and epochs, no
  quantization): the control that separates what quantization costs from what the fine-tuning does;
* from its best checkpoint, with ``--qat-config`` plus one change each:
  ``joint`` ({8,6,4,2}, ALRS), ``joint_no_alrs``, ``joint_alrs_shared`` (ALRS on the shared weight
  scales only), ``joint_distill`` (in-place distillation),
  ``joint_distill_neighbour`` (each bit-width distilled from the one above, 8->6->4->2),
  ``joint_summed`` (one optimizer step on the summed loss of the bit-widths, not one per bit-width),
  ``joint_neighbour_bitlr`` (neighbour distillation with the 8/6/4-bit steps at 0.25/0.25/0.5 of the
  rate, ``bit_lr_mult``: the high precisions move the shared weights less than the 2-bit step does),
  ``joint_neighbour_bitstate`` (neighbour distillation, each bit-width's step with its own Adam moments,
  ``optimizer_state: per_bit``: one shared state blends the bit-widths' gradients into every step),
  ``joint_432`` ({4,3,2}, ALRS), ``unshared`` (per-bit weight scales, FP32 storage: the storage
  baseline) and ``fixed_w<b>``: one fixed-precision model per bit-width with the same epochs, so the
  four together make the same forward/backward passes as one joint run (equal compute).

The report (``--report``, also after the stages) evaluates every best checkpoint on every test image
at each of its bit-widths and compares pairs of models on the same images: the difference in points
and its standard error from the discordant pairs (``bitswitch.search.evaluate.paired_difference``).
It writes ``<name>.md/.json`` and ``<name>.png`` (the validation accuracy of the joint runs per epoch).
``--vs OTHER_RUNS`` pairs each stage with the stage of the same name in another runs folder (e.g. the
same recipe with fewer epochs): a column ``<stage> - <folder name>`` per bit-width.

    python benchmarks/paper_comparisons.py --fp32-config configs/fashion_mnist_fp32.yaml \\
        --qat-config configs/fashion_mnist_joint.yaml --runs runs/paper_fmnist --name paper_fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import md_table, publish  # noqa: E402

import bitswitch  # noqa: E402
from bitswitch.export.checkpoint import read_metadata  # noqa: E402
from bitswitch.nn import recalibrate_bn  # noqa: E402
from bitswitch.search.evaluate import at_config, dataset_batches, paired_difference  # noqa: E402
from bitswitch.search.subnet import BNRecipe  # noqa: E402
from bitswitch.train import TrainConfig, train  # noqa: E402
from bitswitch.train import evaluate  # noqa: E402
from bitswitch.train.data import load_data, make_loader  # noqa: E402
from bitswitch.train.loop import build_run_model  # noqa: E402

BITS = [8, 6, 4, 2]
VARIANTS: dict[str, dict[str, Any]] = {
    "joint": {"mode": "joint", "bits": BITS},
    "joint_no_alrs": {"mode": "joint", "bits": BITS, "alrs": False},
    "joint_alrs_shared": {"mode": "joint", "bits": BITS, "alrs_scope": "shared"},
    "joint_distill": {"mode": "joint", "bits": BITS, "distill": "inplace"},
    "joint_distill_neighbour": {"mode": "joint", "bits": BITS, "distill": "neighbour"},
    "joint_summed": {"mode": "joint", "bits": BITS, "loss_mode": "summed"},
    "joint_neighbour_bitlr": {"mode": "joint", "bits": BITS, "distill": "neighbour", "bit_lr_mult": [0.25, 0.25, 0.5, 1.0]},
    "joint_neighbour_bitstate": {"mode": "joint", "bits": BITS, "distill": "neighbour", "optimizer_state": "per_bit"},
    "joint_432": {"mode": "joint", "bits": [4, 3, 2]},
    "unshared": {"mode": "joint", "bits": BITS, "variant": "unshared"},
    **{f"fixed_w{b}": {"mode": "fixed", "bits": [b]} for b in BITS},
    "fp32_tuned": {"mode": "fp32", "compile": False},
}
STAGES = ["fp32", *VARIANTS]
#: the {8,6,4,2} runs each compared with FP32 and the separate models; the goals are judged on the first one present
JOINT_RUNS = ("joint", "joint_distill", "joint_distill_neighbour", "joint_summed", "joint_neighbour_bitlr", "joint_neighbour_bitstate")
#: the goals of the issue: joint 8/6/4-bit within 0.3 points of FP32; 2-bit within these (per dataset)
GOAL_2BIT = {"fashion_mnist": 1.5, "cifar10": 2.0}


def run_stage(cfg: TrainConfig) -> float:
    """Train (or resume, or keep) one stage; its wall time in this call (0 when it had finished)."""
    out = Path(cfg.out_dir)
    if (out / "summary.json").exists():
        check_same_run(cfg, TrainConfig.from_file(out / "config.yaml"))
        print(f"{out}: finished, kept", flush=True)
        return 0.0
    t0 = time.perf_counter()
    train(cfg, resume=(out / "state.safetensors").exists())
    return time.perf_counter() - t0


def check_same_run(cfg: TrainConfig, done: TrainConfig) -> None:
    """Refuse to keep a finished stage that another config made (display keys and the spelling of data_root aside)."""
    diff = {k: v for k, v in done.diff(cfg).items() if k != "data_root" and not (k == "init_from" and same_path(*v))}
    if not same_path(done.data_root, cfg.data_root):
        diff["data_root"] = (done.data_root, cfg.data_root)
    if diff:
        raise SystemExit(f"{cfg.out_dir} was trained with another config ({', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in diff.items())}); "
                         "choose another --runs folder or remove it")


def same_path(a: str | None, b: str | None) -> bool:
    return a == b or (a is not None and b is not None and Path(a).resolve() == Path(b).resolve())


def load_config(path: str, changes: dict[str, Any]) -> TrainConfig:
    """A run config file with some keys replaced."""
    return TrainConfig.from_dict({**TrainConfig.from_file(path).to_dict(), **changes}, where=path)


def stage_config(name: str, args: argparse.Namespace) -> TrainConfig:
    runs = Path(args.runs)
    if name == "fp32":
        return load_config(args.fp32_config, {"out_dir": str(runs / "fp32"), "progress": False})
    fp32_dir = Path(args.fp32) if args.fp32 else runs / "fp32"
    cfg = load_config(args.qat_config, {**VARIANTS[name], "init_from": str(fp32_dir), "out_dir": str(runs / name), "progress": False})
    return cfg.apply_overrides(args.qat_set) if args.qat_set else cfg


@torch.no_grad()
def correct_per_bit(path: Path, data_root: str, test_subset: int = 0, recal_images: int = 0) -> tuple[dict[str, torch.Tensor], TrainConfig]:
    """Per-image top-1 correctness on the test split (all of it unless ``test_subset``) at each precision of a run's checkpoint.

    The test data is read from ``data_root`` (the ``--qat-config``'s), not from the folder recorded in
    the checkpoint: a committed checkpoint records the machine that trained it. ``recal_images``:
    re-estimate the BatchNorm statistics of each precision first on that many training images (the
    same seeded ones for every run, as ``bitswitch eval --recalibrate-bn N`` does)."""
    meta = read_metadata(path)
    cfg = TrainConfig.from_dict(meta["extra"]["train_config"], where=str(path))
    cfg.test_subset, cfg.data_root = test_subset, data_root
    data = load_data(cfg)
    loader = make_loader(data, "test", cfg, "cpu")
    recal = None
    if recal_images:
        r = BNRecipe(images=recal_images)
        recal, _ = dataset_batches(cfg.dataset, data_root, r.split, r.images, r.batch_size, seed=r.seed, mean=data.mean, std=data.std)
    model = bitswitch.load(path).eval()
    out: dict[str, torch.Tensor] = {}
    for b in ([None] if cfg.mode == "fp32" else cfg.bits):
        m = model if b is None else at_config(model, b, inplace=True)
        if recal is not None:
            recalibrate_bn(m, recal)
        loader.set_epoch(0)
        out["fp32" if b is None else f"w{b}a{b}"] = torch.cat([m(x).argmax(1) == y for x, y in loader])
    return out, cfg


def paired_stages(other: Path, cfgs: dict[str, TrainConfig], data_root: str, args: argparse.Namespace) -> dict[str, dict[str, torch.Tensor]]:
    """Per-image correctness of the stages of ``other`` (``--vs``) that this report has too, on the same test images."""
    out = {}
    for k, cfg in cfgs.items():
        if k == "fp32" or not (other / k / "summary.json").exists():
            continue
        out[k], theirs = correct_per_bit(other / k / "best.safetensors", data_root, args.test_subset, args.recalibrate_bn)
        if theirs.dataset != cfg.dataset:
            raise SystemExit(f"--vs {other}: its {k} was trained on {theirs.dataset}, this report's on {cfg.dataset}")
    if not out:
        raise SystemExit(f"--vs {other}: none of this report's stages ({', '.join(k for k in cfgs if k != 'fp32')}) has finished there")
    return out


def pm(pair: tuple[float, float]) -> str:
    return f"{pair[0]:+.2f} ± {pair[1]:.2f}"


def report(args: argparse.Namespace, wall: dict[str, float]) -> int:
    runs = Path(args.runs)
    fp32_dir = Path(args.fp32) if args.fp32 else runs / "fp32"
    dirs = {"fp32": fp32_dir, **{k: runs / k for k in VARIANTS}}
    missing = [k for k, d in dirs.items() if not (d / "summary.json").exists()]
    if missing:
        print(f"not finished yet: {', '.join(missing)}; the report covers the others", flush=True)
    correct, cfgs, summaries, sizes = {}, {}, {}, {}
    data_root = stage_config("joint", args).data_root
    for k, d in dirs.items():
        if k in missing:
            continue
        correct[k], cfgs[k] = correct_per_bit(d / "best.safetensors", data_root, args.test_subset, args.recalibrate_bn)
        summaries[k] = json.loads((d / "summary.json").read_text())
        sizes[k] = (d / "best.safetensors").stat().st_size
    if "fp32" not in correct:
        raise SystemExit("the FP32 stage has not finished: nothing to compare against")
    vs_label, vs = (Path(args.vs).name, paired_stages(Path(args.vs), cfgs, data_root, args)) if args.vs else ("", {})
    fp = correct["fp32"]["fp32"]
    acc = lambda c: 100.0 * float(c.float().mean())  # noqa: E731
    dataset = cfgs["fp32"].dataset
    tol2 = GOAL_2BIT.get(dataset, 1.5)

    # every joint run is compared with FP32 and separate; the goals are judged on the first of JOINT_RUNS present
    joint_runs = [k for k in JOINT_RUNS if k in correct]
    main = joint_runs[0] if joint_runs else None
    rows, goals = [], []
    for b in BITS:
        lab = f"w{b}a{b}"
        row: dict[str, Any] = {"precision": lab.upper(), "FP32": acc(fp)}
        if "fp32_tuned" in correct:
            row["FP32 tuned"] = acc(correct["fp32_tuned"]["fp32"])
        for k in (*JOINT_RUNS, "joint_no_alrs", "joint_alrs_shared", "joint_432", "unshared", f"fixed_w{b}"):
            if k in correct and lab in correct[k]:
                row["separate" if k.startswith("fixed") else k] = acc(correct[k][lab])
        sep = correct[f"fixed_w{b}"][lab] if f"fixed_w{b}" in correct else None
        if sep is not None:
            row["separate - FP32"] = pm(paired_difference(sep, fp))
        for k in joint_runs:
            j = correct[k][lab]
            row[f"{k} - FP32"] = pm(paired_difference(j, fp))
            if "fp32_tuned" in correct:
                row[f"{k} - FP32 tuned"] = pm(paired_difference(j, correct["fp32_tuned"]["fp32"]))
            d_sep = paired_difference(j, sep) if sep is not None else None
            if d_sep is not None:
                row[f"{k} - separate"] = pm(d_sep)
            if k != main:
                continue
            tol = tol2 if b == 2 else 0.3
            gap = acc(fp) - acc(j)
            goals.append({"goal": f"{k} {lab.upper()} within {tol} points of FP32", "measured": f"{-gap:+.2f}", "met": gap <= tol})
            if d_sep is not None:
                goals.append({"goal": f"{k} {lab.upper()} >= separate", "measured": pm(d_sep), "met": d_sep[0] >= 0})
        if "joint" in correct:
            j = correct["joint"][lab]
            if "joint_no_alrs" in correct:
                row["ALRS effect"] = pm(paired_difference(j, correct["joint_no_alrs"][lab]))
            if "joint_alrs_shared" in correct:
                row["ALRS on shared scales only - ALRS"] = pm(paired_difference(correct["joint_alrs_shared"][lab], j))
            if "joint_distill" in correct:
                row["distillation effect"] = pm(paired_difference(correct["joint_distill"][lab], j))
            if "joint_distill_neighbour" in correct:
                row["neighbour distillation effect"] = pm(paired_difference(correct["joint_distill_neighbour"][lab], j))
        if "joint_neighbour_bitlr" in correct and "joint_distill_neighbour" in correct:
            row["per-bit rates effect"] = pm(paired_difference(correct["joint_neighbour_bitlr"][lab], correct["joint_distill_neighbour"][lab]))
        if "joint_neighbour_bitstate" in correct and "joint_distill_neighbour" in correct:
            row["per-bit optimizer state effect"] = pm(paired_difference(correct["joint_neighbour_bitstate"][lab], correct["joint_distill_neighbour"][lab]))
        for k, other in vs.items():
            if lab in other and lab in correct[k]:
                row[f"{k} - {vs_label}"] = pm(paired_difference(correct[k][lab], other[lab]))
        rows.append(row)
    extra_rows = []
    if "joint_432" in correct:
        for b in (4, 3, 2):
            lab = f"w{b}a{b}"
            r = {"precision": lab.upper(), "{4,3,2} ALRS": acc(correct["joint_432"][lab]), "- FP32": pm(paired_difference(correct["joint_432"][lab], fp))}
            if "joint" in correct and lab in correct["joint"]:
                r["- {8,6,4,2}"] = pm(paired_difference(correct["joint_432"][lab], correct["joint"][lab]))
            extra_rows.append(r)

    run_rows = []
    for k in correct:
        s = summaries[k]
        hist = [json.loads(line) for line in (dirs[k] / "metrics.jsonl").read_text().splitlines() if line.strip()]
        run_rows.append({"run": k, "epochs": len(hist), "best epoch": s.get("best_epoch"), "train time, s": sum(h["train_time_s"] for h in hist),
                         "wall time this call, s": round(wall.get(k, 0.0)), "checkpoint bytes": sizes[k],
                         "x FP32 file": sizes[k] / sizes["fp32"]})
    curve_runs = {k: dirs[k] for k in (*JOINT_RUNS, "joint_no_alrs", "joint_alrs_shared", "joint_432", "unshared") if k in correct}
    start = {k: start_accuracy(stage_config(k, args)) for k in curve_runs}
    curve = plot_curves(curve_runs, start, Path(args.out or Path(__file__).parent / "results") / f"{args.name}.png",
                        summaries["fp32"]["best_val_acc"]["fp32"])
    q = cfgs.get("joint") or next((c for k, c in cfgs.items() if k != "fp32"), None)
    setup = (f"{cfgs['fp32'].model} on {dataset}: {len(fp)} test images. FP32: {cfgs['fp32'].epochs} epochs, {cfgs['fp32'].optimizer} lr {cfgs['fp32'].lr}"
             + (f" (continuing `{cfgs['fp32'].init_from}`)" if cfgs["fp32"].init_from else "") + ". "
             + (f"Every quantized run: {q.epochs} epoch(s) from the FP32 checkpoint, {q.optimizer} lr {q.lr}, batch {q.batch_size}, "
                f"weight decay {q.weight_decay}, cosine schedule"
                + ("; ALRS on the weight scales the bit-widths share only, each bit-width's own activation scales at the full rate "
                   "(`alrs_scope: shared`)" if q.alrs_scope == "shared" else "")
                + "; FP32 tuned = the FP32 model fine-tuned the same way without quantization; "
                "separate = one fixed-precision model per bit-width, same epochs "
                "(the four together make the passes of one joint run). " if q else "")
             + "Checkpoints chosen on the validation split; differences are paired on the same test images (± one standard error)."
             + (f" `- {vs_label}`: the same stage in `{args.vs}`, paired on the same images." if vs else "")
             + (f" Every model's BatchNorm statistics (each precision's own) re-estimated on the same {args.recalibrate_bn} training images "
                "before the test (`--recalibrate-bn`)." if args.recalibrate_bn else ""))
    md = (f"# The paper's comparisons on a converged FP32 model: {cfgs['fp32'].model}, {dataset}\n\n{setup}"
          + section("Test top-1 (%) per bit-width", rows) + section("{4,3,2} with ALRS", extra_rows)
          + section("Validation top-1 (%): calibrated start (epoch 0) -> chosen epoch", curve_rows(curve_runs, start, summaries))
          + (f"\n\n{START_NOTE}" if curve_runs else "")
          + section("Goals", [{**g, "met": "met" if g["met"] else "MISSED"} for g in goals]) + section("Runs", run_rows)
          + (f"\n\nValidation accuracy per epoch: [{curve.name}]({curve.name})" if curve else ""))
    accs = lambda d: {k: {b: acc(c) for b, c in v.items()} for k, v in d.items()}  # noqa: E731
    data = {"rows": rows, "rows_432": extra_rows, "val_acc_at_start": start, "goals": goals, "runs": run_rows,
            "configs": {k: c.to_dict() for k, c in cfgs.items()}, "test_acc": accs(correct),
            **({"vs": {"runs": args.vs, "test_acc": accs(vs)}} if vs else {})}
    return publish(args, data, md)


def curve_rows(runs: dict[str, Path], start: dict[str, dict[str, float]], summaries: dict[str, dict]) -> list[dict[str, Any]]:
    labels = bit_labels(start, runs)
    return [{"run": k, **{lab.upper(): f"{start[k][lab]:.2f} -> {summaries[k]['best_val_acc'][lab]:.2f}" if lab in start[k] else ""
                          for lab in labels}} for k in runs]


def bit_labels(start: dict[str, dict[str, float]], runs: Iterable[str]) -> list[str]:
    """The precisions (``w8a8``, ...) of these runs, highest bit-width first."""
    return sorted({lab for k in runs for lab in start[k]}, key=lambda lab: -int(lab[1:].split("a")[0]))


def section(title: str, rows: list[dict[str, Any]]) -> str:
    return f"\n\n## {title}\n\n" + md_table(rows) if rows else ""


#: why a low epoch-0 number is not where training starts (measured: docs/results.md)
START_NOTE = ("Epoch 0 is evaluated with the FP32 model's BatchNorm running statistics at every bit-width. The training steps "
              "normalise with each batch's own statistics, so a low epoch-0 accuracy (the 2-bit one) measures those stale "
              "statistics, not the model the first step trains.")


def start_accuracy(cfg: TrainConfig) -> dict[str, float]:
    """Validation accuracy at each bit-width where a run starts (epoch 0): the FP32 weights quantized and calibrated."""
    data = load_data(cfg)
    model = build_run_model(cfg, data, resume=False)
    return evaluate(model, make_loader(data, "val", cfg, "cpu"), cfg.bits)


def plot_curves(dirs: dict[str, Path], start: dict[str, dict[str, float]], path: Path, fp32_acc: float) -> Path | None:
    """Validation accuracy per epoch of the quantized runs (epoch 0: calibrated, before training), one panel per run, a line per bit-width."""
    if not dirs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one colour per bit-width across the panels ({4,3,2}'s W4A4 has {8,6,4,2}'s W4A4 colour), a legend in each
    labels = bit_labels(start, dirs)
    fig, axes = plt.subplots(1, len(dirs), figsize=(3.2 * len(dirs), 3.0), sharey=True, squeeze=False)
    for ax, (k, d) in zip(axes[0], dirs.items()):
        hist = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        for lab in hist[0]["val_acc"]:
            ax.plot([0] + [h["epoch"] for h in hist], [start[k][lab]] + [h["val_acc"][lab] for h in hist], marker="o",
                    label=lab.upper(), color=f"C{labels.index(lab)}")
        ax.axhline(fp32_acc, color="grey", ls="--", lw=1)
        ax.set_title(k)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation top-1 (%)  (dashed: FP32)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32-config", help="run config of the FP32 stage")
    p.add_argument("--fp32", help="an existing finished FP32 run folder instead of the fp32 stage")
    p.add_argument("--qat-config", required=True, help="run config every quantized stage starts from (mode/bits/alrs/... set per stage)")
    p.add_argument("--qat-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of --qat-config for every quantized stage (e.g. lr=1e-4)")
    p.add_argument("--runs", required=True, help="folder of the stages' run folders")
    p.add_argument("--stages", default=",".join(STAGES), help=f"stages to run, in order (default: all: {','.join(STAGES)})")
    p.add_argument("--report-only", action="store_true", help="only write the report from the finished stages")
    p.add_argument("--no-report", action="store_true", help="only run the stages (e.g. one share of them per process)")
    p.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                   help="re-estimate every model's BatchNorm statistics at each precision on N training images before the test (0 = as trained)")
    p.add_argument("--test-subset", type=int, default=0, help="report on this many test images only (0 = all; for smoke runs)")
    p.add_argument("--vs", metavar="OTHER_RUNS", help="pair every stage with the same stage in this runs folder (e.g. fewer epochs): '<stage> - <folder>' columns")
    p.add_argument("--name", default="paper_comparisons", help="results name")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    if args.recalibrate_bn < 0:
        p.error(f"--recalibrate-bn must be >= 0, got {args.recalibrate_bn}")
    if args.vs and not Path(args.vs).is_dir():
        p.error(f"--vs {args.vs}: no such runs folder")
    if args.fp32:
        stages = [s for s in stages if s != "fp32"]
    elif "fp32" in stages and not args.fp32_config:
        p.error("give --fp32-config (or --fp32 RUN_DIR)")
    wall: dict[str, float] = {}
    if not args.report_only:
        for s in stages:
            wall[s] = run_stage(stage_config(s, args))
    return 0 if args.no_report else report(args, wall)


if __name__ == "__main__":
    raise SystemExit(main())
