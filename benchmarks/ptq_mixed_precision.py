"""Post-training mixed precision benchmark: EfficientNet-Lite0 (ImageNet samples) or CIFAR-10 ResNet-20.

* ``--model efficientnet_lite0``: pretrained (offline package); calibration = the first 256 files of
  ``imagenet_samples/images`` in sorted order (labels unused), evaluation = the other 744.
* ``--model preact_resnet20``: FP32 checkpoint ``--weights`` (default
  ``runs/cifar10_resnet20_fp32/best.safetensors``); calibration = the first ``--num-calib`` CIFAR-10
  training images, evaluation = the 10,000 test images.

Reports FP32, uniform W8A16 / W8A8 / W4A8 (and W4A8 with nearest rounding when AdaRound is on),
mixed precision at relative BOPs 0.5 / 0.375 / 0.3 / 0.25, the full Pareto curve, and the wall
time of every phase separately (range setting, AdaRound, phase 1, phase 2, evaluations). Nothing is
read from a cache unless ``--resume`` is given, so a re-run measures the full cost:

    python benchmarks/ptq_mixed_precision.py --model efficientnet_lite0 --adaround
    python benchmarks/ptq_mixed_precision.py --model preact_resnet20 --adaround
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

from bitswitch import models  # noqa: E402
from bitswitch.ptq import PTQConfig, start_session  # noqa: E402
from bitswitch.ptq.plots import plot_pareto, plot_sensitivity  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BUDGETS = (0.5, 0.375, 0.3, 0.25)
CANDIDATES = [(8, 16), (8, 8), (4, 8)]
MODELS = ("efficientnet_lite0", "preact_resnet20")

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_imagenet_split(root: Path, cache: Path) -> Split:
    """Decode once (cached as a tensor file): sorted file order, first 256 calibration, rest eval."""
    from bitswitch.data import batches, efficientnet_lite_preprocess, load_imagenet_samples

    if cache.is_file():
        d = torch.load(cache, weights_only=True)
        return d["xc"], d["yc"], d["xe"], d["ye"]
    ds = load_imagenet_samples(root, efficientnet_lite_preprocess())
    order = sorted(range(len(ds)), key=lambda i: ds.samples[i][0].name)
    xs, ys = zip(*batches(ds, 100, indices=order, num_threads=2))
    x, y = torch.cat(xs), torch.cat(ys)
    d = {"xc": x[:256], "yc": y[:256], "xe": x[256:], "ye": y[256:]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(d, cache)
    return d["xc"], d["yc"], d["xe"], d["ye"]


def load_cifar_split(root: Path, num_calib: int) -> Split:
    """First ``num_calib`` training images (calibration), all 10,000 test images (evaluation)."""
    from bitswitch.data import dataset_stats, load_dataset

    stats = dataset_stats("cifar10")
    mean = torch.tensor(stats["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(stats["std"]).view(1, -1, 1, 1)
    norm = lambda x: ((x.float() / 255.0) - mean) / std  # noqa: E731  (same as TensorLoader)
    train, test = load_dataset("cifar10", root, "train"), load_dataset("cifar10", root, "test")
    return norm(train.images[:num_calib]), train.labels[:num_calib], norm(test.images), test.labels


@torch.inference_mode()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 62) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()) for i in range(0, len(x), bs))
    return 100.0 * correct / len(x)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.model == "efficientnet_lite0":
        return models.build("efficientnet_lite0", pretrained=True).eval()
    weights = Path(args.weights)
    if not weights.is_file():
        raise SystemExit(f"FP32 checkpoint {weights} not found; train it first (bitswitch train) or pass --weights")
    return models.load_weights(models.build(args.model), weights).eval()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0", choices=MODELS)
    ap.add_argument("--weights", default=str(ROOT / "runs" / "cifar10_resnet20_fp32" / "best.safetensors"),
                    help="FP32 state dict (preact_resnet20 only)")
    ap.add_argument("--num-calib", type=int, default=512, help="CIFAR-10 calibration images (ImageNet: always 256)")
    ap.add_argument("--adaround", action="store_true", help="AdaRound the 4-bit weights (cached per layer, reused in both phases)")
    ap.add_argument("--adaround-iters", type=int, default=300)
    ap.add_argument("--adaround-rows", type=int, default=256, help="input rows sampled per image and layer for AdaRound / bias correction")
    ap.add_argument("--bias-correct", action="store_true", help="empirical bias correction of quantized weights")
    ap.add_argument("--weight-ranges", default="mse", choices=["mse", "output"], help="per-channel weight clipping by weight or layer-output MSE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--priority", default="sqnr", choices=["sqnr", "noise_per_bops"], help="greedy rule for the curve")
    ap.add_argument("--also-priority", default=None, choices=["sqnr", "noise_per_bops"],
                    help="evaluate the budgets with this second greedy rule too (phase 1 is shared, so it only costs evaluations)")
    ap.add_argument("--pareto-every", type=int, default=10, help="evaluate accuracy at every k-th flip of the full curve (0: none)")
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--phase1-samples", type=int, default=None, help="calibration samples used by phase 1 (default: all)")
    ap.add_argument("--resume", action="store_true", help="reuse the phase-1 cache of an earlier run (timings then exclude phase 1)")
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument("--note", action="append", default=[], help="a line for the results file (e.g. machine load)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    short = {"efficientnet_lite0": "efficientnet_lite0", "preact_resnet20": "resnet20"}[args.model]
    tag = (f"ptq_{short}" + ("_adaround" if args.adaround else "") + ("_bc" if args.bias_correct else "") + ("_outrange" if args.weight_ranges == "output" else "")
           + (f"_{args.priority}" if args.priority != "sqnr" else "") + args.tag)
    out_dir = RESULTS / tag
    out_dir.mkdir(parents=True, exist_ok=True)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    if args.model == "efficientnet_lite0":
        xc, _, xe, ye = load_imagenet_split(SHARED / "imagenet_samples", Path.home() / ".cache" / "bitswitch" / "imagenet_samples_effl0.pt")
    else:
        xc, _, xe, ye = load_cifar_split(SHARED / "cifar10", args.num_calib)
    t["data_s"] = time.perf_counter() - t0
    model = build_model(args)
    xe = xe.contiguous(memory_format=torch.channels_last)
    eval_s = [0.0]

    def acc(m: torch.nn.Module) -> float:
        t1 = time.perf_counter()
        a = accuracy(m, xe, ye)
        eval_s[0] += time.perf_counter() - t1
        return a

    fp32 = acc(model.to(memory_format=torch.channels_last))
    logging.info("FP32 accuracy %.2f", fp32)

    t0 = time.perf_counter()
    session = start_session(model, [xc], PTQConfig(CANDIDATES, adaround=args.adaround, adaround_iters=args.adaround_iters,
                                                   adaround_rows=args.adaround_rows, bias_correct=args.bias_correct,
                                                   weight_ranges=args.weight_ranges, chunk_size=args.chunk_size))
    t["prepare_s"] = time.perf_counter() - t0  # BN folding, range setting, groups, AdaRound
    t.update(session.timings)
    uniform: dict[str, float] = {}
    for pair in CANDIDATES:
        uniform[f"W{pair[0]}A{pair[1]}"] = acc(session.apply(session.uniform(pair)))
        logging.info("uniform W%dA%d: %.2f", *pair, uniform[f"W{pair[0]}A{pair[1]}"])
    if args.adaround:
        uniform["W4A8 (nearest rounding)"] = acc(session.apply(session.uniform((4, 8)), nearest=True))
        logging.info("uniform W4A8 without AdaRound: %.2f", uniform["W4A8 (nearest rounding)"])

    t0 = time.perf_counter()
    cache = out_dir / "phase1_cache.json"
    if not args.resume and cache.exists():
        cache.unlink()
    session.sensitivity(cache_path=cache, max_samples=args.phase1_samples)
    t["phase1_s"] = time.perf_counter() - t0
    mixed = []
    for prio in [args.priority] + ([args.also_priority] if args.also_priority and args.also_priority != args.priority else []):
        for r in BUDGETS:
            res = session.search(r, priority=prio)  # the search itself: no evaluation inside
            t[f"phase2_s_budget_{r}"] = max(t.get(f"phase2_s_budget_{r}", 0.0), res.timings["phase2_s"])
            mixed.append({"budget": r, "priority": prio, "relative_bops": res.relative_bops, "top1": acc(session.apply(res.group_config)),
                          "config": {g: f"W{c[0]}A{c[1]}" for g, c in res.group_config.items()}})
            logging.info("%s, budget %.3f: rel BOPs %.4f, top-1 %.2f", prio, r, res.relative_bops, mixed[-1]["top1"])
    t0 = time.perf_counter()
    curve = session.search(None, priority=args.priority)
    t["pareto_curve_search_s"] = time.perf_counter() - t0
    pts = [dict(p) for p in curve.pareto]
    t0 = time.perf_counter()
    if args.pareto_every > 0:
        steps = sorted(set(range(0, len(pts), args.pareto_every)) | {len(pts) - 1})
        for s in steps:
            pts[s]["metric"] = acc(session.apply(_config_after(curve.pareto, session, s)))
    t["pareto_curve_eval_s"] = time.perf_counter() - t0
    for m in mixed:  # the budget points were evaluated too; put them on the curve
        for p in pts if m["priority"] == args.priority else []:
            if abs(p["relative_bops"] - m["relative_bops"]) < 1e-12:
                p["metric"] = m["top1"]
    t["search_one_budget_s"] = t["ranges_s"] + t.get("adaround_s", 0.0) + t["phase1_s"] + max(t[f"phase2_s_budget_{r}"] for r in BUDGETS)
    t["pareto_curve_total_s"] = t["ranges_s"] + t.get("adaround_s", 0.0) + t["phase1_s"] + t["pareto_curve_search_s"] + t["pareto_curve_eval_s"]
    t["all_evaluations_s"] = eval_s[0]

    (out_dir / "sensitivity.json").write_text(json.dumps(curve.sensitivity, indent=1))
    (out_dir / "pareto.json").write_text(json.dumps(pts, indent=1))
    (out_dir / "configs.json").write_text(json.dumps(mixed, indent=1))
    plot_sensitivity(curve.sensitivity, out_dir / "sensitivity.png")
    plot_pareto([p for p in pts if "metric" in p], out_dir / "pareto.png", html=out_dir / "pareto.html", reference={"FP32": fp32, **{
        k: v for k, v in uniform.items() if "nearest" not in k}})
    plot_pareto([{**p, "metric": p["predicted_sqnr_db"]} for p in pts if math.isfinite(p["predicted_sqnr_db"])],
                out_dir / "pareto_predicted_sqnr.png", metric_name="predicted output SQNR (dB)")

    n_eval, n_cal = len(xe), len(xc)
    rows = [f"| configuration | relative BOPs | top-1 (%, {n_eval} images) |", "|---|---|---|", f"| FP32 | - | {fp32:.2f} |"]
    for k, v in uniform.items():
        rel = session.relative_bops(session.uniform((int(k[1]), int(k.split("A")[1].split(" ")[0]))))
        rows.append(f"| uniform {k} | {rel:.3f} | {v:.2f} |")
    for m in mixed:
        rows.append(f"| mixed ({m['priority']}), budget r={m['budget']} | {m['relative_bops']:.3f} | {m['top1']:.2f} |")
    rows += ["", "| phase | wall time (s) |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in t.items()]
    load = os.getloadavg()
    md = (f"# PTQ mixed precision, {args.model} ({'AdaRound ' + str(args.adaround_iters) + ' it' if args.adaround else 'nearest rounding'}"
          f"{', bias correction' if args.bias_correct else ''}, {args.weight_ranges} weight ranges, priority {args.priority})\n\n"
          f"{len(session.groups)} quantizer groups; candidates {['W%dA%d' % c for c in CANDIDATES]}; BOPs relative to all-W8A16; "
          f"calibration {n_cal} images (phase 1 on {args.phase1_samples or n_cal}), evaluation {n_eval} images; "
          f"{args.threads} torch threads; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) "
          f"on {os.cpu_count()} cores: wall times above ~{os.cpu_count()} include contention.\n\n"
          "`search_one_budget_s` = ranges + AdaRound + phase 1 + phase 2 (no evaluation); `pareto_curve_total_s` adds the "
          "full flip sequence and the accuracy of every k-th point on it; evaluations are timed separately.\n\n"
          + "\n".join(rows) + ("\n\nNotes:\n" + "\n".join(f"- {n}" for n in args.note) if args.note else ""))
    write_results(tag, {"model": args.model, "fp32": fp32, "uniform": uniform, "mixed": mixed, "timings_s": t,
                        "groups": len(session.groups), "candidates": CANDIDATES, "adaround": args.adaround,
                        "adaround_iters": args.adaround_iters, "adaround_rows": args.adaround_rows, "bias_correct": args.bias_correct, "weight_ranges": args.weight_ranges, "priority": args.priority,
                        "phase1_samples": args.phase1_samples or n_cal, "load_average": load}, md)
    print(md)
    return 0


def _config_after(pareto: list[dict], session, step: int) -> dict:
    """Group configuration after ``step`` flips of a full-curve result."""
    config = {g.name: g.candidates[0] for g in session.groups}
    for p in pareto[1:step + 1]:
        w, a = p["candidate"][1:].split("A")
        config[p["group"]] = (int(w), int(a))
    return config


if __name__ == "__main__":
    sys.exit(main())
