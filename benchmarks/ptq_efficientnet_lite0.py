"""Post-training mixed precision on EfficientNet-Lite0 (pretrained, offline) and ImageNet samples.

Calibration: the first 256 files of ``imagenet_samples/images`` in sorted order (labels unused);
evaluation: the other 744. Reports FP32, uniform W8A16 / W8A8 / W4A8 (same MSE ranges), mixed
precision at relative BOPs 0.5 / 0.375 / 0.3 / 0.25 and the wall time of each phase; writes JSON,
Markdown, the sensitivity list, the Pareto curve and PNG/HTML plots to ``benchmarks/results/``.

    python benchmarks/ptq_efficientnet_lite0.py [--adaround] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

from bitswitch import models  # noqa: E402
from bitswitch.data import batches, efficientnet_lite_preprocess, load_imagenet_samples  # noqa: E402
from bitswitch.ptq import prepare  # noqa: E402
from bitswitch.ptq.plots import plot_pareto, plot_sensitivity  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_samples"
BUDGETS = (0.5, 0.375, 0.3, 0.25)
CANDIDATES = [(8, 16), (8, 8), (4, 8)]


def load_split(root: Path, cache: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode once (cached as a tensor file): sorted file order, first 256 calibration, rest eval."""
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


@torch.inference_mode()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 62) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()) for i in range(0, len(x), bs))
    return 100.0 * correct / len(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adaround", action="store_true", help="AdaRound 4-bit weights (reused in both phases)")
    ap.add_argument("--adaround-iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--priority", default="sqnr", choices=["sqnr", "noise_per_bops"])
    ap.add_argument("--pareto-every", type=int, default=8, help="evaluate accuracy at every k-th flip of the full curve")
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--phase1-samples", type=int, default=None, help="calibration samples used by phase 1 (default: all 256)")
    ap.add_argument("--no-curve-eval", action="store_true", help="full Pareto curve without accuracy evaluations (predicted SQNR only)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    tag = "ptq_efficientnet_lite0" + ("_adaround" if args.adaround else "") + (f"_{args.priority}" if args.priority != "sqnr" else "") + args.tag
    out_dir = RESULTS / tag
    out_dir.mkdir(parents=True, exist_ok=True)
    t = {}
    t0 = time.perf_counter()
    xc, _, xe, ye = load_split(DATA, Path.home() / ".cache" / "bitswitch" / "imagenet_samples_effl0.pt")
    t["data_s"] = time.perf_counter() - t0
    model = models.build("efficientnet_lite0", pretrained=True).eval()
    fp32 = accuracy(model, xe, ye)
    logging.info("FP32 accuracy %.2f", fp32)

    t0 = time.perf_counter()
    session = prepare(model, [xc], CANDIDATES, adaround=args.adaround, adaround_iters=args.adaround_iters, chunk_size=args.chunk_size)
    t["prepare_s"] = time.perf_counter() - t0  # BN folding, range setting, groups (+ AdaRound)
    acc = lambda m: accuracy(m, xe, ye)  # noqa: E731
    uniform = {}
    for pair in CANDIDATES:
        session.apply(session.uniform(pair))
        uniform[f"W{pair[0]}A{pair[1]}"] = acc(session.model)
        logging.info("uniform W%dA%d: %.2f", *pair, uniform[f"W{pair[0]}A{pair[1]}"])

    t0 = time.perf_counter()
    session.sensitivity(cache_path=out_dir / "phase1_cache.json", max_samples=args.phase1_samples)
    t["phase1_s"] = time.perf_counter() - t0
    mixed = []
    for r in BUDGETS:
        t0 = time.perf_counter()
        res = session.search(r, eval_fn=acc, priority=args.priority)
        dt = time.perf_counter() - t0
        mixed.append({"budget": r, "relative_bops": res.relative_bops, "top1": res.metric, "phase2_s_incl_eval": dt,
                      "config": {g: f"W{c[0]}A{c[1]}" for g, c in res.group_config.items()}})
        logging.info("budget %.3f: rel BOPs %.4f, top-1 %.2f", r, res.relative_bops, res.metric)
    t0 = time.perf_counter()
    curve = session.search(None, eval_fn=None if args.no_curve_eval else acc, pareto=not args.no_curve_eval,
                           pareto_every=args.pareto_every, priority=args.priority)
    t["pareto_curve_s"] = time.perf_counter() - t0
    (out_dir / "sensitivity.json").write_text(json.dumps(curve.sensitivity, indent=1))
    (out_dir / "pareto.json").write_text(json.dumps(curve.pareto, indent=1))
    (out_dir / "configs.json").write_text(json.dumps(mixed, indent=1))
    plot_sensitivity(curve.sensitivity, out_dir / "sensitivity.png")
    pts = [dict(p) for p in curve.pareto]
    for m in mixed:  # the budget points were evaluated on the eval set; put them on the curve
        for p in pts:
            if abs(p["relative_bops"] - m["relative_bops"]) < 1e-12:
                p["metric"] = m["top1"]
    plot_pareto(pts, out_dir / "pareto.png", html=out_dir / "pareto.html", reference={"FP32": fp32, **uniform})
    plot_pareto([{**p, "metric": p["predicted_sqnr_db"]} for p in pts if math.isfinite(p["predicted_sqnr_db"])],
                out_dir / "pareto_predicted_sqnr.png", metric_name="predicted output SQNR (dB)")
    t.update({k: v for k, v in session.timings.items() if k not in t})

    rows = ["| configuration | relative BOPs | top-1 (%, 744 images) |", "|---|---|---|", f"| FP32 | - | {fp32:.2f} |"]
    for k, v in uniform.items():
        rel = session.relative_bops(session.uniform(tuple(int(s) for s in k[1:].split("A"))))
        rows.append(f"| uniform {k} | {rel:.3f} | {v:.2f} |")
    for m in mixed:
        rows.append(f"| mixed, budget r={m['budget']} | {m['relative_bops']:.3f} | {m['top1']:.2f} |")
    rows += ["", "| phase | wall time (s) |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in t.items()]
    md = (f"# PTQ mixed precision, EfficientNet-Lite0 ({'AdaRound' if args.adaround else 'nearest rounding'}, priority {args.priority})\n\n"
          f"{len(session.groups)} quantizer groups; candidates {['W%dA%d' % c for c in CANDIDATES]}; BOPs relative to all-W8A16; "
          f"calibration 256 images, evaluation 744 images; {args.threads} torch threads on a CPU shared with other jobs "
          f"(wall times include contention).\n\n" + "\n".join(rows))
    write_results(tag, {"fp32": fp32, "uniform": uniform, "mixed": mixed, "timings_s": t, "groups": len(session.groups),
                        "candidates": CANDIDATES, "adaround": args.adaround, "priority": args.priority}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
